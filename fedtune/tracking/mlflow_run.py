"""MLflow: a run in ``MLFLOW_TRACKING_URI`` or, when it is unset, in a local store in the run
folder: ``sqlite:///RUN/mlflow.db`` with artifacts in ``RUN/mlartifacts`` (MLflow 3 keeps its
file store in maintenance mode and refuses it unless ``MLFLOW_ALLOW_FILE_STORE`` is set; the
SQL store is its default). Experiment: ``MLFLOW_EXPERIMENT_NAME``, else ``fedtune``. The flat
config goes in as params, the run name and algorithm as tags, the final model folder and
``summary.json`` as artifacts; a resumed run continues the same ``run_id``."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any

from fedtune.errors import ConfigError
from fedtune.tracking.base import RunInfo
from fedtune.tracking.config import EXTRA

DB, ARTIFACTS = "mlflow.db", "mlartifacts"
_BAD = re.compile(r"[^\w\-. /]")  # what MLflow refuses in a metric or param name


def _uri(run_dir: Path, saved: dict[str, Any] | None = None) -> str:
    if saved and saved.get("tracking_uri"):
        return str(saved["tracking_uri"])
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    db = (Path(run_dir) / DB).resolve()
    if not db.exists():
        _new_local_store(db)
    return f"sqlite:///{db}"


def _new_local_store(db: Path) -> None:
    """An empty MLflow database at ``db``, copied from one made once per machine and MLflow
    version (``~/.cache/fedtune``): MLflow builds a new one by running its ~60 schema
    migrations, 3-6 s on a busy CPU, which every run would pay."""
    import shutil
    import tempfile

    import mlflow
    from mlflow.tracking import MlflowClient

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fedtune"
    template = cache / f"mlflow-{mlflow.__version__}.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    try:
        if not template.is_file():
            cache.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".mlflow-", suffix=".db", dir=cache)
            os.close(fd)
            os.unlink(tmp)
            try:
                with _quiet():
                    MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments(
                        max_results=1)
                os.replace(tmp, template)  # atomic: a concurrent run sees all of it or none
            finally:
                Path(tmp).unlink(missing_ok=True)
        shutil.copyfile(template, db)
    except OSError:  # no writable cache: MLflow builds the database in the run folder itself
        db.unlink(missing_ok=True)


def _experiment() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or "fedtune"


@contextlib.contextmanager
def _quiet():
    """MLflow's INFO lines about creating its tables, and SQLAlchemy's deprecation notes about
    MLflow's queries, say nothing about the run."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"mlflow(\.|$)")

    loggers = [logging.getLogger(n) for n in ("mlflow", "alembic")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def check(run_dir: Path | None = None) -> None:
    """MLflow imports and its store answers (a remote server: one try, short timeout)."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as err:
        raise ConfigError(f"report-to names mlflow, which is not installed ({err}); install "
                          f"it with `{EXTRA}`.") from None
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if not env:
        return  # the local store in the run folder: created when the run opens
    fast = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    before = {k: os.environ.get(k) for k in fast}
    os.environ.update({k: v for k, v in fast.items() if before[k] is None})
    try:
        with _quiet():
            MlflowClient(tracking_uri=env).search_experiments(max_results=1)
    except Exception as err:
        text = " ".join(str(err).split())[:200].rstrip(".")
        raise ConfigError(f"report-to names mlflow, but MLFLOW_TRACKING_URI='{env}' fails "
                          f"({type(err).__name__}: {text}); fix or unset it (unset: a local "
                          "store in the run folder).") from None
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)


def _name(key: str) -> str:
    return _BAD.sub("_", key)[:250]


class MlflowRun:
    name = "mlflow"

    def __init__(self, info: RunInfo, saved: dict[str, Any] | None, extra: bool = False) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = _uri(info.run_dir, saved)
        self.local = not (saved and saved.get("tracking_uri")) and \
            not os.environ.get("MLFLOW_TRACKING_URI")
        with _quiet():
            self.client = MlflowClient(tracking_uri=self.uri)
            self.client.search_experiments(max_results=1)  # the store opens here, quietly
        self.last_step = -1
        if saved is not None and saved.get("run_id"):
            self.run_id = str(saved["run_id"])
            self.last_step = int(saved.get("last_step", -1))
            if not extra:  # a resumed run; extra: scores added to a finished one
                self.client.update_run(self.run_id, status="RUNNING")
            return
        exp = self.client.get_experiment_by_name(_experiment())
        if exp is not None:
            exp_id = exp.experiment_id
        else:
            where = (Path(info.run_dir) / ARTIFACTS).resolve().as_uri() if self.local else None
            exp_id = self.client.create_experiment(_experiment(), artifact_location=where)
        run = self.client.create_run(exp_id, run_name=info.run_name, tags=info.tags)
        self.run_id = run.info.run_id
        self._params(info.config)

    def _params(self, config: dict[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(_name(k), str(v)[:6000]) for k, v in config.items()]
        for i in range(0, len(params), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=params[i:i + 100], synchronous=True)

    @property
    def where(self) -> str:
        return f"run {self.run_id} in {self.uri}"

    def log(self, step: int, metrics: dict[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(_name(k), v, now, step) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i:i + 1000], synchronous=True)

    def finish(self, files: list[Path]) -> None:
        for path in files:
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path=path.name)
            elif path.is_file():
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, status="FINISHED")

    def close(self) -> None:
        """Leave the run RUNNING: a resume continues it."""

    def state(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "tracking_uri": None if self.local else self.uri}


def open_run(info: RunInfo, saved: dict[str, Any] | None, extra: bool = False) -> MlflowRun:
    return MlflowRun(info, saved, extra)
