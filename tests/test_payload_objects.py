"""The payload objects DP and SecAgg use (vector out, vector back in), the typed strategy hooks,
and the import rule of issue #26: privacy and secagg import nothing from algorithms."""

import numpy as np

from fedtune.payloads import ArraysPayload, SeedsPayload
from fedtune.seeded import pack_pairs
from fedtune.strategies.hooks import NO_HOOKS, StrategyHooks, has_check, hooks_of
from tests.test_layout import _modules, _resolve, _runtime_imports


def test_an_arrays_update_written_back_from_its_vector_is_the_reply():
    gen = np.random.default_rng(0)
    ref = {"b": gen.normal(size=(3, 2)).astype(np.float32),
           "a": gen.normal(size=(4,)).astype(np.float32)}
    reply = {"a": ref["a"] + 1, "b": ref["b"] - 2}  # another key order than the reference
    payload = ArraysPayload()
    vec = payload.contribution(reply, ref)
    assert vec.size == payload.size(ref) == 10
    assert np.allclose(vec[:6], -2) and np.allclose(vec[6:], 1)  # the reference's order
    back = payload.write({}, vec, ref)
    assert list(back) == ["b", "a"]
    assert all(np.array_equal(back[k], reply[k]) for k in ref)


def test_a_seed_vector_written_back_has_one_pair_per_seed():
    k = 8
    payload = SeedsPayload(k)
    record = {"pairs": pack_pairs(np.array([1, 1, 5]), np.array([2, 3, -1], np.float32), k)}
    vec = payload.contribution(record, {})
    assert payload.size({}) == k and vec[1] == 5 and vec[5] == -1
    assert np.array_equal(payload.contribution(payload.write(record, vec, {}), {}), vec)


def test_strategy_hooks_default_to_nothing_and_a_override_is_found():
    class Checked(StrategyHooks):
        def check_reply(self, content):
            return "always"

    assert hooks_of(object()) is NO_HOOKS and not has_check(NO_HOOKS)
    assert NO_HOOKS.admit_round(1, 10, 2) is None and NO_HOOKS.round_report() == {}
    assert has_check(Checked()) and hooks_of(Checked()).check_reply(None) == "always"


def test_privacy_and_secagg_import_nothing_from_algorithms():
    modules = _modules()
    wrong = [f"{m} imports {t}" for m, p in modules.items()
             if m.startswith(("fedtune.privacy", "fedtune.secagg"))
             for i in _runtime_imports(p) if i.startswith("fedtune")
             and (t := _resolve(i, modules) or "").startswith("fedtune.algorithms")]
    assert not wrong, wrong
