"""LoRA adapters as named numpy arrays: their parts, ranks and exact products.

peft names a LoRA layer's factors ``<layer>.lora_A.weight`` (r x in) and
``<layer>.lora_B.weight`` (out x r); everything else in an adapter state (full copies of
``modules_to_save``) is part ``other``. The effective weight of a layer is
W = W_base + s B A with s = alpha / r (:attr:`LoraSection.scale`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from fedtune.algorithms.fedit.variants import OTHER, A, B
from fedtune.wire import check_arrays

Arrays = dict[str, np.ndarray]
_SUFFIX = {A: ".lora_A.weight", B: ".lora_B.weight"}


def part(key: str) -> str:
    """``A``, ``B`` or ``other``."""
    for name, suffix in _SUFFIX.items():
        if key.endswith(suffix):
            return name
    return OTHER


def layer(key: str) -> str:
    """The LoRA layer a factor key belongs to (the module path peft adapted)."""
    return key[: -len(_SUFFIX[part(key)])]


def key(layer_name: str, which: str) -> str:
    return layer_name + _SUFFIX[which]


def select(arrays: Mapping[str, np.ndarray], parts: Iterable[str]) -> Arrays:
    """The entries of ``arrays`` whose part is in ``parts``, in order."""
    wanted = set(parts)
    return {k: v for k, v in arrays.items() if part(k) in wanted}


def layers(arrays: Mapping[str, np.ndarray]) -> list[str]:
    """The LoRA layers of an adapter, in key order."""
    return [layer(k) for k in arrays if part(k) == A]


def truncate(arrays: Mapping[str, np.ndarray], rank: int) -> Arrays:
    """The first ``rank`` rows of every A and columns of every B (a rank-r client's share of a
    higher-rank global adapter)."""
    out = {}
    for k, v in arrays.items():
        p = part(k)
        out[k] = v[:rank] if p == A else v[:, :rank] if p == B else v
    return out


def pad(arrays: Mapping[str, np.ndarray], rank: int) -> Arrays:
    """Zero-pad every A (rows) and B (columns) to ``rank``: the inverse of :func:`truncate`
    up to the zeros, so a padded update changes only the rows/columns its client trained."""
    out = {}
    for k, v in arrays.items():
        p, have = part(k), (v.shape[0] if part(k) == A else v.shape[-1])
        if p == OTHER or have == rank:
            out[k] = v
        elif p == A:
            out[k] = np.concatenate([v, np.zeros((rank - have, v.shape[1]), v.dtype)], axis=0)
        else:
            out[k] = np.concatenate([v, np.zeros((v.shape[0], rank - have), v.dtype)], axis=1)
    return out


def check_ranks(arrays: Mapping[str, np.ndarray], spec: Mapping[str, tuple[int, ...]],
                max_rank: int | None) -> str | None:
    """``None`` when ``arrays`` has ``spec``'s keys, every other part its exact shape and every
    layer one rank r (<= ``max_rank`` if given) in both factors; else the reason."""
    shaped = {}
    ranks = set()
    for k, shape in spec.items():
        v = arrays.get(k)
        p = part(k)
        if v is None or p == OTHER or v.ndim != 2:
            shaped[k] = shape
            continue
        r = int(v.shape[0] if p == A else v.shape[1])
        ranks.add(r)
        shaped[k] = (r, shape[1]) if p == A else (shape[0], r)
    if len(ranks) > 1:
        return f"the adapter mixes ranks {sorted(ranks)}; every layer must have one rank"
    if ranks and max_rank is not None and max(ranks) > max_rank:
        return f"rank {max(ranks)} is above the global adapter's {max_rank}"
    return check_arrays(arrays, shaped)


def stacked(adapters: list[Mapping[str, np.ndarray]], weights: list[float], scale: float,
            mean: Mapping[str, np.ndarray] | None = None) -> dict[str, tuple[np.ndarray,
                                                                              np.ndarray]]:
    """Per layer, factors (Bs, As) with Bs @ As = sum_i w_i s B_i A_i: the clients' A_i stacked
    by rows, w_i s B_i by columns (FLoRA's stacking), exact for any mix of ranks.

    With ``mean`` (the adapter averaged with the same weights, B = sum_i w_i B_i), the rows are
    A_i - A instead: Bs @ As = sum_i w_i s B_i A_i - s B A, FedEx-LoRA's residual, in factors
    of rank sum_i r_i rather than a dense out x in matrix.
    """
    out = {}
    for name in layers(adapters[0]):
        bs = [np.float32(w * scale) * ad[key(name, B)]
              for ad, w in zip(adapters, weights, strict=True)]
        as_ = [ad[key(name, A)] for ad in adapters]
        if mean is not None:
            as_ = [a - mean[key(name, A)] for a in as_]
        out[name] = (np.concatenate(bs, axis=1).astype(np.float32),
                     np.concatenate(as_, axis=0).astype(np.float32))
    return out


def exact_residual(adapters: list[Mapping[str, np.ndarray]], weights: list[float], scale: float,
                   sent: Mapping[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """FedEx-LoRA's residual against the adapter the clients receive: per layer, factors
    (Bs, As) with Bs @ As = sum_i w_i s B_i A_i - s B~ A~, (B~, A~) the averaged factors as
    ``sent`` (after the wire's 16-bit rounding), so W0 + Delta + s B~ A~ is the clients' average.

    Bs = [w_1 s B_1 ... w_n s B_n, s (B - B~)], As = [A_1 - A~; ...; A_n - A~; A~], with
    B = sum_i w_i B_i in float64: sum_i w_i s B_i (A_i - A~) = sum_i w_i s B_i A_i - s B A~, and
    s (B - B~) A~ turns s B A~ into s B~ A~. Rank sum_i r_i + r (r more than the float32 mean
    needs: the price of exactness from the clients' side)."""
    out = stacked(adapters, weights, scale, sent)
    for name, (bs, as_) in out.items():
        mean_b = sum(w * np.asarray(ad[key(name, B)], np.float64)
                     for ad, w in zip(adapters, weights, strict=True))
        b_sent, a_sent = sent[key(name, B)], sent[key(name, A)]
        fix = (scale * (mean_b - np.asarray(b_sent, np.float64))).astype(np.float32)
        out[name] = (np.concatenate([bs, fix], axis=1),
                     np.concatenate([as_, np.asarray(a_sent, np.float32)], axis=0))
    return out


def product(factors: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Bs @ As in float32: the one way every party forms a merged change, so their bases agree
    bit for bit."""
    bs, as_ = factors
    return np.matmul(bs, as_, dtype=np.float32)
