"""Shared by the fuzz tests (issue #18, item 3): what a user error is. Hypothesis's profiles
are set in ``conftest.py``."""

from __future__ import annotations

from fedtune.checkpoint import CheckpointError
from fedtune.data.partition import PartitionError
from fedtune.data.readers import DataFileError
from fedtune.errors import ConfigError

#: the errors a user can cause, each one sentence (models' ModelError is a ConfigError)
USER_ERRORS = (ConfigError, DataFileError, PartitionError, CheckpointError)


def one_sentence(err: BaseException) -> None:
    """A user error is one non-empty line of text, not a traceback's worth."""
    message = str(err)
    assert message.strip() and "\n" not in message.strip() and "Traceback" not in message

