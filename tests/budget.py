"""A time budget for the quick tier: a test not marked ``slow`` whose setup or call keeps this
process busy for more than FEDTUNE_TEST_BUDGET seconds (default 30; 0 turns the check off)
fails, saying so. Busy is the smaller of the phase's wall and CPU seconds, so a loaded machine
(wall time stretched, CPU time not) does not trip it; time spent in child processes is not
counted (CI's ``--durations=20`` shows such tests).

The budget is set on a machine where a fresh ``python -c "import torch"`` takes
REFERENCE_CPU seconds of CPU. A machine can be several times slower than that, on some days
even in CPU seconds (on one day here a 5 s fixture took 74 s), so before a test fails its
process measures that import once and scales the budget by how much longer it took (never
below 1); FEDTUNE_TEST_PACE=<factor> sets the factor instead. A run within the budget
measures nothing.

Its hooks are imported by tests/conftest.py (or loaded with ``-p tests.budget``). A test that
needs more time is made faster or marked ``@pytest.mark.slow``, so ``python -m pytest -m "not
slow"`` stays a few minutes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

BUDGET_ENV = "FEDTUNE_TEST_BUDGET"
PACE_ENV = "FEDTUNE_TEST_PACE"
DEFAULT_BUDGET = 30.0
# CPU-s of a fresh `python -c "import torch"` (interpreter start included) where the budget was
# set: 2.0-2.8 on this project's 2-core machine on ordinary days (1.5 on its best, 6.4 on a
# slow one)
REFERENCE_CPU = 2.5
_budget = DEFAULT_BUDGET
_pace: tuple[float, str] | None = None
_cpu = pytest.StashKey[dict]()


def import_cpu() -> float:
    """CPU seconds of a fresh Python process that imports torch, as it measures them."""
    code = "import time, torch; print(time.process_time())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=600, check=True)
    return float(out.stdout.split()[-1])


def pace() -> tuple[float, str]:
    """This machine's pace against the budget's (at least 1) and how it was found; measured
    once per process, the first time a test passes the unscaled budget."""
    global _pace
    if _pace is None:
        if os.environ.get(PACE_ENV):
            _pace = (max(1.0, float(os.environ[PACE_ENV])), PACE_ENV)
        else:
            cpu = import_cpu()
            _pace = (max(1.0, cpu / REFERENCE_CPU),
                     f"importing torch took {cpu:.1f} CPU-s here, {REFERENCE_CPU:g} there")
    return _pace


def pytest_configure(config: pytest.Config) -> None:
    global _budget
    _budget = float(os.environ.get(BUDGET_ENV) or DEFAULT_BUDGET)
    config.addinivalue_line("markers", "slow: more than a few seconds; -m 'not slow' skips it")


def _timed(item: pytest.Item, when: str):
    start = time.process_time()
    yield
    item.stash.setdefault(_cpu, {})[when] = time.process_time() - start


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    yield from _timed(item, "setup")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    yield from _timed(item, "call")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if (call.when not in ("setup", "call") or not report.passed or _budget <= 0
            or item.get_closest_marker("slow") is not None):
        return
    busy = min(call.duration, item.stash.get(_cpu, {}).get(call.when, call.duration))
    if busy <= _budget:
        return
    factor, why = pace()
    if busy <= _budget * factor:
        return
    budget = f"{round(_budget * factor, 1):g} s budget"
    if factor > 1:
        budget += f" ({_budget:g} s x {factor:.2f}: {why})"
    report.outcome = "failed"
    report.longrepr = (f"{item.nodeid}: its {call.when} took {busy:.1f} s, over the {budget} of "
                       f"a test not marked slow; make it faster or mark it @pytest.mark.slow "
                       f"({BUDGET_ENV}=seconds sets the budget, 0 turns the check off; "
                       f"{PACE_ENV}=factor, the pace).")
