"""Server strategies against hand computations of their formulas, through fedtune's round loop
on an in-process Grid (no Ray); FedProx's pull towards the global adapter; robustness."""

import numpy as np
import pytest
from flwr.app import Array, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedtune.algorithms.base import ServerHooks
from fedtune.config import Config
from fedtune.flower.loop import run_rounds
from fedtune.strategies import build_strategy, names_for
from fedtune.wire import Records, check_metrics, check_record
from fedtune.wire.flower import to_arrayrecord
from tests.inprocess_grid import InProcessGrid, identify_by_partition

X0 = np.array([[1.0, -2.0], [0.5, 3.0]], np.float32)
DELTAS = [np.array([[0.3, 0.1], [-0.2, 0.4]], np.float32) * (p + 1) * (-1) ** p
          for p in range(5)]
EXAMPLES = [10, 20, 30, 15, 25]

toy = ClientApp()


toy.query("identify")(identify_by_partition)


@toy.train()
def _train(msg: Message, context) -> Message:
    """Client p replies the global array plus round * DELTAS[p], in float32."""
    p = int(context.node_config["partition-id"])
    rnd = int(msg.content["config"]["server-round"])
    x = msg.content["arrays"]["w"].numpy()
    content = RecordDict({"arrays": to_arrayrecord({"w": x + rnd * DELTAS[p]}),
                          "metrics": MetricRecord({"num-examples": EXAMPLES[p],
                                                   "train-loss": 1.0})})
    return Message(content, reply_to=msg)


class Toy(ServerHooks):
    wire_dtype = None  # float32 both ways: exact hand computations

    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []

    def initial_arrays(self):
        return {"w": X0.copy()}

    def spec(self):
        return {"w": (2, 2)}

    def check_reply(self, content: Records):
        return check_record(content, "arrays", self.spec()) or check_metrics(content)

    def train_config(self, server_round):
        return {"lr": 0.1}

    def evaluate(self, arrays):
        self.seen.append(arrays["w"].copy())
        return {"eval_loss": float(np.abs(arrays["w"]).sum())}


def run_strategy(name: str, rounds: int = 2, **keys) -> list[np.ndarray]:
    cfg = Config.from_flat({"strategy": name, "num-server-rounds": rounds,
                            "fraction-train": 1.0, "fraction-evaluate": 0.0,
                            "min-train-nodes": 1, "min-available-nodes": 5, **keys})
    algo = Toy()
    grid = InProcessGrid(toy, 5, cfg.to_flat())
    run_rounds(grid, cfg, algo, build_strategy(cfg, "arrays", algo), lambda row: None,
               wait_for_nodes=1)
    return algo.seen  # x_0, x_1, ..., x_rounds


def replies(x, rnd):
    return np.stack([x + rnd * d for d in DELTAS])


def weighted(ys):
    w = np.array(EXAMPLES, np.float64) / sum(EXAMPLES)
    return np.tensordot(w, ys, axes=1)


def test_fedavg_and_fedprox_average_by_examples():
    for name in ("fedavg", "fedprox"):
        xs = run_strategy(name)
        x1 = weighted(replies(X0, 1))
        np.testing.assert_allclose(xs[1], x1, rtol=1e-6)
        np.testing.assert_allclose(xs[2], weighted(replies(x1, 2)), rtol=1e-6)


