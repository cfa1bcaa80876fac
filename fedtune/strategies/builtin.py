"""Flower's own strategies over FedIT's LoRA adapters, through one adapter.

Each is Flower's implementation unchanged (``flwr.serverapp.strategy``), given fedtune's
:class:`~fedtune.strategies.state.StatefulStrategy` so its round-to-round state is checkpointed.
fedtune's round loop does the sampling, so every strategy is built with fraction 1.0 and
addresses exactly the nodes the loop hands it; replies reach it validated, in a stable order,
as float32 (the wire carries 16 bits).
"""

from __future__ import annotations

from typing import Any

from flwr.serverapp import strategy as fl

from fedtune.strategies.state import StatefulStrategy

_FEDOPT = ("current_arrays", "m_t", "v_t")


class FedAvg(StatefulStrategy, fl.FedAvg):
    """McMahan et al., AISTATS 2017."""


class FedProx(StatefulStrategy, fl.FedProx):
    """Li et al., MLSys 2020: clients add mu/2 ||w - w_global||^2 (``proximal-mu``)."""


class FedAvgM(StatefulStrategy, fl.FedAvgM):
    """Hsu et al., 2019: server momentum on the averaged update."""

    state_attrs = ("current_arrays", "momentum_vector")


class FedAdam(StatefulStrategy, fl.FedAdam):
    """Reddi et al., ICLR 2021."""

    state_attrs = _FEDOPT


class FedYogi(StatefulStrategy, fl.FedYogi):
    """Reddi et al., ICLR 2021."""

    state_attrs = _FEDOPT


class FedAdagrad(StatefulStrategy, fl.FedAdagrad):
    """Reddi et al., ICLR 2021."""

    state_attrs = _FEDOPT


class FedMedian(StatefulStrategy, fl.FedMedian):
    """Yin et al., ICML 2018: coordinate-wise median."""


class FedTrimmedAvg(StatefulStrategy, fl.FedTrimmedAvg):
    """Yin et al., ICML 2018: coordinate-wise trimmed mean."""


class Krum(StatefulStrategy, fl.Krum):
    """Blanchard et al., NeurIPS 2017."""


def common_args() -> dict[str, Any]:
    """Every node the loop hands over is used; replies are weighted by their example count."""
    return {"fraction_train": 1.0, "fraction_evaluate": 1.0, "min_train_nodes": 1,
            "min_evaluate_nodes": 1, "min_available_nodes": 1,
            "weighted_by_key": "num-examples"}


def build(name: str, cfg, server) -> fl.Strategy:
    """The Flower strategy ``name`` with the ``strategy`` section's parameters."""
    del server
    st, common = cfg.strategy, common_args()
    # server-lr 0 = the usual value for adapters: 1.0 for FedAvgM (plain momentum on the
    # average), 1e-3 for the adaptive FedOpt family (OpenFedLLM's setting)
    eta = st.server_lr or (1.0 if name == "fedavgm" else 1e-3)
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
    }
    return factories[name]()
