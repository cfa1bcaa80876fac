"""Audits of the DP guarantee, as attacks that could succeed (issue #25 item 7).

- The attacker: everything the clients of a real ``dp='server'`` FedIT run received and every
  file the run wrote; with every integer found there as a seed (the run seed first) and the
  derivations fedtune ever used, regenerate round 1's noise and subtract it. Its estimate of the
  true clipped mean must be no better than the noise allows.
- An empirical DP audit of the release (:func:`noisy_mean` with the randomness the DP strategy
  gives it): neighbouring inputs (one client's +C e replaced by -C e, others fixed), a threshold
  distinguisher that also subtracts what it can regenerate from public values, and a
  Clopper-Pearson 95% lower bound on epsilon, which must stay at or below the accountant's. The
  same code catches two broken mechanisms (noise 10x too small, noise from the public seed).
- The sample: nothing a DP run writes names who was sampled, and the sample is not the one the
  run seed regenerates.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from scipy import stats

from client_app.app import app as client_app
from fedtune.checkpoint import config_fingerprint
from fedtune.config import Config
from fedtune.flower.loop import sample
from fedtune.privacy.accountant import Accountant
from fedtune.privacy.mechanism import clip, noisy_mean
from fedtune.privacy.randomness import SECRET_ENV, privacy_rng
from fedtune.seeding import rng
from server_app.app import main as server_main
from tests.inprocess_grid import InProcessGrid
from tests.test_privacy import FAST

NODES, FIRST_ID = 8, 48611  # node ids 48611 + 7919 p: distinctive numbers to look for in files
DP_RUN = {**FAST, "dp": "server", "dp-noise-multiplier": 1.0, "dp-clip-norm": 1.0,
          "num-server-rounds": 3, "min-available-nodes": NODES, "fraction-train": 0.375,
          "local-steps": 1, "examples-per-client": 8, "eval-examples": 4, "eval-every": 10}


# ---- one real DP run, recorded ---------------------------------------------------------
@dataclass
class Exchange:
    kind: str  # the message type: train, query.identify, ...
    node: int
    round: int | None
    sent: dict[str, np.ndarray]  # the arrays the node received
    configs: dict  # the config records it received
    reply: dict[str, np.ndarray]  # the arrays it replied (before the server touched them)
    name: str | None = None  # its answer to identify


class RecordingGrid(InProcessGrid):
    """An in-process grid that keeps a copy of every message and reply."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.log: list[Exchange] = []

    def send_and_receive(self, messages, *, timeout=None) -> list[Message]:
        messages = list(messages)
        sent = [(_arrays(m), {k: dict(v) for k, v in m.content.config_records.items()})
                for m in messages]
        replies = super().send_and_receive(messages, timeout=timeout)
        for msg, (arrays, configs), reply in zip(messages, sent, replies, strict=True):
            node = reply.content.config_records.get("node") if reply.has_content() else None
            self.log.append(Exchange(
                msg.metadata.message_type, msg.metadata.dst_node_id,
                configs.get("config", {}).get("server-round"), arrays, configs,
                _arrays(reply) if reply.has_content() else {},
                str(node["name"]) if node is not None else None))
        return replies


def _arrays(msg: Message) -> dict[str, np.ndarray]:
    if "arrays" not in msg.content.array_records:
        return {}
    return {k: v.numpy().astype(np.float64) for k, v in msg.content["arrays"].items()}


@dataclass
class RecordedRun:
    run_dir: Path
    log: list[Exchange]
    run_config: dict  # what every ClientApp's context holds
    files: dict[str, bytes] = field(default_factory=dict)

    def train(self, rnd: int) -> list[Exchange]:
        return [e for e in self.log if e.kind == "train" and e.round == rnd]


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory) -> RecordedRun:
    import torch
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("audit") / "dp"
    flat = {**DP_RUN, "run-dir": str(run_dir)}
    grid = RecordingGrid(client_app, NODES, flat, first_id=FIRST_ID)
    try:
        server_main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                                  run_config=flat))
    finally:
        torch.set_num_threads(threads)
    files = {str(p.relative_to(run_dir)): p.read_bytes()
             for p in sorted(run_dir.rglob("*")) if p.is_file()}
    return RecordedRun(run_dir, grid.log, flat, files)


