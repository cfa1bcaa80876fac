"""The combination matrix (issue #26 item 5): algorithm x objective x strategy x lora-aggregation
x dp x secagg x trust policy x FedIT's adapter (peft-method and LoRA options) x quantization. Every
combination either is refused by the compatibility table (:mod:`fedtune.compat`) or a section's own
check in ONE sentence before any engine starts, or runs one short round on the in-process grid with
a finite loss, bytes counted and a checkpoint written. No third outcome.

CI tier: every pair of values of any two factors (a deterministic greedy pairwise cover, then every
pair again in a combination that runs, where the table allows one), every dp x secagg x trust
triple with each algorithm and each algorithm with each objective; the runs share a module-scoped
cache (a combination that runs is run once) and skip the plot. ``FEDTUNE_EXHAUSTIVE=1`` walks the
full product (the README's test command runs every test, so the long mode is an env var, not a
marker). The quick tier (``-m "not slow"``) checks every refusal and runs each value of each factor
once (:func:`_quick`); the other runs are slow."""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from fedtune.algorithms import resolve
from fedtune.algorithms.fedit.config import AGGREGATIONS
from fedtune.compat import RULES, Incompatible
from fedtune.config import Config, ConfigError
from fedtune.strategies import REGISTRY as STRATEGIES

NODES = 2
ADAPTERS = {"lora": {}, "vera": {"peft-method": "vera"}, "prompt": {"peft-method": "prompt-tuning"},
            "dora": {"lora-use-dora": True}, "pissa": {"lora-init": "pissa"}}
TRUST = {"none": {}, "norm-ratio-3": {"max-update-norm-ratio": 3.0},
         "capped": {"example-weights": "capped"}}
FACTORS: dict[str, list[str]] = {
    "algorithm": ["fedit", "fedkseed", "fedkseed-pro", "ferret", "full-ft"],
    "objective": ["sft", "dpo"],
    "strategy": list(dict.fromkeys(name for _, name in STRATEGIES)),
    "lora-aggregation": [*AGGREGATIONS, "flora-fresh"],  # flora with lora-restart-init=fresh
    "dp": ["off", "server", "client"],
    "secagg": ["off", "on"],
    "trust": list(TRUST),
    # FedIT's adapter: a representative of each kind of peft-method (LoRA's factors; VeRA's
    # frozen shared parts; a soft prompt, no layer adapted; DoRA's magnitudes; PiSSA's residual
    # base); every method and option alone: tests/test_peft_methods.py
    "adapter": list(ADAPTERS),
    "quantization": ["none", "nf4"],  # (int8 and fp4: tests/test_quantization.py)
}
DEFAULT = {name: values[0] for name, values in FACTORS.items()}
#: one round, the tiny model, 2 nodes, few examples, a small seed pool; every run reports to
#: TensorBoard (report-to fits every combination; a few ms a run), the cheapest tracker
FAST = {"num-server-rounds": 1, "local-steps": 1, "examples-per-client": 4, "eval-examples": 2,
        "client-eval-examples": 2, "max-new-tokens": 1, "fraction-evaluate": 0.0,
        "fraction-train": 1.0, "min-train-nodes": NODES, "min-available-nodes": NODES,
        "batch-size": 2, "lr-schedule": "constant", "seed": 1, "report-to": "tensorboard"}
SEEDS = {"fedkseed": {"zo-seeds": 64, "zo-steps": 2}, "fedkseed-pro": {"zo-seeds": 64,
         "zo-steps": 2}, "ferret": {"ferret-seeds": 8}}
Case = tuple[tuple[str, str], ...]


def _pairs(names: list[str], case: dict[str, str]) -> set:
    return {((a, case[a]), (b, case[b])) for a, b in itertools.combinations(names, 2)}


def _all_pairs(factors: dict[str, list[str]]) -> list:
    """Every pair of values of two factors, in factor order then value order."""
    names = list(factors)
    return [((a, x), (b, y)) for a, b in itertools.combinations(names, 2)
            for x in factors[a] for y in factors[b]]


def _fill(factors: dict[str, list[str]], pair, uncovered: set) -> dict[str, str]:
    """``pair`` completed factor by factor with the value that covers most still-uncovered
    pairs with the values chosen so far (ties: the first value)."""
    names = list(factors)
    (a, x), (b, y) = pair
    case = {a: x, b: y}
    for name in names:
        if name not in case:
            case[name] = max(factors[name], key=lambda v, n=name: (sum(
                ((m, case[m]), (n, v)) in uncovered if names.index(m) < names.index(n)
                else ((n, v), (m, case[m])) in uncovered for m in case), -factors[n].index(v)))
    return {n: case[n] for n in names}


def pairwise(factors: dict[str, list[str]]) -> list[dict[str, str]]:
    """A deterministic greedy cover of every pair of values of any two factors: each new case
    is the first uncovered pair, :func:`_fill`-ed."""
    uncovered, cases = set(_all_pairs(factors)), []
    for pair in _all_pairs(factors):
        if pair in uncovered:
            cases.append(_fill(factors, pair, uncovered))
            uncovered -= _pairs(list(factors), cases[-1])
    return cases


