"""Evaluation: held-out loss and perplexity (``loss``), greedy generation scored by exact
match and Rouge-L (``generate``), DPO reward metrics (``preference``)."""
