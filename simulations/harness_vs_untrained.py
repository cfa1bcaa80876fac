"""Does training help on the local harness task? A run's final model against the model it
started from, on ``fedtune_mc`` and its per-category parts (issue #28 item 2).

    python -m simulations.harness_vs_untrained RUN [--n 200] [--seed 0] [--task-dir DIR]

The untrained model is the run's own initial model (RUN/base-model, which every FedIT and
FedKSeed run saves; else the run's ``model`` key, e.g. the ``tiny`` preset); the trained one is
what ``fedtune evaluate`` loads. Both go through the same lm-eval call on the same documents.
Prints one line per task (acc both ways, chance) and writes RUN/harness-vs-untrained.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from fedtune.cli import _run_model
from fedtune.eval import harness
from simulations.harness_task import write_all


def untrained(run_dir: Path):
    """(the run's initial model, tokenizer)."""
    from fedtune.models.loading import choose_placement, load_model, load_tokenizer
    from fedtune.models.saved import load_model_folder

    if (run_dir / "base-model" / "config.json").is_file():
        return load_model_folder(run_dir / "base-model")
    name = json.loads((run_dir / "config.json").read_text())["model"]["model"]
    return load_model(name, choose_placement("cpu", "float32")), load_tokenizer(name)


def chance(task_dir: Path, name: str) -> float:
    """The accuracy of a uniform guess over each document's choices."""
    docs = [json.loads(line) for line in (task_dir / f"{name}.jsonl").open()]
    return sum(1 / len(d["choices"]) for d in docs) / len(docs)


def compare(run_dir: Path, task_dir: Path, n: int, seed: int, batch_size: int = 16) -> dict:
    names = write_all(str(task_dir), n, seed, per_category=True)
    manager = harness.task_manager(names, task_dir)
    out: dict = {"run": str(run_dir), "n": n, "seed": seed, "tasks": {}}
    for label, (model, tok) in (("untrained", untrained(run_dir)),
                                ("trained", _run_model(run_dir))):
        results = harness.run_harness(model, tok, harness.load_tasks(names, manager), manager,
                                      batch_size=batch_size)
        for name in names:
            row = out["tasks"].setdefault(name, {"chance": chance(task_dir, name)})
            row[label] = results["results"][name]["acc,none"]
            row[f"{label}_stderr"] = results["results"][name]["acc_stderr,none"]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a finished run folder")
    parser.add_argument("--n", type=int, default=200, help="documents of fedtune_mc")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task-dir", help="where to write the tasks (default: a temp folder)")
    args = parser.parse_args(argv)
    run_dir = Path(args.run)
    with tempfile.TemporaryDirectory() as tmp, harness.quiet_lm_eval():
        out = compare(run_dir, Path(args.task_dir or tmp), args.n, args.seed)
    print(f"{'task':20} {'chance':>7} {'untrained':>10} {'trained':>8}")
    for name, row in out["tasks"].items():
        print(f"{name:20} {row['chance']:7.3f} {row['untrained']:10.3f} {row['trained']:8.3f}")
    (run_dir / "harness-vs-untrained.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
