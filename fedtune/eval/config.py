"""The ``eval`` config section: how often and how the server evaluates the global model."""

from __future__ import annotations

from dataclasses import dataclass

from fedtune.errors import at_least_one, require


@dataclass
class EvalConfig:
    eval_every: int = 1
    eval_batch_size: int = 32
    max_new_tokens: int = 16

    def validate(self) -> None:
        at_least_one(eval_every=self.eval_every, eval_batch_size=self.eval_batch_size)
        require(self.max_new_tokens >= 0,
                f"max-new-tokens={self.max_new_tokens} must be >= 0.")
