"""The ``train`` config section: the algorithm, the local objective and its optimisation."""

from __future__ import annotations

from dataclasses import dataclass

from fedtune.errors import at_least_one, one_of, require

OBJECTIVES = ("sft", "dpo")
DPO_LOSSES = ("sigmoid", "ipo")
LR_SCHEDULES = ("constant", "cosine", "linear")
#: Ferret's server lr over rounds (:func:`fedtune.train.schedule.server_lr`)
SERVER_LR_SCHEDULES = ("constant", "linear", "cosine")
OPTIMIZERS = ("adamw", "sgd")  # local optimizers (fedtune.train.local.make_optimizer)


@dataclass
class TrainConfig:
    # fedit, fedkseed, fedkseed-pro, ferret, full-ft (every weight, FedAvg); baselines local (each
    # client alone) and centralized (all data pooled); `fedtune algorithms` lists them
    algorithm: str = "fedit"
    objective: str = "sft"  # sft (instruction tuning) or dpo (preference pairs)
    local_steps: int = 20  # optimizer steps per client per round
    batch_size: int = 8  # examples per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 2e-3  # peak learning rate (AdamW)
    lr_schedule: str = "cosine"  # across rounds; constant within a round
    min_lr_ratio: float = 0.1  # final lr / peak lr for cosine and linear
    weight_decay: float = 0.0  # AdamW weight decay
    max_grad_norm: float = 1.0  # gradient clipping (0 = off)
    # DPO (objective=dpo; Rafailov et al., 2023): β of the DPO loss (implicit reward = β ×
    # log-ratio to the reference); 0 = auto: 0.5 on `tiny`, 0.1 (TRL's default) otherwise
    dpo_beta: float = 0.0
    dpo_loss: str = "sigmoid"  # sigmoid (DPO) or ipo (IPO, token-averaged as in TRL)
    dpo_label_smoothing: float = 0.0  # sigmoid only: conservative DPO's assumed label noise
    # adds this × the mean NLL of the chosen responses to the DPO loss (RPO; TRL's
    # `loss_type=["sigmoid","sft"]`)
    dpo_sft_weight: float = 0.0
    # FedIT: start from this PEFT adapter folder (e.g. `runs/<sft-run>/adapter`); with objective=dpo
    # it is also the fixed reference; its own LoRA config is used
    init_adapter: str = ""

    def validate(self) -> None:
        require(self.objective in OBJECTIVES, f"objective='{self.objective}' is not supported; "
                f"use one of {', '.join(OBJECTIVES)}.")
        one_of("lr-schedule", self.lr_schedule, LR_SCHEDULES)
        at_least_one(local_steps=self.local_steps, batch_size=self.batch_size,
                     grad_accum=self.grad_accum)
        require(self.lr > 0, f"lr={self.lr} must be positive.")
        require(self.weight_decay >= 0 and self.max_grad_norm >= 0,
                f"weight-decay={self.weight_decay} and max-grad-norm={self.max_grad_norm} must "
                "be >= 0 (max-grad-norm 0 = no clipping).")
        one_of("dpo-loss", self.dpo_loss, DPO_LOSSES)
        require(self.dpo_beta > 0, f"dpo-beta={self.dpo_beta} must be positive.")
        require(0 <= self.dpo_label_smoothing < 0.5,
                f"dpo-label-smoothing={self.dpo_label_smoothing} must be in [0, 0.5).")
        require(self.dpo_sft_weight >= 0, f"dpo-sft-weight={self.dpo_sft_weight} must be >= 0.")
        require(0 < self.min_lr_ratio <= 1, f"min-lr-ratio={self.min_lr_ratio} must be in (0, 1].")
