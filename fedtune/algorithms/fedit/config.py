"""FedIT's config section: the adapter every client trains (``peft-method``, LoRA by default)
and how the server aggregates it (``lora-*`` keys)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedtune.errors import ConfigError, at_least_one, one_of, require

#: ``lora-aggregation`` values, each a :class:`~fedtune.algorithms.fedit.variants.Variant`.
AGGREGATIONS = ("fedit", "ffa", "fedsa", "flora", "fedex")
#: ``lora-restart-init`` values: where FLoRA's clients restart their adapter each round.
RESTART_INITS = ("shared", "fresh")
#: ``peft-method`` values, each a :class:`~fedtune.algorithms.fedit.methods.Method`
PEFT_METHODS = ("lora", "vera", "ia3", "prompt-tuning", "loha", "lokr", "oft", "hra",
                "fourierft", "ln-tuning")
#: ``lora-init`` values: peft's ``init_lora_weights`` (``default``: kaiming-uniform A, zero B)
LORA_INITS = ("default", "gaussian", "pissa", "olora")


@dataclass
class LoraSection:
    # the PEFT method, built by peft: lora, vera, ia3, prompt-tuning, loha, lokr, oft, hra,
    # fourierft, ln-tuning (fedtune.algorithms.fedit.methods; only lora has the lora-aggregation
    # variants, ranks and options)
    peft_method: str = "lora"
    lora_r: int = 16  # LoRA rank (VeRA, LoHa, LoKr, HRA: their rank; OFT: its number of blocks)
    lora_alpha: int = 32  # LoRA alpha (scale alpha/r)
    lora_dropout: float = 0.05  # LoRA dropout
    # "all-linear" (every linear layer but the head), "auto" (peft's table for the model type)
    # or a comma list of layer names (fedtune.models.targets)
    lora_target_modules: str = "all-linear"
    # "auto": train embeddings and LM head too when the base is randomly initialised (the
    # `tiny` preset), since LoRA alone barely moves a random base; "" for none; or a comma list.
    lora_modules_to_save: str = "auto"
    # how the server combines adapters: fedit (average A and B), ffa (A frozen, B averaged), fedsa
    # (A shared, B personal), flora (stacked factors merged into the base), fedex (average + exact
    # residual merged into the base)
    lora_aggregation: str = "fedit"
    # Simulation: client ranks by partition id ("4,8,16": partition i gets the (i mod 3)-th);
    # "" = every client uses lora-r. A deployed node sets its own with --node-config "lora-r=8".
    lora_ranks: str = ""
    # FLoRA's restart each round: "shared" (every client from the run's seeded initialisation)
    # or "fresh" (a new one per client and round, seeded by (run seed, round, node): the
    # official code's get_peft_model per client and round, ATP-1010/FederatedLLM main.py).
    lora_restart_init: str = "shared"
    lora_use_dora: bool = False  # DoRA: a trained magnitude per output feature (Liu et al. 2024)
    lora_use_rslora: bool = False  # rsLoRA: scale alpha / sqrt(r) instead of alpha / r
    # peft's initialisation: default (kaiming-uniform A, zero B), gaussian, pissa or olora (the
    # last two start from the base's principal/orthogonal directions and keep a residual base)
    lora_init: str = "default"
    prompt_virtual_tokens: int = 16  # prompt-tuning: the trained soft prompt's length

    def validate(self) -> None:
        one_of("peft-method", self.peft_method, PEFT_METHODS)
        one_of("lora-init", self.lora_init, LORA_INITS)
        at_least_one(lora_r=self.lora_r, prompt_virtual_tokens=self.prompt_virtual_tokens)
        require(0 <= self.lora_dropout < 1, f"lora-dropout={self.lora_dropout} must be in [0, 1).")
        require(self.lora_alpha > 0, f"lora-alpha={self.lora_alpha} must be positive.")
        one_of("lora-aggregation", self.lora_aggregation, AGGREGATIONS)
        one_of("lora-restart-init", self.lora_restart_init, RESTART_INITS)
        self.ranks()

    def ranks(self) -> list[int]:
        """``lora-ranks`` as integers (empty: one rank, ``lora-r``, for every client)."""
        try:
            ranks = [int(r) for r in self.lora_ranks.replace(" ", "").split(",") if r]
        except ValueError:
            raise ConfigError(f"lora-ranks='{self.lora_ranks}' is not a comma list of integers; "
                              "write it as e.g. lora-ranks='4,8,16'.") from None
        require(all(r >= 1 for r in ranks),
                f"lora-ranks='{self.lora_ranks}' has a rank below 1; every rank must be >= 1.")
        return ranks

    def rank_for(self, partition_id: int, node_rank: int = 0) -> int:
        """A client's rank: its node config's ``lora-r``, else ``lora-ranks`` by partition,
        else ``lora-r``."""
        if node_rank:
            return node_rank
        ranks = self.ranks()
        return ranks[partition_id % len(ranks)] if ranks else self.lora_r

    @property
    def scale(self) -> float:
        """s = alpha / r of the run's ``lora-r`` (rsLoRA: alpha / sqrt(r)): every client's
        adapter uses this scale whatever its rank, so a rank-4 and a rank-16 update count on the
        same footing."""
        return self.lora_alpha / (math.sqrt(self.lora_r) if self.lora_use_rslora else self.lora_r)

    def alpha_for(self, rank: int) -> float:
        """The alpha that gives an adapter of ``rank`` the run's :attr:`scale`."""
        return self.scale * (math.sqrt(rank) if self.lora_use_rslora else rank)


SECTION = ("lora", LoraSection)  # found by fedtune.config; read by the algorithms that list "lora"
