"""The start-up bench's arithmetic (simulations/bench_startup.py), on a made-up run record: the
ratio is the wall time over 13 medians, and its stretches add up to the excess. The real run is
measured by the bench itself (docs/testing.md), never asserted in a test."""

from __future__ import annotations

import pytest

from simulations import bench_startup as bench

SPAWN = 100.0
SECONDS = {0: 1.0, 1: 6.0, **{r: 3.0 for r in range(2, 13)}, 7: 4.0}  # median of 2-12: 3.0


def record() -> dict:
    """A run: engine at 1.5 s, Ray 2-6 s, identify answered 4.0/4.1 s after the pool, round 0
    from 10.5 s, each round right after the one before, 2 s after the last round (the plot
    line 0.3 s in, Flower's backend terminated from 0.8 to 1.9 s)."""
    events = [{"event": "python", "t": 100.05}, {"event": "imports", "t": 100.3},
              {"event": "engine-start", "t": 101.5}, {"event": "ray-init-start", "t": 102.0},
              {"event": "ray-init-end", "t": 106.0}, {"event": "pool-start", "t": 106.0},
              {"event": "pool-end", "t": 106.1, "actors": 2}]

    def message(kind: str, start: float, took: float, partition: int) -> dict:
        return {"event": "message", "t": start + took, "start": start, "type": kind,
                "partition": partition}

    events += [message("query.identify", 106.1, 4.0, 0), message("query.identify", 106.1, 4.1, 1)]
    lines, t = [], SPAWN + 10.5
    for rnd in range(13):
        if rnd >= 1:  # two clients train: 4.2 s in round 1 (fresh actors), 1.0 s after
            took = 4.2 if rnd == 1 else 1.0
            events += [message("train", t, took, 0), message("train", t, took, 1)]
        t += SECONDS[rnd]
        lines.append((t, f"round {rnd}/12 eval_loss 1.0"))
    lines.append((t + 0.3, "plot: runs/x/metrics.png"))  # the server's finish
    events += [{"event": "terminate-start", "t": t + 0.8}, {"event": "terminate-end", "t": t + 1.9}]
    return {"spawn": SPAWN, "end": t + 2.0, "lines": lines, "events": events,
            "rows": [{"round": r, "seconds": s, "eval_loss": 1.0} for r, s in SECONDS.items()]}


def test_the_ratio_is_the_wall_time_over_13_medians_and_its_parts_add_up():
    p = bench.parts(record())
    wall = 10.5 + sum(SECONDS.values()) + 2.0
    assert p["wall"] == pytest.approx(wall) and p["median_round"] == 3.0
    assert p["ratio"] == pytest.approx(wall / (13 * 3.0))
    assert p["excess"] == pytest.approx(wall - 39.0)
    stretches = ("excess_before_round0", "excess_round0", "excess_round1", "excess_rounds_2_on",
                 "excess_after")
    assert sum(p[k] for k in stretches) == pytest.approx(p["excess"])
    assert p["excess_before_round0"] == pytest.approx(10.5)
    assert p["excess_round1"] == pytest.approx(3.0) and p["excess_after"] == pytest.approx(2.0)
    assert p["checks"] == pytest.approx(1.2) and p["ray_start"] == pytest.approx(4.0)
    assert p["actor_start"] == pytest.approx(4.1)  # the slower of the two actors
    assert p["first_message"] == pytest.approx(3.2)  # 4.2 s against the later 1.0 s
    after = ("after_finish", "after_engine_stop", "after_ray_shutdown", "after_exit")
    assert [round(p[k], 6) for k in after] == [0.3, 0.5, 1.1, 0.1]
    assert sum(p[k] for k in after) == pytest.approx(p["excess_after"])
    text = bench.report(p, (0.0, 0.0, 0.0))
    assert "ratio 1.37 (goal <= 1.3)" in text  # 53.5 s / 39 s
    assert "2.0 s = the server's finish 0.3 (summary, plot, table) + Flower's engine stop 0.5 + " \
        "Ray's shutdown 1.1 + exit 0.1" in text


def test_a_run_without_a_plot_line_reports_no_split_of_the_last_stretch():
    got = record()
    got["lines"] = [line for line in got["lines"] if not line[1].startswith("plot: ")]
    p = bench.parts(got)
    assert "after_finish" not in p and "the server's finish" not in bench.report(p, (0, 0, 0))


def test_repeated_runs_report_the_median_one():
    runs = [{"ratio": r} for r in (1.40, 1.31, 1.36, 1.33)]
    assert bench.median_run(runs)["ratio"] == 1.33  # the lower middle of an even number
    assert bench.median_run(runs[:3])["ratio"] == 1.36


def test_results_drop_only_the_timings():
    assert bench.results([{"round": 1, "seconds": 2.5, "eval_loss": 0.5}]) == \
        [{"round": 1, "eval_loss": 0.5}]


def test_repeat_must_be_positive(capsys):
    with pytest.raises(SystemExit) as err:
        bench.main(["--repeat", "0"])
    assert err.value.code == 2 and "--repeat=0 must be at least 1" in capsys.readouterr().err
