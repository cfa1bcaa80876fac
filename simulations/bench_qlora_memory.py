"""Client memory of a QLoRA round: peak RSS of one FedIT client's LoRA round on a Llama of
about 134M parameters, with a float32 base against an nf4 base (and optionally fp4 / int8), each
in a fresh subprocess, in one run.

The model (hidden 768, 12 layers, 12 heads, intermediate 2048, vocabulary 32,000, untied
embeddings: 134.1M parameters, counted and printed) is built in code from a fixed seed and
saved once to a temporary folder with the tiny preset's tokenizer; every child loads it exactly
as a fedtune client does (:func:`fedtune.algorithms.fedit.model.peft_model_for`: the base,
quantised by bitsandbytes when asked, ``prepare_model_for_kbit_training``, the default LoRA
adapter: r 16 on every linear layer) and runs one local round of ``train_round`` on random
token ids (every position a response token), then takes the adapter state it would upload.

Each child reports (psutil / ``/proc/self/status``):

* ``floor``: RSS after importing torch, transformers, peft, bitsandbytes and fedtune (the same
  imports in every child), before any model exists;
* ``loaded``: RSS once the model and adapter are built;
* ``round peak``: the high-water RSS of the round alone: ``VmHWM`` reset (``/proc/self/clear_refs``
  = 5) after the load, read after the round; on a kernel that refuses the reset it is the
  process's lifetime peak, flagged;
* ``lifetime peak``: ``getrusage(RUSAGE_SELF).ru_maxrss`` (loading included: from_pretrained
  reads float32 weights before quantising them).

Each base is measured under glibc's default allocator and, with ``--allocators default mmap``
(the default), again with ``MALLOC_MMAP_THRESHOLD_=65536``: every tensor over 64 KiB is then
its own mapping, returned to the system when freed, so RSS follows the live tensors instead of
the heap's high-water mark (the default's dynamic threshold keeps freed activation and
dequantisation buffers in the heap, and the round's peak then says as much about
fragmentation as about the model). A float32 base's weights are read lazily from the
safetensors file (memory-mapped): they become resident during the round, not at load.

    python simulations/bench_qlora_memory.py                      # fp32 vs nf4, ~2 min on 2 cores
    python simulations/bench_qlora_memory.py --quant none nf4 fp4 int8 --steps 3 --batch-size 4
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: the Llama measured: 134.1M parameters with untied embeddings
CONFIG = {"vocab_size": 32000, "hidden_size": 768, "intermediate_size": 2048,
          "num_hidden_layers": 12, "num_attention_heads": 12, "num_key_value_heads": 12,
          "max_position_embeddings": 512, "tie_word_embeddings": False,
          "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
MIB = 2**20


def count_parameters(cfg: dict = CONFIG) -> int:
    """The Llama's parameter count from its shape (no model needed)."""
    h, i, v, n = (cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"],
                  cfg["num_hidden_layers"])
    kv = h * cfg["num_key_value_heads"] // cfg["num_attention_heads"]
    layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h  # q,o + k,v + gate,up,down + 2 norms
    embeddings = v * h * (1 if cfg["tie_word_embeddings"] else 2)
    return embeddings + n * layer + h  # + the final norm


