"""Held-out loss: mean cross-entropy over response tokens (prompt and padding masked)."""

from __future__ import annotations

import torch

from fedtune.data.tokenize import IGNORE_INDEX, EncodedSet, collate


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, data: EncodedSet, pad_id: int,
                 batch_size: int = 32) -> float:
    """Token-weighted mean loss over every response token of ``data``."""
    if len(data) == 0:
        return float("nan")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(data), batch_size):
        batch = collate(data.items[start:start + batch_size], pad_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits = logits[:, -batch["input_ids"].shape[1]:]  # after a soft prompt's positions
        labels = batch["labels"][:, 1:]
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        mask = labels != IGNORE_INDEX
        picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        total += float(-(picked * mask).sum())
        count += int(mask.sum())
    model.train(was_training)
    return total / max(count, 1)
