"""The frontier suite's definition, its report from fake runs and probes, and the client-round
probe on the built-in tiny model (two methods, a fresh process each)."""

import pytest

from simulations import client_round
from simulations.benchmark import SUITES
from simulations.frontier_methods import BY_NAME, FAMILIES, STORIES260K
from simulations.frontier_report import points, probe_overrides, table, write

SUITE = SUITES["frontier"]


def _run(method, seed, losses, down, up, lr=0.002):
    rows = [{"round": 0, "eval_loss": 10.5, "clients": 0, "bytes_down_per_client": 0,
             "bytes_up_per_client": 0, "lr": None}]
    rows += [{"round": i, "eval_loss": loss, "clients": 4, "bytes_down_per_client": down,
              "bytes_up_per_client": up, "lr": lr * (1 - 0.1 * i)}
             for i, loss in enumerate(losses, start=1)]
    return {"method": method, "seed": seed, "rows": rows, "wall": 30.0, "peak_mib": 600.0,
            "total_bytes": (down + up) * len(losses), "run_dir": f"/tmp/{method}-{seed}"}


def _probe(method, model, peak, seconds):
    return {"algorithm": SUITE.algorithms[method], "model": model, "peak_mib": peak,
            "cpu_seconds": seconds, "overrides": probe_overrides(SUITE, method, model)}


RESULTS = [_run("lora", 0, [3.0, 2.0], 200_000, 200_000),
           _run("lora", 1, [3.0, 2.2], 200_000, 200_000),
           _run("vera", 0, [4.0, 2.5], 8_000, 8_000, lr=0.05),
           _run("vera", 1, [4.0, 2.7], 8_000, 8_000, lr=0.05),
           _run("fedkseed", 0, [9.0, 8.0], 16_000, 400, lr=3e-5),
           _run("fedkseed", 1, [9.0, 8.2], 16_000, 400, lr=3e-5)]
PROBES = {"lora/stories260k": _probe("lora", "stories260k", 510.0, 2.5),
          "lora/llama134m": _probe("lora", "llama134m", 2400.0, 37.0),
          "vera/stories260k": _probe("vera", "stories260k", 505.0, 2.0),
          "fedkseed/llama134m": _probe("fedkseed", "llama134m", 1300.0, 8.0)}


def test_suite_has_every_family_on_stories260k_in_process():
    assert SUITE.frontier_report and SUITE.engine == "inprocess" and SUITE.num_clients == 8
    assert f"model='{STORIES260K}'" in SUITE.common and "num-server-rounds=4" in SUITE.common
    assert set(SUITE.methods) == set(SUITE.algorithms) == set(BY_NAME)
    assert {m.family for m in BY_NAME.values()} == set(FAMILIES)
    assert {"lora", "qlora", "ffa", "fedsa", "flora", "fedex", "vera", "ia3", "prompt-tuning",
            "loha", "lokr", "full-ft", "fedkseed", "fedkseed-pro", "ferret"} <= set(SUITE.methods)
    assert SUITE.algorithms["full-ft"] == "full-ft" and SUITE.algorithms["vera"] == "fedit"
    assert "lr=" in SUITE.methods["vera"] and "quantization='nf4'" in SUITE.methods["qlora"]


def test_probe_overrides_drop_the_model_and_cut_steps_on_134m():
    small, big = (probe_overrides(SUITE, "fedkseed", m) for m in ("stories260k", "llama134m"))
    assert "model=" not in small and "zo-steps=50" in small
    assert big == f"{small} zo-steps=2"  # the last value of a key wins
    assert probe_overrides(SUITE, "lora", "llama134m").endswith("local-steps=1")


def test_table_gives_loss_bytes_memory_and_compute_per_method():
    md = table(SUITE, RESULTS, [0, 1], PROBES)
    rows = {line.split("|")[1].strip(): line for line in md.splitlines()
            if line.startswith("| ") and "---" not in line}
    assert list(rows) == ["method", "lora", "vera", "fedkseed"]  # suite order
    assert rows["lora"] == ("| lora | LoRA | 0.0018 | 2.100 ± 0.141 | 400,000 ± 0 | 2.50 | 510 "
                            "| 2,400 | 37.0 |")
    assert rows["vera"].split("|")[3].strip() == "0.045" and "| — | — |" in rows["vera"]
    assert rows["fedkseed"].endswith("| — | — | 1,300 | 8.0 |")
    assert "round 0, before training: 10.50 ± 0.00" in md


def test_points_and_write(tmp_path):
    pts = {p["method"]: p for p in points(SUITE, RESULTS, PROBES)}
    assert pts["vera"]["bytes"] == 16_000 and pts["vera"]["loss"] == pytest.approx(2.6)
    assert pts["fedkseed"]["peak_134m"] == 1300.0 and pts["vera"]["peak_134m"] is None
    md = write(SUITE, RESULTS, [0, 1], tmp_path, PROBES)
    assert (tmp_path / "frontier.md").read_text() == md
    assert (tmp_path / "frontier.png").stat().st_size > 10_000


@pytest.mark.parametrize("algorithm,overrides,payload", [
    ("fedit", "local-steps=2 batch-size=4", 10_000),  # a LoRA adapter in float16
    # (seed, scalar) pairs: a few bytes; two more child processes, so in the full tier only
    pytest.param("fedkseed", "zo-steps=3 batch-size=4", 0, marks=pytest.mark.slow),
])
def test_client_round_probe_measures_a_fresh_process(algorithm, overrides, payload):
    got = client_round.probe(algorithm, overrides, model="tiny")
    assert got["model"] == "tiny" and got["algorithm"] == algorithm
    assert 50 < got["rss_imports_mib"] <= got["peak_mib"] < 4096
    assert got["rss_model_mib"] is not None and got["rss_model_mib"] <= got["peak_mib"]
    assert 0 < got["train_seconds"] <= got["round_seconds"] + 1e-6 and got["cpu_seconds"] > 0
    assert got["train_loss"] is not None and got["threads"] == 1
    assert got["reply_payload_bytes"] > payload
