"""Local SFT throughput: fedtune's client round vs TRL's ``SFTTrainer``, same process, same work.

Measured: non-padding tokens per second (the ones of the attention mask of every trained batch)
over the timed steps of one local round, warm-up excluded; median over ``--repeats`` repetitions
that alternate which framework goes first. Wall clock is the headline; the ratio is also given
by this process's CPU time, which other load on a shared machine disturbs much less. One torch
thread by default (``--threads``): a simulated client gets one core, and timings are steadier.

Both frameworks train, and the script checks what is marked (checked):
* the same model (a fresh copy per run) with the same LoRA adapter: ``adapter_config``
  (``fedtune.algorithms.fedit.adapter``) is passed to ``SFTTrainer(peft_config=...)`` and used
  by ``add_adapter``, same init seed; same trainable tensors (checked), every one of them
  updated by training (checked);
* exactly the same batches: fedtune's seeded batch order (``fedtune.train.local.batches``) is laid
  out as the TRL dataset (pre-tokenized ``input_ids`` + ``completion_mask``,
  ``completion_only_loss=True``) and read with ``train_sampling_strategy="sequential"``: same
  token ids, same labels with prompt tokens at -100 (checked), same padding (timed non-padding
  token counts equal, checked);
* float32 on CPU, no packing, no padding-free, right padding, batch size B, one micro-batch per
  step, constant learning rate, max grad norm 1.0, AdamW with weight decay 0, betas (0.9, 0.999),
  eps 1e-8: TRL's default "adamw_torch_fused", the fused kernel that fedtune's ``train_round``
  uses too on CPU/CUDA (``--trl-optim adamw_torch`` gives TRL the per-tensor loop instead);
  no gradient checkpointing, no eval, no logging, no checkpoints, no progress bar.

Timing. fedtune: ``train_round`` runs ``--warmup-steps`` steps, then a second call runs
``--steps`` steps and its own ``RoundStats.seconds`` is used: a real client round, including
the creation of its fresh optimizer. TRL: one ``train()`` of warm-up + timed steps, timed from
the ``on_step_end`` callback of the last warm-up step to that of the last step, i.e. ``--steps``
whole loop iterations (data loading, forward, backward, clipping, optimizer, zero-grad and the
trainer's per-step bookkeeping). Building models, datasets and trainers is not timed.

Differences kept, as they are part of each design: TRL computes the loss with its fused, chunked
LM head (log-probabilities without materialising the logits; on CPU every position is scored)
and per-step entropy and top-1 accuracy metrics, and its loop has per-step bookkeeping
(``model.train()``, FLOP count, callbacks); fedtune takes the model's own loss from the full
logits. Dropout masks differ (different RNG streams), which does not change the work done.

    python simulations/bench_sft.py                        # both models, about 1 minute on 2 cores
    python simulations/bench_sft.py --model tiny --steps 20 --repeats 1
    python simulations/bench_sft.py --threads 0            # torch's default thread count
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
try:
    import fedtune  # noqa: F401
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO))

from fedtune.algorithms.fedit.adapter import adapter_config, add_adapter  # noqa: E402
from fedtune.algorithms.fedit.config import LoraSection  # noqa: E402
from fedtune.data.synthetic import client_examples  # noqa: E402
from fedtune.data.tokenize import EncodedSet, encode_examples  # noqa: E402
from fedtune.models.loading import choose_placement, is_tiny, load_model, load_tokenizer  # noqa: E402
from fedtune.train.local import SFTSettings, batches, train_round  # noqa: E402

STORIES = REPO.parent / "shared" / "models" / "stories260k"
INIT_SEED = 0


@dataclass
class Run:
    tokens: int  # non-padding tokens in the timed steps
    seconds: float  # wall clock
    cpu_seconds: float  # this process's CPU time: less sensitive to other load on the machine
    trainable: dict[str, int]  # trainable tensor name -> numel
    stale: int  # trainable tensors left unchanged by training (expected 0)

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def cpu_tok_s(self) -> float:
        return self.tokens / self.cpu_seconds


@dataclass
class Bench:
    name: str
    data: EncodedSet
    pad_id: int
    warm_order: list[list[int]]  # batches of example indices, warm-up round
    timed_order: list[list[int]]  # batches of example indices, timed round


def make_bench(name: str, args: argparse.Namespace) -> Bench:
    tokenizer = load_tokenizer(name)
    examples = client_examples(0, 1, args.examples, seed=0)
    data = encode_examples(tokenizer, examples, args.max_len)
    warm = list(batches(len(data), args.batch_size, args.warmup_steps, *seed_parts("warmup")))
    timed = list(batches(len(data), args.batch_size, args.steps, *seed_parts("timed")))
    return Bench(name, data, tokenizer.pad_token_id, warm, timed)


def seed_parts(phase: str) -> tuple[str, ...]:
    return ("bench-sft", phase)


def trainable(model: torch.nn.Module) -> dict[str, int]:
    return {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def count_stale(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> int:
    now = dict(model.named_parameters())
    return sum(bool(torch.equal(now[n].detach(), t)) for n, t in before.items())


def base_model(name: str) -> torch.nn.Module:
    return load_model(name, choose_placement("cpu", "float32"))


def run_fedtune(bench: Bench, args: argparse.Namespace) -> Run:
    """A warm-up round, then the timed round, with fedtune's own ``train_round``."""
    torch.manual_seed(INIT_SEED)
    model = add_adapter(base_model(bench.name), LoraSection(), base_is_random=is_tiny(bench.name))
    before = snapshot(model)

    def settings(steps: int) -> SFTSettings:
        return SFTSettings(steps=steps, batch_size=args.batch_size, lr=args.lr)

    train_round(model, bench.data, settings(args.warmup_steps), bench.pad_id, seed_parts("warmup"))
    cpu = time.process_time()
    stats = train_round(model, bench.data, settings(args.steps), bench.pad_id, seed_parts("timed"))
    cpu = time.process_time() - cpu
    return Run(stats.tokens, stats.seconds, cpu, trainable(model), count_stale(model, before))