# ---- the attacker ----------------------------------------------------------------------
def public_integers(run: RecordedRun) -> list[int]:
    """Every integer a client or a reader of the results can see: the run config (run seed
    first), message configs, Flower's run and node ids, every number in every file."""
    found = [int(run.run_config["seed"]), 0, 1]  # the seed; Flower's run id; its first round

    def walk(value) -> None:
        if isinstance(value, bool):
            return
        if isinstance(value, int) or (isinstance(value, float) and value.is_integer()
                                      and abs(value) < 2**63):
            found.append(int(value))
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list | tuple):
            for v in value:
                walk(v)

    walk(run.run_config)
    for e in run.log:
        walk(e.configs)
        found.append(e.node)
    for name, data in run.files.items():
        if name.endswith(".npz"):
            with np.load(io.BytesIO(data)) as arrays:
                for key in arrays.files:
                    if arrays[key].size <= 64:  # scalars and small tables, not the model
                        walk(arrays[key].ravel().tolist())
            continue
        text = data.decode("utf-8", "ignore")
        found += [int(x) for x in re.findall(r"(?<![\d.])-?\d{1,19}(?![\d.])", text)]
    return list(dict.fromkeys(x for x in found if -(2**63) < x < 2**63))


def public_strings(run: RecordedRun) -> list[str]:
    """The run config's fingerprints (what a run derives its streams from), as the clients
    can compute them from the run config they receive."""
    flat = dict(run.run_config)
    return list(dict.fromkeys([config_fingerprint(flat),
                               config_fingerprint(Config.from_flat(flat).to_flat())]))


def candidate_noises(seeds: list[int | str], rnd: int, monkeypatch):
    """Generators for the noise each public value would have given under the derivation
    fedtune used up to issue #25, rng(seed, "dp-noise", round), obvious variants, and the
    server-secret derivation keyed with guessable secrets."""
    for s in seeds:
        yield rng(s, "dp-noise", rnd)
        yield rng(s, "dp-noise", rnd - 1)
        yield rng("dp-noise", s, rnd)
        yield rng(s, "dp-noise")
        yield rng(s)
        if isinstance(s, int) and s >= 0:
            yield np.random.default_rng(s)
    for secret in ("0", "1", "fedtune", "secret", *map(str, seeds[:3])):
        monkeypatch.setenv(SECRET_ENV, secret)
        for s in seeds:
            if isinstance(s, str):
                yield privacy_rng("dp-noise", s, rnd)
    monkeypatch.delenv(SECRET_ENV)


