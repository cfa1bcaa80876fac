"""FedIT's config section: the LoRA adapter every client trains and how the server aggregates
it (``lora-*`` keys)."""

from __future__ import annotations

from dataclasses import dataclass

from fedtune.errors import ConfigError, at_least_one, one_of, require

#: ``lora-aggregation`` values, each a :class:`~fedtune.algorithms.fedit.variants.Variant`.
AGGREGATIONS = ("fedit", "ffa", "fedsa", "flora", "fedex")
#: ``lora-restart-init`` values: where FLoRA's clients restart their adapter each round.
RESTART_INITS = ("shared", "fresh")


@dataclass
class LoraSection:
    lora_r: int = 16  # LoRA rank
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

    def validate(self) -> None:
        at_least_one(lora_r=self.lora_r)
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
        """alpha / r of the run's ``lora-r``: every client's adapter uses this scale whatever its
        rank, so a rank-4 and a rank-16 update count on the same footing."""
        return self.lora_alpha / self.lora_r


SECTION = ("lora", LoraSection)  # found by fedtune.config; read by the algorithms that list "lora"
