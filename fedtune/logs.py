"""Keep the console for fedtune's progress lines: silence known third-party noise."""

from __future__ import annotations

import os
import warnings


def quiet_third_party() -> None:
    """Hide deprecation chatter and progress bars that say nothing about the run."""
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    warnings.filterwarnings("ignore", message=".*accelerator visible devices.*")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
