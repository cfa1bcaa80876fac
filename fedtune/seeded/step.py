"""One zeroth-order step of FedKSeed (Qin et al., ICML 2024), with MeZO's in-place perturbations.

With z = z(seed) the step estimates the directional derivative by central differences,

    g = (L(w + eps z) - L(w - eps z)) / (2 eps),

and moves ``w <- w - lr g z``. As in MeZO (Malladi et al., NeurIPS 2023), weights are perturbed
in place and z is regenerated from its seed instead of stored: ``+eps``, then
``-2 eps``, then restore and update fused into one ``+(eps - lr g)`` pass, so z is generated
three times per step. No autograd graph, no ``.grad`` and no optimizer state are created: the
memory of a step is the memory of inference plus one chunk of z.

Skipped steps: a step is skipped when a loss is NaN/Inf or when ``|g| > clip``. Its weights are
put back, and a FedKSeed client leaves it out of its upload: a reply carries only the steps taken,
so neither the aggregate nor FedKSeed-Pro's importance statistics ever see a skipped step. The
official FedKSeed code tests ``|L+ - L-| > grad_clip`` instead; since ``|L+ - L-| = 2 eps |g|``,
``clip = c`` here is its ``grad_clip = 2 eps c`` (``zo-clip = grad_clip / (2 eps)``).

Precision: in float32 the perturb/restore round trip is exact up to rounding (a few ulps of each
weight); with bf16/fp16 weights every pass rounds to their much coarser grid (eps = 5e-4 is about
one bf16 step at |w| = 0.1), so keep ZO weights in float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from fedtune.seeded.params import zo_parameters
from fedtune.seeded.rng import add_perturbation_

__all__ = ["ZOStepResult", "zo_step"]

LossFn = Callable[[], "float | torch.Tensor"]


@dataclass(frozen=True)
class ZOStepResult:
    """What one step did. ``g`` is what the client uploads with ``seed_index``.

    A skipped step has ``g = 0.0`` and is not uploaded at all (a 0 would change nothing in the
    model but would enter FedKSeed-Pro's importance history); its losses say why it was skipped.
    """

    seed_index: int
    g: float
    skipped: bool
    loss_plus: float
    loss_minus: float

    @property
    def loss(self) -> float:
        """Mean of the two perturbed losses: a cheap estimate of the loss at w."""
        return 0.5 * (self.loss_plus + self.loss_minus)


def _value(loss: float | torch.Tensor) -> float:
    return float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)


def zo_step(
    params: nn.Module | Iterable[torch.Tensor],
    loss_fn: LossFn,
    *,
    seed: int,
    seed_index: int,
    eps: float,
    lr: float,
    clip: float | None = None,
    chunk_size: int | None = None,
) -> ZOStepResult:
    """Take one ZO-SGD step along z(seed) on ``params`` (a model or its :func:`zo_parameters`).

    ``loss_fn()`` evaluates the objective on the current weights (a float or a 0-dim tensor); it
    is called under ``torch.no_grad`` once or twice. The step is skipped, with ``g = 0.0`` and
    the weights put back by the opposite perturbation, when a loss is NaN/Inf or when ``clip`` is
    set and ``|g| > clip`` (the official code's ``|L+ - L-| > 2 eps clip``); a non-finite ``L+``
    skips the second forward pass. "Put back" is exact arithmetic but rounded floating point
    (within a few ulps of each weight): a bit-exact restore would need a copy of the weights,
    which a ZO step avoids by design.
    """
    if eps <= 0 or not math.isfinite(eps):
        raise ValueError(f"eps must be a positive finite number, got {eps}")
    tensors = zo_parameters(params) if isinstance(params, nn.Module) else list(params)

    def perturb(alpha: float) -> None:
        add_perturbation_(tensors, seed, alpha, chunk_size=chunk_size)

    with torch.no_grad():
        perturb(eps)
        loss_plus = _value(loss_fn())
        if not math.isfinite(loss_plus):
            perturb(-eps)
            return ZOStepResult(seed_index, 0.0, True, loss_plus, math.nan)
        perturb(-2.0 * eps)
        loss_minus = _value(loss_fn())
        g = (loss_plus - loss_minus) / (2.0 * eps)
        if not math.isfinite(g) or (clip is not None and abs(g) > clip):
            perturb(eps)
            return ZOStepResult(seed_index, 0.0, True, loss_plus, loss_minus)
        perturb(eps - lr * g)  # restore (+eps) and update (-lr g) in one pass
    return ZOStepResult(seed_index, g, False, loss_plus, loss_minus)
