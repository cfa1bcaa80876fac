"""Keep the console for fedtune's progress lines: silence known third-party noise, and show a
user error raised inside a Flower app as its one sentence, not as Flower's and Ray's tracebacks.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
import warnings

DEBUG_ENV = "FEDTUNE_DEBUG"  # set (by `fedtune --debug`): tracebacks of user errors are kept
# "fedtune.data.readers.DataFileError: <sentence>", the last line of a traceback's text
_ERROR_LINE = re.compile(r"^(fedtune(?:\.\w+)+)\.(\w+): (.+?)'?>?$", re.MULTILINE)
# a deployed ClientApp's error reply: "<class 'fedtune.errors.ConfigError'>:<'<sentence>'>"
_REASON = re.compile(r"<class '(fedtune(?:\.\w+)+)\.(\w+)'>:<'(.+)'>$", re.DOTALL)
_FLOWER_PREAMBLE = "An exception was raised when processing a message by"


def quiet_third_party() -> None:
    """Hide deprecation chatter and progress bars that say nothing about the run.

    Ray keeps hiding every GPU from a client given none (``--client-gpus 0``: the worker gets
    ``CUDA_VISIBLE_DEVICES=""``), as README says; Ray 2.55 announces that a future release
    will stop doing so unless ``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO`` is true, so it is set
    (a value the caller set wins) and the announcement is silenced."""
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    warnings.filterwarnings("ignore", message=".*accelerator visible devices.*")
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # transformers reads this when imported: the ClientApp's
    # `identify`, and any command that loads no model, never import it (0.7 s of CPU)
    if _imported("transformers"):  # imported before: tell it too
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    one_sentence_errors()


def _imported(name: str) -> bool:
    """``name`` is imported and done: not still being imported by another thread (the
    simulation engine loads the ClientApp while the ServerApp's thread imports transformers;
    reaching into the half-built module raised a circular-import error)."""
    module = sys.modules.get(name)
    spec = getattr(module, "__spec__", None)
    return module is not None and not getattr(spec, "_initializing", False)


def user_error(text: str) -> str | None:
    """The sentence of the fedtune user error (a :class:`~fedtune.errors.ConfigError`) that
    a traceback, a Ray error or a Flower error reply carries; ``None`` if it carries none."""
    from fedtune.errors import ConfigError

    for module, name, sentence in _REASON.findall(text) + _ERROR_LINE.findall(text)[::-1]:
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        if isinstance(cls, type) and issubclass(cls, ConfigError):
            return sentence.strip()
    return None


class OneSentenceErrors(logging.Filter):
    """On Flower's logger: a user error raised in a ClientApp or ServerApp, which Flower logs
    as the exception and its traceback (the simulation engine: for every message, about 30
    lines each), becomes one line ``fedtune: <sentence>``, once per distinct sentence. Other
    errors pass untouched; with ``FEDTUNE_DEBUG`` set everything does."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or os.environ.get(DEBUG_ENV):
            return True
        from fedtune.errors import ConfigError

        text = record.getMessage()
        if text.startswith(_FLOWER_PREAMBLE):  # the records after it say what was raised
            return False
        raised = record.exc_info[1] if record.exc_info else None  # "ServerApp raised ..."
        sentence = str(raised) if isinstance(raised, ConfigError) else user_error(text)
        if sentence is None:
            return True
        if sentence in self.seen:
            return False
        self.seen.add(sentence)
        record.msg, record.args, record.exc_info = (
            f"fedtune: {sentence}", (), None)
        return True


def one_sentence_errors() -> None:
    """Install :class:`OneSentenceErrors` on Flower's logger (once per process)."""
    logger = logging.getLogger("flwr")
    if not any(isinstance(f, OneSentenceErrors) for f in logger.filters):
        logger.addFilter(OneSentenceErrors())
