"""Server-side FedIT: the initial global adapter, centralized evaluation, saving the result."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fedtune.algorithms.fedit.adapter import WIRE_DTYPE, adapter_spec, load_adapter_state
from fedtune.algorithms.fedit.dpo import heldout_pairs
from fedtune.algorithms.fedit.model import initial_adapter, peft_model_for
from fedtune.algorithms.replies import Records, check_metrics, check_record
from fedtune.config import Config
from fedtune.data.split import EXAMPLES, split
from fedtune.data.tokenize import encode_examples
from fedtune.eval.generate import answer_metrics
from fedtune.eval.loss import heldout_loss
from fedtune.models.loading import build_tiny, is_tiny
from fedtune.train.schedule import round_lr


class FedITServer:
    """Owns the server's copy of the model, used for evaluation and for saving the adapter."""

    wire_dtype = WIRE_DTYPE

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.model, self.tokenizer = peft_model_for(cfg)
        dpo = cfg.train.objective == "dpo"  # held-out preference pairs instead of examples
        self.pairs = heldout_pairs(cfg, self.model, self.tokenizer) if dpo else None
        self.eval_examples = [] if dpo else split(cfg.data, EXAMPLES, "server", cfg.server.seed)
        self.eval_data = encode_examples(self.tokenizer, self.eval_examples, cfg.model.max_seq_len)
        self._spec = self.spec()

    def initial_arrays(self) -> dict[str, np.ndarray]:
        return initial_adapter(self.cfg)

    def spec(self) -> dict[str, tuple[int, ...]]:
        return adapter_spec(self.model)

    def check_reply(self, content: Records) -> str | None:
        """The adapter with the global adapter's keys and shapes, finite, 16 or 32 bits."""
        return check_record(content, "arrays", self._spec) or check_metrics(content)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Nothing beyond the global adapter (which the checkpoint holds) changes per round."""
        return {}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        if state:
            raise ValueError(f"unexpected FedIT server state: {sorted(state)}")

    def train_config(self, server_round: int) -> dict[str, float]:
        """The round's learning rate (the schedule runs over rounds, on the server)."""
        t = self.cfg.train
        return {"lr": round_lr(t.lr, server_round, self.cfg.server.num_server_rounds,
                               t.lr_schedule, t.min_lr_ratio)}

    def evaluate(self, arrays: dict[str, np.ndarray]) -> dict[str, float]:
        """Held-out loss, perplexity and exact match of the global adapter (all categories)."""
        load_adapter_state(self.model, arrays)
        if self.pairs is not None:  # DPO: reward accuracy, margin, log-probs, DPO loss
            return self.pairs.metrics(self.model)
        loss = heldout_loss(self.model, self.eval_data, self.tokenizer.pad_token_id,
                            self.cfg.eval.eval_batch_size)
        metrics = {"eval_loss": loss, "perplexity": float(np.exp(min(loss, 50.0)))}
        metrics.update(answer_metrics(self.model, self.tokenizer, self.eval_examples,
                                   self.cfg.eval.max_new_tokens, self.cfg.eval.eval_batch_size,
                                      self.cfg.model.max_seq_len))
        return metrics

    def save(self, arrays: dict[str, np.ndarray], run_dir: Path) -> Path:
        """Write the PEFT adapter folder (and, for `tiny`, the base model + tokenizer)."""
        load_adapter_state(self.model, arrays)
        out = run_dir / "adapter"
        if is_tiny(self.cfg.model.model):
            base_dir = run_dir / "base-model"
            build_tiny().save_pretrained(base_dir)  # frozen base == the deterministic preset
            self.tokenizer.save_pretrained(base_dir)
            base_ref = str(base_dir.resolve())
        else:
            base_ref = self.cfg.model.model
        self.model.peft_config["default"].base_model_name_or_path = base_ref
        self.model.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        (out / "fedtune.json").write_text(json.dumps({"base_model": base_ref}, indent=2))
        return out
