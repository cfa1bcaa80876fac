"""Full fine-tuning, server side: the initial weights, the round's lr, reply check, the
central evaluation, the saved model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fedtune.algorithms.base import ServerHooks
from fedtune.algorithms.full_ft.client import _model, _weights
from fedtune.config import Config
from fedtune.eval.central import CentralEvaluator
from fedtune.train.schedule import round_lr
from fedtune.wire import Records, check_metrics, check_record


class FullServer(ServerHooks):
    wire_dtype = None  # float32 both ways

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.model, self.tokenizer = _model(cfg)
        self.spec = {k: v.shape for k, v in _weights(self.model).items()}
        self.evaluator = CentralEvaluator(cfg, self.tokenizer)

    def initial_arrays(self) -> dict[str, np.ndarray]:
        return _weights(self.model)

    def train_config(self, server_round: int) -> dict[str, float]:
        t, rounds = self.cfg.train, self.cfg.server.num_server_rounds
        return {"lr": round_lr(t.lr, server_round, rounds, t.lr_schedule, t.min_lr_ratio)}

    def check_reply(self, content: Records) -> str | None:
        return check_record(content, "arrays", self.spec) or check_metrics(content)

    def evaluate(self, arrays: dict[str, np.ndarray]) -> dict[str, float]:
        self.model.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()})
        return self.evaluator(self.model)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {}  # nothing but the global weights, which the checkpoint holds

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        del state

    def save(self, arrays: dict[str, np.ndarray], run_dir: Path) -> Path:
        self.model.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()})
        self.model.save_pretrained(run_dir / "model")
        self.tokenizer.save_pretrained(run_dir / "model")
        return run_dir / "model"
