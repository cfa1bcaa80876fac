"""TensorBoard: event files in ``RUN/tensorboard`` (torch's ``SummaryWriter``, which needs the
``tensorboard`` package). The flat config goes in as hyperparameters (the HParams tab) and as a
text; a resumed run writes to the same folder, purging any step after the checkpoint's round
that the stopped process had written, so each round has one point."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedtune.errors import ConfigError
from fedtune.tracking.base import RunInfo
from fedtune.tracking.config import EXTRA

FOLDER = "tensorboard"


def check(run_dir: Path | None = None) -> None:
    """The ``tensorboard`` package torch's writer needs (imported alone: 2 ms, and the CLI
    reaches the engine without importing torch)."""
    del run_dir
    try:
        import tensorboard  # noqa: F401
    except ImportError as err:
        raise ConfigError(f"report-to names tensorboard, which is not installed ({err}); "
                          f"install it with `{EXTRA}`.") from None


def _hparams(config: dict[str, Any]):
    """The HParams plugin's three summaries for ``config`` (values: bool, number or text)."""
    from torch.utils.tensorboard.summary import hparams

    values = {k: v if isinstance(v, bool | int | float | str) else str(v)
              for k, v in config.items()}
    return hparams(values, {"eval_loss": float("nan")})


class TensorBoardRun:
    name = "tensorboard"

    def __init__(self, info: RunInfo, saved: dict[str, Any] | None, extra: bool = False) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.last_step = -1
        purge = None
        if saved is not None:  # the same folder; steps after the checkpoint are replaced
            self.last_step = int(saved.get("last_step", -1))
            if not extra and info.resumed_round is not None:
                self.last_step = min(self.last_step, info.resumed_round)
                purge = self.last_step + 1
        self.dir = info.run_dir / FOLDER
        self.writer = SummaryWriter(str(self.dir), purge_step=purge, flush_secs=30)
        if saved is None:
            for summary in _hparams(info.config):
                self.writer.file_writer.add_summary(summary)
            self.writer.add_text("config", "```\n" + json.dumps(info.config, indent=1) + "\n```")
            self.writer.add_text("tags", json.dumps(info.tags))

    @property
    def where(self) -> str:
        return f"{self.dir} (tensorboard --logdir {self.dir})"

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def finish(self, files: list[Path]) -> None:
        summary = next((f for f in files if f.name == "summary.json"), None)
        if summary is not None and summary.is_file():
            self.writer.add_text("summary", "```\n" + summary.read_text() + "\n```",
                                 max(self.last_step, 0))
        self.close()

    def close(self) -> None:
        self.writer.close()

    def state(self) -> dict[str, Any]:
        return {"log_dir": FOLDER}


def open_run(info: RunInfo, saved: dict[str, Any] | None, extra: bool = False) -> TensorBoardRun:
    return TensorBoardRun(info, saved, extra)
