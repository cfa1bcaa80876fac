"""``fedtune dp-plan``: the epsilon it prints is dp-accounting's, called directly, for the events a
run records (replace-one, m of N sampled without replacement, noise multiplier z / 2); the z it
finds for a target is the smallest that reaches it; bad arguments are one sentence, exit 2."""

import re

import dp_accounting
import pytest
from dp_accounting.rdp import RdpAccountant

from fedtune.cli import main


def direct_epsilon(z: float, m: int, n: int, rounds: int, delta: float) -> float:
    """dp-accounting itself, without fedtune's accountant."""
    acc = RdpAccountant(
        neighboring_relation=dp_accounting.privacy_accountant.NeighboringRelation.REPLACE_ONE)
    gauss = dp_accounting.GaussianDpEvent(z / 2)  # replace-one moves the clipped sum by 2C
    event = gauss if m == n else dp_accounting.SampledWithoutReplacementDpEvent(n, m, gauss)
    acc.compose(event, rounds)
    return acc.get_epsilon(delta)


def plan(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["dp-plan", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def printed(out: str, name: str) -> float:
    return float(re.search(rf"^{name} = ([0-9.e+-]+)", out, re.M).group(1))


def test_the_issues_example_is_dp_accountings_epsilon(capsys):
    code, out, _ = plan(capsys, "--population", "1000", "--per-round", "100", "--rounds", "12",
                        "--noise-multiplier", "2", "--delta", "1e-4")
    assert code == 0
    eps = printed(out, "epsilon")
    assert eps == pytest.approx(direct_epsilon(2.0, 100, 1000, 12, 1e-4), rel=0.01)
    assert 4.0 < eps < 4.2
    assert "replace-one" in out and "without replacement" in out


def test_delta_defaults_to_the_runs_rule(capsys):
    _, out, _ = plan(capsys, "--population", "50", "--per-round", "50", "--rounds", "3",
                     "--noise-multiplier", "1.5")
    assert "delta=0.002" in out  # 0.1 / N
    assert printed(out, "epsilon") == pytest.approx(direct_epsilon(1.5, 50, 50, 3, 0.002),
                                                    rel=1e-5)


def test_the_noise_for_a_target_is_the_smallest_that_reaches_it(capsys):
    code, out, _ = plan(capsys, "--population", "64", "--per-round", "64", "--rounds", "5",
                        "--target-epsilon", "3", "--delta", "1e-5")
    assert code == 0
    z = printed(out, "noise multiplier z")
    assert direct_epsilon(z, 64, 64, 5, 1e-5) <= 3
    assert direct_epsilon(z * 0.997, 64, 64, 5, 1e-5) > 3  # within 0.3% of the smallest
    assert printed(out, "epsilon") == pytest.approx(direct_epsilon(z, 64, 64, 5, 1e-5), rel=1e-5)


@pytest.mark.parametrize("args, words", [
    ([], "dp-plan takes exactly one of --noise-multiplier and --target-epsilon"),
    (["--noise-multiplier", "1", "--target-epsilon", "2"], "exactly one of"),
    (["--noise-multiplier", "1", "--rounds", None], "dp-plan needs --rounds"),
    (["--noise-multiplier", "1", "--population", "ten"], "--population=ten is not an integer"),
    (["--noise-multiplier", "1", "--per-round", "11"], "--per-round=11 must be between 1 and"),
    (["--noise-multiplier", "1", "--rounds", "0"], "--rounds=0 must be at least 1"),
    (["--noise-multiplier", "0"], "--noise-multiplier=0 must be > 0"),
    (["--noise-multiplier", "nan"], "--noise-multiplier=nan must be a finite number"),
    (["--target-epsilon", "-1"], "--target-epsilon=-1 must be > 0"),
    (["--noise-multiplier", "1", "--delta", "0.1"], "--delta=0.1 must be in (0, 1/N)"),
])
def test_bad_arguments_are_one_sentence(capsys, args, words):
    base = {"--population": "10", "--per-round": "5", "--rounds": "2"}
    for key, value in zip(args[::2], args[1::2], strict=True):
        base[key] = value
    argv = [x for k, v in base.items() if v is not None for x in (k, v)]
    code, out, err = plan(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("fedtune: ") and words in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_the_plan_is_what_a_run_reports_after_its_rounds():
    """A run records its rounds one by one; the plan composes them at once: the same epsilon."""
    from fedtune.privacy.accountant import Accountant
    from fedtune.privacy.planner import Plan

    run = Accountant(1e-3)
    for _ in range(2):
        run.record(1.3, 16, 64)
    assert Plan(64, 16, 2, 1e-3).epsilon(1.3) == pytest.approx(run.epsilon(), rel=1e-12)
