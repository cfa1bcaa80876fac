"""Write the local lm-evaluation-harness task ``fedtune_mc`` (issue #28 item 2).

    python -m simulations.harness_task DIR [--n 200] [--seed 0] [--per-category]

DIR/fedtune_mc.yaml over DIR/fedtune_mc.jsonl: held-out instances of the built-in tasks as
multiple choice (fedtune/eval/harness_task.py); ``--per-category`` also writes one task per
category (fedtune_mc_parity, ...). Then: ``fedtune evaluate RUN --tasks fedtune_mc
--include-path DIR``.
"""

from __future__ import annotations

import argparse

from fedtune.data.synthetic import CATEGORIES
from fedtune.eval.harness_task import NAME, write_task


def write_all(folder: str, n: int, seed: int, per_category: bool) -> list[str]:
    """The tasks written: ``fedtune_mc`` and, with ``per_category``, one per category."""
    write_task(folder, n, seed)
    names = [NAME]
    if per_category:
        for category in CATEGORIES:
            write_task(folder, n // len(CATEGORIES), seed, f"{NAME}_{category}", (category,))
            names.append(f"{NAME}_{category}")
    return names


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", help="folder for the task YAML and its JSONL data")
    parser.add_argument("--n", type=int, default=200, help="documents (spread over categories)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-category", action="store_true")
    args = parser.parse_args(argv)
    names = write_all(args.dir, args.n, args.seed, args.per_category)
    print(f"wrote {', '.join(names)} to {args.dir}; run: fedtune evaluate RUN --tasks "
          f"{','.join(names)} --include-path {args.dir}")


if __name__ == "__main__":
    main()
