"""The privacy suite's definition and its loss-against-epsilon table, from fake runs (fast)."""

import math

from simulations.benchmark import SUITES
from simulations.privacy_report import points, table


def _run(method, seed, final_loss, z=None, eps=None):
    """A fake ``run_one`` result: rows of round 0 and round 1; ``z=None`` is dp=off."""
    dp = {} if z is None else {"dp_noise_multiplier": z, "dp_clip_norm": 1.0,
                               "dp_delta": 0.1 / 64}
    rows = [{"round": 0, "algorithm": "fedit", "eval_loss": 6.0, **dp,
             **({"dp_epsilon": 0.0, "dp_clipped": None} if dp else {})},
            {"round": 1, "algorithm": "fedit", "eval_loss": final_loss, **dp,
             **({"dp_epsilon": eps, "dp_clipped": 0.5} if dp else {})}]
    return {"method": method, "seed": seed, "rows": rows}


def test_privacy_suite_runs_each_algorithm_off_and_at_several_noise_multipliers():
    suite = SUITES["privacy"]
    assert suite.privacy and suite.num_clients == 64
    assert "fraction-train=0.25" in suite.common and "min-train-nodes=16" in suite.common
    for algorithm in ("fedit", "fedkseed"):
        mine = [m for m in suite.methods if suite.algorithms[m] == algorithm]
        assert f"{algorithm}-off" in mine and f"{algorithm}-z0" in mine and len(mine) >= 4
        assert "dp=off" in suite.methods[f"{algorithm}-off"]
        assert all("dp=server" in suite.methods[m] for m in mine if m != f"{algorithm}-off")


def test_table_gives_loss_mean_and_std_against_epsilon_per_noise_multiplier():
    results = [_run("fedit-off", 0, 2.0), _run("fedit-off", 1, 3.0),
               _run("fedit-z0", 0, 2.5, z=0.0, eps=None), _run("fedit-z0", 1, 2.5, z=0.0),
               _run("fedit-z1", 0, 5.0, z=1.0, eps=21.5), _run("fedit-z1", 1, 7.0, z=1.0,
                                                                   eps=21.5)]
    pts = points(results)
    assert [p.method for p in pts] == ["fedit-off", "fedit-z0", "fedit-z1"]
    assert pts[0].epsilon is None and pts[0].z is None  # dp=off: no accounting
    assert math.isinf(pts[1].epsilon)  # z = 0: clipped but unbounded
    assert pts[2].epsilon == 21.5 and pts[2].start == 6.0 and pts[2].clipped == 0.5
    md = table(pts, [0, 1])
    assert "δ = 0.00156" in md
    assert "| fedit | off | — | — | — | 2.500 ± 0.707 | -3.500 | — |" in md
    assert "| fedit | server | 0 | 1 | ∞ | 2.500 ± 0.000 | -3.500 | 50% |" in md
    assert "| fedit | server | 1 | 1 | 21.5 | 6.000 ± 1.414 | +0.000 | 50% |" in md


# ---- the 1,000-client part (issue #25 item 8) ---------------------------------------------------
def test_privacy_suite_runs_its_1000_client_part_on_the_in_process_grid(tmp_path):
    from fedtune.config import Config, parse_overrides
    from simulations import benchmark as b

    assert b.chain("privacy") == ["privacy", "privacy-1000"]
    suite = SUITES["privacy-1000"]
    assert suite.engine == "inprocess" and suite.population_report
    assert suite.num_clients == b.POPULATION_1K == 1000
    for method in suite.methods:
        cmd = b.command(suite, method, 0, tmp_path)
        assert cmd[1:3] == ["-m", "simulations.inprocess_simulate"]
        assert cmd[cmd.index("--num-clients") + 1] == "1000"
        algorithm = cmd[cmd.index("--algorithm") + 1]
        cfg = Config.from_flat({**parse_overrides(cmd[cmd.index("--run-config") + 1]),
                                "algorithm": algorithm})
        assert cfg.server.num_server_rounds == b.ROUNDS_1K
        assert round(cfg.server.fraction_train * 1000) == b.PER_ROUND_1K == 100
        assert cfg.server.min_train_nodes == 100 and cfg.server.fraction_evaluate == 0
        assert cfg.privacy.dp_delta == 0  # the default: 0.1 / N
        if method.endswith("-off"):
            assert cfg.privacy.dp == "off"
        else:
            assert cfg.privacy.dp == "server"
            assert cfg.privacy.dp_noise_multiplier == b.Z_1K
            assert cfg.privacy.dp_clip_norm == b.CLIP_1K[algorithm]
    assert sorted(suite.methods) == ["fedit-1k-dp", "fedit-1k-off", "fedkseed-1k-dp",
                                     "fedkseed-1k-off"]