def runnable_pairwise(factors: dict[str, list[str]], cases: list[dict[str, str]],
                      runs: Callable[[dict[str, str]], bool]) -> list[dict[str, str]]:
    """More cases so that every pair is met by a case that ``runs`` where the table lets it: a
    pairwise cover meets many pairs only in combinations refused for another reason (FedKSeed
    with krum and dp), which would hide the deeper rule. Each pair not yet in a running case
    gets its greedy completion, its factors set back to their defaults one at a time (last
    first) until it runs; one that never runs is kept, so that the rule refusing it is seen."""
    names = list(factors)
    covered = set().union(*(_pairs(names, c) for c in cases if runs(c)))
    extra = []
    for pair in _all_pairs(factors):
        if pair in covered:
            continue
        case = _fill(factors, pair, set(_all_pairs(factors)) - covered)
        ok = runs(case)
        for name in reversed(names):  # back to the defaults, one factor at a time, until it runs
            if ok:
                break
            if name not in (pair[0][0], pair[1][0]):
                case = {**case, name: factors[name][0]}
                ok = runs(case)
        extra.append(case)
        if ok:
            covered |= _pairs(names, case)
    return extra


def privacy_triples() -> list[dict[str, str]]:
    """Every dp x secagg x trust with each algorithm (the rest at their defaults)."""
    return [{**DEFAULT, "algorithm": a, "dp": d, "secagg": s, "trust": t}
            for a in FACTORS["algorithm"] for d in FACTORS["dp"] for s in FACTORS["secagg"]
            for t in FACTORS["trust"]]


def objectives() -> list[dict[str, str]]:
    """Each algorithm with each objective (the rest at their defaults): the pairwise cover
    meets DPO only in refused combinations."""
    return [{**DEFAULT, "algorithm": a, "objective": o}
            for a in FACTORS["algorithm"] for o in FACTORS["objective"]]


def exhaustive() -> list[dict[str, str]]:
    return [dict(zip(FACTORS, values, strict=True))
            for values in itertools.product(*FACTORS.values())]


def _cases() -> list[Case]:
    if os.environ.get("FEDTUNE_EXHAUSTIVE") == "1":
        chosen = exhaustive()
    else:
        chosen = pairwise(FACTORS) + privacy_triples() + objectives()
        chosen += runnable_pairwise(FACTORS, chosen,
                                    lambda c: refusal(flat_config(tuple(c.items()))) is None)
    return list(dict.fromkeys(tuple(c.items()) for c in chosen))


def flat_config(case: Case) -> dict:
    c = dict(case)
    flat = {**FAST, **SEEDS.get(c["algorithm"], {}), **TRUST[c["trust"]],
            **{k: c[k] for k in ("algorithm", "objective", "strategy", "dp", "secagg")}}
    if c["lora-aggregation"] == "flora-fresh":
        flat.update({"lora-aggregation": "flora", "lora-restart-init": "fresh"})
    elif c["lora-aggregation"] != "fedit":
        flat["lora-aggregation"] = c["lora-aggregation"]
    flat.update(ADAPTERS[c["adapter"]])
    if c["quantization"] != "none":
        flat["quantization"] = c["quantization"]
    return flat


def refusal(flat: dict) -> ConfigError | None:
    """The one-sentence refusal of ``flat`` before any engine starts, or None. Past a section's
    own checks (``Config.from_flat``) every refusal is the table's (:class:`Incompatible`)."""
    try:
        cfg = Config.from_flat(flat)
    except ConfigError as err:
        return err
    try:
        resolve(cfg)
        cfg.privacy.check_population(cfg.privacy.population(NODES), deployed=False)
    except Incompatible as err:
        return err
    return None


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One short run per accepted combination, shared by this module's tests."""
    from client_app.app import app as client_app
    from server_app.app import main as server_main
    from tests.inprocess_grid import InProcessGrid

    root, done = tmp_path_factory.mktemp("combinations"), {}
    patch = pytest.MonkeyPatch()
    patch.setattr("fedtune.driver.plot_metrics", lambda *args, **kwargs: None)

    def run(flat: dict) -> Path:
        key = json.dumps(flat, sort_keys=True)
        if key not in done:
            run_dir = root / f"run-{len(done)}"
            flat = {**flat, "run-dir": str(run_dir)}
            server_main(InProcessGrid(client_app, NODES, flat),
                        Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                                run_config=flat))
            done[key] = run_dir
        return done[key]

    yield run
    patch.undo()


CASES = _cases()


@functools.cache
def _runs(case: Case) -> bool:
    return refusal(flat_config(case)) is None


def _quick(cases: list[Case]) -> set[Case]:
    """The running cases of the quick tier: in order, each one that runs a (factor, value) no
    earlier quick case ran, so every value of every factor that can run runs once in the quick
    tier (about 20 runs); the rest of the runs are marked slow. Refused cases are all quick."""
    seen: set[tuple[str, str]] = set()
    quick = set()
    for case in cases:
        if _runs(case) and not set(case) <= seen:
            quick.add(case)
            seen |= set(case)
    return quick


