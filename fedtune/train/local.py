"""The generic local round: a fixed number of optimizer steps on a client's private examples
(SFT, and any loss passed in: DPO, Ferret's local steps).

The optimizer (AdamW) starts fresh every round, so no optimizer state crosses rounds: the
server decides the learning rate of the round (a schedule over rounds) and nothing else needs
to persist on a client between rounds (deployment starts a new process per message).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fedtune.data.tokenize import EncodedSet, collate
from fedtune.seeding import derive_seed, rng
from fedtune.train.config import OPTIMIZERS
from fedtune.train.terms import GradTerm


@dataclass
class SFTSettings:
    steps: int
    batch_size: int
    lr: float
    grad_accum: int = 1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    # a strategy's terms on every step's gradient (fedtune.train.terms: SCAFFOLD's, FedProx's)
    grad_terms: tuple[GradTerm, ...] = ()
    optimizer: str = "adamw"  # or "sgd" (plain SGD, no momentum: Ferret's local steps)


@dataclass
class RoundStats:
    train_loss: float
    steps: int
    examples_seen: int
    tokens: int  # non-padding tokens processed
    seconds: float


def batches(n: int, batch_size: int, count: int, *seed_parts: int | str):
    """``count`` index batches that walk seeded permutations of ``range(n)`` epoch by epoch."""
    gen = rng(*seed_parts)
    order: list[int] = []
    for _ in range(count):
        while len(order) < batch_size:
            order += gen.permutation(n).tolist()
        yield order[:batch_size]
        order = order[batch_size:]


def make_optimizer(params: list[torch.nn.Parameter], lr: float, weight_decay: float,
                   kind: str = "adamw") -> torch.optim.Optimizer:
    """AdamW (or plain SGD without momentum: no optimizer state at all), fused into one kernel
    per step when every parameter allows it (CPU or CUDA floats).

    The fused kernel does the same update as the default per-tensor loop (equal up to float
    rounding) at a fraction of the per-step cost: about 2.5 ms less per step for a LoRA adapter
    of 60 tensors on one CPU thread.
    """
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point()
                                 for p in params)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.0, weight_decay=weight_decay)
    if kind != "adamw":
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {kind!r}")
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


def _set_checkpointing(model: torch.nn.Module, on: bool) -> None:
    """Activation (gradient) checkpointing on or off; transformers 5 renamed the methods."""
    if hasattr(model, "activation_checkpointing_enable"):
        if on:
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.activation_checkpointing_disable()
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()


BatchLoss = Callable[[list[int]], tuple[torch.Tensor, int]]


def train_round(model: torch.nn.Module, data: EncodedSet, settings: SFTSettings, pad_id: int,
                seed_parts: tuple[int | str, ...], batch_loss: BatchLoss | None = None
                ) -> RoundStats:
    """Run ``settings.steps`` optimizer steps (AdamW, or SGD) of next-token loss on response
    tokens.

    ``batch_loss`` replaces the objective: it maps a batch of indices into ``data`` (which then
    only needs a length, e.g. preference pairs for DPO) to (loss, tokens processed).
    """
    if len(data) == 0:
        raise ValueError("no trainable examples: every response was truncated away or data is "
                         "empty; raise max-seq-len or check the data file")
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, settings.lr, settings.weight_decay, settings.optimizer)
    if settings.gradient_checkpointing:
        _set_checkpointing(model, True)
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    model.train()
    for term in settings.grad_terms:
        term.start(params)
    losses: list[float] = []
    tokens = 0
    start = time.perf_counter()
    micro = batches(len(data), settings.batch_size, settings.steps * settings.grad_accum,
                    *seed_parts)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(derive_seed("dropout", *seed_parts))
        for _ in range(settings.steps):
            opt.zero_grad(set_to_none=True)
            step_loss = 0.0
            for _ in range(settings.grad_accum):
                if batch_loss is None:
                    batch = collate([data.items[i] for i in next(micro)], pad_id)
                    batch = {k: v.to(device) for k, v in batch.items()}
                    tokens += int(batch["attention_mask"].sum())
                    loss = model(**batch).loss / settings.grad_accum
                else:
                    loss, seen = batch_loss(next(micro))
                    tokens += seen
                    loss = loss / settings.grad_accum
                loss.backward()
                step_loss += loss.item()
            for term in settings.grad_terms:
                term.add_to_grads(params)
            if settings.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
            opt.step()
            losses.append(step_loss)
    model.eval()
    if settings.gradient_checkpointing:
        _set_checkpointing(model, False)
    finite = [x for x in losses if math.isfinite(x)]
    return RoundStats(
        train_loss=sum(finite) / len(finite) if finite else float("nan"),
        steps=settings.steps,
        examples_seen=settings.steps * settings.grad_accum * settings.batch_size,
        tokens=tokens,
        seconds=time.perf_counter() - start,
    )
