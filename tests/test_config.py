import tomllib

import pytest

from fedtune.config import Config, ConfigError, parse_overrides
from tests.conftest import ROOT


def test_pyproject_lists_every_default():
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert table == Config().to_flat()


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(ConfigError, match="Did you mean 'lora-r'"):
        Config.from_flat({"lora_r": 8})


def test_bad_values_are_one_clear_sentence():
    with pytest.raises(ConfigError, match="local-steps=abc is not a valid int"):
        Config.from_flat({"local-steps": "abc"})
    with pytest.raises(ConfigError, match="fraction-train=1.5 must be in"):
        Config.from_flat({"fraction-train": 1.5})
    from fedtune.algorithms import resolve

    with pytest.raises(ConfigError, match="algorithm='fedsgd' is not supported; use one of "
                                          "fedit, fedkseed, fedkseed-pro, ferret, full-ft, local"):
        resolve(Config.from_flat({"algorithm": "fedsgd"}))
    with pytest.raises(ConfigError, match="objective=dpo runs with fedit, fedkseed, "
                                          "fedkseed-pro, ferret; the local baseline supports "
                                          "sft only"):
        resolve(Config.from_flat({"algorithm": "local", "objective": "dpo"}))
    with pytest.raises(ConfigError, match="init-adapter starts a FedIT"):
        resolve(Config.from_flat({"algorithm": "fedkseed", "init-adapter": "runs/x/adapter"}))


def test_user_errors_stop_the_cli_before_any_engine(capsys):
    """One sentence on stderr, exit code 2, no traceback, nothing started."""
    from fedtune.cli import main

    for argv, says in ((["--algorithm", "fedkseed", "--run-config", "strategy='krum'"],
                        "strategy='krum' does not fit algorithm 'fedkseed'; use one of fedavg."),
                       (["--algorithm", "fedsgd"], "algorithm='fedsgd' is not supported"),
                       (["--run-config", "dp='server' strategy='krum'"],
                        "strategy='krum' cannot run with dp='server'"),
                       (["--run-config", "dp='yes'"], "dp='yes' is unknown")):
        assert main(["simulate", *argv]) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err and err.count("\n") == 1


def test_overrides_parse_like_flower_run_config():
    flat = parse_overrides(
        "lr=1e-3 lora-r=8 model='../shared/models/x' gradient-checkpointing=true"
    )
    assert flat == {
        "lr": 1e-3,
        "lora-r": 8,
        "model": "../shared/models/x",
        "gradient-checkpointing": True,
    }
    cfg = Config.from_flat(flat)
    assert cfg.train.lr == 1e-3 and cfg.lora.lora_r == 8 and cfg.model.gradient_checkpointing


def test_docs_config_reference_documents_every_key():
    """docs/config.md's table is rendered from the code (docs/hooks/config_reference.py)."""
    from fedtune.config_help import markdown

    page = (ROOT / "docs" / "config.md").read_text()
    assert "<!-- config-reference -->" in page, "docs/config.md lost the reference's marker"
    table = markdown()
    missing = [k for k in Config().to_flat() if f"| `{k}` |" not in table]
    assert not missing, f"the config reference lacks {missing}"


def test_shipped_recipes_are_valid_and_found_by_name():
    from fedtune.cli import RECIPES, load_recipe

    names = sorted(p.stem for p in RECIPES.glob("*.toml"))
    assert "fedit-tiny" in names
    for name in names:
        flat = load_recipe(name)
        flat.pop("num-clients", None)  # the simulation's size, read by `fedtune simulate`
        Config.from_flat(flat)
    assert Config.from_flat(load_recipe("fedit-tiny")).to_flat() == Config.from_flat({}).to_flat()
    with pytest.raises(ConfigError, match="fedit-tiny"):
        load_recipe("no-such-recipe")


def test_auto_defaults_follow_the_objective_and_the_model():
    sft, dpo = Config.from_flat({}), Config.from_flat({"objective": "dpo"})
    assert (sft.server.num_server_rounds, dpo.server.num_server_rounds) == (12, 20)
    assert dpo.train.dpo_beta == 0.5  # tiny's random start
    real = Config.from_flat({"objective": "dpo", "model": "org/model", "num-server-rounds": 3})
    assert (real.train.dpo_beta, real.server.num_server_rounds) == (0.1, 3)


def test_declared_python_range_is_one_the_stack_installs_on():
    """requires-python must not promise versions that Flower (or torch) cannot install on."""
    import sys
    from importlib.metadata import metadata

    from packaging.specifiers import SpecifierSet

    ours = SpecifierSet(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
                        ["requires-python"])
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in ours
    for dist in ("flwr", "torch"):
        theirs = SpecifierSet(metadata(dist)["Requires-Python"] or "")
        for minor in range(8, 16):
            if f"3.{minor}" in ours:
                assert f"3.{minor}" in theirs, f"we declare 3.{minor}, {dist} needs {theirs}"


