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
