"""docs/extending.md ("Extending fedtune"): its example is the real ``full-ft`` folder, and
that algorithm runs through the ServerApp and ClientApp with the strategies that fit it."""

import json
import re

import pytest
from flwr.app import Context, RecordDict

from client_app.app import app as client_app
from fedtune.algorithms import REGISTRY, resolve
from fedtune.config import Config
from fedtune.errors import ConfigError
from server_app.app import main
from tests.conftest import ROOT
from tests.inprocess_grid import InProcessGrid

BLOCK = re.compile(r"<!-- extending-example: (\S+) -->\n```python\n(.*?)```", re.S)


def test_docs_example_is_the_real_folder():
    blocks = BLOCK.findall((ROOT / "docs" / "extending.md").read_text())
    assert blocks, "docs/extending.md has no extending-example block"
    for path, code in blocks:
        assert (ROOT / path).read_text() == code, f"docs/extending.md's copy of {path} is stale"
    assert "full-ft" in REGISTRY


@pytest.mark.parametrize("strategy", ["fedavg", "fedadam", "fedprox"])
def test_full_ft_learns_through_the_apps(tmp_path, strategy, one_thread):
    flat = {"algorithm": "full-ft", "strategy": strategy,
            **({"server-lr": 0.01} if strategy == "fedadam" else {}),  # fedadam's parameter
            "num-server-rounds": 2, "local-steps": 4, "examples-per-client": 24,
            "eval-examples": 12, "client-eval-examples": 6, "min-train-nodes": 2,
            "min-available-nodes": 2, "fraction-train": 1.0, "fraction-evaluate": 0.5,
            "run-dir": str(tmp_path / "run")}
    grid = InProcessGrid(client_app, 2, flat)
    main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                       run_config=flat))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[-1]["eval_loss"] < 0.8 * rows[0]["eval_loss"]
    assert rows[1]["clients"] == 2 and rows[1]["fed_eval_loss"] > 0
    from transformers import AutoModelForCausalLM

    from fedtune.models.loading import build_tiny

    # every weight crosses the wire, in float32
    assert rows[1]["bytes_up_per_client"] > 4 * build_tiny().num_parameters()

    assert AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model") is not None


def test_full_ft_refuses_what_it_cannot_run():
    with pytest.raises(ConfigError, match="objective=dpo runs with"):
        resolve(Config.from_flat({"algorithm": "full-ft", "objective": "dpo"}))
    with pytest.raises(ConfigError, match="strategy='scaffold' needs its client half, which the "
                                          "full-ft client does not run; use one of fedavg, "):
        resolve(Config.from_flat({"algorithm": "full-ft", "strategy": "scaffold"}))
    with pytest.raises(ConfigError, match="strategy=.scaffold. does not fit algorithm .fedkseed."):
        resolve(Config.from_flat({"algorithm": "fedkseed", "strategy": "scaffold"}))
