"""Baselines without federation, on the same model, data, schedule and evaluation as FedIT.

- ``local``: every client trains alone on its own data: the same local rounds as in FedIT
  (steps, learning-rate schedule, fresh optimizer per round) but every round, keeping its own
  adapter. Each round every client's adapter is evaluated on the centralized held-out set; the
  row reports the mean over clients (and the best and worst), the FedIT paper's comparison.
- ``centralized``: all clients' data pooled in one place, one adapter trained with the compute
  of a federated round per round (``local-steps`` x the number of clients FedIT samples).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from fedtune.algorithms.fedit import client as fedit_client
from fedtune.algorithms.fedit.server import FedITServer
from fedtune.config import Config
from fedtune.data.tokenize import EncodedSet
from fedtune.driver import RunDriver
from fedtune.node import Node, node_data


def _mean_row(per_client: list[dict[str, float]]) -> dict[str, Any]:
    keys = per_client[0].keys()
    row: dict[str, Any] = {k: float(np.mean([m[k] for m in per_client])) for k in keys}
    em = [m["exact_match"] for m in per_client]
    row["exact_match_min"], row["exact_match_max"] = min(em), max(em)
    return row


def sampled_per_round(cfg: Config, num_clients: int) -> int:
    s = cfg.server
    return min(num_clients, max(s.min_train_nodes, int(num_clients * s.fraction_train)))


class _BaselineRun:
    """What both baselines share on top of the run driver: FedIT's server side (schedule,
    central evaluation, saving) and the rows' fixed fields (nothing crosses a network)."""

    def __init__(self, cfg: Config, headline: str) -> None:
        self.cfg = cfg
        self.driver = RunDriver(cfg, headline)
        self.dir = self.driver.dir
        self.server = FedITServer(cfg)
        self.rounds = cfg.server.num_server_rounds
        self.base = {"algorithm": cfg.train.algorithm, "objective": cfg.train.objective,
                     "bytes_down_per_client": 0, "bytes_up_per_client": 0}

    def lr(self, rnd: int) -> float:
        return self.server.train_config(rnd)["lr"]

    def evaluates(self, rnd: int) -> bool:
        return rnd % self.cfg.eval.eval_every == 0 or rnd == self.rounds

    def log(self, row: dict[str, Any]) -> None:
        self.driver.log({**self.base, **row})

    def finish(self, result: Path, title: str) -> Path:
        return self.driver.finish(result, title)


def run_centralized(cfg: Config, num_clients: int) -> Path:
    """One adapter on the pooled data of ``num_clients`` clients (bytes are zero)."""
    pooled = EncodedSet()
    for p in range(num_clients):
        part = node_data(cfg, Node(f"client-{p:04d}", p, num_clients))
        pooled.items += part.items
        pooled.dropped += part.dropped
    steps = cfg.train.local_steps * sampled_per_round(cfg, num_clients)
    run = _BaselineRun(cfg, f"centralized baseline, {len(pooled)} pooled examples of "
                            f"{num_clients} clients, {steps} steps per round")
    node = Node("pooled", 0, 1)
    arrays = run.server.initial_arrays()
    run.log({"round": 0, "clients": 0, "train_loss": None, **run.server.evaluate(arrays),
             "seconds": 0.0})
    for rnd in range(1, run.rounds + 1):
        start = time.perf_counter()
        lr = run.lr(rnd)
        result = fedit_client.train(cfg, arrays, rnd, lr, node, data=pooled, steps=steps)
        arrays = result.arrays
        row = {"round": rnd, "clients": 1, "lr": lr, "train_loss": result.metrics["train-loss"]}
        if run.evaluates(rnd):
            row.update(run.server.evaluate(arrays))
        run.log({**row, "seconds": time.perf_counter() - start})
    return run.finish(run.server.save(arrays, run.dir), "all data pooled")


def run_local(cfg: Config, num_clients: int) -> Path:
    """Train ``num_clients`` isolated clients; write the usual run folder (bytes are zero)."""
    run = _BaselineRun(cfg, f"local baseline, {num_clients} clients alone on "
                            f"'{cfg.model.model}'")
    nodes = [Node(f"client-{p:04d}", p, num_clients) for p in range(num_clients)]
    arrays = {n.name: run.server.initial_arrays() for n in nodes}
    first = run.server.evaluate(run.server.initial_arrays())
    run.log({"round": 0, "clients": 0, "train_loss": None, **first,
             "exact_match_min": first["exact_match"], "exact_match_max": first["exact_match"],
             "seconds": 0.0})
    for rnd in range(1, run.rounds + 1):
        start = time.perf_counter()
        lr = run.lr(rnd)
        losses = []
        for node in nodes:
            result = fedit_client.train(cfg, arrays[node.name], rnd, lr, node)
            arrays[node.name] = result.arrays
            losses.append(result.metrics["train-loss"])
        row: dict[str, Any] = {"round": rnd, "clients": num_clients, "lr": lr,
                               "train_loss": float(np.mean(losses))}
        if run.evaluates(rnd):
            row.update(_mean_row([run.server.evaluate(arrays[n.name]) for n in nodes]))
        run.log({**row, "seconds": time.perf_counter() - start})
    for node in nodes:
        run.server.save(arrays[node.name], run.dir / "clients" / node.name)
    return run.finish(run.dir / "clients", "each client alone")
