"""A time budget for the quick tier: a test not marked ``slow`` whose setup or call keeps this
process busy for more than FEDTUNE_TEST_BUDGET seconds (default 30; 0 turns the check off)
fails, saying so. Busy is the smaller of the phase's wall and CPU seconds, so a loaded machine
(wall time stretched, CPU time not) does not trip it; time spent in child processes is not
counted (CI's ``--durations=20`` shows such tests).

Its hooks are imported by tests/conftest.py (or loaded with ``-p tests.budget``). A test that
needs more time is made faster or marked ``@pytest.mark.slow``, so ``python -m pytest -m "not
slow"`` stays a few minutes.
"""

from __future__ import annotations

import os
import time

import pytest

BUDGET_ENV = "FEDTUNE_TEST_BUDGET"
DEFAULT_BUDGET = 30.0
_budget = DEFAULT_BUDGET
_cpu = pytest.StashKey[dict]()


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
    report.outcome = "failed"
    report.longrepr = (f"{item.nodeid}: its {call.when} took {busy:.1f} s, over the "
                       f"{_budget:g} s budget of a test not marked slow; make it faster or mark "
                       f"it @pytest.mark.slow ({BUDGET_ENV}=seconds sets the budget, 0 turns "
                       "the check off).")
