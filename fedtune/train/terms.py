"""Terms a strategy adds to every step's gradient of the local round
(:func:`fedtune.train.local.train_round` applies them in order, before gradient clipping).

- :class:`Correction`: SCAFFOLD (Karimireddy et al., ICML 2020) adds c - c_i.
- :class:`Proximal`: FedProx (Li et al., MLSys 2020) adds the gradient of
  mu/2 ||theta - theta_global||^2, i.e. mu (theta - theta_global), theta_global being the
  trainable parameters when the round starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch


class GradTerm(Protocol):
    def start(self, params: list[torch.nn.Parameter]) -> None:
        """Called once, before the first step, with the trainable parameters."""

    def add_to_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Add the term to each parameter's ``grad`` (parameters without one are skipped)."""


@dataclass
class Correction:
    """A fixed tensor per trainable parameter, in ``model.parameters()`` order."""

    tensors: list[torch.Tensor]

    def start(self, params: list[torch.nn.Parameter]) -> None:
        del params

    def add_to_grads(self, params: list[torch.nn.Parameter]) -> None:
        for p, corr in zip(params, self.tensors, strict=True):
            if p.grad is not None:
                p.grad.add_(corr)


@dataclass
class Proximal:
    mu: float
    anchor: list[torch.Tensor] = field(default_factory=list)

    def start(self, params: list[torch.nn.Parameter]) -> None:
        self.anchor = [p.detach().clone() for p in params]

    def add_to_grads(self, params: list[torch.nn.Parameter]) -> None:
        with torch.no_grad():
            for p, p0 in zip(params, self.anchor, strict=True):
                if p.grad is not None:
                    p.grad.add_(p - p0, alpha=self.mu)


def strategy_terms(prox_mu: float = 0.0,
                   correction: list[torch.Tensor] | None = None) -> tuple[GradTerm, ...]:
    """The terms of a round's config, in the order they are applied (SCAFFOLD, then FedProx)."""
    terms: list[GradTerm] = []
    if correction is not None:
        terms.append(Correction(correction))
    if prox_mu > 0:
        terms.append(Proximal(prox_mu))
    return tuple(terms)
