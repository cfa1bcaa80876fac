"""The seams between features (issue #26), cheaply: config sections found where the methods
live, renamed keys, the strategy chain's stated order, the server side's typed hooks, and
`fedtune generate`/`export` asking the algorithm that made a run."""

from __future__ import annotations

import json

import pytest

from fedtune.algorithms import REGISTRY
from fedtune.algorithms.base import ServerHooks
from fedtune.config import RENAMED, SECTIONS, Config
from fedtune.errors import ConfigError
from fedtune.strategies import CHAIN, build_strategy


def test_every_algorithm_section_is_found_and_every_reader_declares_it():
    for name in ("lora", "zo", "ferret", "seeds"):
        assert name in SECTIONS
    declared = {s for algo in REGISTRY.values() for s in algo.sections}
    assert declared <= set(SECTIONS)
    assert Config.from_flat({"ferret-min-seeds": 3}).ferret.ferret_min_seeds == 3


@pytest.mark.parametrize("old, new", sorted(RENAMED.items()))
def test_a_renamed_key_is_refused_with_its_new_name(old, new):
    with pytest.raises(ConfigError, match=f"^{old} is now called {new}; rename it.$"):
        Config.from_flat({old: "x"})


class _Side(ServerHooks):
    wire_dtype = None


def test_the_chain_wraps_in_the_stated_order():
    """Innermost first: the configured strategy, the trust policy, DP, SecAgg (outermost)."""
    cfg = Config.from_flat({"example-weights": "equal", "dp": "server", "secagg": "on",
                            "min-train-nodes": 2})
    strategy = build_strategy(cfg, "arrays", _Side())
    names = []
    while strategy is not None:
        names.append(type(strategy).__name__)
        strategy = getattr(strategy, "inner", None)
    assert names == ["SecureAggregation", "DifferentialPrivacy", "Trust", "FedAvg"]
    assert [module for module, _ in CHAIN] == ["trust", "dp", "secagg"]
    plain = build_strategy(Config.from_flat({}), "arrays", _Side())
    assert type(plain).__name__ == "FedAvg"  # nothing on: no wrapper at all


def test_server_hooks_default_to_doing_nothing():
    side, replies = _Side(), [object()]
    assert side.down_records("n") is None and side.receive(replies) is replies
    arrays = {"a": 1}
    assert side.merge(3, arrays) is arrays and side.delivered("n", True) is None


def test_generate_asks_the_algorithm_named_in_the_run_folder(tmp_path):
    from fedtune.cli import _run_model

    with pytest.raises(ConfigError, match="not a fedtune run folder"):
        _run_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"train": {"algorithm": "local"}}))
    with pytest.raises(ConfigError, match="run of 'local', which leaves no single final"):
        _run_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"train": {"algorithm": "full-ft"}}))
    with pytest.raises(ConfigError, match="has no saved full-ft result"):
        _run_model(tmp_path)
    assert all(REGISTRY[n].load_result for n in ("fedit", "fedkseed", "fedkseed-pro",
                                                  "ferret", "full-ft", "centralized"))
