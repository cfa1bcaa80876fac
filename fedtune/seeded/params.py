"""Which tensors zeroth-order steps tune, in which order: the ``index`` of a parameter in
:func:`zo_named_parameters` is the one :mod:`fedtune.seeded.rng` hashes into z."""

from __future__ import annotations

import torch
from torch import nn


def zo_named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Trainable parameters in ``named_parameters`` order, each storage once.

    The position in this list is the parameter ``index`` of :func:`perturbation`. Tied weights
    (the same Parameter under two names, or two Parameters viewing the same memory) keep their
    first name only, so they are perturbed once.
    """
    seen: set[tuple[int, int, tuple[int, ...], tuple[int, ...], torch.dtype]] = set()
    out: list[tuple[str, nn.Parameter]] = []
    for name, p in model.named_parameters():  # already dedupes by identity
        if not p.requires_grad:
            continue
        ptr = p.data_ptr()
        ident = (ptr, id(p)) if ptr == 0 else (ptr, 0)  # meta/empty tensors have no address
        sig = (*ident, tuple(p.shape), tuple(p.stride()), p.dtype)
        if sig in seen:
            continue
        seen.add(sig)
        out.append((name, p))
    return out


def zo_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The tensors :func:`zo_named_parameters` lists, in the same order."""
    return [p for _, p in zo_named_parameters(model)]
