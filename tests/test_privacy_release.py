"""What a DP run releases (issue #25): the noise and the sample come from OS entropy or the
server's FEDTUNE_DP_SECRET, never from the run seed; nothing per-client reaches a run's
files; what would break the sensitivity or leak is refused before any engine starts.
The mechanism, the accountant and the wrapper are tested in test_privacy.py."""

import json
import re

import numpy as np
import pytest
from flwr.app import Context, Error, Message, RecordDict

from client_app.app import app as client_app
from fedtune.algorithms import resolve
from fedtune.config import Config, ConfigError
from fedtune.privacy.mechanism import clip, gaussian_noise
from fedtune.privacy.randomness import SECRET_ENV, privacy_rng
from server_app.app import main as server_main
from tests.inprocess_grid import InProcessGrid
from tests.test_privacy import FAST, ZO, run_app
from tests.test_strategies import DELTAS, run_strategy


# ---- secret randomness (issue #25 item 1) --------------------------------------------------
def test_privacy_rng_is_fresh_entropy_without_the_secret_and_keyed_with_it(monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    draws = [privacy_rng("dp-noise", "abc", 1).normal(size=8) for _ in range(2)]
    assert not np.array_equal(*draws)  # the same purpose and parts: fresh every call
    monkeypatch.setenv(SECRET_ENV, "s1")
    keyed = privacy_rng("dp-noise", "abc", 1).normal(size=8)
    assert np.array_equal(keyed, privacy_rng("dp-noise", "abc", 1).normal(size=8))
    assert not np.array_equal(keyed, privacy_rng("dp-noise", "abc", 2).normal(size=8))
    assert not np.array_equal(keyed, privacy_rng("dp-sample", "abc", 1).normal(size=8))
    monkeypatch.setenv(SECRET_ENV, "s2")
    assert not np.array_equal(keyed, privacy_rng("dp-noise", "abc", 1).normal(size=8))


def _released_noise(seen, c, rnd):
    """The noise a toy run added in round ``rnd``: released sum minus the clipped sum."""
    total = sum(clip((rnd * d).astype(np.float64).ravel(), c)[0] for d in DELTAS)
    return (seen[rnd] - seen[rnd - 1]).astype(np.float64).ravel() * 5 - total


def test_the_noise_is_not_the_seeds_and_differs_run_to_run(monkeypatch):
    """The attack of issue #25: regenerate the noise from the run seed (every client has it)
    with the old derivation rng(seed, 'dp-noise', round) and subtract it. It no longer
    matches, and two runs of the same config draw different noise."""
    from fedtune.seeding import rng

    monkeypatch.delenv(SECRET_ENV, raising=False)
    c, z, seed = 0.9, 1.5, 11
    keys = {"dp-noise-multiplier": z, "dp-clip-norm": c, "seed": seed}
    runs = [run_strategy("fedavg", rounds=1, dp="server", **keys) for _ in range(2)]
    noises = [_released_noise(seen, c, 1) for seen in runs]
    old = rng(seed, "dp-noise", 1).normal(0.0, z * c, 4)
    for noise in noises:
        assert np.linalg.norm(noise) > 0.1 * z * c  # there is noise (float32 error: ~1e-7)
        assert np.abs(noise - old).max() > 1e-3  # ...and it is not the seed's
    assert np.abs(noises[0] - noises[1]).max() > 1e-3


def test_two_server_dp_runs_of_one_config_release_different_models(tmp_path, monkeypatch,
                                                                   one_thread):
    """Issue #25's check: two dp='server' runs, same config, no secret: round 1's eval_loss
    differs; no file of the runs holds what regenerates the noise (the old derivation from
    config.json's seed has correlation ~0 with the noise actually drawn); with the secret the
    runs are identical, say so (dp_secret), and the secret is in no file."""
    import fedtune.strategies.dp as dp_module
    from fedtune.seeding import rng

    drawn = []

    def spy(size, std, gen):
        drawn.append(gaussian_noise(size, std, gen))
        return drawn[-1]

    monkeypatch.setattr(dp_module, "gaussian_noise", spy)
    monkeypatch.setattr("fedtune.privacy.mechanism.gaussian_noise", spy)
    monkeypatch.delenv(SECRET_ENV, raising=False)
    keys = {"dp": "server", "num-server-rounds": 1, "fraction-train": 1.0, "eval-every": 1}
    a, summary, _ = run_app(tmp_path, "a", **keys)
    b, _, _ = run_app(tmp_path, "b", **keys)
    assert a[1]["eval_loss"] != b[1]["eval_loss"] and summary["dp_secret"] is False
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    seed = config["server"]["seed"]
    noise = drawn[0]
    assert noise.size > 10_000  # FedIT's adapter: a correlation of 0.05 is 5 sigma
    for candidate in {seed, 0, 1, 5}:  # the config's seed, and the usual ones
        old = rng(candidate, "dp-noise", 1).normal(0.0, 1.0, noise.size)
        assert abs(np.corrcoef(old, noise)[0, 1]) < 0.05

    monkeypatch.setenv(SECRET_ENV, "a research secret 0123456789")
    c, summary, _ = run_app(tmp_path, "c", **keys)
    d, _, _ = run_app(tmp_path, "d", **{**keys, "run-name": "other-name"})  # not in the noise
    assert [r["eval_loss"] for r in c] == [r["eval_loss"] for r in d]
    assert summary["dp_secret"] is True
    for path in (tmp_path / "c").rglob("*"):
        if path.is_file():
            assert b"a research secret" not in path.read_bytes(), path


def test_under_dp_no_file_holds_anything_per_client(tmp_path, one_thread):
    """clients.jsonl: one line of counts per round, no node names, losses, example counts or
    timings; metrics.jsonl: no train_loss, no dp_clipped, no per-client time."""
    rows, _, _ = run_app(tmp_path, "p", dp="client", **ZO, **{"num-server-rounds": 2})
    lines = [json.loads(x) for x in (tmp_path / "p" / "clients.jsonl").read_text().splitlines()]
    assert lines == [{"round": r, "replies": 3, "dropped": 0, "timed_out": 0} for r in (1, 2)]
    text = "".join(p.read_text() for p in (tmp_path / "p").glob("*.json*"))
    assert "client-0" not in text  # no node name anywhere in the run's files
    for row in rows:
        assert row["train_loss"] is None and row["dp_clipped"] is None
        assert "seconds_train" not in row


def test_a_skipped_rounds_reason_names_no_node_under_dp(tmp_path, one_thread):
    def fail(node, reply):
        if reply.metadata.message_type == "train":
            return Message(Error(code=1, reason=f"node {node} crashed"), reply_to=reply)
        return reply

    rows, summary, _ = run_app(tmp_path, "skip", tamper=fail, dp="server",
                               **{"num-server-rounds": 1})
    assert rows[1]["skipped"] and "3 dropped" in rows[1]["skip_reason"]
    assert "client-" not in rows[1]["skip_reason"] and "crashed" not in summary["skip_report"]


def test_no_data_report_leaves_a_node_under_dp(tmp_path, one_thread):
    """A deployed node's reply names its file (SHA-256) and categories; under DP it does not."""
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"Say {i}", "output": f"{i}",
                                        "category": "secret-topic"}) + "\n"
                            for i in range(40)))
    seen = []

    def own_file(grid):
        for context in grid.contexts.values():
            context.node_config["data-path"] = str(path)

    for dp in ("off", "server"):
        flat = {**FAST, "dp": dp, "num-server-rounds": 1, "min-available-nodes": 2,
                "run-dir": str(tmp_path / dp)}
        grid = InProcessGrid(client_app, 2, flat,
                             tamper=lambda n, r, dp=dp: seen.append((dp, r.content)) or r)
        own_file(grid)
        server_main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                                  run_config=flat))
    reports = {dp: ["data" in c.config_records for d, c in seen if d == dp and
                    "metrics" in c.metric_records] for dp in ("off", "server")}
    assert reports["off"] and all(reports["off"])  # the control: it is there without DP
    assert reports["server"] and not any(reports["server"])
    assert "secret-topic" not in (tmp_path / "server" / "clients.jsonl").read_text()


