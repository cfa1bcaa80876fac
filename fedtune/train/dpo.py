"""Direct Preference Optimization (Rafailov et al., "Direct Preference Optimization: Your
Language Model is Secretly a Reward Model", NeurIPS 2023), shared by LoRA and zeroth-order.

For a pair (x, y_w, y_l), with log-ratios r = log pi(y|x) - log pi_ref(y|x) summed over the
response tokens, the sigmoid loss is ``-log sigmoid(beta (r_w - r_l))`` (with label smoothing
eps: ``-(1 - eps) log sigmoid(beta d) - eps log sigmoid(-beta d)``, conservative DPO), and IPO
(Azar et al., 2023) is ``(d / len - 1 / (2 beta))^2`` on token-averaged log-ratios, as TRL does.
The implicit rewards are ``beta r``. ``sft_weight`` > 0 adds that weight times the mean NLL
of the chosen response tokens (RPO: Pang et al., "Iterative Reasoning Preference
Optimization", 2024; TRL's ``loss_type=["sigmoid", "sft"]``). The same :func:`pair_loss` is
a differentiable loss for LoRA (autograd) and a forward-only closure for a ZO step.

The reference is the model the run starts from and never changes, so its log-probs are
computed once per example and cached (:func:`cached_reference`): in memory, and on disk under
a cache folder when one is configured.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedtune.data.pairs import PairSet, collate_pairs
from fedtune.data.tokenize import IGNORE_INDEX
from fedtune.train.config import TrainConfig


@dataclass(frozen=True)
class DPOSettings:
    beta: float = 0.1
    loss: str = "sigmoid"  # sigmoid | ipo
    label_smoothing: float = 0.0
    sft_weight: float = 0.0  # + this x the mean NLL of the chosen response tokens (RPO)

    @classmethod
    def from_config(cls, t: TrainConfig) -> DPOSettings:
        return cls(beta=t.dpo_beta, loss=t.dpo_loss, label_smoothing=t.dpo_label_smoothing,
                   sft_weight=t.dpo_sft_weight)


@dataclass
class DPOTerms:
    """Per-pair values of one batch (tensors of shape [B])."""

    losses: torch.Tensor
    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    sft_loss: torch.Tensor | None = None  # weighted NLL term, when sft_weight > 0

    @property
    def dpo_loss(self) -> torch.Tensor:
        return self.losses.mean()

    @property
    def loss(self) -> torch.Tensor:
        """What a local round minimizes: the DPO loss plus the weighted NLL term."""
        return self.dpo_loss if self.sft_loss is None else self.dpo_loss + self.sft_loss


def sequence_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed log-probs of the labelled (response) tokens of every row; shape [rows]."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = logits[:, -batch["input_ids"].shape[1]:]  # after a soft prompt's positions
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE_INDEX
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(dim=1)


def dpo_terms(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor,
              ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, settings: DPOSettings,
              chosen_len: torch.Tensor | None = None,
              rejected_len: torch.Tensor | None = None) -> DPOTerms:
    """The DPO (or IPO) loss per pair from policy and reference sequence log-probs."""
    ref_chosen = ref_chosen.to(chosen_logps)
    ref_rejected = ref_rejected.to(rejected_logps)
    chosen_ratio = chosen_logps - ref_chosen
    rejected_ratio = rejected_logps - ref_rejected
    beta = settings.beta
    if settings.loss == "sigmoid":
        delta = beta * (chosen_ratio - rejected_ratio)
        eps = settings.label_smoothing
        losses = -(1 - eps) * F.logsigmoid(delta) - eps * F.logsigmoid(-delta)
    elif settings.loss == "ipo":
        if chosen_len is None or rejected_len is None:
            raise ValueError("IPO needs the response lengths")
        delta = (chosen_ratio / chosen_len.clamp(min=1).to(chosen_ratio)
                 - rejected_ratio / rejected_len.clamp(min=1).to(rejected_ratio))
        losses = (delta - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss '{settings.loss}'; use sigmoid or ipo")
    sft = None
    if settings.sft_weight > 0:  # token-mean NLL of the chosen responses over the batch
        if chosen_len is None:
            raise ValueError("the NLL term needs the response lengths")
        tokens = chosen_len.sum().clamp(min=1).to(chosen_logps)
        sft = settings.sft_weight * -(chosen_logps.sum() / tokens)
    return DPOTerms(losses, chosen_logps, rejected_logps,
                    beta * chosen_ratio.detach(), beta * rejected_ratio.detach(), sft)


def pair_loss(model: torch.nn.Module, data: PairSet, indices: list[int], reference: np.ndarray,
              settings: DPOSettings, pad_id: int) -> tuple[DPOTerms, int]:
    """DPO terms of the pairs ``indices`` of ``data`` against ``reference`` ([n, 2] log-probs
    of chosen and rejected), and the number of non-padding tokens processed."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in collate_pairs([data.items[i] for i in indices],
                                                       pad_id).items()}
    logps = sequence_logps(model, batch)
    n = len(indices)
    ref = torch.as_tensor(reference[indices], device=device)
    lengths = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(dim=1)
    terms = dpo_terms(logps[:n], logps[n:], ref[:, 0], ref[:, 1], settings,
                      lengths[:n], lengths[n:])
    return terms, int(batch["attention_mask"].sum())


