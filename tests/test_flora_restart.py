"""FLoRA's restart (issue #30 item 3): ``lora-restart-init='fresh'`` gives every client a new
initialisation each round, as the official code does, seeded by (run seed, round, node) so runs
stay reproducible; the default ``shared`` keeps the run's seeded adapter for everyone."""

import numpy as np
import pytest

import fedtune.algorithms.fedit.client as fedit_client
from fedtune.algorithms import resolve
from fedtune.algorithms.fedit.client import FedITClient, TrainResult
from fedtune.algorithms.fedit.factors import A, B, select
from fedtune.algorithms.fedit.model import fresh_adapter, initial_adapter
from fedtune.algorithms.fedit.server import FedITServer
from fedtune.errors import ConfigError
from fedtune.node import Node
from fedtune.wire import Records
from tests.conftest import small_config
from tests.test_lora_aggregation import _run


def _fresh_cfg(**keys):
    return small_config(**{"lora-aggregation": "flora", "lora-restart-init": "fresh", **keys})


def test_a_fresh_adapter_is_peft_s_init_seeded_by_round_and_node():
    cfg = _fresh_cfg()
    one = fresh_adapter(cfg, None, 1, "client-0000")
    again = fresh_adapter(cfg, None, 1, "client-0000")
    init = initial_adapter(cfg)
    assert one.keys() == init.keys()
    assert all(one[k].tobytes() == again[k].tobytes() for k in one)  # reproducible
    assert all(not v.any() for v in select(one, (B,)).values())
    for k, v in select(one, (A,)).items():
        bound = 1 / np.sqrt(v.shape[1])  # kaiming_uniform_(a=sqrt(5)), peft's default
        assert v.dtype == np.float32 and np.abs(v).max() <= bound
        assert abs(v.std() * np.sqrt(3) / bound - 1) < 0.1
        assert not np.array_equal(v, init[k])
    for other in (fresh_adapter(cfg, None, 2, "client-0000"),
                  fresh_adapter(cfg, None, 1, "client-0001"),
                  fresh_adapter(small_config(**{"lora-aggregation": "flora", "seed": 7,
                                                "lora-restart-init": "fresh"}),
                                None, 1, "client-0000")):
        assert all(not np.array_equal(other[k], one[k]) for k in select(one, (A,)))
    four = fresh_adapter(_fresh_cfg(**{"lora-ranks": "4,16"}), 4, 1, "client-0000")
    assert {v.shape[0] for v in select(four, (A,)).values()} == {4}


@pytest.mark.parametrize("restart", ["shared", "fresh"])
def test_a_client_trains_from_the_adapter_its_setting_names(monkeypatch, restart):
    cfg = _fresh_cfg(**{"lora-restart-init": restart})
    started = []

    def spy(cfg, arrays, **kw):
        started.append(arrays)
        return TrainResult(arrays={k: v.copy() for k, v in arrays.items()}, num_examples=1,
                           metrics={"train-loss": 1.0}, steps=1)

    monkeypatch.setattr(fedit_client, "train", spy)
    client, server = FedITClient(cfg), FedITServer(cfg)
    for rnd in (1, 2):
        for pid in (0, 1):
            content = Records(arrays={"arrays": server.initial_arrays()},
                              configs={"config": {"lr": 1e-3, "server-round": rnd}})
            content.arrays.update(server.down_records(f"client-{pid:04d}").arrays)
            content.configs.update(server.down_records(f"client-{pid:04d}").configs)
            client.train(content, Node(f"client-{pid:04d}", pid, 2), {})
    a_keys = list(select(initial_adapter(cfg), (A,)))
    if restart == "shared":  # everyone, every round: the run's seeded adapter
        init = initial_adapter(cfg)
        assert all(np.array_equal(s[k], init[k]) for s in started for k in a_keys)
    else:
        want = [fresh_adapter(cfg, None, rnd, f"client-{pid:04d}")
                for rnd in (1, 2) for pid in (0, 1)]
        assert all(np.array_equal(s[k], w[k]) for s, w in zip(started, want, strict=True)
                   for k in a_keys)


def test_the_setting_is_checked_in_one_sentence():
    assert small_config().lora.lora_restart_init == "shared"  # the default run is unchanged
    for keys, words in (({"lora-restart-init": "fresh"}, "set lora-aggregation='flora'"),
                        ({"lora-aggregation": "fedex", "lora-restart-init": "fresh"},
                         "keeps its adapter"),
                        ({"lora-aggregation": "flora", "lora-restart-init": "random"},
                         "use one of shared, fresh")):
        with pytest.raises(ConfigError, match=words):
            resolve(small_config(**keys))


def test_fresh_restarts_learn(tmp_path, one_thread):
    cfg, _, rows = _run(tmp_path, "flora", rounds=2, **{"lora-restart-init": "fresh"})
    assert all(r["dropped"] == 0 and r["clients"] == 3 for r in rows[1:])
    assert rows[-1]["eval_loss"] < 0.9 * rows[0]["eval_loss"]
