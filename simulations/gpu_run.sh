#!/usr/bin/env bash
# The GPU checks on a CUDA machine without network access, from the source tree (no pip install of
# fedtune): installs the wheels carried in .whl/ (flwr's closure, see the README) into /tmp/site,
# prints the GPU and versions, runs simulations.gpu_check (JSON to $OUT/gpu.json), then
# `pytest -m gpu` in the time left of GPU_RUN_BUDGET seconds (default 400). Log: $OUT/log.
#   OUT=gpu-out bash simulations/gpu_run.sh
set -u -o pipefail
OUT=${OUT:-$PWD/gpu-out}
BUDGET=${GPU_RUN_BUDGET:-400}
mkdir -p "$OUT"
main() {
    export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 FLWR_TELEMETRY_ENABLED=0
    if compgen -G ".whl/*.whl" >/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl || return 3
        export PYTHONPATH=/tmp/site:$PWD
    fi
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    python3 - <<'PY' || return 4
import importlib.metadata as md, sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
for name in ("flwr", "transformers", "peft", "numpy", "grpcio", "protobuf", "triton"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "missing")
import flwr.serverapp, fedtune.cli, client_app.app, server_app.app  # noqa: F401, E401
print("imports ok")
PY
    python3 -m simulations.gpu_check --json "$OUT/gpu.json"
    echo "gpu_check exit $?"
    local left=$((BUDGET - SECONDS))
    if ((left > 30)); then
        timeout "$left" python3 -m pytest tests/test_gpu.py -m gpu -q -p no:cacheprovider -rs \
            --durations=10
        echo "pytest -m gpu exit $? (${left} s allowed)"
    else
        echo "pytest -m gpu not run: ${left} s left"
    fi
}
main 2>&1 | tee "$OUT/log"
