"""Experiment trackers for ``report-to`` (TensorBoard, MLflow, Weights & Biases): see
:mod:`fedtune.tracking.base`. :class:`fedtune.driver.RunDriver` opens them for every run."""

from fedtune.tracking.base import (
    STATE,
    TRACKERS,
    RunInfo,
    Tracker,
    Trackers,
    check_trackers,
    log_final_metrics,
    metrics_of,
    open_trackers,
    parse_report_to,
)

__all__ = ["STATE", "TRACKERS", "RunInfo", "Tracker", "Trackers", "check_trackers",
           "log_final_metrics", "metrics_of", "open_trackers", "parse_report_to"]
