"""Behaviour is preserved bit for bit: small runs of every algorithm, objective and a spread of
strategies give exactly the metrics and final model recorded in ``reference/behaviour.json``
(recorded before the plug-in refactor; ``behaviour-avx2.json`` for AVX2 CPUs, see
``behaviour_cases.reference_path``; see ``behaviour_cases.py`` to re-record on purpose)."""

import json

import pytest

from tests.behaviour_cases import CASES, reference_path, run_case

RECORDED = json.loads(reference_path().read_text())


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_config_gives_the_recorded_metrics_and_model(name, tmp_path, one_thread):
    got = run_case(name, tmp_path)
    want = RECORDED[name]
    assert len(got["rows"]) == len(want["rows"])
    for mine, theirs in zip(got["rows"], want["rows"], strict=True):
        assert mine == theirs, f"round {theirs['round']} differs"
    assert got["model"] == want["model"]