QUICK = _quick(CASES)


def test_the_cover_has_every_pair_and_the_triples():
    names = list(FACTORS)
    seen = {((a, c[a]), (b, c[b])) for c in map(dict, CASES)
            for a, b in itertools.combinations(names, 2)}
    assert all(((a, x), (b, y)) in seen for a, b in itertools.combinations(names, 2)
               for x in FACTORS[a] for y in FACTORS[b])
    privacy = {(c["algorithm"], c["dp"], c["secagg"], c["trust"]) for c in map(dict, CASES)}
    assert privacy == set(itertools.product(*(FACTORS[f] for f in ("algorithm", "dp", "secagg",
                                                                   "trust"))))
    assert pairwise(FACTORS) == pairwise(FACTORS)  # deterministic
    assert len(pairwise(FACTORS)) < 70  # the greedy cover stays small (10 x 6 pairs at least)


@pytest.mark.parametrize("case", [
    c if c in QUICK or not _runs(c) else pytest.param(c, marks=pytest.mark.slow) for c in CASES],
    ids=lambda c: "-".join(v for _, v in c))
def test_a_combination_runs_or_is_refused_in_one_sentence(case, runs, one_thread):
    flat = flat_config(case)
    err = refusal(flat)
    if err is not None:
        message = str(err)
        assert "\n" not in message and message.endswith(".") and message[:1].strip(), message
        if isinstance(err, Incompatible):
            assert err.rule in RULES
        return
    run_dir = runs(flat)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    assert last["round"] == 1 and not last.get("skipped"), last
    assert math.isfinite(last["eval_loss"]), last
    assert last["bytes_up_per_client"] > 0 and last["bytes_down_per_client"] > 0, last
    assert (run_dir / "checkpoint.npz").exists()
    from tests.test_tracking import tb_points

    assert [step for step, _ in tb_points(run_dir, "eval_loss")] == [0, 1]


#: one config per rule of the table that breaks it (and no rule before it)
BREAKS = [
    {"algorithm": "full-ft", "objective": "dpo"},
    {"algorithm": "fedkseed", "strategy": "krum"},
    {"algorithm": "full-ft", "strategy": "scaffold"},
    {"algorithm": "ferret", "init-adapter": "runs/x/adapter"},
    {"zo-steps": 3},
    {"strategy": "fedavg", "prox-mu": 0.5},
    {"peft-method": "vera", "lora-alpha": 8},
    {"peft-method": "ia3", "init-adapter": "runs/x/adapter"},
    {"dp": "server", "secagg": "on"},
    {"algorithm": "local", "dp": "server"},
    {"strategy": "krum", "dp": "server"},
    {"algorithm": "fedkseed", "seeds-robust-clip": 3.0, "dp": "client"},
    {"secagg": "on", "example-weights": "equal"},
    {"secagg": "on", "min-train-nodes": 1},
    {"dp": "client", "max-update-norm-ratio": 3.0},
    {"dp": "client", "dp-population": 5, "dp-delta": 0.5},
    {"dp": "client", "fraction-evaluate": 0.5},
    {"dp": "client", "secagg": "on", "dp-clip-norm": 1e6, "fraction-evaluate": 0.0,
     "min-train-nodes": 2},
    {"algorithm": "ferret", "dp": "client", "fraction-evaluate": 0.0},
    {"algorithm": "fedkseed-pro", "dp": "client", "secagg": "on", "fraction-evaluate": 0.0,
     "min-train-nodes": 2},
    {"lora-aggregation": "ffa", "lora-ranks": "4,16"},
    {"lora-aggregation": "fedex", "lora-restart-init": "fresh"},
    {"lora-aggregation": "flora", "strategy": "fedadam"},
    {"lora-aggregation": "fedex", "dp": "client", "fraction-evaluate": 0.0},
    {"lora-aggregation": "ffa", "lora-use-dora": True},
    {"lora-aggregation": "flora", "lora-init": "pissa"},
    # ---- quantization
    {"algorithm": "fedkseed", "quantization": "nf4"},
    {"lora-aggregation": "flora", "quantization": "nf4"},
    {"peft-method": "hra", "quantization": "nf4"},
]


@pytest.mark.parametrize("i", range(len(RULES)), ids=lambda i: "-".join(RULES[i].settings))
def test_every_rule_of_the_table_refuses_in_one_sentence(i):
    """Each row of the table is reachable and is the one that refuses its example (the matrix
    does not meet every row: most privacy rows need a key it leaves at its default)."""
    assert len(BREAKS) == len(RULES)
    with pytest.raises(Incompatible) as err:
        resolve(Config.from_flat({"min-train-nodes": NODES, **BREAKS[i]}))
    assert err.value.rule is RULES[i]
    message = str(err.value)
    assert "\n" not in message and message.endswith("."), message
