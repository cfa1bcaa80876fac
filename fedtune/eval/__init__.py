"""Evaluation: held-out loss and perplexity, greedy generation with exact match."""

from fedtune.eval.generate import exact_match, generate, normalize_answer
from fedtune.eval.loss import heldout_loss

__all__ = ["exact_match", "generate", "heldout_loss", "normalize_answer"]
