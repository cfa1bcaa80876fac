"""Evaluation: held-out loss and perplexity, greedy generation scored by exact match and
Rouge-L."""

from fedtune.eval.generate import answer_metrics, generate, normalize_answer, rouge_l
from fedtune.eval.loss import heldout_loss

__all__ = ["answer_metrics", "generate", "heldout_loss", "normalize_answer", "rouge_l"]
