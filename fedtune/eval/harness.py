"""EleutherAI's lm-evaluation-harness on an in-memory model (``fedtune evaluate``).

The caller gets the run's final model and tokenizer from its algorithm (``load_result``); this
module checks the tasks (names, data) before that model loads, hands the model to lm-eval's
Hugging Face class (``HFLM``), runs ``simple_evaluate`` and keeps its results as JSON. lm-eval is
an optional extra: ``pip install -e ".[eval]"``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedtune.errors import ConfigError

INSTALL = 'pip install -e ".[eval]"'
RESULTS = "lm-eval.json"
#: lm-eval's defaults bootstrap 100,000 resamples per metric for the stderr; 1,000 is plenty
BOOTSTRAP_ITERS = 1000


def require_lm_eval() -> None:
    """lm-eval must be importable (one sentence naming the extra otherwise)."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise ConfigError(f"fedtune evaluate needs lm-evaluation-harness, which is not "
                          f"installed; install it with {INSTALL}.") from None


def parse_tasks(text: str) -> list[str]:
    """``"a, b"`` -> ``["a", "b"]``; at least one name."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ConfigError("--tasks names no task; pass a comma list such as "
                          "--tasks fedtune_mc,hellaswag.")
    return names


def parse_batch_size(text: str) -> int | str:
    """``--batch-size``: a positive integer, or lm-eval's ``auto`` / ``auto:N``."""
    if text.isdigit() and int(text) > 0:
        return int(text)
    if text == "auto" or (text.startswith("auto:") and text[5:].isdigit()):
        return text
    raise ConfigError(f"--batch-size '{text}' is neither a positive integer nor 'auto'; pass "
                      "e.g. --batch-size 8.")


def parse_limit(value: float | None) -> int | float | None:
    """``--limit``: documents per task (an integer), or a fraction of them (below 1)."""
    if value is None:
        return None
    if value <= 0 or (value >= 1 and value != int(value)):
        raise ConfigError(f"--limit {value:g} is neither a count of documents (1, 2, ...) nor a "
                          "fraction below 1; pass e.g. --limit 50.")
    return int(value) if value >= 1 else value


def check_device(device: str | None) -> None:
    """``--device`` names a torch device this machine has."""
    if device is None:
        return
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise ConfigError(f"--device '{device}' is not a torch device; pass cpu, cuda or "
                          "cuda:N.") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device '{device}' asks for CUDA, which this machine does not "
                          "have; pass --device cpu.")


@contextmanager
def quiet_lm_eval(verbose: bool = False) -> Iterator[None]:
    """lm-eval logs every step at INFO and warns that a model object was passed (as meant),
    and ``datasets`` draws a bar per split it reads: keep lm-eval's errors and its own progress
    bars only (everything with ``verbose``)."""
    import datasets

    logger = logging.getLogger("lm_eval")
    before, bars = logger.level, datasets.is_progress_bar_enabled()
    if not verbose:
        logger.setLevel(logging.ERROR)
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        logger.setLevel(before)
        if bars:
            datasets.enable_progress_bars()


def task_manager(tasks: Sequence[str], include_path: str | Path | None = None):
    """A ``TaskManager`` that knows every name in ``tasks`` (one sentence for an unknown one).

    When ``include_path`` holds all of them, lm-eval's ~15,000 built-in task files are not
    indexed (seconds saved); otherwise they are, and the local ones win on a clash.
    """
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        folder = Path(include_path)
        if not folder.is_dir():
            raise ConfigError(f"--include-path '{folder}' is not a folder; pass the folder "
                              "that holds your task YAML files.")
        local = TaskManager(include_path=str(folder), include_defaults=False)
        if all(t in local.all_tasks for t in tasks):
            return local
    manager = _all_tasks(None if include_path is None else str(include_path))
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        where = (f"in lm-eval's tasks or under '{include_path}'" if include_path
                 else "in lm-eval's tasks (pass --include-path DIR for your own task YAMLs)")
        raise ConfigError(f"Task {', '.join(repr(t) for t in unknown)} is not {where}; "
                          "`lm-eval ls tasks` lists the built-in ones.")
    return manager


