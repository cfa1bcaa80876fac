"""Flower strategies for fedtune's algorithms.

fedtune's round loop does the sampling, so every strategy addresses exactly the nodes fedtune
hands it (see ``fedtune.flower.loop.SampledGrid``); Flower's own strategies are built with
fraction 1.0 for that reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    Strategy,
)
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from flwr.supercore import log

from fedtune.config import Config
from fedtune.fedkseed.server import FedKSeedServer
from fedtune.zo import unpack_pairs

CONTROL = "scaffold"  # the record that carries SCAFFOLD's control variates


def fedit_strategy(cfg: Config) -> Strategy:
    """The Flower strategy named by ``strategy``, over LoRA adapters weighted by examples.

    Flower's implementations are used as they are; fedtune only feeds them validated replies
    in a stable order and the float32 global adapter (FedOpt keeps it as x_t).
    """
    st = cfg.strategy
    common = {"fraction_train": 1.0, "fraction_evaluate": 1.0, "min_train_nodes": 1,
              "min_evaluate_nodes": 1, "min_available_nodes": 1,
              "weighted_by_key": "num-examples"}
    # server-lr 0 = the usual value for adapters: 1.0 for FedAvgM (plain momentum on the
    # average), 1e-3 for the adaptive FedOpt family (OpenFedLLM's setting)
    eta = st.server_lr or (1.0 if st.strategy == "fedavgm" else 1e-3)
    fedopt = {"eta": eta, "eta_l": cfg.train.lr, "beta_1": st.beta_1, "beta_2": st.beta_2,
              "tau": st.tau}
    factories = {
        "fedavg": lambda: FedAvg(**common),
        "fedprox": lambda: FedProx(**common, proximal_mu=st.prox_mu),
        "fedavgm": lambda: FedAvgM(**common, server_learning_rate=eta,
                                   server_momentum=st.server_momentum),
        "fedadam": lambda: FedAdam(**common, **fedopt),
        "fedyogi": lambda: FedYogi(**common, **fedopt),
        "fedadagrad": lambda: FedAdagrad(**common, eta=eta, eta_l=cfg.train.lr, tau=st.tau),
        "fedmedian": lambda: FedMedian(**common),
        "fedtrimmedavg": lambda: FedTrimmedAvg(**common, beta=st.trim_beta),
        "krum": lambda: Krum(**common, num_malicious_nodes=st.krum_malicious),
        "scaffold": lambda: Scaffold(num_clients=cfg.server.min_available_nodes, **common),
    }
    return factories[st.strategy]()


class Scaffold(FedAvg):
    """SCAFFOLD (Karimireddy et al., ICML 2020, option II) over LoRA adapters.

    Rounds send the global adapter x and the server's control variate c (record ``scaffold``);
    a client corrects every gradient by c - c_i, keeps c_i in its ``Context.state`` and replies
    with its adapter y_i and c_i+ - c_i. The server averages the adapters (FedAvg by examples,
    global step size 1) and updates c += (|S| / N) * mean_i(c_i+ - c_i), N = ``num_clients``
    (set ``min-available-nodes`` to the federation size; ``fedtune simulate`` does).
    """

    def __init__(self, num_clients: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_clients = max(1, num_clients)
        self.control: dict[str, np.ndarray] | None = None

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        if self.control is None:
            self.control = {k: np.zeros_like(v.numpy(), dtype=np.float32)
                            for k, v in arrays.items()}
        messages = list(super().configure_train(server_round, arrays, config, grid))
        control = ArrayRecord({k: Array(v) for k, v in self.control.items()})
        for content in {id(m.content): m.content for m in messages}.values():
            content[CONTROL] = control
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        deltas = [r.content.array_records.pop(CONTROL) for r in replies]  # not an adapter
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is not None and self.control is not None and deltas:
            for key in self.control:  # (|S| / N) * mean over S  ==  sum over S / N
                total = sum(d[key].numpy().astype(np.float64) for d in deltas)
                self.control[key] = (self.control[key] + total / self.num_clients).astype(
                    np.float32)
        return arrays, metrics


class FedKSeedStrategy(Strategy):
    """FedKSeed (Qin et al., ICML 2024, Alg. 1, server side).

    The global state is the accumulated-scalar vector A (one float32 per seed of the pool),
    carried as ``arrays["accumulated"]``. A round sends A (and, for FedKSeed-Pro, the seeds'
    importance as K bytes) and receives tau packed (seed index, scalar) pairs per client;
    aggregation is A_s += sum_i w_i * sum_t [s_it = s] g_it with w_i the client's share of the
    examples (or 1/n), in the stable reply order the loop provides. Replies are validated before
    they reach this class.
    """

    def __init__(self, server: FedKSeedServer) -> None:
        self.server = server
        self.current: np.ndarray | None = None

    def summary(self) -> None:
        log(INFO, "\t├──> FedKSeed%s: K=%d", "-Pro" if self.server.pro else "", self.server.pool.k)

    def _messages(self, rnd: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid,
                  message_type: str) -> list[Message]:
        config["server-round"] = rnd
        content = RecordDict({"arrays": arrays, "config": config})
        return [Message(content, dst_node_id=node, message_type=message_type)
                for node in grid.get_node_ids()]

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.current = arrays["accumulated"].numpy()
        return self._messages(server_round, arrays, config, grid, MessageType.TRAIN)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        if not replies or self.current is None:
            return None, None
        k = self.server.pool.k
        parsed = []
        for reply in replies:
            indices, scalars = unpack_pairs(reply.content["zo"]["pairs"], k)
            parsed.append((indices, scalars, int(reply.content["metrics"]["num-examples"])))
        new = self.server.aggregate(self.current, parsed)
        metrics = aggregate_metricrecords([r.content for r in replies], "num-examples")
        return ArrayRecord({"accumulated": Array(new)}), metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self._messages(server_round, arrays, config, grid, MessageType.EVALUATE)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        contents = [r.content for r in replies]
        return aggregate_metricrecords(contents, "num-examples") if contents else None


def make_strategy(cfg: Config, algo: object) -> Strategy:
    """The strategy for ``algo`` (the algorithm's server side from ``server_side(cfg)``)."""
    if isinstance(algo, FedKSeedServer):
        return FedKSeedStrategy(algo)
    return fedit_strategy(cfg)
