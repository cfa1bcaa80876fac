"""A train reply's line in ``clients.jsonl`` (the conversions to and from Flower's records and
the byte counts are :mod:`fedtune.wire.flower`'s)."""

from __future__ import annotations

from flwr.app import RecordDict


def reply_report(content: RecordDict) -> dict:
    """A train reply's own metrics and, from a deployed node, its ``data`` record (the file's
    hash and category labels): one line of the run folder's ``clients.jsonl``."""
    out: dict = {}
    for rec in content.metric_records.values():
        out.update(rec)
    if "data" in content.config_records:
        out["data"] = dict(content.config_records["data"])
    return out
