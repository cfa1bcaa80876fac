"""Server-side FedIT: the initial global adapter, centralized evaluation, saving the result, and
the ``lora-aggregation`` variants' server half (what goes down, what the strategy aggregates,
what is merged into the base)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch

from fedtune.algorithms.base import ServerHooks
from fedtune.algorithms.fedit.adapter import (
    WIRE_DTYPE,
    adapter_spec,
    load_adapter_state,
    save_adapter,
)
from fedtune.algorithms.fedit.dpo import heldout_pairs
from fedtune.algorithms.fedit.factors import (
    OTHER,
    A,
    B,
    check_ranks,
    exact_residual,
    pad,
    part,
    select,
    stacked,
)
from fedtune.algorithms.fedit.merged import MergedBase
from fedtune.algorithms.fedit.methods import REWRITES_BASE
from fedtune.algorithms.fedit.model import (
    base_shapes,
    initial_adapter,
    peft_model_for,
    set_base,
)
from fedtune.algorithms.fedit.payload import lora_payload
from fedtune.algorithms.fedit.variants import variant
from fedtune.config import Config
from fedtune.eval.central import CentralEvaluator
from fedtune.models.loading import build_tiny, is_tiny
from fedtune.models.quantize import saved_quantization
from fedtune.train.schedule import round_lr
from fedtune.wire import NUM_EXAMPLES, Records, as_received, check_metrics, check_record


class FedITServer(ServerHooks):
    """Owns the server's copy of the model, used for evaluation and for saving the adapter.

    The global ``arrays`` the strategy aggregates are the variant's shared parts; the rest of
    the adapter is its initialisation (FFA's A, FedSA's B, FLoRA's restarted factors).
    """

    wire_dtype = WIRE_DTYPE

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.variant = variant(cfg)
        self.model, self.tokenizer = peft_model_for(cfg)
        self.merged = MergedBase(base_shapes(self.model)) if self.variant.merges else None
        if self.merged is not None:
            set_base(cfg, None)  # a DPO reference is the base the run starts from
        dpo = cfg.train.objective == "dpo"  # held-out preference pairs instead of examples
        self.evaluator = CentralEvaluator(
            cfg, self.tokenizer, heldout_pairs(cfg, self.model, self.tokenizer) if dpo else None)
        self._spec = select(adapter_spec(self.model), self.variant.uploads)
        self._stash: list[tuple[dict[str, np.ndarray], float]] = []
        self.payload = lora_payload(self.variant, cfg.lora.scale,  # what the trust policy reads
                                    initial_adapter(cfg) if self.variant.frozen else {})

    def initial_arrays(self) -> dict[str, np.ndarray]:
        """The shared parts of the initial adapter (FedEx-LoRA: as the clients receive them)."""
        arrays = select(initial_adapter(self.cfg), self.variant.shares)
        return as_received(arrays, self.wire_dtype) if self._rounds_down else arrays

    @property
    def _rounds_down(self) -> bool:
        """Whether the global arrays are kept as the wire rounds them (FedEx-LoRA, whose
        residual is exact for the adapter the clients receive)."""
        return self.variant.merges and not self.variant.restarts

    def spec(self) -> dict[str, tuple[int, ...]]:
        """Key -> shape of the shared parts of the global adapter."""
        peft_model_for(self.cfg)
        return select(adapter_spec(self.model), self.variant.shares)

    def full_adapter(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The whole global adapter: the shared ``arrays`` over the initialisation."""
        return {**initial_adapter(self.cfg), **arrays}

    def check_reply(self, content: Records) -> str | None:
        """The uploaded parts with the global adapter's keys and shapes (FedIT and FLoRA: any
        one rank per reply, at most ``lora-r`` for FedIT), finite, 16 or 32 bits."""
        if self.variant.mixed_ranks:
            if "arrays" not in content.arrays:
                return "no 'arrays' record"
            cap = self.cfg.lora.lora_r if self.variant.name == "fedit" else None
            reason = check_ranks(content.arrays["arrays"], self._spec, cap)
        else:
            reason = check_record(content, "arrays", self._spec)
        return reason or check_metrics(content)

    # ---- the round loop's hooks (fedtune.flower.loop) ------------------------------------
    def down_records(self, node: str) -> Records | None:
        """FLoRA/FedEx-LoRA: the update of the merged base that ``node`` needs."""
        return self.merged.update_for(node) if self.merged is not None else None

    def delivered(self, node: str, ok: bool) -> None:
        """``node`` answered a message that carried :meth:`down_records` (``ok``: no error)."""
        if self.merged is not None:
            self.merged.delivered(node, ok, self.merged.round)

    def receive(self, replies: list[Records]) -> list[Records]:
        """The valid replies, before the strategy: FedIT pads lower ranks with zeros; FLoRA and
        FedEx-LoRA keep each client's factors (FLoRA's are not for the strategy)."""
        v, r = self.variant, self.cfg.lora.lora_r
        if v.merges:
            self._stash = [(select(rep.arrays["arrays"], (A, B)),
                            float(rep.metrics["metrics"][NUM_EXAMPLES])) for rep in replies]
        for rep in replies:
            if v.name == "fedit":
                rep.arrays["arrays"] = pad(rep.arrays["arrays"], r)
            elif v.merges:
                rep.arrays["arrays"] = select(rep.arrays["arrays"], v.shares)
        return replies

    def merge(self, server_round: int, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """After the strategy: merge sum_i p_i s B_i A_i (FLoRA), or its difference from the
        averaged adapter's s B A (FedEx-LoRA), into the base; p_i = n_i / sum n (FedAvg's).

        FedEx-LoRA: the averaged adapter goes down in 16 bits, so the residual is taken against
        what the clients receive (:func:`~fedtune.algorithms.fedit.factors.exact_residual`) and
        the new global arrays are that rounded adapter: every node's W0 + Delta + s B A is the
        server's model bit for bit, and equals sum_i p_i s B_i A_i to float32 rounding (the
        official code sends float32 state dicts: RaghavSinghal10/fedex-lora, fed_agg.py,
        ``aggregate_models_ours``)."""
        if self.merged is None or not self._stash:
            return arrays
        adapters, counts = zip(*self._stash, strict=True)
        weights = [n / sum(counts) for n in counts]
        if not self._rounds_down:
            factors = stacked(list(adapters), weights, self.cfg.lora.scale)
        else:
            arrays = as_received(arrays, self.wire_dtype)
            factors = exact_residual(list(adapters), weights, self.cfg.lora.scale, arrays)
        self.merged.add(server_round, factors)
        self._stash = []
        return arrays

    # ---- state, evaluation, the result ---------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """The merged base (FLoRA, FedEx-LoRA); nothing else beyond the global adapter (which
        the checkpoint holds) changes per round."""
        return self.merged.state_dict() if self.merged is not None else {}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        if self.merged is not None:
            self.merged.load_state_dict(state)
            if not self.cfg.output.node_state_dir:  # nodes restart with empty state
                self.merged.forget_nodes()
        elif state:
            raise ValueError(f"unexpected FedIT server state: {sorted(state)}")

    def train_config(self, server_round: int) -> dict[str, float]:
        """The round's learning rate (the schedule runs over rounds, on the server)."""
        t = self.cfg.train
        return {"lr": round_lr(t.lr, server_round, self.cfg.server.num_server_rounds,
                               t.lr_schedule, t.min_lr_ratio)}

    def _load(self, arrays: dict[str, np.ndarray]) -> None:
        peft_model_for(self.cfg)  # the global adapter active (clients may share the model)
        if self.merged is not None:
            set_base(self.cfg, self.merged.delta)
        load_adapter_state(self.model, self.full_adapter(arrays))

    def evaluate(self, arrays: dict[str, np.ndarray]) -> dict[str, float]:
        """Held-out loss, perplexity and exact match of the global adapter (all categories).
        FedSA-LoRA's global model has B = 0 (each client keeps its own B)."""
        self._load(arrays)
        return self.evaluator(self.model)

    def save(self, arrays: dict[str, np.ndarray], run_dir: Path) -> Path:
        """Write the PEFT adapter folder (and, for `tiny`, the base model + tokenizer); FLoRA
        and FedEx-LoRA, whose base changed, write the merged model instead."""
        self._load(arrays)
        if self.merged is not None:
            return self._save_merged(run_dir)
        out = run_dir / "adapter"
        if is_tiny(self.cfg.model.model):
            base_dir = run_dir / "base-model"
            build_tiny().save_pretrained(base_dir)  # frozen base == the deterministic preset
            self.tokenizer.save_pretrained(base_dir)
            base_ref = str(base_dir.resolve())
        else:
            base_ref = self.cfg.model.model
        self.model.peft_config["default"].base_model_name_or_path = base_ref
        if self.cfg.lora.lora_init in REWRITES_BASE:
            self._save_converted(arrays, out)
        else:
            save_adapter(self.model, out)
        self.tokenizer.save_pretrained(out)
        (out / "fedtune.json").write_text(json.dumps(
            {"base_model": base_ref, "peft_method": self.cfg.lora.peft_method,
             "lora_aggregation": self.variant.name,
             **saved_quantization(self.cfg.model)}, indent=2))
        return out

    def _save_converted(self, arrays: dict[str, np.ndarray], out: Path) -> None:
        """PiSSA/OLoRA: the process's base is the residual W - s B0 A0, so the adapter is saved
        as the plain LoRA of rank 2r that gives the same model on the untouched base: [B, B0]
        [A; -A0] = B A - B0 A0, alpha doubled (rsLoRA: times sqrt 2) to keep the scale (as
        peft's ``path_initial_model_for_weight_conversion``, which cannot convert an adapter
        with ``modules_to_save``)."""
        from safetensors.torch import save_file

        lora = self.cfg.lora
        trained, initial = self.full_adapter(arrays), initial_adapter(self.cfg)
        state = {}
        for k, v in trained.items():
            p = part(k)
            if p != OTHER:
                v = (np.concatenate([v, -initial[k]], axis=0) if p == A
                     else np.concatenate([v, initial[k]], axis=1))
            state[k] = torch.from_numpy(np.ascontiguousarray(v, np.float32))
        config = copy.deepcopy(self.model.peft_config["default"])
        config.r = 2 * lora.lora_r
        config.lora_alpha = lora.lora_alpha * (np.sqrt(2) if lora.lora_use_rslora else 2)
        config.init_lora_weights = True
        out.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(out)
        save_file(state, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})

    def _save_merged(self, run_dir: Path) -> Path:
        """W0 + Delta + s B A (and the trained modules_to_save) as a Hugging Face model folder."""
        out = run_dir / "model"
        merged = copy.deepcopy(self.model).merge_and_unload()
        merged.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        (out / "fedtune.json").write_text(json.dumps(
            {"base_model": self.cfg.model.model, "lora_aggregation": self.variant.name,
             "merged_rounds": self.merged.round}, indent=2))
        return out


