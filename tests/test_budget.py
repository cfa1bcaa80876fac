"""The quick tier's time budget (tests/budget.py) fails a test not marked slow that runs past
it, and only such a test, scaled by the machine's pace (checked in child pytests on a file of
small cases, about 3 s each)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = """
import time
import pytest

def busy(seconds):  # CPU and wall time both pass ``seconds``, however loaded the machine
    start = time.process_time()
    while time.process_time() - start < seconds:
        pass

def test_quick():
    pass

def test_over_budget():
    busy(0.5)

def test_a_little_over():
    busy(0.3)

def test_waiting_is_not_busy():
    time.sleep(0.5)

@pytest.mark.slow
def test_marked_slow():
    busy(0.5)

@pytest.fixture
def slow_fixture():
    busy(0.5)

def test_slow_setup(slow_fixture):
    pass

def test_failing_fast():
    assert False
"""


def run(tmp_path: Path, budget: str, pace: str = "1") -> str:
    (tmp_path / "test_cases.py").write_text(CASES)
    env = {**os.environ, "FEDTUNE_TEST_BUDGET": budget, "FEDTUNE_TEST_PACE": pace,
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.budget", "-p",
                           "no:cacheprovider", "-rfE", "test_cases.py"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # test_failing_fast fails
    return proc.stdout


def test_a_test_over_the_budget_fails_and_says_why(tmp_path):
    out = run(tmp_path, "0.2")  # test_waiting_is_not_busy: 0.5 s of wall time, no CPU
    assert "3 failed, 3 passed, 1 error" in out
    assert ("test_cases.py::test_over_budget: its call took " in out
            and "over the 0.2 s budget of a test not marked slow" in out)
    assert "test_cases.py::test_slow_setup: its setup took " in out
    assert "FAILED test_cases.py::test_marked_slow" not in out


def test_a_slower_machine_scales_the_budget(tmp_path):
    out = run(tmp_path, "0.2", pace="2")  # 0.4 s: 0.3 s passes, 0.5 s does not
    assert "2 failed, 4 passed, 1 error" in out
    assert ("test_cases.py::test_over_budget: its call took " in out and "over the 0.4 s budget "
            "(0.2 s x 2.00: FEDTUNE_TEST_PACE) of a test not marked slow" in out)


def test_zero_turns_the_check_off(tmp_path):
    assert "1 failed, 6 passed" in run(tmp_path, "0")


def test_the_pace_is_the_import_of_torch_against_the_reference(monkeypatch):
    """Measured once per process (a real import in a child process, positive CPU seconds), never
    below 1; FEDTUNE_TEST_PACE sets it instead."""
    from tests import budget

    assert 0 < budget.import_cpu() < 600
    monkeypatch.delenv(budget.PACE_ENV, raising=False)
    for cpu, factor in ((3 * budget.REFERENCE_CPU, 3.0), (budget.REFERENCE_CPU / 2, 1.0)):
        monkeypatch.setattr(budget, "_pace", None)
        monkeypatch.setattr(budget, "import_cpu", lambda cpu=cpu: cpu)
        assert budget.pace() == (factor, f"importing torch took {cpu:.1f} CPU-s here, "
                                         f"{budget.REFERENCE_CPU:g} there")
        monkeypatch.setattr(budget, "import_cpu", lambda: 1 / 0)  # not measured again
        assert budget.pace()[0] == factor
    monkeypatch.setattr(budget, "_pace", None)
    monkeypatch.setenv(budget.PACE_ENV, "0.5")
    assert budget.pace() == (1.0, budget.PACE_ENV)


class _Item:
    def __init__(self, nodeid: str, *marks: str) -> None:
        self.nodeid, self.marks = nodeid, marks

    def get_closest_marker(self, name: str):
        return name if name in self.marks else None


def test_files_that_wait_run_first_then_the_longest_each_in_its_own_order():
    """xdist (``--no-loadscope-reorder``) hands out files in the collected order: the
    deployment files first (their waits overlap the rest), then by slow tests, then by size."""
    from tests.conftest import _longest_first

    items = [_Item("tests/test_a.py::one"), _Item("tests/test_a.py::two"),
             _Item("tests/test_b.py::x", "slow"), _Item("tests/test_c.py::up", "deployment"),
             _Item("tests/test_d.py::late", "deployment", "slow"),
             _Item("tests/test_d.py::early", "deployment", "slow"),
             _Item("tests/test_e.py::one")]
    _longest_first(items)
    assert [i.nodeid for i in items] == [
        "tests/test_d.py::late", "tests/test_d.py::early", "tests/test_b.py::x",
        "tests/test_a.py::one", "tests/test_a.py::two", "tests/test_c.py::up",
        "tests/test_e.py::one"]
