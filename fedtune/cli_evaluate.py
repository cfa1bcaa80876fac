"""``fedtune evaluate``: EleutherAI's lm-evaluation-harness on a run's final model (the work is
in :mod:`fedtune.eval.harness`; the model comes from the run's algorithm, as for ``generate``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fedtune.errors import ConfigError


def evaluate_cmd(args: argparse.Namespace) -> int:
    """lm-evaluation-harness on the run's final model: the table, RUN/lm-eval.json, trackers."""
    from fedtune import cli
    from fedtune.algorithms import REGISTRY
    from fedtune.eval import harness

    run_dir = Path(args.run)
    try:
        algorithm = json.loads((run_dir / "config.json").read_text())["train"]["algorithm"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"'{run_dir}' is not a fedtune run folder (no readable config.json); "
                          "pass a finished run folder.") from None
    if getattr(REGISTRY.get(algorithm), "load_result", None) is None:
        cli._run_model(run_dir)  # its one sentence: no single final model to load
    tasks = harness.parse_tasks(args.tasks)
    batch, limit = harness.parse_batch_size(args.batch_size), harness.parse_limit(args.limit)
    harness.check_device(args.device)
    harness.require_lm_eval()
    with harness.quiet_lm_eval(args.verbose):
        manager = harness.task_manager(tasks, args.include_path)
        loaded = harness.load_tasks(tasks, manager)
    model, tokenizer = cli._run_model(run_dir)
    results = harness.run_harness(model, tokenizer, loaded, manager, limit=limit,
                                  batch_size=batch, device=args.device, verbose=args.verbose,
                                  about={"fedtune_run": str(run_dir), "algorithm": algorithm})
    print(harness.table(results))
    path = harness.write_results(run_dir, results)
    logged = harness.log_to_trackers(run_dir, harness.scores(results))
    print(f"results written to {path}" + (f"; logged to {', '.join(logged)}" if logged else ""))
    return 0


def add_evaluate_command(sub: argparse._SubParsersAction) -> None:
    """Register ``evaluate`` on ``sub``."""
    ev = sub.add_parser("evaluate", help="score a run's final model with lm-evaluation-harness")
    ev.add_argument("run")
    ev.add_argument("--tasks", required=True, help="comma list of lm-eval task names")
    ev.add_argument("--include-path", metavar="DIR", help="folder of your own task YAML files")
    ev.add_argument("--limit", type=float, help="documents per task (a fraction if below 1)")
    ev.add_argument("--batch-size", default="1", help="an integer, or 'auto'")
    ev.add_argument("--device", help="e.g. cpu, cuda, cuda:1 (default: where the model loads)")
    ev.add_argument("--verbose", action="store_true", help="lm-eval's own logs too")
    ev.set_defaults(func=evaluate_cmd)