def build(folder: Path) -> int:
    """Save the Llama (seeded, float32) and the tiny preset's tokenizer to ``folder``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from fedtune.models.loading import tiny_tokenizer

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**CONFIG))
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return n


def _vm_hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise OSError("no VmHWM")


def child(args: argparse.Namespace) -> dict:
    """One measurement (runs in a fresh process)."""
    import bitsandbytes  # noqa: F401  (every child imports the same libraries)
    import peft  # noqa: F401
    import psutil
    import torch
    import transformers  # noqa: F401

    from fedtune.algorithms.fedit.adapter import adapter_state
    from fedtune.algorithms.fedit.model import peft_model_for
    from fedtune.config import Config
    from fedtune.data.tokenize import Encoded, EncodedSet
    from fedtune.models.quantize import is_quantized
    from fedtune.train.local import SFTSettings, train_round

    torch.set_num_threads(args.threads)
    proc = psutil.Process()
    floor = proc.memory_info().rss
    cfg = Config.from_flat({"model": args.folder, "quantization": args.quant, "device": "cpu",
                            "max-seq-len": args.seq_len})
    model, tok = peft_model_for(cfg)
    assert is_quantized(model) == (args.quant != "none")
    loaded = proc.memory_info().rss
    gen = torch.Generator().manual_seed(1)
    rows = torch.randint(3, CONFIG["vocab_size"], (args.batch_size * args.steps, args.seq_len),
                         generator=gen).tolist()
    data = EncodedSet([Encoded(r, list(r), 0) for r in rows])
    try:  # the round's own high-water mark: reset VmHWM to the current RSS
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    start = time.perf_counter()
    stats = train_round(model, data, SFTSettings(steps=args.steps, batch_size=args.batch_size,
                                                 lr=1e-4), tok.pad_token_id, (0, 1, "client"))
    upload = adapter_state(model)
    seconds = time.perf_counter() - start
    round_peak = _vm_hwm()
    return {
        "quant": args.quant, "floor": floor, "loaded": loaded, "round_peak": round_peak,
        "round_peak_is_lifetime": not reset,
        "lifetime_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "train_loss": stats.train_loss, "seconds": seconds,
        "adapter_bytes": sum(v.nbytes for v in upload.values()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


#: the allocator settings a child runs under (environment variables of glibc's malloc)
ALLOCATORS = {"default": {}, "mmap": {"MALLOC_MMAP_THRESHOLD_": "65536"}}


def measure(folder: str, quant: str, allocator: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", "--folder", folder, "--quant", quant,
           "--steps", str(args.steps), "--batch-size", str(args.batch_size),
           "--seq-len", str(args.seq_len), "--threads", str(args.threads)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_VERBOSITY": "error", **ALLOCATORS[allocator]}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise SystemExit(f"child {quant} failed:\n{out.stderr[-3000:]}")
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "allocator": allocator}


def table(results: list[dict], n_params: int, args: argparse.Namespace) -> str:
    lines = [f"Llama {n_params / 1e6:.1f}M parameters; one client round: {args.steps} steps, "
             f"batch {args.batch_size}, seq {args.seq_len}, LoRA r 16 on all linear layers, "
             f"{args.threads} thread(s), CPU",
             "",
             "| base | allocator | floor (imports) MiB | after load MiB | round peak MiB | "
             "round peak - floor MiB | lifetime peak MiB | round s | train loss |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        name = "float32" if r["quant"] == "none" else r["quant"]
        flag = "*" if r["round_peak_is_lifetime"] else ""
        lines.append(f"| {name} | {r['allocator']} | {r['floor'] / MIB:,.0f} | "
                     f"{r['loaded'] / MIB:,.0f} | "
                     f"{r['round_peak'] / MIB:,.0f}{flag} | "
                     f"{(r['round_peak'] - r['floor']) / MIB:,.0f} | "
                     f"{r['lifetime_peak'] / MIB:,.0f} | {r['seconds']:.1f} | "
                     f"{r['train_loss']:.3f} |")
    lines.append("")
    for r in results:
        base = next((b for b in results if b["quant"] == "none"
                     and b["allocator"] == r["allocator"]), None)
        if base is None or r is base:
            continue
        above = (r["round_peak"] - r["floor"]) / (base["round_peak"] - base["floor"])
        ratio = r["round_peak"] / base["round_peak"]
        lines.append(f"{r['quant']} / float32 ({r['allocator']} allocator): round peak "
                     f"{ratio:.2f}x"
                     f", above the floor {above:.2f}x; adapter on the wire "
                     f"{r['adapter_bytes']:,} B (float32 base: {base['adapter_bytes']:,} B)")
    if any(r["round_peak_is_lifetime"] for r in results):
        lines.append("* the kernel refused to reset VmHWM: lifetime peak, loading included")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quant", nargs="+", default=["none", "nf4"],
                   choices=["none", "nf4", "fp4", "int8"])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--allocators", nargs="+", default=["default", "mmap"],
                   choices=list(ALLOCATORS))
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.quant = args.quant[0]
        print(json.dumps(child(args)))
        return
    expected = count_parameters()
    with tempfile.TemporaryDirectory(prefix="fedtune-qlora-bench-") as folder:
        n = build(Path(folder))
        assert n == expected, (n, expected)
        print(f"built a Llama of {n:,} parameters in {folder}", file=sys.stderr)
        results = []
        for allocator in args.allocators:
            for quant in args.quant:
                results.append(measure(folder, quant, allocator, args))
                print(f"  {quant} ({allocator}): round {results[-1]['seconds']:.1f} s",
                      file=sys.stderr)
    print(table(results, n, args))
    if args.json:
        Path(args.json).write_text(json.dumps({"parameters": n, "config": CONFIG,
                                               "args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
