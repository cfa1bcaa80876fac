import pytest

from fedtune.config import Config, ConfigError, parse_overrides, tomllib
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
    with pytest.raises(ConfigError, match="algorithm='fedsgd' is not supported"):
        Config.from_flat({"algorithm": "fedsgd"})


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


def test_readme_documents_every_key():
    readme = (ROOT / "README.md").read_text()
    missing = [k for k in Config().to_flat() if f"| `{k}` |" not in readme]
    assert not missing, f"README's config table lacks {missing}"


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