def test_fedavgm_momentum():
    beta, eta = 0.9, 1.0
    xs = run_strategy("fedavgm", **{"server-momentum": beta})
    x, m = X0.astype(np.float64), None
    for rnd in (1, 2):
        pg = x - weighted(replies(x, rnd))
        m = pg if m is None else beta * m + pg
        x = x - eta * m
        np.testing.assert_allclose(xs[rnd], x, rtol=1e-5)


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_adaptive_server_optimizers_over_two_rounds(name):
    eta, b1, b2, tau = 0.05, 0.9, 0.99, 1e-3
    xs = run_strategy(name, **{"server-lr": eta, "beta-1": b1, "beta-2": b2, "tau": tau})
    if name == "fedadagrad":
        b1 = 0.0  # Flower's FedAdagrad: m_t = delta_t
    x = X0.astype(np.float64)
    m = np.zeros_like(x)
    v = np.zeros_like(x)
    for rnd in (1, 2):
        delta = weighted(replies(x, rnd)) - x
        m = b1 * m + (1 - b1) * delta
        if name == "fedadam":
            v = b2 * v + (1 - b2) * delta**2
            step = eta * np.sqrt(1 - b2 ** (rnd + 1)) / (1 - b1 ** (rnd + 1))
        elif name == "fedyogi":
            v = v - (1 - b2) * delta**2 * np.sign(v - delta**2)
            step = eta
        else:
            v = v + delta**2
            step = eta
        x = x + step * m / (np.sqrt(v) + tau)
        np.testing.assert_allclose(xs[rnd], x, rtol=1e-5, atol=1e-6)


def krum_pick(ys: np.ndarray) -> np.ndarray:
    """Krum (f = 1): score = sum of squared distances to the n - f - 2 = 2 nearest others."""
    flat = ys.reshape(len(ys), -1).astype(np.float64)
    d = ((flat[:, None] - flat[None]) ** 2).sum(-1)
    scores = [np.sort(row)[1:3].sum() for row in d]
    return ys[int(np.argmin(scores))]


ROBUST = {
    "fedmedian": lambda ys: np.median(ys, axis=0),
    # beta 0.2 of 5: one cut at each end
    "fedtrimmedavg": lambda ys: np.sort(ys, axis=0)[1:-1].mean(axis=0),
    "krum": krum_pick,
}


@pytest.mark.parametrize("name", sorted(ROBUST))
def test_median_trimmed_mean_and_krum_over_two_rounds(name):
    xs = run_strategy(name)
    x = X0
    for rnd in (1, 2):  # round 2 aggregates replies made from round 1's result
        x = ROBUST[name](replies(x, rnd))
        np.testing.assert_allclose(xs[rnd], x, rtol=1e-6)


def test_every_strategy_name_builds_and_a_misfit_is_a_config_error():
    from fedtune.algorithms import resolve
    from fedtune.errors import ConfigError

    for name in names_for("arrays"):
        cfg = Config.from_flat({"strategy": name})
        assert build_strategy(cfg, "arrays", Toy()).state_dict() is not None
    with pytest.raises(ConfigError, match="strategy='fedsgd' is unknown for algorithm 'fedit'"):
        resolve(Config.from_flat({"strategy": "fedsgd"}))
    with pytest.raises(ConfigError, match="strategy='krum' does not fit algorithm 'fedkseed'; "
                                          "use one of fedavg."):
        resolve(Config.from_flat({"strategy": "krum", "algorithm": "fedkseed"}))


def test_fedprox_keeps_the_local_adapter_closer_to_the_global_one():
    from fedtune.algorithms.fedit import client
    from fedtune.algorithms.fedit.model import initial_adapter
    from fedtune.node import Node
    from tests.conftest import small_config

    cfg = small_config(**{"local-steps": 20, "lr": 5e-3})
    start = initial_adapter(cfg)
    node = Node("client-0000", 0, 4)

    def distance(mu):
        out = client.train(cfg, start, 1, 5e-3, node, prox_mu=mu).arrays
        return float(np.sqrt(sum(((out[k] - start[k]) ** 2).sum() for k in start)))

    plain, prox = distance(0.0), distance(5.0)
    assert prox < 0.9 * plain, (plain, prox)


