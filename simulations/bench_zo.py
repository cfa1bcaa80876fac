"""Benchmark the FedKSeed core (fedtune.seeded): step cost, replay throughput, client-round memory.

(a) one ZO step vs two forward passes, same model and batch (goal: ratio <= 1.5);
(b) replay throughput: seeds per second, and the cost of one seed in forward passes;
(c) peak memory of a FedKSeed client round vs a LoRA SFT round vs a full-parameter SGD round, each
    in its own process, on a ~134M-parameter Llama built from a config (no download);
(d)-(g) exact incremental versions (``simulations/bench_versions.py``): catch-up == full load,
    seeds applied per round, the fused catch-up vs the per-seed float replay, a client round's
    peak memory over its float32 weights, and the default FedKSeed run; ``--json PATH`` writes
    them.

    python simulations/bench_zo.py            # full run, a few minutes on 2 CPU cores
    python simulations/bench_zo.py --quick    # smaller models, fewer repeats
    python simulations/bench_zo.py --model ../shared/models/stories260k
    python simulations/bench_zo.py --versions-only --json bench-zo.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

try:
    import fedtune.seeded as zo
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import fedtune.seeded as zo

MEMORY_MODES = ("baseline", "inference", "fedkseed", "lora", "sgd")


def build_llama(hidden: int, layers: int, vocab: int, intermediate: int, heads: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg)


def load_model(path: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def timed(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device):
    """Best-of-``repeats`` wall time in seconds of each function, the functions interleaved.

    Interleaving and taking the minimum keep ratios meaningful on a shared machine, where other
    processes slow down some repetitions (OpenMP threads suffer most from a busy core).
    """
    for fn in fns.values():
        fn()  # warm-up
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def batch_for(model, batch: int, seq: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, model.config.vocab_size, (batch, seq), generator=g).to(device)


def bench_step_and_replay(model, name: str, args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    model.to(device).eval()
    ids = batch_for(model, args.batch, args.seq, device)
    params = zo.zo_parameters(model)
    n_params = sum(p.numel() for p in params)
    seeds = zo.derive_seeds(0, 4096)

    def loss() -> torch.Tensor:
        return model(input_ids=ids, labels=ids).loss

    def forward() -> None:
        with torch.no_grad():
            loss()

    step_no = iter(range(10**9))

    def step() -> None:
        i = next(step_no) % 4096
        zo.zo_step(params, loss, seed=int(seeds[i]), seed_index=i, eps=1e-3, lr=1e-6)

    def generate() -> None:
        zo.add_perturbation_(params, int(seeds[0]), 0.0)

    t = timed({"forward": forward, "step": step, "generate": generate}, args.repeats, device)
    fwd, stp, gen = t["forward"], t["step"], t["generate"]
    print(f"\n== {name}: {n_params / 1e6:.2f}M ZO parameters, batch {args.batch} x seq {args.seq}")
    print(f"(a) forward {fwd * 1e3:.1f} ms | ZO step {stp * 1e3:.1f} ms | ", end="")
    print(f"one z pass {gen * 1e3:.1f} ms ({gen / n_params * 1e9:.2f} ms per 1M values)")
    print(f"    ZO step / (2 x forward) = {stp / (2 * fwd):.2f}  (goal <= 1.5)")

    w0 = zo.float32_snapshot(params, device=device)
    a = np.zeros(4096, dtype=np.float32)
    a[: args.replay_seeds] = np.random.default_rng(0).normal(size=args.replay_seeds)

    def replay() -> None:
        zo.replay_(params, w0, a, seeds, 1e-6)

    rep = timed({"replay": replay}, max(2, args.repeats // 4), device)["replay"]
    per_seed = rep / args.replay_seeds
    print(
        f"(b) replay of {args.replay_seeds} seeds: {rep * 1e3:.0f} ms = "
        f"{args.replay_seeds / rep:.0f} seeds/s = {per_seed / fwd:.3f} forward passes per seed"
    )
    print(
        f"    full pool K=4096: {4096 * per_seed:.1f} s; one round's delta (200 steps x 5 "
        f"clients <= 1000 seeds): {1000 * per_seed:.1f} s"
    )


# -- fused integer replay (fedtune.seeded.fused) vs today's per-seed float replay -----------------



# -- (c) memory: one mode per process ------------------------------------------------------------


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def memory_child(mode: str, args: argparse.Namespace) -> None:
    """Run ``args.mem_steps`` steps of one mode and print a JSON line with the peak memory."""
    device = torch.device(args.device)
    if mode == "baseline":  # the interpreter, torch and transformers, no model
        import transformers  # noqa: F401

        print(json.dumps({"mode": mode, "peak": peak_bytes(device)}))
        return
    model = build_llama(**memory_model(args)).to(device)
    largest = max(p.numel() * p.element_size() for p in model.parameters())
    n_params = sum(p.numel() for p in model.parameters())
    ids = batch_for(model, args.mem_batch, args.mem_seq, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if mode == "inference":
        model.eval()
        with torch.no_grad():
            for _ in range(args.mem_steps):
                model(input_ids=ids, labels=ids).loss.item()
    elif mode == "fedkseed":
        model.eval()
        params = zo.zo_parameters(model)
        seeds = zo.derive_seeds(0, 4096)
        for i in range(args.mem_steps):
            zo.zo_step(
                params,
                lambda: model(input_ids=ids, labels=ids).loss,
                seed=int(seeds[i]),
                seed_index=i,
                eps=1e-3,
                lr=1e-6,
            )
    elif mode == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        for _ in range(args.mem_steps):
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    elif mode == "sgd":
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-4)  # no momentum: no optimizer state
        for _ in range(args.mem_steps):
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    else:
        raise ValueError(f"unknown memory mode {mode!r}; expected one of {MEMORY_MODES}")
    print(
        json.dumps(
            {
                "mode": mode,
                "peak": peak_bytes(device),
                "largest_param": largest,
                "params": n_params,
            }
        )
    )


def memory_model(args: argparse.Namespace) -> dict[str, int]:
    if args.quick:
        return {"hidden": 384, "layers": 4, "vocab": 8000, "intermediate": 1024, "heads": 6}
    return {"hidden": 768, "layers": 12, "vocab": 32000, "intermediate": 2048, "heads": 12}


def bench_memory(args: argparse.Namespace) -> None:
    results = {}
    for mode in MEMORY_MODES:
        cmd = [sys.executable, __file__, "--memory-child", mode, "--device", args.device]
        cmd += ["--threads", str(args.threads)] if args.threads else []
        cmd += ["--quick"] if args.quick else []
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    mib = 1 << 20
    info = results["fedkseed"]
    print(
        f"\n(c) peak memory ({'torch.cuda.max_memory_allocated' if args.device != 'cpu' else 'RSS'}"
        f"), Llama {info['params'] / 1e6:.0f}M params float32, batch {args.mem_batch} x seq "
        f"{args.mem_seq}, {args.mem_steps} steps per mode, each mode in its own process"
    )
    base = results["baseline"]["peak"] if args.device == "cpu" else 0
    for mode in MEMORY_MODES[1:]:
        r = results[mode]
        print(
            f"    {mode:9s} peak {r['peak'] / mib:7.0f} MiB  (above the {base / mib:.0f} MiB "
            f"runtime: {(r['peak'] - base) / mib:6.0f} MiB)"
        )
    budget = results["inference"]["peak"] + info["largest_param"]
    print(
        f"    FedKSeed {info['peak'] / mib:.0f} MiB vs inference peak + largest parameter tensor "
        f"({results['inference']['peak'] / mib:.0f} + {info['largest_param'] / mib:.0f} = "
        f"{budget / mib:.0f} MiB): {'within' if info['peak'] <= budget else 'ABOVE'} budget"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller models, fewer repeats")
    parser.add_argument("--model", help="also benchmark a local HF causal LM folder")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=0, help="timed repeats (0: by mode)")
    parser.add_argument("--replay-seeds", type=int, default=0, help="nonzero A entries")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-child", choices=MEMORY_MODES, help=argparse.SUPPRESS)
    parser.add_argument("--versions-only", action="store_true",
                        help="only the exact-version figures (d)-(g)")
    parser.add_argument("--default-run", metavar="RUN",
                        help="(g) from this FedKSeed run folder instead of running the default")
    parser.add_argument("--skip-default-run", action="store_true", help="skip (g) (~5 min)")
    parser.add_argument("--json", metavar="PATH", help="write the figures (d)-(g) here")
    args = parser.parse_args()
    args.repeats = args.repeats or (4 if args.quick else 12)
    args.replay_seeds = args.replay_seeds or (32 if args.quick else 128)
    args.mem_batch, args.mem_seq, args.mem_steps = 4, 64, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child, args)
        return

    print(
        f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, "
        f"load average {os.getloadavg()[0]:.2f} (times: best of {args.repeats})"
    )
    if not args.versions_only:
        tiny = build_llama(hidden=256, layers=4, vocab=1024, intermediate=688, heads=4)
        bench_step_and_replay(tiny, "tiny Llama (hidden 256, 4 layers, vocab 1024)", args)
        if args.model:
            bench_step_and_replay(load_model(args.model), args.model, args)
        if not args.skip_memory:
            bench_memory(args)
    report = bench_versions(args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


def bench_versions(args: argparse.Namespace) -> dict:
    """(d)-(g): FedKSeed's exact incremental versions (simulations/bench_versions.py)."""
    from simulations import bench_versions as bv

    report: dict = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "device": args.device}
    report |= bv.bench_catch_up(size="small" if args.quick else "medium")
    print(f"\n(d) exact versions: a party following {4} rounds == one loading the last version "
          f"from w0: {report['catchup_equals_full']}; seeds applied per round "
          f"{report['catchup_seed_passes_per_round']} (drawn {report['seeds_drawn_per_round']}, "
          f"K = 4096); {report['catchup_seconds_per_round']:.2f} s per round for "
          f"{report['params'] / 1e6:.1f}M weights")
    report |= bv.bench_fused_replay(device=args.device)
    print(f"(e) fused catch-up ({report['backend']}) vs per-seed float replay, same weights and "
          f"seeds: {report['replay_speedup_vs_per_seed']:.1f}x "
          f"({report['fused_seed_elems_per_s'] / 1e9:.2f} vs "
          f"{report['per_seed_seed_elems_per_s'] / 1e9:.2f} G seed-elements/s; "
          f"{100 * report['bandwidth_fraction']:.1f}% of the memory-bound rate)")
    report |= bv.bench_client_memory()
    print(f"(f) client round peak RSS {report['peak_bytes'] / 2**20:.0f} MiB for "
          f"{report['weights_bytes'] / 2**20:.0f} MiB of float32 weights "
          f"({report['memory_params'] / 1e6:.0f}M params): ratio "
          f"{report['peak_memory_ratio']:.2f}; runtime {report['runtime_bytes'] / 2**20:.0f} MiB; "
          f"the round adds {report['round_extra_ratio']:.2f}x the weights")
    if not args.skip_default_run:
        report |= bv.bench_default_run(args.default_run)
        print(f"(g) default FedKSeed run: held-out loss {report['default_eval_loss_first']:.3f} "
              f"-> {report['default_eval_loss_last']:.3f}, payload "
              f"{report['default_payload_bytes']:,} B per client per round: "
              f"{'unchanged' if report['default_run_unchanged'] else 'CHANGED'}")
    return report


if __name__ == "__main__":
    main()
