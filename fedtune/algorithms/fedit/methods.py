"""The PEFT methods a FedIT client can train (``peft-method``), each built by peft itself.

A :class:`Method` turns the ``lora`` section into peft's config for that method and says which
keys it reads (a key it does not read is refused by :mod:`fedtune.compat`, not ignored). What
travels and what the strategy averages is the method's *trainable* state only: the tensors
``get_peft_model_state_dict`` returns that are trainable parameters. Frozen parts every party
derives from the same inputs (VeRA's shared random projections from ``projection_prng_key``,
FourierFT's frequency positions from ``random_loc_seed``, PiSSA's and OLoRA's residual base
from the base weights) are built in each process and never sent.

Only LoRA has the ``A``/``B`` factors that the ``lora-aggregation`` variants other than
``fedit`` split, stack or merge; every other method is FedAvg of its trainable state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedtune.algorithms.fedit.config import PEFT_METHODS
from fedtune.models.targets import lora_targets

if TYPE_CHECKING:
    from peft import PeftConfig
    from torch import nn

    from fedtune.algorithms.fedit.config import LoraSection

#: ``lora-init`` values that rewrite the base weights into a residual (W - s B0 A0), so the
#: adapter starts from a non-zero product and the untouched base is gone from the process
REWRITES_BASE = frozenset({"pissa", "olora"})
#: the lora-section keys every method reads
COMMON = frozenset({"peft-method", "lora-modules-to-save"})
#: the keys of LoRA only (its aggregation variants, ranks and options)
LORA_ONLY = frozenset({"lora-aggregation", "lora-ranks", "lora-restart-init", "lora-use-dora",
                       "lora-use-rslora", "lora-init"})


@dataclass(frozen=True)
class Method:
    name: str
    reference: str  # the paper
    reads: frozenset[str]  # the lora-section keys it reads (besides COMMON)
    build: Callable[[LoraSection, dict, str], PeftConfig]  # (section, kwargs, model type)

    @property
    def targets(self) -> bool:
        """Whether it adapts the layers ``lora-target-modules`` names."""
        return "lora-target-modules" in self.reads


def _lora(s: LoraSection, kw: dict, model_type: str) -> PeftConfig:
    from peft import LoraConfig

    init = {"default": True}.get(s.lora_init, s.lora_init)
    return LoraConfig(r=s.lora_r, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout,
                      use_dora=s.lora_use_dora, use_rslora=s.lora_use_rslora,
                      init_lora_weights=init, **kw)


def _vera(s: LoraSection, kw: dict, model_type: str) -> PeftConfig:
    from peft import VeraConfig

    # the shared projections come from peft's fixed projection_prng_key; save_projection: the
    # exported folder carries them, so it loads exactly anywhere (they never travel in a round)
    return VeraConfig(r=s.lora_r, vera_dropout=s.lora_dropout, save_projection=True, **kw)


def _ia3(s: LoraSection, kw: dict, model_type: str) -> PeftConfig:
    from peft import IA3Config

    return IA3Config(feedforward_modules=_feedforward(kw["target_modules"], model_type), **kw)


def _feedforward(targets, model_type: str) -> list[str] | str:
    """IA3's feed-forward layers (their input is scaled, not their output): peft's table for
    the model type, among the targets; for ``all-linear`` as a pattern of full names, which
    peft can check against the full names it expands ``all-linear`` to when loading."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING

    table = TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING.get(model_type, [])
    if isinstance(targets, list):
        return [t for t in table if t in targets]
    return rf".*\.({'|'.join(table)})$" if table else []


def _prompt(s: LoraSection, kw: dict, model_type: str) -> PeftConfig:
    from peft import PromptTuningConfig

    kw = {k: v for k, v in kw.items() if k != "target_modules"}
    # the soft prompt starts as the embeddings of tokens drawn from the vocabulary (seeded by
    # the run), which a model reads far better than peft's default random vectors
    return PromptTuningConfig(num_virtual_tokens=s.prompt_virtual_tokens,
                              prompt_tuning_init="SAMPLE_VOCAB", **kw)


