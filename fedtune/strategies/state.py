"""Round-to-round state of a strategy, for checkpoints: ``state_dict()`` / ``load_state_dict()``.

:class:`StatefulStrategy` gives a strategy whose state is a few attributes (Flower's FedOpt
moments, FedAvgM's momentum, SCAFFOLD's control variate) both methods: it serialises the
attributes named in ``state_attrs`` to flat numpy arrays and back. It also refuses to save a
strategy that keeps state it does not declare: every other attribute is configuration, set in
``__init__`` and never reassigned, so an attribute that is new or was reassigned since then is
state that a resumed run would silently lose.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

State = dict[str, np.ndarray]


class UndeclaredStateError(RuntimeError):
    """A strategy keeps state that its ``state_dict`` would not save."""


class StatefulStrategy:
    """Mixin (first base): ``state_dict``/``load_state_dict`` over ``state_attrs``."""

    state_attrs: tuple[str, ...] = ()
    transient_attrs: tuple[str, ...] = ()  # rebuilt every round; neither saved nor config

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._config_ids = {k: id(v) for k, v in vars(self).items()
                            if k not in (*self.state_attrs, *self.transient_attrs)}

    def _undeclared(self) -> list[str]:
        return sorted(k for k, v in vars(self).items()
                      if k not in (*self.state_attrs, *self.transient_attrs, "_config_ids")
                      and self._config_ids.get(k) != id(v))

    def state_dict(self) -> State:
        """The declared state as flat arrays (``attr/kind/key``)."""
        undeclared = self._undeclared()
        if undeclared:
            raise UndeclaredStateError(
                f"{type(self).__name__} changed {undeclared} since it was built, but its "
                f"state_attrs are {list(self.state_attrs)}: declare them so a resumed run "
                "keeps them")
        out: State = {}
        for attr in self.state_attrs:
            value = getattr(self, attr)
            if value is None:
                continue
            if isinstance(value, ArrayRecord):
                out.update({f"{attr}/record/{k}": v.numpy() for k, v in value.items()})
            elif isinstance(value, dict):
                out.update({f"{attr}/dict/{k}": np.asarray(v) for k, v in value.items()})
            elif isinstance(value, list):
                out.update({f"{attr}/list/{i:06d}": np.asarray(v) for i, v in enumerate(value)})
            else:
                out[f"{attr}/array/"] = np.asarray(value)
        return out

    def load_state_dict(self, state: State) -> None:
        """Inverse of :meth:`state_dict` (on a strategy freshly built from the same config)."""
        grouped: dict[tuple[str, str], dict[str, np.ndarray]] = {}
        for name, value in state.items():
            attr, kind, key = name.split("/", 2)
            if attr not in self.state_attrs:
                raise UndeclaredStateError(f"the checkpoint has strategy state '{attr}' that "
                                           f"{type(self).__name__} does not keep")
            grouped.setdefault((attr, kind), {})[key] = value
        for (attr, kind), values in grouped.items():
            if kind == "record":
                value: Any = ArrayRecord({k: Array(v) for k, v in values.items()})
            elif kind == "dict":
                value = dict(values)
            elif kind == "list":
                value = [values[k] for k in sorted(values)]
            else:
                value = values[""]
            setattr(self, attr, value)
            self._config_ids.pop(attr, None)
