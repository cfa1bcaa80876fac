"""What one FedIT reply contributes to the model, per ``lora-aggregation`` variant (the payload
the trust policy measures and scales, and DP and SecAgg clip and sum; :mod:`fedtune.payloads`).

- ``fedit``, ``fedsa``: the strategy averages the uploaded factors themselves (FedSA: A only),
  so a client's update is its factors minus the global ones (:class:`ArraysPayload`).
- ``flora``, ``fedex``, ``ffa``: the model moves by the product. A client adds
  s (B'A' - BA) to each LoRA layer, s = alpha / r, (B', A') its factors and (B, A) the ones it
  started from: FLoRA's restart from the initialisation and are merged whole (BA counts as 0),
  FedEx-LoRA's start from the global adapter, FFA-LoRA's A' = A is the frozen initial A.
  :class:`LoraProductPayload` measures ||s (B'A' - BA)||_F from r x r Gram matrices (never
  the dense out x in change) plus the update of ``modules_to_save``, and scales it exactly: by
  B' alone for FLoRA (scaling both factors by t would scale the product by t^2), by B' - B for
  FFA; for FedEx-LoRA, whose rank-r factors cannot carry t times a rank-2r change, both factor
  updates are scaled by the largest t that keeps the product's change within the bound.
  Its vector for DP and SecAgg (:meth:`~LoraProductPayload.contribution`) stays the uploaded
  arrays' update, which is what the strategy averages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedtune.algorithms.fedit.factors import OTHER, A, B, key, layer, part, select
from fedtune.algorithms.fedit.variants import Variant
from fedtune.payloads import Arrays, ArraysPayload, Payload, Record, reference_for


@dataclass(frozen=True, eq=False)
class LoraProductPayload:
    """An ``arrays`` record of LoRA factors whose update is their product's change."""

    scale: float  # s = alpha / r
    restarts: bool = False  # FLoRA: the factors start from the initialisation (BA = 0)
    frozen: Arrays = field(default_factory=dict)  # FFA: the factors no reply carries (A)
    record: str = "arrays"
    kind = "arrays"
    array_record = True
    pool_size = None
    default_clip_norm = 1.0  # as ArraysPayload's
    default_clip_range = 64.0

    @property
    def linear(self) -> bool:
        """Whether :meth:`scaled` by t scales the update by exactly t (all but FedEx-LoRA)."""
        return self.restarts or bool(self.frozen)

    def _factors(self, record: Record, reference: Arrays, name: str
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(B', A', B, A) of one layer in float64; B = A = 0 for a restarted adapter."""
        def get(which: str, source: Arrays, like: np.ndarray | None) -> np.ndarray:
            k = key(name, which)
            if k in self.frozen:
                return np.asarray(self.frozen[k], np.float64)
            if like is None:
                return np.asarray(source[k], np.float64)
            return reference_for(source, k, like.shape)

        b1, a1 = get(B, record, None), get(A, record, None)
        if self.restarts:
            return b1, a1, np.zeros_like(b1), np.zeros_like(a1)
        return b1, a1, get(B, reference, b1), get(A, reference, a1)

    def _terms(self, record: Record, reference: Arrays, name: str
               ) -> tuple[np.ndarray, np.ndarray]:
        """(G, H) with G @ H = s (B'A' - BA) = s ((B' - B) A' + B (A' - A))."""
        b1, a1, b0, a0 = self._factors(record, reference, name)
        gs, hs = [self.scale * (b1 - b0)], [a1]
        if not np.array_equal(a1, a0):
            gs.append(self.scale * b0)
            hs.append(a1 - a0)
        return np.concatenate(gs, axis=1), np.concatenate(hs, axis=0)

    def _layers(self, record: Record) -> list[str]:
        return list(dict.fromkeys(layer(k) for k in [*record, *self.frozen] if part(k) != OTHER))

    def contribution(self, record: Record, reference: Arrays) -> np.ndarray:
        """The vector the strategy averages: the uploaded arrays' update, as for plain FedIT.

        FFA-LoRA's server averages B (A frozen), so the model's change is linear in it and DP
        and SecAgg clip, sum and write back this vector; the product's change is what
        :meth:`norm` measures. (FLoRA and FedEx-LoRA need each client's own factors and are
        refused with dp or secagg by :mod:`fedtune.compat`.)"""
        return ArraysPayload().contribution(record, reference)

    def norm(self, record: Record, reference: Arrays) -> float:
        total = 0.0
        for name in self._layers(record):
            g, h = self._terms(record, reference, name)
            total += float(np.sum((g.T @ g) * (h @ h.T)))  # ||G H||_F^2 = tr(G'G HH')
        other = ArraysPayload().norm(select(record, (OTHER,)), reference)
        return float(np.sqrt(max(total, 0.0) + other ** 2))

    def size(self, reference: Arrays) -> int:
        return ArraysPayload().size(reference)

    def write(self, record: Record, vector: np.ndarray, reference: Arrays) -> dict[str, Any]:
        return ArraysPayload().write(record, vector, reference)

    def scaled(self, record: Record, reference: Arrays, scale: float) -> dict[str, Any]:
        """FLoRA: B' times ``scale``; else every uploaded array's update times ``scale``."""
        if not self.restarts:
            return ArraysPayload().scaled(record, reference, scale)
        out = dict(record)
        out.update(ArraysPayload().scaled(select(record, (OTHER,)), reference, scale))
        for k, v in select(record, (B,)).items():
            out[k] = np.ascontiguousarray((np.asarray(v, np.float64) * scale).astype(v.dtype))
        return out


def lora_payload(variant: Variant, scale: float, initial: Arrays) -> Payload:
    """The payload of ``variant``'s replies; ``initial``: the run's initial adapter (FFA's
    frozen A)."""
    if variant.merges or A in variant.frozen:
        return LoraProductPayload(scale, restarts=variant.restarts,
                                  frozen=select(initial, variant.frozen))
    return ArraysPayload()