def test_an_attacker_with_every_public_value_cannot_subtract_the_noise(dp_run,
                                                                       monkeypatch):
    """Round 1's released mean is x1 - x0 (x0 what the sampled clients received, x1 what
    round 2's clients received); the truth is the mean of the clipped true updates. Every
    candidate is screened on the first coordinates (a generator's first draws do not depend on
    how many follow); the best few are then tried on the whole vector."""
    z, c = DP_RUN["dp-noise-multiplier"], DP_RUN["dp-clip-norm"]
    first, second = dp_run.train(1), dp_run.train(2)
    m = len(first)
    keys = list(first[0].sent)
    x0 = np.concatenate([first[0].sent[k].ravel() for k in keys])
    x1 = np.concatenate([second[0].sent[k].ravel() for k in keys])
    truth = sum(clip(np.concatenate([e.reply[k].ravel() for k in keys]) - x0, c)[0]
                for e in first) / m
    released = x1 - x0
    noise_norm = z * c * np.sqrt(x0.size) / m  # the norm of the noise on the mean, about
    seeds = [*public_integers(dp_run), *public_strings(dp_run)]
    assert int(DP_RUN["seed"]) in seeds and len(seeds) > 20
    head = 512
    screened = sorted(
        (np.linalg.norm(released[:head] - gen.normal(0.0, z * c, head) / m - truth[:head]), i)
        for i, gen in enumerate(candidate_noises(seeds, 1, monkeypatch)))
    best_few = {i for _, i in screened[:5]}
    errors = {"no subtraction": np.linalg.norm(released - truth)}
    for i, gen in enumerate(candidate_noises(seeds, 1, monkeypatch)):
        if i in best_few:
            errors[f"candidate {i} of {len(screened)}"] = np.linalg.norm(
                released - gen.normal(0.0, z * c, x0.size) / m - truth)
    assert 0.9 < errors["no subtraction"] / noise_norm < 1.1  # release = truth + noise
    best = min(errors, key=errors.__getitem__)
    print(f"attacker: {len(screened)} candidates; best error {errors[best] / noise_norm:.3g} x "
          f"the noise's norm ({best}); no subtraction "
          f"{errors['no subtraction'] / noise_norm:.3g}")
    assert errors[best] > 0.5 * noise_norm, (
        f"the attacker recovered round 1's clipped mean to {errors[best] / noise_norm:.2g} x "
        f"the noise's norm ({best})")


# ---- the sample ------------------------------------------------------------------------
def test_nothing_written_reveals_who_was_sampled(dp_run):
    names = {e.node: e.name for e in dp_run.log if e.name is not None}
    assert len(names) == NODES
    for file, data in dp_run.files.items():
        for node, name in names.items():
            assert name.encode() not in data, f"{file} names node {name}"
            assert not holds_number(data, node), f"{file} holds node id {node}"


def holds_number(data: bytes, number: int) -> bool:
    """Whether ``number`` appears in ``data`` as a whole decimal number."""
    token, start = str(number).encode(), 0
    while (at := data.find(token, start)) >= 0:
        before, after = data[at - 1:at], data[at + len(token):at + len(token) + 1]
        if not (before.isdigit() or after.isdigit()):
            return True
        start = at + 1
    return False


def test_the_sample_is_not_the_one_the_run_seed_regenerates(dp_run):
    """8 nodes, 3 a round: a secret sample matches the seeded one in all 3 rounds with
    probability 56^-3."""
    names = {e.node: e.name for e in dp_run.log if e.name is not None}
    ids = sorted(names, key=names.__getitem__)  # the loop samples over nodes in name order
    actual = [sorted(e.node for e in dp_run.train(r)) for r in (1, 2, 3)]
    assert all(len(a) == 3 for a in actual)
    seeded = [sample(ids, DP_RUN["fraction-train"], DP_RUN["min-train-nodes"], DP_RUN["seed"],
                     "train", r) for r in (1, 2, 3)]
    assert actual != [sorted(s) for s in seeded], "every round's sample is the seeded one"


# ---- the empirical DP audit of the release mechanism -----------------------------------
Z, C, M, D, DELTA, SEED = 2.5, 1.0, 4, 8, 1e-5, 5
TRIALS = 6_000  # per neighbour: a third picks the distinguisher, the rest bounds epsilon
E = np.eye(D)[0]
OTHERS = [np.random.default_rng(7).normal(size=D) * s for s in (0.3, 0.8, 2.0)]  # one clipped
OTHERS_SUM = sum(clip(v, C)[0] for v in OTHERS)


FINGERPRINT = config_fingerprint(Config().to_flat())


def honest(contributions, rnd):
    """As the DP strategy releases a round (fedtune.strategies.dp)."""
    return noisy_mean(contributions, M, C, Z, privacy_rng("dp-noise", FINGERPRINT, rnd))[0]


