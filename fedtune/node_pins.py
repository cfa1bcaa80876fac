"""Node-side pins: what a SuperNode's owner requires of every run before the node takes part.

A deployed node's ``--node-config`` may say::

    require-dp=true        the run must have dp='server' or dp='client'
    max-epsilon=8.0        ... and a budget dp-max-epsilon in (0, 8.0] (so DP is on, too)
    max-delta=1e-5         ... and epsilon reported at a delta of at most 1e-5 (dp-delta, or
                           its default 0.1 / dp-population): a run sets its delta too, and a
                           larger delta buys a smaller epsilon for the same noise
    require-secagg=true    the run must have secagg='on'
    min-train-nodes=5      the run must aggregate at least 5 nodes per round (its min-train-nodes)

The ClientApp checks them against the run config it receives, which is the one the run's
ServerApp applies, and refuses every message of a run that does not meet them (identify, so the
node is never sampled; and train, evaluate, secagg as defence in depth) with one sentence.
Whoever launches a run can override any config key (the SuperLink's Control API takes any
``--run-config``); the pins are what such a caller cannot turn off.

A malformed pin (``max-epsilon='abc'``), or a key that looks like a pin but is none
(``require-dpp=true``: a typo must not silently drop a pin), is also one sentence, and the node
refuses every run until its owner fixes it. Pure Python: no Flower import.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from fedtune.errors import ConfigError
from fedtune.privacy.config import PrivacyConfig

PINS = ("require-dp", "max-epsilon", "max-delta", "require-secagg", "min-train-nodes")
PIN_PREFIXES = ("require-", "max-", "min-")  # a node-config key like these must be a pin
DP_ON, SECAGG_ON = ("server", "client"), "on"  # what the pins accept


@dataclass(frozen=True)
class Pins:
    """A node's pins (none set: every run is accepted)."""

    require_dp: bool = False
    max_epsilon: float | None = None
    max_delta: float | None = None
    require_secagg: bool = False
    min_train_nodes: int | None = None

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, object], node: str = "this node"
                         ) -> Pins:
        """The pins in a node config; :class:`ConfigError` (one sentence) if one is malformed."""
        for key in node_config:
            if key.startswith(PIN_PREFIXES) and key not in PINS:
                raise ConfigError(
                    f"node '{node}' has '{key}' in its --node-config, which is no pin fedtune "
                    f"knows (the pins are {', '.join(PINS)}): fix or remove it, so that no "
                    "pin is dropped by a typo.")
        return cls(require_dp=_flag(node_config, "require-dp", node),
                   max_epsilon=_positive(node_config, "max-epsilon", node),
                   max_delta=_positive(node_config, "max-delta", node, below=1.0),
                   require_secagg=_flag(node_config, "require-secagg", node),
                   min_train_nodes=_count(node_config, "min-train-nodes", node))

    def unmet(self, run_config: Mapping[str, object]) -> list[str]:
        """What the run lacks, one clause per unmet pin (empty: the run meets every pin)."""
        dp = str(run_config.get("dp", "off"))
        out = []
        if self.require_dp and dp not in DP_ON:
            out.append("its pin require-dp=true needs dp='server' or dp='client', and the "
                       f"run has dp='{dp}'")
        if self.max_epsilon is not None:
            budget = _run_number(run_config, "dp-max-epsilon")
            need = (f"its pin max-epsilon={self.max_epsilon:g} needs DP with a budget "
                    f"dp-max-epsilon of at most {self.max_epsilon:g}, and the run has ")
            if dp not in DP_ON:
                out.append(need + f"dp='{dp}'")
            elif budget is None:
                out.append(need + f"dp-max-epsilon={run_config.get('dp-max-epsilon')!r}")
            elif budget <= 0:
                out.append(need + "no budget (dp-max-epsilon=0)")
            elif budget > self.max_epsilon:
                out.append(need + f"dp-max-epsilon={budget:g}")
        if self.max_delta is not None:
            delta = _run_delta(run_config)
            need = (f"its pin max-delta={self.max_delta:g} needs DP with a delta of at most "
                    f"{self.max_delta:g}, and the run has ")
            if dp not in DP_ON:
                out.append(need + f"dp='{dp}'")
            elif delta is None:
                out.append(need + "no delta (dp-delta=0 and no dp-population)")
            elif delta > self.max_delta:
                out.append(need + f"delta={delta:g} (dp-delta={run_config.get('dp-delta')}, "
                           f"dp-population={run_config.get('dp-population')})")
        if self.require_secagg and str(run_config.get("secagg", "off")) != SECAGG_ON:
            out.append("its pin require-secagg=true needs secagg='on', and the run has "
                       f"secagg='{run_config.get('secagg', 'off')}'")
        if self.min_train_nodes is not None:
            floor = _run_number(run_config, "min-train-nodes")
            if floor is None or floor < self.min_train_nodes:
                out.append(f"its pin min-train-nodes={self.min_train_nodes} needs a run that "
                           f"aggregates at least {self.min_train_nodes} nodes per round, and "
                           f"the run has min-train-nodes={run_config.get('min-train-nodes')}")
        return out


def refusal(node: str, node_config: Mapping[str, object], run_config: Mapping[str, object]
            ) -> str | None:
    """One sentence saying why node ``node`` refuses this run, or None if it takes part."""
    try:
        pins = Pins.from_node_config(node_config, node)
    except ConfigError as err:
        return str(err)
    unmet = pins.unmet(run_config)
    if not unmet:
        return None
    return f"node '{node}' refuses this run: " + "; ".join(unmet) + "."


def _malformed(node: str, key: str, value: object, want: str) -> ConfigError:
    return ConfigError(f"node '{node}' has {key}={value!r} in its --node-config, which must be "
                       f"{want}: fix its --node-config and restart the SuperNode.")


def _flag(nc: Mapping[str, object], key: str, node: str) -> bool:
    value = nc.get(key, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise _malformed(node, key, value, f"true or false (such as {key}=true)")


def _positive(nc: Mapping[str, object], key: str, node: str, below: float = math.inf
              ) -> float | None:
    if key not in nc:
        return None
    value = nc[key]
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not math.isfinite(value) or not 0 < value < below):
        want = (f"a number above 0 (such as {key}=8.0)" if below == math.inf
                else f"a number between 0 and {below:g} (such as {key}=1e-05)")
        raise _malformed(node, key, value, want)
    return float(value)


def _count(nc: Mapping[str, object], key: str, node: str) -> int | None:
    if key not in nc:
        return None
    value = nc[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _malformed(node, key, value, f"a whole number of at least 1 (such as {key}=3)")
    return value


def _run_number(run_config: Mapping[str, object], key: str) -> float | None:
    """A numeric run-config value; None if it is absent or not a number (the pin is unmet)."""
    value = run_config.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


def _run_delta(run_config: Mapping[str, object]) -> float | None:
    """The delta the run's epsilon is reported at: dp-delta, or the privacy section's default
    from dp-population (0.1 / N); None if the run states neither."""
    explicit = _run_number(run_config, "dp-delta")
    if explicit is not None and explicit > 0:
        return explicit
    population = _run_number(run_config, "dp-population")
    if explicit is None or population is None or population < 1:
        return None
    return PrivacyConfig().delta_for(int(population))
