"""One client's local round of any algorithm, outside Flower, in a fresh process: its peak
memory and compute time.

    python -m simulations.client_round --algorithm fedit --run-config "model='...' local-steps=2"
    python -m simulations.client_round --algorithm full-ft --model llama134m

The caller (or, with ``in_process=False``, a child process) builds the server side (initial
state, round-1 train config, the node's extra records), casts the arrays to the wire dtype and
pickles the train message's content; a fresh child process (the one measured) imports the
client code, loads the content, runs the algorithm's client side for one round as a node
(partition 0 of 8) would, and reports its RSS after the imports, its RSS right after the model
load (the first call of :func:`fedtune.models.loading.load_model`), its peak RSS
(``getrusage``'s ``ru_maxrss``: every byte the round ever held, imports and model included),
the round's wall and CPU seconds (CPU: what the round costs whatever else the machine runs),
the client's own ``train-seconds`` metric and the reply's size. ``--model llama134m`` is a
Llama of about 134M parameters built in code (random weights, stories260k's tokenizer), saved
once under the cache.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED_MODEL = ROOT.parent / "shared" / "models" / "stories260k"
LLAMA134M = "llama134m"
#: A Llama with 134.1M parameters (untied embeddings over a 32,000-token vocabulary, 12 layers
#: of width 768): the size of SmolLM-135M / GPT-2 small, where a client's memory is the model's.
LLAMA134M_CONFIG = {"vocab_size": 32000, "hidden_size": 768, "intermediate_size": 2048,
                    "num_hidden_layers": 12, "num_attention_heads": 12, "num_key_value_heads": 12,
                    "max_position_embeddings": 512, "tie_word_embeddings": False,
                    "bos_token_id": 1, "eos_token_id": 2}
NODE = {"name": "client-0000", "partition_id": 0, "num_partitions": 8}


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _cpu_seconds() -> float:
    """This process's user + system CPU time: a round's compute, whatever else the machine
    runs (with one torch thread, its wall time on an idle core)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def llama134m(cache: Path | None = None) -> Path:
    """The 134M-parameter Llama folder (built once: random weights, seed 0, float32)."""
    folder = (cache or Path(tempfile.gettempdir()) / "fedtune-frontier") / LLAMA134M
    if (folder / "model.safetensors").is_file():
        return folder
    import shutil

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**LLAMA134M_CONFIG))
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(SHARED_MODEL).save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def _config(algorithm: str, overrides: str, model: str):
    from fedtune.algorithms import resolve
    from fedtune.config import Config, parse_overrides

    flat = {**parse_overrides(overrides), "algorithm": algorithm, "model": model}
    cfg = Config.from_flat(flat)
    return cfg, resolve(cfg)


def prepare(algorithm: str, overrides: str, model: str, work: Path) -> Path:
    """The round-1 train message's content for node ``NODE``, pickled into ``work``."""
    from fedtune.node import Node
    from fedtune.wire import Records, to_wire

    cfg, algo = _config(algorithm, overrides, model)
    cfg.output.cache_dir = str(work / "cache")
    cfg.output.run_dir = str(work / "run")
    server = algo.server(cfg)
    arrays = to_wire(server.initial_arrays(), server.wire_dtype)
    content = Records(arrays={"arrays": arrays},
                      configs={"config": {"server-round": 1, **server.train_config(1)}})
    extra = server.down_records(Node(**NODE).name)
    if extra is not None:
        content.arrays.update(extra.arrays)
        content.configs.update(extra.configs)
        content.metrics.update(extra.metrics)
    path = work / "content.pkl"
    with path.open("wb") as fh:
        pickle.dump(cfg.to_flat(), fh)  # first: the config, read before the content
        pickle.dump(content, fh)
    return path


def measure(path: Path) -> dict[str, Any]:
    """Run the pickled round as the client; its memory and times (this process's)."""
    from fedtune.models import loading

    after_load: list[float] = []
    load = loading.load_model

    def load_and_note(*args, **kwargs):
        model = load(*args, **kwargs)
        if not after_load:
            after_load.append(_rss_mib())
        return model

    loading.load_model = load_and_note  # before any algorithm module imports it by name
    import torch  # noqa: F401

    from fedtune.algorithms import resolve
    from fedtune.config import Config
    from fedtune.node import Node, node_data
    from fedtune.strategies import client_hook

    with path.open("rb") as fh:
        flat = pickle.load(fh)
    cfg = Config.from_flat(flat)
    algo = resolve(cfg)
    side = algo.client(cfg, client_hook(cfg, algo.payload)) if algo.client_hooks else \
        algo.client(cfg)
    node = Node(**NODE)
    node_data(cfg, node)  # the data and tokenizer, as a warm client has them
    imports = _rss_mib()
    with path.open("rb") as fh:  # the message's content, as the client receives it
        pickle.load(fh)
        content = pickle.load(fh)
    start, cpu = time.perf_counter(), _cpu_seconds()
    reply = side.train(content, node, {})
    wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    metrics = reply.metrics.get("metrics", {})
    up = sum(a.nbytes for rec in reply.arrays.values() for a in rec.values())
    up += sum(len(v) for rec in reply.configs.values() for v in rec.values()
              if isinstance(v, bytes))
    return {"rss_imports_mib": imports, "rss_model_mib": after_load[0] if after_load else None,
            "peak_mib": _peak_mib(), "round_seconds": wall, "cpu_seconds": cpu,
            "train_seconds": float(metrics.get("train-seconds", wall)),
            "train_loss": metrics.get("train-loss"), "reply_payload_bytes": int(up),
            "threads": torch.get_num_threads()}


def _child(args: list[str], threads: int) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-m", "simulations.client_round", *args], cwd=ROOT,
                         env=env, capture_output=True, text=True)
    if out.returncode != 0:
        tail = "\n".join(out.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"client_round {' '.join(args)} failed:\n{tail}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def probe(algorithm: str, overrides: str = "", model: str | None = None,
          threads: int = 1, in_process: bool = True) -> dict[str, Any]:
    """One client round of ``algorithm`` with ``overrides`` on ``model`` (a folder, ``tiny``
    or ``llama134m``; default stories260k), measured in a fresh process: see :func:`measure`.
    ``in_process``: the message is built in this process (the server side, which needs the
    model too), else in a child of its own; ``threads``: torch's intra-op threads in the
    children."""
    name = str(SHARED_MODEL) if model is None else model
    if name == LLAMA134M:
        name = str(llama134m())
    with tempfile.TemporaryDirectory(prefix="client-round-") as tmp:
        base = ["--algorithm", algorithm, "--run-config", overrides, "--model", name,
                "--work", tmp]
        if in_process:
            prepare(algorithm, overrides, name, Path(tmp))
        else:
            _child([*base, "--stage", "prepare"], threads)
        result = _child([*base, "--stage", "measure"], threads)
    return {"algorithm": algorithm, "overrides": overrides, "model": model or "stories260k",
            **result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithm", default="fedit")
    parser.add_argument("--run-config", default="")
    parser.add_argument("--model", default=None, help="folder, 'tiny' or 'llama134m' "
                        "(default: ../shared/models/stories260k)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--stage", choices=("prepare", "measure"), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stage is None:
        print(json.dumps(probe(args.algorithm, args.run_config, args.model, args.threads)))
        return 0
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.stage == "prepare":
        print(json.dumps({"content": str(prepare(args.algorithm, args.run_config, args.model,
                                                 args.work))}))
    else:
        print(json.dumps(measure(args.work / "content.pkl")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