def test_fedkseed_pros_statistics_under_dp_come_from_the_noisy_release(tmp_path, one_thread):
    """Pro's per-seed statistics are per-client data: under DP they are what the released
    noisy mean gives (|mean| for every seed, once per reply), not the clients' own scalars."""
    keys = {**ZO, "algorithm": "fedkseed-pro", "num-server-rounds": 1, "fraction-train": 1.0}
    run_app(tmp_path, "pro", dp="server", **keys)
    with np.load(tmp_path / "pro" / "fedkseed-state.npz") as state:
        released, sums, counts = state["accumulated"], state["pro_abs_sums"], state["pro_counts"]
    assert np.array_equal(counts, np.full(64, 4))  # every seed, once per reply (4 replies)
    assert np.allclose(sums, 4 * np.abs(released.astype(np.float64)), rtol=1e-6)


# ---- refusals before any engine starts (issue #25 item 3) ----------------------------------
@pytest.mark.parametrize("keys, words", [
    ({"max-update-norm-ratio": 3.0}, "max-update-norm-ratio cannot run with dp='server'"),
    ({"fraction-evaluate": 0.25}, "federated evaluation (fraction-evaluate=0.25) cannot run "
                                  "with dp='server'"),
    ({"dp-population": 100, "dp-delta": 0.01}, "dp-delta=0.01 must be below 1/N = 1/100"),
    ({"dp": "client", "secagg": "on", "dp-clip-norm": 100.0},
     "dp-clip-norm=100 exceeds secagg-clip-range=64"),
])
def test_what_breaks_the_sensitivity_or_leaks_is_refused(keys, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        resolve(Config.from_flat({"dp": "server", "fraction-evaluate": 0.0, **keys}))


def test_secagg_without_dp_refuses_federated_evaluation():
    with pytest.raises(ConfigError, match="cannot run with secagg='on'.*fraction-evaluate=0"):
        resolve(Config.from_flat({"secagg": "on", "fraction-evaluate": 0.5}))


def test_delta_needs_a_population():
    p = Config.from_flat({"dp": "server", "fraction-evaluate": 0.0}).privacy
    p.check_population(p.population(8), deployed=False)  # simulation: N = 8 clients
    assert p.delta_for(p.population(8)) == 0.1 / 8
    with pytest.raises(ConfigError, match="through a SuperLink needs dp-population=<N>"):
        p.check_population(p.population(2), deployed=True)
    p.dp_population = 1000
    p.check_population(p.population(2), deployed=True)
    assert p.delta_for(p.population(2)) == 1e-4
    with pytest.raises(ConfigError, match="must be below 1/N = 1/8"):
        Config.from_flat({"dp": "server", "dp-delta": 0.2}).privacy.check_population(8, False)


@pytest.mark.parametrize("run_config, sentence", [
    ("dp='server' max-update-norm-ratio=3",
     "max-update-norm-ratio cannot run with dp='server'"),
    ("dp='server' fraction-evaluate=0 dp-delta=0.2", "dp-delta=0.2 must be below 1/N = 1/8 "),
])
def test_the_cli_refuses_in_one_sentence_with_exit_2(tmp_path, run_config, sentence):
    """`fedtune simulate`: N = --num-clients (8), before Ray starts."""
    from tests.test_cli_errors import _fedtune

    done = _fedtune(tmp_path, "--run-config", run_config)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"fedtune: {sentence}") and done.stderr.count("\n") == 1
    assert "Traceback" not in done.stdout + done.stderr
    assert done.stdout.strip() == "ray imported: False"


