"""One rule for skipped FedKSeed steps: a step with a NaN/Inf loss or |g| > zo-clip is left out of
the upload, so a reply carries 0..zo-steps pairs, and neither A nor FedKSeed-Pro's statistics
see it. With zo-clip = 0 (the default) every step is uploaded, exactly as before the rule."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from client_app.app import app as client_app
from fedtune.algorithms import resolve
from fedtune.algorithms.fedkseed import client as fedkseed_client
from fedtune.flower.loop import run_rounds
from fedtune.seeded import ZOStepResult, pack_pairs, unpack_pairs
from fedtune.strategies import build_strategy
from fedtune.wire import NUM_EXAMPLES, Records
from tests.conftest import small_config
from tests.inprocess_grid import InProcessGrid

pytestmark = pytest.mark.usefixtures("one_thread")

K, TAU, NODES = 64, 6, 3
CLIP = 1e4  # far above the |g| of a real step on `tiny` (a few units), far below a forced one
BIG = (100.0, 0.0)  # L+ - L- = 100: |g| = 100 / (2 eps) = 5e4 > CLIP at eps = 1e-3


def zo_config(**overrides):
    flat = {"algorithm": "fedkseed", "zo-seeds": K, "zo-steps": TAU, "batch-size": 2,
            "num-server-rounds": 1, "fraction-train": 1.0, "fraction-evaluate": 0.0,
            "max-new-tokens": 1, "eval-examples": 4, "examples-per-client": 16}
    flat.update(overrides)
    return small_config(**flat)


class Recorder:
    """Wraps the client's ``zo_step``: records every step's result and forces the planned ones
    to be skipped (huge |L+ - L-| or NaN) through the real step function."""

    def __init__(self, plan: dict[int, str]) -> None:
        self.plan = plan  # global step number -> "big" | "nan"
        self.steps: list[ZOStepResult] = []
        self.clips: list[float | None] = []
        self.rows: list[dict] = []  # the run's metrics rows
        self.real = fedkseed_client.zo_step

    def __call__(self, params, loss_fn: Callable, **kw) -> ZOStepResult:
        kind = self.plan.get(len(self.steps))
        if kind == "big":
            losses = iter(BIG)
            loss_fn = lambda: next(losses)  # noqa: E731
        elif kind == "nan":
            loss_fn = lambda: math.nan  # noqa: E731
        res = self.real(params, loss_fn, **kw)
        self.steps.append(res)
        self.clips.append(kw.get("clip"))
        return res

    def client(self, i: int) -> list[ZOStepResult]:
        """The steps of the i-th train reply (clients run one after another, TAU steps each)."""
        return self.steps[i * TAU:(i + 1) * TAU]


def run(cfg, monkeypatch, plan: dict[int, str]):
    """One round on an in-process Grid; returns (recorder, train replies in order, A, server)."""
    rec = Recorder(plan)
    monkeypatch.setattr(fedkseed_client, "zo_step", rec)
    replies = []

    def keep(node_id, reply):
        if reply.metadata.message_type == "train":
            replies.append(reply)
        return reply

    rows = rec.rows
    algorithm = resolve(cfg)
    server = algorithm.server(cfg)
    grid = InProcessGrid(client_app, NODES, cfg.to_flat(), tamper=keep)
    arrays = run_rounds(grid, cfg, server, build_strategy(cfg, algorithm.payload, server),
                        rows.append, wait_for_nodes=1)
    assert rows[1]["clients"] == NODES and rows[1]["dropped"] == 0, rows[1]
    return rec, replies, arrays["accumulated"], server


def pairs_of(reply) -> tuple[np.ndarray, np.ndarray]:
    return unpack_pairs(reply.content["zo"]["pairs"], K)


# Client 0 skips every step (3 clipped, 3 NaN), client 1 skips 3 of 6, client 2 none.
MIXED = {**{i: "big" for i in (0, 2, 4)}, **{i: "nan" for i in (1, 3, 5)},
         TAU + 1: "big", TAU + 2: "nan", TAU + 4: "big"}


def test_skipped_steps_are_left_out_of_the_upload_the_aggregate_and_pro(monkeypatch):
    cfg = zo_config(algorithm="fedkseed-pro", **{"zo-clip": CLIP})
    rec, replies, accumulated, server = run(cfg, monkeypatch, MIXED)
    assert len(replies) == NODES and set(rec.clips) == {CLIP}
    lengths = []
    for i, reply in enumerate(replies):
        steps = rec.client(i)
        forced = {t - i * TAU for t in MIXED if i * TAU <= t < (i + 1) * TAU}
        assert {t for t, s in enumerate(steps) if s.skipped} == forced  # only the forced ones
        idx, g = pairs_of(reply)
        taken = [s for s in steps if not s.skipped]
        np.testing.assert_array_equal(idx, [s.seed_index for s in taken])
        np.testing.assert_array_equal(g, np.array([s.g for s in taken], dtype=np.float32))
        assert np.all(g != 0.0)  # nothing uploaded is a placeholder
        assert reply.content["metrics"].get("skipped-steps", 0) == len(forced)  # if any
        lengths.append(len(idx))
    assert lengths == [0, TAU - 3, TAU]

    # Pro's statistics: one record per taken step, none for a skipped one.
    taken_idx = np.concatenate([pairs_of(r)[0] for r in replies])
    taken_g = np.concatenate([pairs_of(r)[1] for r in replies]).astype(np.float64)
    np.testing.assert_array_equal(server.pool.counts, np.bincount(taken_idx, minlength=K))
    np.testing.assert_allclose(server.pool.abs_sums,
                               np.bincount(taken_idx, np.abs(taken_g), minlength=K), rtol=1e-12)
    only_skipped = ({s.seed_index for s in rec.steps if s.skipped}
                    - {s.seed_index for s in rec.steps if not s.skipped})
    assert only_skipped and all(server.pool.counts[s] == 0 for s in only_skipped)

    # A = sum_i (n_i / N) sum_t g_it over mixed lengths; the empty reply is a zero delta that
    # still counts in N (its client stayed at the global model: FedAvg of deltas).
    n = np.array([r.content["metrics"][NUM_EXAMPLES] for r in replies], float)
    want = sum(w * np.bincount(pairs_of(r)[0], pairs_of(r)[1].astype(np.float64), minlength=K)
               for w, r in zip(n / n.sum(), replies, strict=True))
    np.testing.assert_allclose(accumulated, want, rtol=1e-6, atol=1e-7)
    assert np.count_nonzero(accumulated) > 0


def test_default_zo_clip_uploads_every_step_bit_for_bit_as_before(monkeypatch):
    """zo-clip = 0: no clip reaches the step, every reply has zo-steps pairs, and its bytes are
    those of the old rule (all drawn indices, a float32 zero for a skipped step)."""
    cfg = zo_config()
    rec, replies, _, _ = run(cfg, monkeypatch, {})
    assert set(rec.clips) == {None}
    for i, reply in enumerate(replies):
        steps = rec.client(i)
        assert not any(s.skipped for s in steps)
        old = np.zeros(TAU, dtype=np.float32)
        for t, s in enumerate(steps):
            old[t] = 0.0 if s.skipped else s.g
        before = pack_pairs(np.array([s.seed_index for s in steps], np.int64), old, K)
        assert reply.content["zo"]["pairs"] == before
        assert len(pairs_of(reply)[0]) == TAU
        assert "skipped-steps" not in reply.content["metrics"]  # sent only when some were


def _reply(n_pairs: int) -> Records:
    rng = np.random.default_rng(n_pairs)
    idx = rng.integers(0, K, n_pairs)
    g = rng.normal(size=n_pairs).astype(np.float32)
    return Records(configs={"zo": {"pairs": pack_pairs(idx, g, K)}},
                   metrics={"metrics": {NUM_EXAMPLES: 8, "train-loss": 1.0}})


def test_validator_accepts_0_to_zo_steps_pairs_and_drops_more():
    cfg = zo_config()
    server = resolve(cfg).server(cfg)
    for n in (0, 1, TAU - 1, TAU):
        assert server.check_reply(_reply(n)) is None, n
    reason = server.check_reply(_reply(TAU + 1))
    assert reason == f"{TAU + 1} seed pairs, expected at most zo-steps={TAU}"


def test_a_client_that_skipped_every_step_reports_no_train_loss(monkeypatch):
    """Client 0 skips all its steps: no ``train-loss`` (it was 0.0), and the round's train loss
    is the example-weighted mean over the two clients that have one."""
    from flwr.app import MetricRecord, RecordDict

    from fedtune.strategies.metrics import mean_metrics

    cfg = zo_config(**{"zo-clip": CLIP})
    rec, replies, _, _ = run(cfg, monkeypatch, MIXED)
    metrics = [r.content["metrics"] for r in replies]
    assert "train-loss" not in metrics[0] and metrics[0]["skipped-steps"] == TAU
    n = np.array([m[NUM_EXAMPLES] for m in metrics[1:]], float)
    losses = np.array([m["train-loss"] for m in metrics[1:]])
    assert rec.rows[1]["train_loss"] == pytest.approx(float(n @ losses / n.sum()), rel=1e-12)
    assert rec.rows[1]["train_loss"] >= losses.min()  # the zero used to pull it below
    # the mean is Flower's (aggregate_metricrecords) when every reply has every key
    both = [RecordDict({"m": MetricRecord({NUM_EXAMPLES: w, "a": x})}) for w, x in ((3, 1.5),
                                                                                   (5, 0.25))]
    assert dict(mean_metrics(both, NUM_EXAMPLES)) == {"a": (3 * 1.5 + 5 * 0.25) / 8}
    one = [both[0], RecordDict({"m": MetricRecord({NUM_EXAMPLES: 5})})]
    assert dict(mean_metrics(one, NUM_EXAMPLES)) == {"a": 1.5}
