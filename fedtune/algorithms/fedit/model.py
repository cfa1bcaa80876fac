"""The adapter-wrapped model (``peft-method``, LoRA by default) a process trains or evaluates,
built once per process.

In simulation a Ray worker serves many virtual clients one after another: they share this
model and only swap the adapter weights, so the base model is loaded once per worker. Clients of
another rank than ``lora-r`` (``lora-ranks``, a node's ``lora-r``) get their own named adapter on
the same base (peft's multi-adapter model), each seeded by (run seed, rank). FLoRA and FedEx-LoRA
merge a change into the frozen base: :func:`set_base` writes W0 + Delta into the base layers
(every user of the shared model sets the base it needs before use).
"""

from __future__ import annotations

import functools
from dataclasses import astuple, dataclass, field
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel

from fedtune.algorithms.fedit.adapter import adapter_config, adapter_state, add_adapter
from fedtune.algorithms.fedit.config import LoraSection
from fedtune.config import Config
from fedtune.errors import ConfigError
from fedtune.models.loading import choose_placement, is_tiny, load_model, load_tokenizer
from fedtune.models.quantize import Quantization
from fedtune.seeding import derive_seed


@dataclass
class _Loaded:
    model: PeftModel
    tokenizer: object
    lora: LoraSection
    seed: int
    initial: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)  # rank -> state
    base: dict[str, torch.Tensor] | None = None  # W0 of every LoRA layer (set_base's source)

    def activate(self, rank: int | None) -> None:
        """Make the adapter of ``rank`` (None: lora-r's, peft's "default") the active one."""
        name = "default" if rank is None or rank == self.lora.lora_r else f"rank-{rank}"
        if name not in self.model.peft_config:
            cfg = adapter_config(self.lora, model=self.model.get_base_model())
            cfg.r, cfg.lora_alpha = rank, self.lora.alpha_for(rank)  # the scale of lora-r
            cfg.modules_to_save = self.model.peft_config["default"].modules_to_save
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derive_seed(self.seed, "lora-init", rank))
                self.model.add_adapter(name, cfg)
        if self.model.active_adapter != name:
            self.model.set_adapter(name)
        if rank is not None and rank not in self.initial:
            self.initial[rank] = adapter_state(self.model)


@functools.lru_cache(maxsize=2)
def _cached(model: str, device: str, dtype: str, lora_key: tuple, seed: int,
            init_adapter: str = "", quant: Quantization | None = None) -> _Loaded:
    placement = choose_placement(device, dtype)
    tokenizer = load_tokenizer(model)
    base = load_model(model, placement, quant)
    if quant is not None:  # QLoRA: base frozen, norms in float32; train_round owns checkpointing
        from peft import prepare_model_for_kbit_training

        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    lora = LoraSection(*lora_key)
    if init_adapter:
        peft_model = _from_adapter(base, init_adapter)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "lora-init"))
            peft_model = add_adapter(base, lora, base_is_random=is_tiny(model))
    loaded = _Loaded(peft_model, tokenizer, lora, seed)
    loaded.initial[lora.lora_r] = adapter_state(peft_model)
    return loaded


def _from_adapter(base, path: str) -> PeftModel:
    """A trainable copy of a saved PEFT adapter (its own LoRA config: lora-* keys are unused)."""
    if not (Path(path) / "adapter_config.json").is_file():
        raise ConfigError(f"init-adapter='{path}' is not a PEFT adapter folder (no "
                          "adapter_config.json); pass a finished run's adapter folder, e.g. "
                          "runs/<run>/adapter.")
    try:
        model = PeftModel.from_pretrained(base, path, is_trainable=True)
    except (RuntimeError, ValueError) as err:
        raise ConfigError(f"init-adapter='{path}' does not fit the model: {err}; pass the "
                          "model the adapter was trained on as model=...") from None
    return model.to(next(base.parameters()).device)