def _attack(node_index: int, grid_ref: list):
    """Client ``node_index`` replies global + 100 x its own change, in every array."""
    def tamper(node_id, reply):
        grid = grid_ref[0]
        if reply.metadata.message_type != "train" or node_id != sorted(grid.contexts)[node_index]:
            return reply
        sent = next(m for m in reversed(grid.sent) if m.metadata.dst_node_id == node_id
                    and m.metadata.message_type == "train")
        arrays = reply.content["arrays"]
        for key in list(arrays):
            g = sent.content["arrays"][key].numpy().astype(np.float32)
            r = arrays[key].numpy().astype(np.float32)
            arrays[key] = Array((g + 100 * (r - g)).astype(np.float16))
        return reply
    return tamper


def _iid_files(tmp_path) -> tuple[str, str]:
    """The built-in tasks mixed IID, as files: Krum keeps one client's model, which is only a
    fair comparison when benign clients are alike."""
    import json

    from fedtune.data.synthetic import CATEGORIES, make_examples

    paths = []
    for held_out, n in ((False, 80), (True, 8)):
        rows = [{"instruction": e.instruction, "input": e.input, "output": e.output,
                 "category": e.category}
                for c in CATEGORIES for e in make_examples(c, n, seed=3, held_out=held_out)]
        path = tmp_path / f"{'eval' if held_out else 'train'}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(str(path))
    return paths[0], paths[1]


def _final_loss(strategy: str, attacked: bool, data: tuple[str, str]) -> float:
    from client_app.app import app
    from tests.conftest import run_loop, small_config

    cfg = small_config(**{"strategy": strategy, "num-server-rounds": 3, "fraction-train": 1.0,
                          "fraction-evaluate": 0.0, "local-steps": 6, "eval-examples": 32,
                          "min-available-nodes": 5, "trim-beta": 0.2, "krum-malicious": 1,
                          "eval-every": 3, "max-new-tokens": 1,  # only the final loss is read
                          "data": data[0], "eval-data": data[1], "partition": "iid"})
    ref: list = []
    grid = InProcessGrid(app, 5, cfg.to_flat(), tamper=_attack(0, ref) if attacked else None)
    ref.append(grid)
    rows: list = []
    run_loop(grid, cfg, rows.append)
    return rows[-1]["eval_loss"]


@pytest.mark.slow  # five 3-round runs of 5 clients
def test_robust_strategies_survive_a_scaled_update_attack(capsys, tmp_path):
    """One client sends its update scaled up in every round: FedAvg ends far from where it
    ends unattacked, the robust strategies end within 10% of that clean FedAvg run."""
    data = _iid_files(tmp_path)
    clean = _final_loss("fedavg", False, data)
    hit = {name: _final_loss(name, True, data)
           for name in ("fedavg", "fedmedian", "fedtrimmedavg", "krum")}
    with capsys.disabled():
        print(f"\nclean fedavg {clean:.3f}; attacked: " + ", ".join(
            f"{name} {loss:.3f} ({loss / clean - 1:+.0%})" for name, loss in hit.items()))
    for name in ("fedmedian", "fedtrimmedavg", "krum"):
        assert abs(hit[name] - clean) <= 0.10 * clean, (name, clean, hit[name])
    assert hit["fedavg"] > 1.10 * clean, ("fedavg", clean, hit["fedavg"])


CONTROL_DELTAS = [np.full((2, 2), 0.1 * (p + 1), np.float32) for p in range(5)]
toy_scaffold = ClientApp()
toy_scaffold.query("identify")(identify_by_partition)


@toy_scaffold.train()
def _train_scaffold(msg: Message, context) -> Message:
    reply = _train(msg, context)
    p = int(context.node_config["partition-id"])
    assert "scaffold" in msg.content.array_records  # the server's c travels with x
    reply.content["scaffold"] = to_arrayrecord({"w": CONTROL_DELTAS[p]})
    return reply