def test_the_1000_client_noise_multiplier_is_the_smallest_on_its_grid_within_epsilon_8():
    from fedtune.privacy.accountant import Accountant
    from simulations import benchmark as b

    def epsilon(z: float) -> float:
        acc = Accountant(0.1 / b.POPULATION_1K)
        for _ in range(b.ROUNDS_1K):
            acc.record(z, b.PER_ROUND_1K, b.POPULATION_1K)
        return acc.epsilon()

    assert epsilon(b.Z_1K) <= b.EPSILON_1K < epsilon(b.Z_1K - 0.05)


def _pop_run(method, loss, z=None, eps=None, wall=10.0, norms=()):
    run = _run(method, 0, loss, z=z, eps=eps)
    for row in run["rows"][1:]:
        row["clients"] = 100
    return {**run, "wall": wall, "norms": list(norms)}


def test_population_table_gives_the_share_of_the_non_dp_reduction_kept():
    from simulations.privacy_report import population_runs, population_table

    norms = [{"round": 1, "p10": 4.0, "p50": 5.0, "p90": 6.0},
             {"round": 2, "p10": 1.0, "p50": 2.0, "p90": 3.0}]
    runs = population_runs([_pop_run("fedit-1k-off", 2.0, norms=norms),
                            _pop_run("fedit-1k-dp", 4.5, z=1.4, eps=7.11, wall=12.0)])
    md = population_table(runs, [0])
    # round 0 is 6.0: dp=off falls by 4.0, DP by 1.5, so DP keeps 38%
    assert "| fedit | off | — | — | — | — | 100 | 1 | 6.000 → 2.000 | — | 5 → 2 | 10 |" in md
    assert "| fedit | server | 7.11 | 2e-03 | 1.4 | 1 | 100 | 1 | 6.000 → 4.500 | 38% | — | 12 |" \
        in md


def test_in_process_simulate_records_the_update_norms_of_a_dp_off_run(tmp_path):
    """simulations.inprocess_simulate: fedtune simulate's checks and setup, the in-process
    grid; a dp=off run writes each sampled client's contribution norm per round (a DP run
    writes none: run_in_process checks cfg.privacy.enabled)."""
    import json

    import torch

    from simulations.inprocess_simulate import NORMS_FILE, main

    threads = torch.get_num_threads()
    small = ("num-server-rounds=1 fraction-train=0.25 min-train-nodes=2 examples-per-client=4 "
             "local-steps=1 batch-size=2 eval-examples=4 max-new-tokens=1 "
             "fraction-evaluate=0.0 dp=off")
    try:
        assert main(["--num-clients", "8", "--output-dir", str(tmp_path), "--name", "off",
                     "--run-config", small]) == 0
    finally:
        torch.set_num_threads(threads)
    (off,) = tmp_path.glob("off-*")
    (row,) = [json.loads(line) for line in (off / NORMS_FILE).read_text().splitlines()]
    assert row["round"] == 1 and row["count"] == 2 == len(row["norms"])
    assert all(0 < n < 100 for n in row["norms"]) and row["p10"] <= row["p50"] <= row["p90"]