def noise_too_small(contributions, rnd):
    return noisy_mean(contributions, M, C, Z / 10,
                      privacy_rng("dp-noise", FINGERPRINT, rnd))[0]


def noise_from_the_public_seed(contributions, rnd):
    """The release up to issue #25: noise from rng(run seed, "dp-noise", round)."""
    return noisy_mean(contributions, M, C, Z, rng(SEED, "dp-noise", rnd))[0]


def statistics(mechanism, sign: float, rounds: range) -> np.ndarray:
    """Per trial, the distinguisher's two scores along e: the released sum less the others'
    (it knows them), without and with the noise regenerated from the public seed."""
    out = np.empty((len(rounds), 2))
    for i, rnd in enumerate(rounds):
        released = mechanism([*OTHERS, sign * C * E], rnd) * M - OTHERS_SUM
        regenerated = rng(SEED, "dp-noise", rnd).normal(0.0, Z * C, D)
        out[i] = released @ E, (released - regenerated) @ E
    return out


def epsilon_lower_bound(hits0: np.ndarray, hits1: np.ndarray, n: int) -> np.ndarray:
    """Clopper-Pearson (each side 97.5%, together 95%): epsilon >= log((TPR_lo - delta) /
    FPR_hi) for a test that says "neighbour 0" when it hits."""
    tpr_lo = np.where(hits0 > 0, stats.beta.ppf(0.025, hits0, n - hits0 + 1), 0.0)
    fpr_hi = stats.beta.ppf(0.975, hits1 + 1, n - hits1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(np.maximum(tpr_lo - DELTA, 0) / fpr_hi)


def audit(mechanism) -> tuple[float, float]:
    """(the 95% lower bound on epsilon, the accountant's epsilon for one such release)."""
    s0 = statistics(mechanism, +1.0, range(1, TRIALS + 1))
    s1 = statistics(mechanism, -1.0, range(TRIALS + 1, 2 * TRIALS + 1))
    pick = TRIALS // 3
    best = (-np.inf, 0, 0.0, 1.0)  # (estimate, score, threshold, direction)
    for score in (0, 1):  # choose score, threshold and direction on the first third only
        a, b = s0[:pick, score], s1[:pick, score]
        qs = np.quantile(np.concatenate([a, b]), np.linspace(0, 1, 401))
        thresholds = (qs[1:] + qs[:-1]) / 2
        for direction in (1.0, -1.0):
            hits0 = (direction * a[:, None] > direction * thresholds).sum(0)
            hits1 = (direction * b[:, None] > direction * thresholds).sum(0)
            eps = np.nan_to_num(epsilon_lower_bound(hits0, hits1, pick), nan=-np.inf)
            ties = np.flatnonzero(eps == eps.max())
            i = int(ties[len(ties) // 2])  # the middle of equally good thresholds
            if eps[i] > best[0]:
                best = (eps[i], score, thresholds[i], direction)
    _, score, threshold, direction = best
    n = TRIALS - pick
    hits0 = np.array([(direction * s0[pick:, score] > direction * threshold).sum()])
    hits1 = np.array([(direction * s1[pick:, score] > direction * threshold).sum()])
    bound = float(epsilon_lower_bound(hits0, hits1, n)[0])
    accountant = Accountant(DELTA)
    accountant.record(Z, M, M)  # one release, every client: the plain Gaussian mechanism
    return bound, accountant.epsilon()


@pytest.mark.parametrize("mechanism, broken", [
    (honest, False), (noise_too_small, True), (noise_from_the_public_seed, True)])
def test_the_empirical_epsilon_stays_below_the_accountants(mechanism, broken):
    bound, epsilon = audit(mechanism)
    print(f"{mechanism.__name__}: epsilon >= {bound:.3f} (95%), accountant {epsilon:.3f}")
    assert 2 < epsilon < 5
    if broken:  # the audit catches it
        assert bound > epsilon
    else:
        assert bound <= epsilon
