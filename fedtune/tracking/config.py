"""The ``report-to`` value: which experiment trackers a run feeds (the key itself lives in
the ``output`` section, :class:`fedtune.results.OutputConfig`). Import-light, like every
config section."""

from __future__ import annotations

from fedtune.errors import ConfigError

#: the trackers ``report-to`` may name, and the module of each
TRACKERS = {"tensorboard": "fedtune.tracking.tensorboard_run",
            "mlflow": "fedtune.tracking.mlflow_run",
            "wandb": "fedtune.tracking.wandb_run"}
EXTRA = 'pip install -e ".[tracking]"'


def parse_report_to(value: str) -> tuple[str, ...]:
    """``"tensorboard, mlflow"`` -> ``("tensorboard", "mlflow")``; ``"none"``/``""`` -> ()."""
    names = [n.strip().lower() for n in str(value).split(",") if n.strip()]
    valid = "none or a comma list of " + ", ".join(TRACKERS)
    for name in names:
        if name != "none" and name not in TRACKERS:
            raise ConfigError(f"report-to='{value}' names '{name}', which is not a tracker; "
                              f"give {valid}.")
    if "none" in names and len(names) > 1:
        raise ConfigError(f"report-to='{value}' mixes 'none' with trackers; give 'none' alone "
                          f"or a comma list of {', '.join(TRACKERS)}.")
    return tuple(dict.fromkeys(n for n in names if n != "none"))


