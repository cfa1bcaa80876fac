"""How the server combines the clients' LoRA adapters (``lora-aggregation``).

Every variant is a :class:`Variant`: which parts of the adapter are shared (sent down and
aggregated by the strategy), which a client uploads, which it trains, keeps or restarts, and
whether the round's exact product is merged into the frozen base. A LoRA key is one of three
parts: ``A`` (``lora_A``, r x in), ``B`` (``lora_B``, out x r) or ``other`` (full copies of
``modules_to_save``, always shared and averaged).

Averaging A and B separately (FedIT) gives the model (sum_i p_i B_i)(sum_j p_j A_j), not the
average of the clients' updates sum_i p_i B_i A_i; the cross terms p_i p_j B_i A_j are
aggregation noise. The variants below remove it in different ways.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedtune.config import Config

A, B, OTHER = "A", "B", "other"
ALL = frozenset({A, B, OTHER})


@dataclass(frozen=True)
class Variant:
    name: str
    reference: str
    shares: frozenset[str]  # parts the server sends down and its strategy aggregates
    uploads: frozenset[str]  # parts a client sends up
    frozen: frozenset[str] = frozenset()  # parts a client never trains
    local: frozenset[str] = frozenset()  # parts a client keeps in its node state (personal)
    merges: bool = False  # the exact sum_i p_i s B_i A_i minus the adapter's own product goes
    #                       into the base each round (the factors of that change go down)
    restarts: bool = False  # the adapter restarts from its initialisation every round (the
    #                         run's, or each client's own with lora-restart-init='fresh')
    mixed_ranks: str = ""  # how it takes clients of different ranks ("" = it cannot)
    strategies: tuple[str, ...] = ()  # the strategies that fit ( () = every array strategy;
    #                                   SCAFFOLD only with fedit at one rank: fedtune.compat)

    @property
    def trains_whole_adapter(self) -> bool:
        """Whether every client trains, uploads and is sent back the whole adapter, as a
        strategy with a client half over every trainable parameter (SCAFFOLD) needs."""
        return (self.shares == ALL and self.uploads == ALL and not self.frozen
                and not self.local and not self.merges and not self.restarts)

    @property
    def pads_ranks(self) -> bool:
        """Whether clients of other ranks are zero-padded to the global adapter's rank
        (``lora-r``), so no client's rank may exceed it (a merging variant stacks instead)."""
        return bool(self.mixed_ranks) and not self.merges


VARIANTS = {v.name: v for v in (
    Variant("fedit", "Zhang et al., ICASSP 2024 (FedAvg of A and B)", shares=ALL, uploads=ALL,
            mixed_ranks="zero padding (HetLoRA-style): a rank-r client trains the first r "
                        "rows of A and columns of B; the server pads its reply with zeros"),
    Variant("ffa", "Sun et al., ICLR 2024 (FFA-LoRA)", shares=frozenset({B, OTHER}),
            uploads=frozenset({B, OTHER}), frozen=frozenset({A})),
    Variant("fedsa", "Guo et al., ICLR 2025 (FedSA-LoRA)", shares=frozenset({A, OTHER}),
            uploads=frozenset({A, OTHER}), local=frozenset({B})),
    Variant("flora", "Wang et al., NeurIPS 2024 (FLoRA)", shares=frozenset({OTHER}),
            uploads=ALL, merges=True, restarts=True,
            mixed_ranks="stacking: the product of the stacked factors is exact for any ranks",
            strategies=("fedavg", "fedprox")),
    Variant("fedex", "Singhal et al., ACL 2025 (FedEx-LoRA)", shares=ALL, uploads=ALL,
            merges=True, strategies=("fedavg", "fedprox")),
)}


def variant(cfg: Config) -> Variant:
    return VARIANTS[cfg.lora.lora_aggregation]