def _loha(s: LoraSection, kw: dict, model_type: str) -> PeftConfig:
    from peft import LoHaConfig

    return LoHaConfig(r=s.lora_r, alpha=s.lora_alpha, **kw)


def _lokr(s: LoraSection, kw: dict, model_type: str) -> PeftConfig:
    from peft import LoKrConfig

    return LoKrConfig(r=s.lora_r, alpha=s.lora_alpha, **kw)


def _oft(s: LoraSection, kw: dict, model_type: str) -> PeftConfig:
    from peft import OFTConfig

    return OFTConfig(r=s.lora_r, oft_block_size=0, **kw)  # r: the number of orthogonal blocks


def _hra(s: LoraSection, kw: dict, model_type: str) -> PeftConfig:
    from peft import HRAConfig

    return HRAConfig(r=s.lora_r, **kw)


def _fourierft(s: LoraSection, kw: dict, model_type: str) -> PeftConfig:
    from peft import FourierFTConfig

    # peft's 1,000 frequencies per layer at fixed positions (random_loc_seed); init_weights: a
    # zero spectrum, so round 0 is the base model (peft's default draws a random one)
    return FourierFTConfig(init_weights=True, **kw)


def _ln_tuning(s: LoraSection, kw: dict, model_type: str) -> PeftConfig:
    from peft import LNTuningConfig

    kw = {k: v for k, v in kw.items() if k != "target_modules"}  # peft's table of norms
    return LNTuningConfig(**kw)


_LAYERS = frozenset({"lora-target-modules"})
_RANKED = _LAYERS | {"lora-r"}
METHODS: dict[str, Method] = {m.name: m for m in (
    Method("lora", "Hu et al., ICLR 2022 (LoRA); DoRA: Liu et al., ICML 2024; rsLoRA: Kalajdzievski"
           ", 2023; PiSSA: Meng et al., NeurIPS 2024; OLoRA: Buyukakyuz, 2024",
           _RANKED | {"lora-alpha", "lora-dropout"} | LORA_ONLY, _lora),
    Method("vera", "Kopiczko et al., ICLR 2024 (VeRA)", _RANKED | {"lora-dropout"}, _vera),
    Method("ia3", "Liu et al., NeurIPS 2022 (IA3)", _LAYERS, _ia3),
    Method("prompt-tuning", "Lester et al., EMNLP 2021 (prompt tuning)",
           frozenset({"prompt-virtual-tokens"}), _prompt),
    Method("loha", "Hyeon-Woo et al., ICLR 2022 (FedPara, LoHa)", _RANKED | {"lora-alpha"},
           _loha),
    Method("lokr", "Edalati et al., 2022 (KronA, LoKr)", _RANKED | {"lora-alpha"}, _lokr),
    Method("oft", "Qiu et al., NeurIPS 2023 (OFT)", _RANKED, _oft),
    Method("hra", "Yuan et al., NeurIPS 2024 (HRA)", _RANKED, _hra),
    Method("fourierft", "Gao et al., ICML 2024 (FourierFT)",
           _LAYERS, _fourierft),
    Method("ln-tuning", "Zhao et al., ICLR 2024 (LN tuning)", frozenset(), _ln_tuning),
)}


assert tuple(METHODS) == PEFT_METHODS  # the section's list, kept import-light for the CLI


def peft_config(s: LoraSection, model: nn.Module | None = None,
                modules_to_save: list[str] | None = None) -> PeftConfig:
    """peft's config of the section's method; with ``model``, ``lora-target-modules`` is
    resolved and checked against its layers (:func:`fedtune.models.targets.lora_targets`)."""
    found = METHODS[s.peft_method]
    kw = {"task_type": "CAUSAL_LM", "modules_to_save": modules_to_save}
    if found.targets:
        kw["target_modules"] = lora_targets(s.lora_target_modules, model)
    model_type = str(getattr(getattr(model, "config", None), "model_type", ""))
    return found.build(s, kw, model_type)
