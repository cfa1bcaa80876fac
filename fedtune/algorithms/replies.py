"""Kept for the algorithms' imports: the wire types live in :mod:`fedtune.wire`."""

from fedtune.wire import (
    ALLOWED_DTYPES,
    LIMITS,
    NUM_EXAMPLES,
    Records,
    check_arrays,
    check_metrics,
    check_record,
)

__all__ = ["ALLOWED_DTYPES", "LIMITS", "NUM_EXAMPLES", "Records", "check_arrays",
           "check_metrics", "check_record"]