def peft_model_for(cfg: Config, rank: int | None = None) -> tuple[PeftModel, object]:
    """(LoRA model, tokenizer) for this config, shared within the process, with the adapter of
    ``rank`` (None: ``lora-r``) active.

    The adapter weights are whatever was loaded last: callers load the arrays they need.
    """
    loaded = _cached(*_key(cfg))
    loaded.activate(rank)
    return loaded.model, loaded.tokenizer


def initial_adapter(cfg: Config, rank: int | None = None) -> dict[str, np.ndarray]:
    """The run's initial adapter of ``rank`` (None: ``lora-r``'s, the global one): seeded by
    the run seed (and the rank), or ``init-adapter``'s."""
    loaded = _cached(*_key(cfg))
    if rank is not None and rank not in loaded.initial:
        active = loaded.model.active_adapter
        loaded.activate(rank)
        loaded.model.set_adapter(active)
    state = loaded.initial[cfg.lora.lora_r if rank is None else rank]
    return {k: v.copy() for k, v in state.items()}


def fresh_adapter(cfg: Config, rank: int | None, server_round: int, node: str
                  ) -> dict[str, np.ndarray]:
    """A new initialisation of the adapter of ``rank`` for one client and round (FLoRA with
    ``lora-restart-init='fresh'``): every A drawn as peft's default, kaiming_uniform_(a=sqrt(5))
    = U(-1/sqrt(in), 1/sqrt(in)), every B zero, the rest (``modules_to_save``) as initialised;
    seeded by (run seed, round, node) on a CPU generator, so every device draws the same bits.

    The official FLoRA code builds each client's adapter with ``get_peft_model`` every round,
    from torch's running random state (ATP-1010/FederatedLLM, main.py: ``model_client =
    get_peft_model(copy.deepcopy(model), config)`` inside the client loop)."""
    gen = torch.Generator().manual_seed(derive_seed(cfg.server.seed, "lora-restart",
                                                    server_round, node))
    out = {}
    for k, v in initial_adapter(cfg, rank).items():
        if k.endswith(".lora_A.weight"):
            bound = 1.0 / np.sqrt(v.shape[1])
            v = ((torch.rand(v.shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound)
            v = v.to(torch.float32).numpy()
        elif k.endswith(".lora_B.weight"):
            v = np.zeros_like(v)
        out[k] = v
    return out


def lora_layers(model: PeftModel) -> dict[str, torch.nn.Module]:
    """Every LoRA layer by its adapter-key prefix (``<layer>.lora_A.weight``)."""
    from peft.tuners.lora import LoraLayer

    return {name: module for name, module in model.named_modules()
            if isinstance(module, LoraLayer)}


def base_shapes(model: PeftModel) -> dict[str, tuple[int, int]]:
    """(out, in) of every LoRA layer's base weight, the shape of a merged change."""
    return {name: (m.out_features, m.in_features) for name, m in lora_layers(model).items()}


def set_base(cfg: Config, delta: dict[str, np.ndarray] | None) -> None:
    """Write W0 + ``delta`` (None: W0) into the base weight of every LoRA layer of this config's
    shared model."""
    loaded = _cached(*_key(cfg))
    modules = lora_layers(loaded.model)
    if loaded.base is None:
        loaded.base = {n: m.get_base_layer().weight.detach().clone() for n, m in modules.items()}
    with torch.no_grad():
        for name, module in modules.items():
            weight, w0 = module.get_base_layer().weight, loaded.base[name]
            change = None if delta is None else delta.get(name)
            if change is None:
                weight.copy_(w0)
                continue
            d = torch.from_numpy(np.ascontiguousarray(change)).to(w0.device)
            if getattr(module, "fan_in_fan_out", False):
                d = d.T
            weight.copy_((w0.float() + d).to(weight.dtype))


def _key(cfg: Config) -> tuple:
    return (cfg.model.model, cfg.model.device, cfg.model.dtype, astuple(cfg.lora),
            cfg.server.seed, cfg.train.init_adapter, Quantization.of(cfg.model))
