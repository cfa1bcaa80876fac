"""Adapter <-> Flower records, reply validation, and FedAvg against a hand computation."""

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedtune.algorithms.fedit.adapter import (
    WIRE_DTYPE,
    adapter_spec,
    adapter_state,
    load_adapter_state,
)
from fedtune.algorithms.fedit.model import peft_model_for
from fedtune.flower.loop import _as_float32
from fedtune.strategies import build_strategy
from fedtune.wire import check_metrics, check_record
from fedtune.wire.flower import (
    content_bytes,
    from_arrayrecord,
    to_arrayrecord,
    to_recorddict,
    to_records,
)
from tests.conftest import small_config


def check_train_reply(content, spec):
    """FedIT's reply check (FedITServer.check_reply) on a Flower RecordDict."""
    records = to_records(content)
    return check_record(records, "arrays", spec) or check_metrics(records)


def _reply(arrays, n, loss=1.0, node=7):
    instruction = Message(
        RecordDict({"config": ConfigRecord({})}), dst_node_id=node, message_type="train"
    )
    content = RecordDict(
        {
            "arrays": to_arrayrecord(arrays, WIRE_DTYPE),
            "metrics": MetricRecord({"num-examples": n, "train-loss": loss}),
        }
    )
    return Message(content, reply_to=instruction)


def test_adapter_round_trips_through_records_in_16_bit():
    cfg = small_config()
    model, _ = peft_model_for(cfg)
    rng = np.random.default_rng(0)
    sent = {
        k: rng.normal(0, 0.1, v.shape).astype(np.float32) for k, v in adapter_state(model).items()
    }
    record = to_arrayrecord(sent, WIRE_DTYPE)
    assert all(a.dtype == "float16" for a in record.values())
    load_adapter_state(model, from_arrayrecord(record))
    back = adapter_state(model)
    assert list(back) == list(sent)
    for k in sent:
        np.testing.assert_allclose(back[k], sent[k], rtol=1e-3, atol=1e-4)
    # 16 bits per value: the record is about half the float32 bytes
    n_values = sum(v.size for v in sent.values())
    assert 2 * n_values < content_bytes(RecordDict({"arrays": record})) < 2.2 * n_values


def test_validation_names_the_problem():
    spec = {"a": (2, 3), "b": (4,)}
    good = {"a": np.ones((2, 3), np.float32), "b": np.zeros(4, np.float32)}
    assert check_train_reply(_reply(good, 5).content, spec) is None
    nan = {**good, "b": np.array([0, np.nan, 0, 0], np.float32)}
    assert "NaN or Inf" in check_train_reply(_reply(nan, 5).content, spec)
    assert "keys differ" in check_train_reply(_reply({"a": good["a"]}, 5).content, spec)
    extra = {**good, "c": np.ones(1, np.float32)}
    assert "keys differ" in check_train_reply(_reply(extra, 5).content, spec)
    shape = {**good, "a": np.ones((3, 2), np.float32)}
    assert "shape (3, 2)" in check_train_reply(_reply(shape, 5).content, spec)
    content = _reply(good, 5).content
    content["arrays"] = ArrayRecord(
        {"a": to_arrayrecord(good)["a"], "b": to_arrayrecord({"b": np.zeros(4, np.int64)})["b"]}
    )
    assert "dtype int64" in check_train_reply(content, spec)
    assert "not a positive number" in check_train_reply(_reply(good, 0).content, spec)
    assert "not finite" in check_train_reply(_reply(good, 3, loss=float("inf")).content, spec)


def test_fedavg_weighted_by_examples_matches_hand_computation():
    a1 = {"w": np.array([[1.0, 2.0], [3.0, 4.0]], np.float32), "v": np.array([1.0], np.float32)}
    a2 = {"w": np.array([[5.0, 6.0], [7.0, 8.0]], np.float32), "v": np.array([-1.0], np.float32)}
    a3 = {"w": np.array([[0.5, 0.25], [0.0, -2.0]], np.float32), "v": np.array([3.0], np.float32)}
    n = [10, 30, 60]
    replies = [
        _as_float32(_reply(a, k, loss=float(i)))
        for i, (a, k) in enumerate(zip((a1, a2, a3), n, strict=True))
    ]
    arrays, metrics = build_strategy(small_config(), "arrays", None).aggregate_train(1, replies)
    got = from_arrayrecord(arrays)
    for key in ("w", "v"):
        want = (10 * a1[key] + 30 * a2[key] + 60 * a3[key]) / 100
        np.testing.assert_allclose(got[key], want, rtol=1e-6)
        assert got[key].dtype == np.float32
    assert metrics["train-loss"] == pytest.approx((10 * 0 + 30 * 1 + 60 * 2) / 100)


def test_server_spec_matches_client_adapter():
    model, _ = peft_model_for(small_config())
    spec = adapter_spec(model)
    assert any("lora_A" in k for k in spec) and any("lm_head" in k for k in spec)


def test_records_convert_both_ways_exactly():
    content = _reply({"a": np.arange(6, dtype=np.float32).reshape(2, 3)}, 5).content
    content["zo"] = ConfigRecord({"pairs": b"\x01\x02", "k": 3})
    back = to_recorddict(to_records(content))
    assert content_bytes(back) == content_bytes(content)
    assert back["arrays"]["a"].dtype == "float16"
    assert dict(back["metrics"]) == {"num-examples": 5, "train-loss": 1.0}
    assert back["zo"]["pairs"] == b"\x01\x02"
