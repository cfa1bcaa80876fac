"""Full fine-tuning, client side: load the global weights, train them all, send them all."""

from __future__ import annotations

import numpy as np
import torch

from fedtune.config import Config
from fedtune.eval.loss import heldout_loss
from fedtune.models.loading import choose_placement, load_model, load_tokenizer
from fedtune.node import Node, node_data
from fedtune.train.local import SFTSettings, train_round
from fedtune.train.terms import strategy_terms
from fedtune.wire import Records


def _model(cfg: Config, arrays: dict[str, np.ndarray] | None = None):
    model = load_model(cfg.model.model, choose_placement(cfg.model.device, "float32"))
    if arrays is not None:
        model.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()})
    return model, load_tokenizer(cfg.model.model)


def _weights(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


class FullClient:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def train(self, content: Records, node: Node, state: dict) -> Records:
        conf, t = content.configs["config"], self.cfg.train
        model, tokenizer = _model(self.cfg, content.arrays["arrays"])
        data = node_data(self.cfg, node)
        settings = SFTSettings(steps=t.local_steps, batch_size=t.batch_size, lr=float(conf["lr"]),
                               grad_terms=strategy_terms(float(conf.get("proximal-mu", 0.0))))
        stats = train_round(model, data, settings, tokenizer.pad_token_id,
                            (self.cfg.server.seed, int(conf["server-round"]), node.name))
        return Records(arrays={"arrays": _weights(model)}, metrics={"metrics": {
            "num-examples": len(data), "train-loss": stats.train_loss}})

    def evaluate(self, content: Records, node: Node, state: dict) -> Records:
        model, tokenizer = _model(self.cfg, content.arrays["arrays"])
        data = node_data(self.cfg, node, held_out=True)
        loss = heldout_loss(model, data, tokenizer.pad_token_id, self.cfg.eval.eval_batch_size)
        return Records(metrics={"metrics": {"eval-loss": loss, "num-examples": len(data)}})
