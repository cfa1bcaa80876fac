"""Weights & Biases: a run in ``WANDB_PROJECT`` (else ``fedtune``) whose files live under
``RUN/wandb``, honouring ``WANDB_MODE`` (``offline`` needs no network: ``wandb sync RUN/wandb``
uploads it later). The flat config is the run's config, the run name and algorithm its name
and tags, the final model folder an artifact and ``summary.json`` a run file; a resumed run
reopens the same id with ``resume="allow"``."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Any

from fedtune.errors import ConfigError
from fedtune.tracking.base import RunInfo
from fedtune.tracking.config import EXTRA

OFFLINE = ("offline", "dryrun", "disabled")


def _quiet() -> None:
    """W&B's console lines (its banner, staging notes) off unless the caller set
    ``WANDB_SILENT``; fedtune prints where the run is. Before wandb reads its settings."""
    os.environ.setdefault("WANDB_SILENT", "true")


def _mode_and_key() -> tuple[str, bool]:
    """W&B's mode as its settings resolve it (env and settings files), and whether an online
    run would find credentials (``WANDB_API_KEY`` or a netrc entry)."""
    from wandb.sdk import wandb_setup

    settings = wandb_setup.singleton().settings
    mode = str(settings.mode or "online")
    if mode in OFFLINE:
        return mode, True
    if settings.api_key or os.environ.get("WANDB_API_KEY"):
        return mode, True
    try:
        from wandb.sdk.lib.wbauth import wbnetrc

        return mode, bool(wbnetrc.read_netrc_auth(host=settings.base_url))
    except Exception:  # an internal that moved: let wandb.init decide
        return mode, True


def check(run_dir: Path | None = None) -> None:
    del run_dir
    _quiet()
    try:
        import wandb  # noqa: F401
    except ImportError as err:
        raise ConfigError(f"report-to names wandb, which is not installed ({err}); install it "
                          f"with `{EXTRA}`.") from None
    mode, has_key = _mode_and_key()
    if not has_key:
        raise ConfigError(f"report-to names wandb in {mode} mode, but W&B has no API key; run "
                          "`wandb login`, set WANDB_API_KEY, or set WANDB_MODE=offline.")


def _settings(wandb: Any) -> Any:
    """Quiet, no code or system stats; the offline file flushed every 0.1 s, not every 15 s
    (W&B's default), so a run killed mid-round keeps its rounds for ``--resume``."""
    options: dict[str, Any] = {"silent": True, "console": "off", "save_code": False,
                               "x_disable_stats": True, "x_transaction_log_flush_interval": 0.1}
    known = getattr(wandb.Settings, "model_fields", options)
    return wandb.Settings(**{k: v for k, v in options.items() if k in known})


class WandbRun:
    name = "wandb"

    def __init__(self, info: RunInfo, saved: dict[str, Any] | None, extra: bool = False) -> None:
        import wandb

        self.extra = extra
        self.last_step = int(saved.get("last_step", -1)) if saved else -1
        self.id = str(saved["id"]) if saved and saved.get("id") else secrets.token_hex(6)
        self.project = (saved or {}).get("project") or os.environ.get("WANDB_PROJECT") \
            or "fedtune"
        self.run = wandb.init(
            project=self.project, id=self.id, resume="allow", dir=str(info.run_dir),
            name=info.run_name, group=info.name, tags=[info.algorithm, info.objective],
            config=info.config, allow_val_change=True, reinit="create_new",
            settings=_settings(wandb))
        if saved is None:
            self.run.summary.update({"run_dir": str(info.run_dir)})

    @property
    def where(self) -> str:
        url = getattr(self.run, "url", None)
        return url or f"run {self.id} offline in {Path(self.run.dir).parent} (`wandb sync` it)"

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self.extra:  # scores of a finished run: its summary (W&B steps only go forward)
            self.run.summary.update(metrics)
            return
        self.run.log(metrics, step=step, commit=True)  # written now, not at the next step

    def finish(self, files: list[Path]) -> None:
        import wandb

        name = re.sub(r"[^\w.-]", "-", self.run.name or self.id)  # W&B's artifact names
        results = wandb.Artifact(f"{name}-results", type="results")
        for path in files:
            if path.is_dir():  # the final model folder: its own artifact
                art = wandb.Artifact(f"{name}-{path.name}", type="model")
                art.add_dir(str(path), policy="immutable")  # no staging copy
                self.run.log_artifact(art)
            elif path.is_file():
                results.add_file(str(path), policy="immutable")
        if results.manifest.entries:
            self.run.log_artifact(results)
        self.run.finish()

    def close(self) -> None:
        self.run.finish(exit_code=0 if self.extra else 1)

    def state(self) -> dict[str, Any]:
        return {"id": self.id, "project": self.project}


def open_run(info: RunInfo, saved: dict[str, Any] | None, extra: bool = False) -> WandbRun:
    _quiet()
    return WandbRun(info, saved, extra)
