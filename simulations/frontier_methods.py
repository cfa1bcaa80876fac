"""The methods of ``python -m simulations.benchmark --suite frontier``: every method fedtune has,
each a ``--run-config`` override set on the same data and rounds, with its family (the plot's
marker) and, where it needs one, its own learning rate (chosen by short probes; see
docs/frontier.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: stories260k, the pretrained tiny Llama in ../shared (next to the repository)
STORIES260K = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260k"

#: shared by every method: 8 clients (4 per round), 4 rounds of 10 local steps (FedKSeed: 50 ZO
#: steps), the server's held-out loss and a short exact-match eval every round
FRONTIER_COMMON = (f"model='{STORIES260K}' num-server-rounds=4 local-steps=10 eval-examples=48 "
                   "max-new-tokens=6 fraction-evaluate=0.0")

#: the families, in the plot's legend order, and their markers
FAMILIES = {"LoRA": "o", "LoRA aggregation": "s", "other PEFT": "D", "full fine-tuning": "P",
            "seed-based full-parameter": "^"}


@dataclass(frozen=True)
class FrontierMethod:
    name: str
    family: str  # a key of FAMILIES
    overrides: str = ""  # its --run-config overrides (after FRONTIER_COMMON)
    algorithm: str = "fedit"
    # the client-round probe on the 134M Llama: fewer steps (the peak is reached in the first)
    probe_134m: str = "local-steps=1"


def _peft(name: str, lr: float, extra: str = "") -> FrontierMethod:
    return FrontierMethod(name, "other PEFT", f"peft-method='{name}' lr={lr:g} {extra}".strip())


#: Learning rates: LoRA's default 2e-3 unless a probe chose another. Probe: one client
#: (partition 0 of 8), two local rounds of 10 steps from the initial adapter, the client's
#: held-out loss after each (start 10.51); the lr kept is the best of those tried:
#: vera 2e-3/2e-2/5e-2/1e-1 -> 9.76/2.49/1.86/2.35; ia3 2e-3/2e-2/5e-2/1e-1 -> 6.97/2.05/2.30/2.61;
#: prompt-tuning 2e-2/1e-1/3e-1/1 -> 8.16/3.97/2.76/2.88; loha 2e-3/1e-2 -> 2.53/1.79;
#: lokr 2e-3/1e-2/2e-2 -> 3.14/1.90/2.28; oft 2e-3/2e-2 -> 1.75/2.99;
#: fourierft 5e-3/2e-2/1e-1 -> 1.92/3.08/3.16; ln-tuning 2e-3/2e-2/5e-2 -> 8.82/2.45/1.99;
#: hra 2e-3/2e-2 -> 1.83/3.51 (HRA's step costs 3.5x LoRA's on this CPU).
#: rslora (scale alpha/sqrt(r) = 4x LoRA's) 2e-3/5e-4 -> 1.88/1.83; pissa 2e-3/5e-4 -> 1.91/1.99;
#: dora 2e-3 -> 1.82 (lora 2e-3/1e-2 -> 1.82/2.31); full-ft 2e-3/5e-4/1e-4 -> 0.43/1.41/2.21.
METHODS: tuple[FrontierMethod, ...] = (
    FrontierMethod("lora", "LoRA"),
    FrontierMethod("lora-dora", "LoRA", "lora-use-dora=true"),
    FrontierMethod("lora-rslora", "LoRA", "lora-use-rslora=true lr=0.0005"),
    FrontierMethod("lora-pissa", "LoRA", "lora-init='pissa'"),
    FrontierMethod("qlora", "LoRA", "quantization='nf4'"),
    *(FrontierMethod(m, "LoRA aggregation", f"lora-aggregation={m}")
      for m in ("ffa", "fedsa", "flora", "fedex")),
    _peft("vera", 0.05),
    _peft("ia3", 0.02),
    _peft("prompt-tuning", 0.3),
    _peft("loha", 0.01),
    _peft("lokr", 0.01),
    _peft("oft", 0.002),
    _peft("hra", 0.002),
    _peft("fourierft", 0.005),
    _peft("ln-tuning", 0.05),
    FrontierMethod("full-ft", "full fine-tuning", algorithm="full-ft"),
    FrontierMethod("fedkseed", "seed-based full-parameter", "zo-steps=50",
                   algorithm="fedkseed", probe_134m="zo-steps=2"),
    FrontierMethod("fedkseed-pro", "seed-based full-parameter", "zo-steps=50",
                   algorithm="fedkseed-pro", probe_134m="zo-steps=2"),
    FrontierMethod("ferret", "seed-based full-parameter", algorithm="ferret"),
)
BY_NAME = {m.name: m for m in METHODS}
FRONTIER_METHODS = {m.name: m.overrides for m in METHODS}
FRONTIER_ALGORITHMS = {m.name: m.algorithm for m in METHODS}