def test_a_run_stops_when_more_nodes_connect_than_delta_allows(tmp_path, one_thread):
    rows, summary, _ = run_app(tmp_path, "many", dp="server", nodes=4,
                               **{"dp-delta": 0.3, "dp-population": 3})
    assert [r["round"] for r in rows] == [0]
    assert "4 nodes are connected" in summary["dp_stopped"]


def test_the_dp_sample_is_secret_and_the_plain_one_seeded(monkeypatch):
    from fedtune.flower.loop import sample, train_sample

    ids = list(range(100, 140))
    plain = Config.from_flat({"fraction-train": 0.25})
    assert train_sample(plain, ids, 3) == sample(ids, 0.25, 2, 0, "train", 3)
    monkeypatch.delenv(SECRET_ENV, raising=False)
    dp = Config.from_flat({"fraction-train": 0.25, "dp": "server", "fraction-evaluate": 0.0})
    draws = {tuple(train_sample(dp, ids, 3)) for _ in range(5)}
    assert len(draws) > 1 and all(len(d) == 10 for d in draws)  # C(40, 10): never twice
    monkeypatch.setenv(SECRET_ENV, "s")
    assert train_sample(dp, ids, 3) == train_sample(dp, ids, 3) != train_sample(dp, ids, 4)


def test_a_deployed_serverapp_with_dp_needs_the_population():
    """Through a SuperLink (Flower's HttpGrid) the ServerApp refuses DP without dp-population
    before anything runs: min-available-nodes says nothing about how many nodes exist."""
    from flwr.superlink.grid import HttpGrid

    grid = HttpGrid.__new__(HttpGrid)  # never connected: the refusal comes first
    flat = {"dp": "server", "fraction-evaluate": 0.0}
    with pytest.raises(ConfigError, match="through a SuperLink needs dp-population=<N>"):
        server_main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                                  run_config=flat))