def test_scaffold_server_averages_adapters_and_updates_c():
    cfg = Config.from_flat({"strategy": "scaffold", "num-server-rounds": 2,
                            "fraction-train": 0.6, "fraction-evaluate": 0.0,
                            "min-train-nodes": 1, "min-available-nodes": 5})
    algo = Toy()
    grid = InProcessGrid(toy_scaffold, 5, cfg.to_flat())
    strategy = build_strategy(cfg, "arrays", algo)
    run_rounds(grid, cfg, algo, strategy, lambda row: None, wait_for_nodes=1)
    sent = [m for m in grid.sent if m.metadata.message_type == "train"]
    r1 = [m for m in sent if m.content["config"]["server-round"] == 1]
    r2 = [m for m in sent if m.content["config"]["server-round"] == 2]
    parts = lambda msgs: [int(grid.contexts[m.metadata.dst_node_id].node_config["partition-id"])  # noqa: E731
                          for m in msgs]
    np.testing.assert_array_equal(r1[0].content["scaffold"]["w"].numpy(), 0.0)
    c1 = sum(CONTROL_DELTAS[p] for p in parts(r1)) / 5  # c += (|S|/N) mean = sum / N
    np.testing.assert_allclose(r2[0].content["scaffold"]["w"].numpy(), c1, rtol=1e-6)
    chosen = parts(r1)
    w = np.array([EXAMPLES[p] for p in chosen], np.float64)
    x1 = sum(wi * (X0 + DELTAS[p]) for wi, p in zip(w / w.sum(), chosen, strict=True))
    np.testing.assert_allclose(algo.seen[1], x1, rtol=1e-6)


def test_scaffold_client_corrects_gradients_and_keeps_its_variate():
    from client_app.app import app
    from fedtune.algorithms.fedit import client
    from fedtune.algorithms.fedit.model import initial_adapter
    from fedtune.node import Node
    from fedtune.strategies.scaffold import RECORD, ScaffoldClient
    from tests.conftest import run_loop, small_config

    cfg = small_config(**{"local-steps": 5, "lr": 2e-3, "lora-dropout": 0.0})
    x = initial_adapter(cfg)
    node = Node("client-0000", 0, 3)
    zeros = {k: np.zeros_like(v) for k, v in x.items()}
    plain = client.train(cfg, x, 1, 2e-3, node)
    state: dict = {}  # the node's state: c_i starts at zero
    correction = ScaffoldClient().before_train(Records(arrays={RECORD: zeros}), state)
    same = client.train(cfg, x, 1, 2e-3, node, grad_correction=correction)
    rng = np.random.default_rng(0)
    c = {k: rng.normal(0, 1e-2, v.shape).astype(np.float32) for k, v in x.items()}
    hook = ScaffoldClient()
    moved = client.train(cfg, x, 1, 2e-3, node,
                         grad_correction=hook.before_train(Records(arrays={RECORD: c}), state))
    for k in x:  # c = c_i: no correction; c != c_i: a different trajectory
        np.testing.assert_array_equal(same.arrays[k], plain.arrays[k])
    assert any(not np.array_equal(moved.arrays[k], plain.arrays[k]) for k in x)
    reply = Records()
    hook.after_train(x, moved.arrays, moved.steps, 2e-3, state, reply)
    c_new, delta = state[RECORD], reply.arrays[RECORD]
    for k in x:  # option II: c_i+ = c_i - c + (x - y) / (K lr)
        want = -c[k] + (x[k] - moved.arrays[k]) / (5 * 2e-3)
        np.testing.assert_allclose(c_new[k], want, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(delta[k], c_new[k], rtol=1e-6)

    cfg = small_config(**{"strategy": "scaffold", "fraction-train": 1.0, "min-available-nodes": 3,
                          "fraction-evaluate": 0.0})
    grid = InProcessGrid(app, 3, cfg.to_flat())
    rows: list = []
    run_loop(grid, cfg, rows.append)
    assert all(r["clients"] == 3 for r in rows[1:]) and rows[-1]["eval_loss"] < rows[0]["eval_loss"]
    assert all("scaffold" in ctx.state.array_records for ctx in grid.contexts.values())