class CountingCollator:
    """Wraps TRL's collator; records the non-padding tokens of every batch, in order."""

    def __init__(self, inner: Callable[[list[dict[str, Any]]], dict[str, Any]]) -> None:
        self.inner = inner
        self.tokens: list[int] = []

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner(examples)
        self.tokens.append(int(batch["attention_mask"].sum()))
        return batch


def run_trl(bench: Bench, args: argparse.Namespace) -> Run:
    """One ``SFTTrainer.train()`` over the same batches; times the steps after the warm-up."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.stamps: list[tuple[float, float]] = []  # (wall, CPU) at the end of each step

        def on_step_end(self, *_: Any, **__: Any) -> None:
            self.stamps.append((time.perf_counter(), time.process_time()))

    order = [i for batch in bench.warm_order + bench.timed_order for i in batch]
    items = [bench.data.items[i] for i in order]
    dataset = Dataset.from_dict({
        "input_ids": [it.input_ids for it in items],
        "completion_mask": [[0] * it.prompt_len + [1] * (len(it.input_ids) - it.prompt_len)
                            for it in items],
    })
    total_steps = args.warmup_steps + args.steps
    clock = StepClock()
    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(
            output_dir=out, max_length=args.max_len, packing=False, padding_free=False,
            completion_only_loss=True, per_device_train_batch_size=args.batch_size,
            gradient_accumulation_steps=1, max_steps=total_steps, learning_rate=args.lr,
            lr_scheduler_type="constant", warmup_steps=0, optim=args.trl_optim,
            weight_decay=0.0, max_grad_norm=1.0, activation_checkpointing=False,
            train_sampling_strategy="sequential", logging_strategy="no", save_strategy="no",
            eval_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True, bf16=False,
            fp16=False, dataloader_num_workers=0, seed=INIT_SEED,
        )
        torch.manual_seed(INIT_SEED)  # same LoRA init as fedtune's
        trainer = SFTTrainer(
            model=base_model(bench.name), args=config, train_dataset=dataset,
            processing_class=load_tokenizer(bench.name),
            peft_config=adapter_config(LoraSection(), base_is_random=is_tiny(bench.name)),
            callbacks=[clock],
        )
        trainer.remove_callback(PrinterCallback)  # it would print the end-of-training metrics
        labels = trainer.train_dataset["labels"]
        if labels != [it.labels for it in items]:
            raise AssertionError("TRL's prepared labels differ from fedtune's")
        collator = CountingCollator(trainer.data_collator)
        trainer.data_collator = collator
        before = snapshot(trainer.model)
        trainer.train()
    if len(clock.stamps) != total_steps:
        raise AssertionError(f"TRL ran {len(clock.stamps)} steps, expected {total_steps}")
    w = args.warmup_steps
    (wall0, cpu0), (wall1, cpu1) = clock.stamps[w - 1], clock.stamps[-1]
    return Run(sum(collator.tokens[w:total_steps]), wall1 - wall0, cpu1 - cpu0,
               trainable(trainer.model), count_stale(trainer.model, before))


def check_same(ft: Run, trl: Run, name: str) -> None:
    if ft.trainable != trl.trainable:
        diff = sorted(set(ft.trainable.items()) ^ set(trl.trainable.items()))[:4]
        raise AssertionError(f"{name}: trainable parameters differ, e.g. {diff}")
    if ft.tokens != trl.tokens:
        raise AssertionError(f"{name}: timed tokens differ: fedtune {ft.tokens}, TRL {trl.tokens}")
    if ft.stale or trl.stale:
        raise AssertionError(f"{name}: tensors not updated: fedtune {ft.stale}, TRL {trl.stale}")


def bench_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    bench = make_bench(name, args)
    lens = [len(it.input_ids) for it in bench.data.items]
    print(f"\n== {name}: {len(bench.data)} examples ({bench.data.dropped} dropped), "
          f"{min(lens)}-{max(lens)} tokens, batch {args.batch_size}, "
          f"{args.warmup_steps} warm-up + {args.steps} timed steps", flush=True)
    ft_rates: list[float] = []
    trl_rates: list[float] = []
    cpu_ratios: list[float] = []
    runners = {"fedtune": run_fedtune, "TRL": run_trl}
    for rep in range(args.repeats):
        names = ["fedtune", "TRL"] if rep % 2 == 0 else ["TRL", "fedtune"]
        runs = {who: runners[who](bench, args) for who in names}
        check_same(runs["fedtune"], runs["TRL"], name)
        ft_rates.append(runs["fedtune"].tok_s)
        trl_rates.append(runs["TRL"].tok_s)
        cpu_ratios.append(runs["fedtune"].cpu_tok_s / runs["TRL"].cpu_tok_s)
        print(f"  rep {rep + 1} ({' then '.join(names)}): {runs['fedtune'].tokens} tokens | "
              f"fedtune {runs['fedtune'].tok_s:,.0f} tok/s ({runs['fedtune'].seconds:.2f} s) | "
              f"TRL {runs['TRL'].tok_s:,.0f} tok/s ({runs['TRL'].seconds:.2f} s) | "
              f"CPU-time ratio {cpu_ratios[-1]:.2f}", flush=True)
    n_train = sum(runs["fedtune"].trainable.values())
    print(f"  trainable parameters: fedtune {n_train:,} | TRL "
          f"{sum(runs['TRL'].trainable.values()):,} (same {len(runs['TRL'].trainable)} tensors)")
    ft, trl = statistics.median(ft_rates), statistics.median(trl_rates)
    return {"model": name, "trainable": n_train, "fedtune": ft, "trl": trl, "ratio": ft / trl,
            "cpu_ratio": statistics.median(cpu_ratios)}


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    import peft
    import transformers
    import trl

    lines = [
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"peft {peft.__version__}, trl {trl.__version__}; {torch.get_num_threads()} thread(s), "
        f"batch {args.batch_size}, {args.steps} timed steps after {args.warmup_steps} warm-up, "
        f"median of {args.repeats}, TRL optim {args.trl_optim}",
        "",
        "| model | trainable params | fedtune tok/s | TRL tok/s | ratio fedtune/TRL "
        "| ratio by CPU time |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['trainable']:,} | {r['fedtune']:,.0f} | "
                     f"{r['trl']:,.0f} | {r['ratio']:.2f} | {r['cpu_ratio']:.2f} |")
    return "\n".join(lines)


def quiet() -> None:
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    logging.getLogger("trl").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", default=None,
                   help=f"'tiny' or a model folder; repeatable (default: tiny and {STORIES})")
    p.add_argument("--steps", type=int, default=40, help="timed optimizer steps per round")
    p.add_argument("--warmup-steps", type=int, default=5, help="untimed steps before (>= 1)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads; 0 = leave torch's default (all cores)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--examples", type=int, default=160, help="client examples to sample from")
    p.add_argument("--trl-optim", default="adamw_torch_fused",
                   help="TRL's optim: adamw_torch_fused (TRL's default and fedtune's on CPU) or "
                        "adamw_torch (the per-tensor loop)")
    args = p.parse_args(argv)
    if args.warmup_steps < 1 or args.steps < 1 or args.repeats < 1:
        p.error("--warmup-steps, --steps and --repeats must be >= 1")
    if args.model is None:
        args.model = ["tiny"] + ([str(STORIES)] if STORIES.exists() else [])
        if not STORIES.exists():
            print(f"note: {STORIES} not found; benchmarking tiny only")
    return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    quiet()
    rows = [bench_model(name, args) for name in args.model]
    print()
    print(table(rows, args))
    return rows


if __name__ == "__main__":
    main()
