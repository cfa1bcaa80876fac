"""The server's central evaluation, one for every algorithm: the held-out split of the run's
data, scored the same way whatever produced the model.

SFT: held-out loss and perplexity, then greedy answers scored by exact match and Rouge-L
(overall and per category). DPO: the algorithm's held-out pairs (reward accuracy, margin,
log-probs, DPO loss), since their reference log-probabilities depend on how the algorithm
defines its frozen reference model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fedtune.data.split import EXAMPLES, split
from fedtune.data.tokenize import encode_examples
from fedtune.eval.generate import answer_metrics
from fedtune.eval.loss import heldout_loss
from fedtune.eval.preference import HeldOutPairs


class CentralEvaluator:
    """Scores a model on the run's held-out split. ``pairs``: the algorithm's held-out pairs
    for ``objective=dpo`` (None for SFT)."""

    def __init__(self, cfg: Any, tokenizer, pairs: HeldOutPairs | None = None) -> None:
        self.cfg, self.tokenizer, self.pairs = cfg, tokenizer, pairs
        self.examples = [] if pairs is not None else split(cfg.data, EXAMPLES, "server",
                                                            cfg.server.seed)
        self.data = encode_examples(tokenizer, self.examples, cfg.model.max_seq_len)

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        if self.pairs is not None:
            return self.pairs.metrics(model)
        ev = self.cfg.eval
        loss = heldout_loss(model, self.data, self.tokenizer.pad_token_id, ev.eval_batch_size)
        metrics = {"eval_loss": loss, "perplexity": float(np.exp(min(loss, 50.0)))}
        metrics.update(answer_metrics(model, self.tokenizer, self.examples, ev.max_new_tokens,
                                      ev.eval_batch_size, self.cfg.model.max_seq_len))
        return metrics