@pytest.mark.parametrize("override", ["lr=inf", "lr=nan", "zo-eps=-inf", "dp-clip-norm=1e999",
                                      "dirichlet-alpha=nan", "round-timeout='inf'"])
def test_non_finite_numbers_are_refused_naming_the_key(override):
    """TOML and float() both read inf and nan; a run with lr=inf trained nothing, exit 0."""
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"^{key}=(-?inf|nan) is not a finite number; give a "
                                          r"finite value \(the default is [\d.e-]+\)\.$"):
        Config.from_flat(parse_overrides(override))


def test_every_float_key_refuses_inf():
    floats = [k for k, (_, f) in Config.keys().items() if f.type in ("float", float)]
    assert len(floats) > 20
    for key in floats:
        with pytest.raises(ConfigError, match=f"{key}=inf is not a finite number"):
            Config.from_flat({key: float("inf")})
    with pytest.raises(ConfigError, match="local-steps=inf is not a valid int"):
        Config.from_flat({"local-steps": float("inf")})


@pytest.mark.parametrize("flat, says", [
    ({"num-server-rounds": -1}, "num-server-rounds=-1 must be at least 1."),
    ({"num-server-rounds": -20}, "num-server-rounds=-20 must be at least 1."),
    ({"eval-examples": -1}, "eval-examples=-1 must be >= 0."),
    ({"client-eval-examples": -3}, "client-eval-examples=-3 must be >= 0."),
])
def test_negative_counts_are_refused(flat, says):
    with pytest.raises(ConfigError, match=f"^{says}$"):
        Config.from_flat(flat)
    assert Config.from_flat({"num-server-rounds": 0}).server.num_server_rounds == 12  # 0 = auto


@pytest.mark.parametrize("argv, says", [
    (["--num-clients", "0"], "--num-clients=0 must be at least 1."),
    (["--num-clients", "-2"], "--num-clients=-2 must be at least 1."),
    (["--rounds", "-1"], "num-server-rounds=-1 must be at least 1."),
    (["--run-config", "lr=inf"], "lr=inf is not a finite number"),
])
def test_the_cli_refuses_zero_clients_negative_rounds_and_inf_before_any_engine(
        argv, says, capsys, tmp_path):
    from fedtune.cli import main

    assert main(["simulate", "--output-dir", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and err.count("\n") == 1
    assert not any(tmp_path.iterdir())  # no run folder: nothing started


@pytest.mark.parametrize("key, value", [("lora-alpha", 0), ("weight-decay", -0.1),
                                        ("max-grad-norm", -1.0), ("max-new-tokens", -1),
                                        ("min-available-nodes", -1), ("min-evaluate-nodes", -2)])
def test_out_of_range_numbers_are_one_sentence_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=f"{key}={value}") as err:
        Config.from_flat({key: value})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("algorithm, flat, key, readers", [
    ("fedit", {"seeds-server-momentum": 0.5}, "seeds-server-momentum",
     "fedkseed, fedkseed-pro, ferret"),
    ("fedit", {"seeds-robust-clip": 3.0}, "seeds-robust-clip", "fedkseed, fedkseed-pro, ferret"),
    ("ferret", {"lora-aggregation": "flora"}, "lora-aggregation", "fedit"),
    ("ferret", {"zo-seeds": 64}, "zo-seeds", "fedkseed, fedkseed-pro"),
    ("fedkseed", {"ferret-seeds": 8}, "ferret-seeds", "ferret"),
    ("full-ft", {"lora-r": 8}, "lora-r", "fedit, local, centralized"),
    ("local", {"zo-steps": 4}, "zo-steps", "fedkseed, fedkseed-pro"),
])
def test_another_algorithms_key_is_refused_not_ignored(algorithm, flat, key, readers):
    """A non-default value of a key the chosen algorithm does not read (issue #26: accepted and
    silently ignored) is one sentence naming the key and the algorithms that read it."""
    from fedtune.algorithms import resolve
    from fedtune.compat import Incompatible

    with pytest.raises(Incompatible) as err:
        resolve(Config.from_flat({"algorithm": algorithm, **flat}))
    assert str(err.value) == (f"{key} is read by {readers} only, not by algorithm='{algorithm}', "
                              f"which would ignore it; drop {key} or use one of those "
                              "algorithms.")
    resolve(Config.from_flat({"algorithm": algorithm}))  # the default value is fine
    for owner in readers.split(", "):  # and the key is fine with an algorithm that reads it
        if owner != "local":
            resolve(Config.from_flat({"algorithm": owner, **flat}))


def test_scaffold_with_mixed_ranks_says_what_to_change():
    """It told the user to set lora-aggregation='fedit', which the run already had."""
    from fedtune.algorithms import resolve

    with pytest.raises(ConfigError) as err:
        resolve(Config.from_flat({"strategy": "scaffold", "lora-ranks": "4,16"}))
    assert "drop lora-ranks" in str(err.value) and "lora-aggregation" not in str(err.value)


def test_every_rule_of_the_table_names_two_settings():
    from fedtune.compat import RULES

    assert all(len(r.settings) == 2 and all(r.settings) for r in RULES)
