"""FedIT's config section: the LoRA adapter every client trains (``lora-*`` keys)."""

from __future__ import annotations

from dataclasses import dataclass

from fedtune.errors import at_least_one, require


@dataclass
class LoraSection:
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: str = "all-linear"  # comma list, or peft's "all-linear"
    # "auto": train embeddings and LM head too when the base is randomly initialised (the
    # `tiny` preset), since LoRA alone barely moves a random base; "" for none; or a comma list.
    lora_modules_to_save: str = "auto"

    def validate(self) -> None:
        at_least_one(lora_r=self.lora_r)
        require(0 <= self.lora_dropout < 1, f"lora-dropout={self.lora_dropout} must be in [0, 1).")
