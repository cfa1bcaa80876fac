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

from fedtune.config import Config
from fedtune.data.tokenize import EncodedSet
from fedtune.fedit import client as fedit_client
from fedtune.fedit.server import FedITServer
from fedtune.node import Node, node_data
from fedtune.plot import plot_metrics
from fedtune.progress import final_table, round_line
from fedtune.results import RunWriter, new_run_dir
from fedtune.train.schedule import round_lr


def _mean_row(per_client: list[dict[str, float]]) -> dict[str, Any]:
    keys = per_client[0].keys()
    row: dict[str, Any] = {k: float(np.mean([m[k] for m in per_client])) for k in keys}
    em = [m["exact_match"] for m in per_client]
    row["exact_match_min"], row["exact_match_max"] = min(em), max(em)
    return row


def sampled_per_round(cfg: Config, num_clients: int) -> int:
    s = cfg.server
    return min(num_clients, max(s.min_train_nodes, int(num_clients * s.fraction_train)))


def run_baseline(cfg: Config, num_clients: int) -> Path:
    """Run ``cfg.train.algorithm`` (local or centralized); write the usual run folder."""
    if cfg.train.algorithm == "centralized":
        return run_centralized(cfg, num_clients)
    return run_local(cfg, num_clients)


def run_centralized(cfg: Config, num_clients: int) -> Path:
    """One adapter on the pooled data of ``num_clients`` clients (bytes are zero)."""
    run_dir = Path(cfg.output.run_dir) if cfg.output.run_dir else new_run_dir(cfg)
    writer = RunWriter(run_dir, cfg)
    server = FedITServer(cfg)
    pooled = EncodedSet()
    for p in range(num_clients):
        part = node_data(cfg, Node(f"client-{p:04d}", p, num_clients))
        pooled.items += part.items
        pooled.dropped += part.dropped
    node = Node("pooled", 0, 1)
    steps = cfg.train.local_steps * sampled_per_round(cfg, num_clients)
    rounds = cfg.server.num_server_rounds
    print(f"fedtune: centralized baseline, {len(pooled)} pooled examples of {num_clients} "
          f"clients, {steps} steps per round, results in {run_dir}", flush=True)
    arrays = server.initial_arrays()
    rows = [{"round": 0, "algorithm": "centralized", "objective": cfg.train.objective,
             "clients": 0, "train_loss": None, "bytes_down_per_client": 0,
             "bytes_up_per_client": 0, **server.evaluate(arrays), "seconds": 0.0}]
    writer.log_round(rows[0])
    print(round_line(rows[0], rounds), flush=True)
    for rnd in range(1, rounds + 1):
        start = time.perf_counter()
        lr = round_lr(cfg.train.lr, rnd, rounds, cfg.train.lr_schedule, cfg.train.min_lr_ratio)
        result = fedit_client.train(cfg, arrays, rnd, lr, node, data=pooled, steps=steps)
        arrays = result.arrays
        row = {"round": rnd, "algorithm": "centralized", "objective": cfg.train.objective,
               "clients": 1, "lr": lr, "train_loss": result.metrics["train-loss"],
               "bytes_down_per_client": 0, "bytes_up_per_client": 0}
        if rnd % cfg.eval.eval_every == 0 or rnd == rounds:
            row.update(server.evaluate(arrays))
        row["seconds"] = time.perf_counter() - start
        writer.log_round(row)
        print(round_line(row, rounds), flush=True)
    adapter = server.save(arrays, run_dir)
    writer.write_summary({"result": str(adapter)})
    plot_metrics(writer.rows, run_dir / "metrics.png", f"{cfg.name}: all data pooled")
    print(final_table(writer.rows[0], writer.rows[-1]), flush=True)
    return run_dir


def run_local(cfg: Config, num_clients: int) -> Path:
    """Train ``num_clients`` isolated clients; write the usual run folder (bytes are zero)."""
    run_dir = Path(cfg.output.run_dir) if cfg.output.run_dir else new_run_dir(cfg)
    writer = RunWriter(run_dir, cfg)
    server = FedITServer(cfg)
    nodes = [Node(f"client-{p:04d}", p, num_clients) for p in range(num_clients)]
    arrays = {n.name: server.initial_arrays() for n in nodes}
    rounds = cfg.server.num_server_rounds
    print(f"fedtune: local baseline, {num_clients} clients alone on '{cfg.model.model}', "
          f"results in {run_dir}", flush=True)

    def log(row: dict[str, Any]) -> None:
        writer.log_round(row)
        print(round_line(row, rounds), flush=True)

    base = {"algorithm": "local", "objective": cfg.train.objective, "clients": num_clients,
            "bytes_down_per_client": 0, "bytes_up_per_client": 0}
    first = server.evaluate(server.initial_arrays())
    log({"round": 0, **base, "clients": 0, "train_loss": None, **first,
         "exact_match_min": first["exact_match"], "exact_match_max": first["exact_match"],
         "seconds": 0.0})
    for rnd in range(1, rounds + 1):
        start = time.perf_counter()
        lr = round_lr(cfg.train.lr, rnd, rounds, cfg.train.lr_schedule, cfg.train.min_lr_ratio)
        losses = []
        for node in nodes:
            result = fedit_client.train(cfg, arrays[node.name], rnd, lr, node)
            arrays[node.name] = result.arrays
            losses.append(result.metrics["train-loss"])
        row: dict[str, Any] = {"round": rnd, **base, "lr": lr,
                               "train_loss": float(np.mean(losses))}
        if rnd % cfg.eval.eval_every == 0 or rnd == rounds:
            row.update(_mean_row([server.evaluate(arrays[n.name]) for n in nodes]))
        row["seconds"] = time.perf_counter() - start
        log(row)
    for node in nodes:
        server.save(arrays[node.name], run_dir / "clients" / node.name)
    writer.write_summary({"result": str(run_dir / "clients")})
    plot_metrics(writer.rows, run_dir / "metrics.png", f"{cfg.name}: each client alone")
    print(final_table(writer.rows[0], writer.rows[-1]), flush=True)
    return run_dir