def _all_tasks(include_path: str | None):
    """lm-eval's built-in tasks and those under ``include_path``."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path)


def load_tasks(tasks: Sequence[str], manager) -> list:
    """The tasks built (their data loaded) before any model loads: a dataset that cannot be read
    (offline, a wrong ``data_files`` path) is one sentence. Groups and tasks come back as
    objects, tags by name (lm-eval expands them again)."""
    try:
        loaded = manager.load(list(tasks))
    except Exception as err:  # noqa: BLE001 (datasets, fsspec, yaml and jinja errors alike)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0].rstrip(".")
        raise ConfigError(f"lm-eval could not load the task(s) {', '.join(tasks)} "
                          f"({type(err).__name__}: {first[:300]}); check the task YAML's "
                          "dataset_path and data_files, or the network for hub datasets.") from err
    objects = {**loaded["tasks"], **loaded["groups"]}
    return [objects.get(t, t) for t in tasks]


def with_bos(tokenizer):
    """``tokenizer``, or a copy of it that starts every text with the BOS token, as fedtune's
    training and evaluation encode prompts (:func:`fedtune.data.tokenize.prompt_ids`): lm-eval
    adds only what the tokenizer adds itself, which for many tokenizers (the ``tiny`` preset's,
    GPT-2's) is nothing. A tokenizer with no BOS token, or one that adds it, is kept."""
    bos = tokenizer.bos_token
    if bos is None or tokenizer.bos_token_id is None or not getattr(tokenizer, "is_fast", False):
        return tokenizer
    if tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]:
        return tokenizer
    import copy

    from tokenizers.processors import TemplateProcessing

    out = copy.deepcopy(tokenizer)
    out.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tokenizer.bos_token_id)])
    return out


def run_harness(model, tokenizer, tasks: list, manager, *, limit: float | None = None,
                batch_size: int | str = 1, device: str | None = None, verbose: bool = False,
                about: dict[str, Any] | None = None) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` on ``model`` (a Hugging Face causal LM in memory); the
    results dict made JSON-safe (no per-sample logs), ``about`` added to its ``config``."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    if device is not None:
        model = model.to(device)
    with quiet_lm_eval(verbose):
        lm = HFLM(pretrained=model, tokenizer=with_bos(tokenizer), batch_size=batch_size)
        results = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager,
                                          limit=limit, log_samples=False,
                                          bootstrap_iters=BOOTSTRAP_ITERS)
    if results is None:  # only a non-zero rank of a distributed launch gets None
        raise RuntimeError("lm-eval returned no results")
    results["config"].update(device=str(model.device), batch_size=batch_size, **(about or {}))
    return json_safe(results)


def json_safe(value: Any) -> Any:
    """``value`` with every leaf JSON can hold: numpy scalars as numbers, NaN/inf as None,
    anything else (dtypes, devices, functions) as its ``str``."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float) or hasattr(value, "item"):
        try:
            number = value.item() if hasattr(value, "item") else value
        except (TypeError, ValueError):
            return str(value)
        if isinstance(number, float) and not math.isfinite(number):
            return None
        return number if isinstance(number, (int, float, bool)) else str(number)
    return str(value)


def scores(results: dict[str, Any]) -> dict[str, float]:
    """The numbers of the results table, flat: ``{"lm-eval/<task>/<metric>": value}``, with
    lm-eval's ``"acc,none"`` keys as ``acc`` (``acc_stderr`` kept; a filter other than
    ``none`` stays in the name)."""
    out: dict[str, float] = {}
    for section in ("results", "groups"):
        for task, metrics in results.get(section, {}).items():
            for key, value in metrics.items():
                if key in ("alias", "sample_len") or isinstance(value, bool) or not isinstance(
                        value, int | float):
                    continue
                metric, _, filt = key.partition(",")
                name = metric if filt in ("", "none") else f"{metric}-{filt}"
                out[f"lm-eval/{task}/{name}"] = float(value)
    return out


def write_results(run_dir: Path, results: dict[str, Any]) -> Path:
    """``RUN/lm-eval.json``: the harness's results dict."""
    path = Path(run_dir) / RESULTS
    path.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    return path


def table(results: dict[str, Any]) -> str:
    """lm-eval's own Markdown table(s) of the results (and of groups, if any)."""
    from lm_eval.utils import make_table

    text = make_table(results)
    if results.get("groups"):
        text += "\n" + make_table(results, "groups")
    return text


def log_to_trackers(run_dir: Path, values: dict[str, float]) -> list[str]:
    """The scores into the run's experiment trackers (its ``report-to``), reopened by
    :func:`fedtune.tracking.log_final_metrics` at the run's last round; the names of the
    trackers written (none when the run had none, or fedtune.tracking is absent)."""
    try:
        from fedtune import tracking
    except ImportError:
        return []
    reopen = getattr(tracking, "log_final_metrics", None)
    if reopen is None:
        return []
    return list(reopen(Path(run_dir), values) or [])
