"""Held-out preference metrics of a policy against its fixed reference (DPO; Rafailov et al.,
2023): the DPO loss, reward accuracy (chosen reward strictly above the rejected one, as TRL
counts it, so a policy equal to its reference scores 0), mean reward margin, and the mean
summed log-probs of the chosen and rejected responses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedtune.data.pairs import PairSet
from fedtune.train.dpo import DPOSettings, dpo_terms, pair_logps


def preference_metrics(model: torch.nn.Module, data: PairSet, reference: np.ndarray,
                       settings: DPOSettings, pad_id: int,
                       batch_size: int = 32) -> dict[str, float]:
    """Metrics over every pair of ``data``; ``reference`` is its [n, 2] reference log-probs.

    ``eval_loss`` is the held-out DPO loss (the loss of the run's objective).
    """
    if len(data) == 0:
        return {"eval_loss": float("nan")}
    policy = torch.from_numpy(pair_logps(model, data, pad_id, batch_size))
    ref = torch.from_numpy(reference)
    lengths = torch.tensor([[len(it.chosen), len(it.rejected)] for it in data.items])
    terms = dpo_terms(policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1], settings,
                      lengths[:, 0], lengths[:, 1])
    margins = terms.chosen_rewards - terms.rejected_rewards
    return {
        "eval_loss": float(terms.dpo_loss),
        "reward_accuracy": float((margins > 0).double().mean()),
        "reward_margin": float(margins.mean()),
        "rewards_chosen": float(terms.chosen_rewards.mean()),
        "rewards_rejected": float(terms.rejected_rewards.mean()),
        "logps_chosen": float(policy[:, 0].mean()),
        "logps_rejected": float(policy[:, 1].mean()),
    }


@dataclass
class HeldOutPairs:
    """A server's held-out pairs with their (fixed) reference log-probs."""

    data: PairSet
    reference: np.ndarray
    settings: DPOSettings
    pad_id: int
    batch_size: int = 32

    def metrics(self, model: torch.nn.Module) -> dict[str, float]:
        out = preference_metrics(model, self.data, self.reference, self.settings, self.pad_id,
                                 self.batch_size)
        out["eval_pairs"] = float(len(self.data))
        return out