@torch.no_grad()
def pair_logps(model: torch.nn.Module, data: PairSet, pad_id: int,
               batch_size: int = 32) -> np.ndarray:
    """[n, 2] float64 sequence log-probs (chosen, rejected) of every pair, in eval mode."""
    was_training = model.training
    model.eval()
    out = np.zeros((len(data), 2), dtype=np.float64)
    for start in range(0, len(data), batch_size):
        chunk = data.items[start:start + batch_size]
        device = next(model.parameters()).device
        batch = {k: v.to(device) for k, v in collate_pairs(chunk, pad_id).items()}
        logps = sequence_logps(model, batch).double().cpu().numpy()
        out[start:start + len(chunk), 0] = logps[:len(chunk)]
        out[start:start + len(chunk), 1] = logps[len(chunk):]
    model.train(was_training)
    return out


@contextlib.contextmanager
def dropout_off(model: torch.nn.Module) -> Iterator[None]:
    """Dropout probabilities set to 0 for the block (TRL's ``disable_dropout``): with dropout,
    the policy's log-probs would be noisy estimates compared with exact reference log-probs."""
    layers = [(m, m.p) for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    for m, _ in layers:
        m.p = 0.0
    try:
        yield
    finally:
        for m, p in layers:
            m.p = p


_MEMORY: dict[str, np.ndarray] = {}


def cached_reference(reference_id: str, data: PairSet, compute: Callable[[], np.ndarray],
                     cache_dir: str | Path | None = None) -> np.ndarray:
    """The reference log-probs of ``data``, computed by ``compute()`` once per (reference,
    data): kept in this process and, with ``cache_dir``, in ``<cache_dir>/dpo-ref/``."""
    key = hashlib.sha256(f"{reference_id}|{data.fingerprint()}".encode()).hexdigest()[:40]
    if key in _MEMORY:
        return _MEMORY[key]
    path = Path(cache_dir) / "dpo-ref" / f"{key}.npy" if cache_dir else None
    if path is not None and path.exists():
        values = np.load(path)
    else:
        values = compute()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp.npy")
            np.save(tmp, values)
            tmp.replace(path)
    _MEMORY[key] = values
    return values


@dataclass
class DPOStats:
    """Running sums over a local round's batches (the client's train metrics)."""

    pairs: int = 0
    correct: float = 0.0
    margin: float = 0.0
    chosen_logps: float = 0.0
    rejected_logps: float = 0.0
    losses: list[float] = field(default_factory=list)

    def add(self, terms: DPOTerms) -> None:
        margins = (terms.chosen_rewards - terms.rejected_rewards).detach()
        self.pairs += margins.numel()
        self.correct += float((margins > 0).sum())
        self.margin += float(margins.sum())
        self.chosen_logps += float(terms.chosen_logps.detach().sum())
        self.rejected_logps += float(terms.rejected_logps.detach().sum())

    def metrics(self, prefix: str = "train-") -> dict[str, float]:
        n = max(self.pairs, 1)
        return {f"{prefix}reward-accuracy": self.correct / n,
                f"{prefix}reward-margin": self.margin / n,
                f"{prefix}logps-chosen": self.chosen_logps / n,
                f"{prefix}logps-rejected": self.rejected_logps / n}


def batch_loss_fn(model: torch.nn.Module, data: PairSet, reference: np.ndarray,
                  settings: DPOSettings, pad_id: int, stats: DPOStats
                  ) -> Callable[[list[int]], tuple[torch.Tensor, int]]:
    """A loss of a batch of pair indices for :func:`fedtune.train.local.train_round`."""

    def loss(indices: list[int]) -> tuple[torch.Tensor, int]:
        terms, tokens = pair_loss(model, data, indices, reference, settings, pad_id)
        stats.add(terms)
        return terms.loss, tokens

    return loss
