"""The ``eval`` config section: how often and how the server evaluates the global model."""

from __future__ import annotations

from dataclasses import dataclass

from fedtune.errors import at_least_one, require


@dataclass
class EvalConfig:
    eval_every: int = 1  # centralized evaluation every N rounds (and the last)
    eval_batch_size: int = 32  # evaluation batch size
    max_new_tokens: int = 16  # greedy generation length for exact match

    def validate(self) -> None:
        at_least_one(eval_every=self.eval_every, eval_batch_size=self.eval_batch_size)
        require(self.max_new_tokens >= 0,
                f"max-new-tokens={self.max_new_tokens} must be >= 0.")
