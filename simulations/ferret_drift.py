"""Where Ferret's held-out loss goes round by round: the exact FedAvg step against Ferret's
projected one, from the same point, with the real run's clients and seeds (issue #30 item 9).

    python -m simulations.ferret_drift --recipe ferret-ni --rounds 3 --lr 0.05 0.02

For each local lr: round 0's held-out loss, then per round the clients the loop would sample
(seed, "train", round), their local steps (the recipe's local-steps, batch-size, grad-accum,
max-grad-norm, SGD at a constant lr, batches seeded as the client seeds them), the held-out
loss after the exact mean update ("exact") and after the mean of the projections Ferret's
clients would upload ("ferret", at ferret-server-lr; the trajectory follows it), the norms
of both, and the largest reconstructed (seed, block) term (the official server clips it at 30
in these units). One JSON line per round on stdout. Results: docs/bench-full-parameter-ni.md.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from fedtune.algorithms.ferret.blocks import group_blocks
from fedtune.algorithms.ferret.projection import SIGMA2, seeds_per_block
from fedtune.cli import load_recipe
from fedtune.config import Config
from fedtune.data.split import EXAMPLES, split
from fedtune.data.tokenize import encode_examples
from fedtune.eval.loss import heldout_loss
from fedtune.models.loading import choose_placement, load_model, load_tokenizer
from fedtune.node import Node, node_data
from fedtune.seeded import SeedPool
from fedtune.seeded.params import zo_named_parameters
from fedtune.seeded.rng import perturbations
from fedtune.seeding import rng
from fedtune.train.local import SFTSettings, train_round


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="ferret-ni")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lr", type=float, nargs="+", default=[0.05, 0.02])
    args = parser.parse_args(argv)
    flat = load_recipe(args.recipe)
    clients = int(flat.pop("num-clients", 40))
    cfg = Config.from_flat(flat)
    t, f, seed = cfg.train, cfg.ferret, cfg.server.seed
    tok = load_tokenizer(cfg.model.model)
    model = load_model(cfg.model.model, choose_placement("cpu", "float32"))
    params = [p for _, p in zo_named_parameters(model)]
    for p in model.parameters():
        p.requires_grad_(True)
    blocks = group_blocks([p.numel() for p in params], f.ferret_block_ratio)
    k = f.ferret_seeds
    seeds = [int(s) for s in SeedPool.from_run_seed(seed, k).seeds]
    z = [perturbations(seeds, i, p.numel()).double() for i, p in enumerate(params)]
    held_out = encode_examples(tok, split(cfg.data, EXAMPLES, "server", seed),
                               cfg.model.max_seq_len)
    w0 = [p.detach().clone() for p in params]
    per_round = max(cfg.server.min_train_nodes, int(clients * cfg.server.fraction_train))

    def put(weights: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for p, w in zip(params, weights, strict=True):
                p.copy_(w)

    def load(weights: list[torch.Tensor]) -> float:
        """Held-out loss at ``weights``."""
        put(weights)
        return heldout_loss(model, held_out, tok.pad_token_id, cfg.eval.eval_batch_size)

    def project(delta: list[torch.Tensor], gen: np.random.Generator) -> tuple[list, float]:
        """Ferret's reconstruction of ``delta`` (projection.project's math, dense), and its
        largest (seed, block) term's norm."""
        sq = np.zeros(max(blocks) + 1)
        for b, d in zip(blocks, delta, strict=True):
            sq[b] += float(d.square().sum())
        counts = seeds_per_block(np.sqrt(sq), k, f.ferret_min_seeds)
        out, top = [torch.zeros_like(d) for d in delta], 0.0
        for b, n in enumerate(counts):
            chosen = np.sort(gen.choice(k, size=int(n), replace=False))
            idx = [i for i, bi in enumerate(blocks) if bi == b]
            gamma = sum(z[i][chosen] @ delta[i].view(-1) for i in idx) / (n * SIGMA2)
            for i in idx:
                out[i] = (gamma @ z[i][chosen]).view_as(delta[i])
            norms = torch.sqrt(sum(z[i][chosen].square().sum(1) for i in idx))
            top = max(top, float((gamma.abs() * norms).max()))
        return out, top

    start = load(w0)
    for lr in args.lr:
        glob = [w.clone() for w in w0]
        print(json.dumps({"lr": lr, "round": 0, "loss": start}), flush=True)
        for rnd in range(1, args.rounds + 1):
            picks = sorted(rng(seed, "train", rnd).choice(clients, per_round, replace=False))
            deltas, recs, top = [], [], 0.0
            for c in picks:
                put(glob)
                node = Node(f"client-{int(c):04d}", int(c), clients)
                train_round(model, node_data(cfg, node), SFTSettings(
                    steps=t.local_steps, batch_size=t.batch_size, lr=lr, grad_accum=t.grad_accum,
                    max_grad_norm=t.max_grad_norm, optimizer="sgd"), tok.pad_token_id,
                    (seed, rnd, node.name))
                deltas.append([(g - p.detach()).double()
                               for g, p in zip(glob, params, strict=True)])
                rec, big = project(deltas[-1], rng(seed, "ferret", rnd, node.name))
                recs.append(rec)
                top = max(top, big)
            exact = [sum(d) / len(d) for d in zip(*deltas, strict=True)]
            rec = [sum(r) / len(r) for r in zip(*recs, strict=True)]
            row = {"lr": lr, "round": rnd, "clients": [int(c) for c in picks],
                   "exact_norm": float(torch.sqrt(sum(e.square().sum() for e in exact))),
                   "ferret_norm": float(torch.sqrt(sum(r.square().sum() for r in rec))),
                   "largest_term": top,
                   "exact": load([g - e.float() for g, e in zip(glob, exact, strict=True)])}
            glob = [g - f.ferret_server_lr * r.float() for g, r in zip(glob, rec, strict=True)]
            row["ferret"] = load(glob)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
