"""The full-parameter report: rounds to FedKSeed's final loss, client compute, bytes."""

from simulations.benchmark import SUITES
from simulations.fullparam_report import compute_seconds, rounds_to, write


def _rows(losses, seconds, clients=4, down=1000.0, up=100.0):
    rows = [{"round": 0, "eval_loss": losses[0], "bytes_down_per_client": 0,
             "bytes_up_per_client": 0, "clients": 0}]
    rows += [{"round": i, "eval_loss": loss, "seconds_train": seconds, "clients": clients,
              "bytes_down_per_client": down, "bytes_up_per_client": up}
             for i, loss in enumerate(losses[1:], start=1)]
    return rows


def test_rounds_to_target_and_compute_time():
    rows = _rows([6.0, 5.0, 3.5, 3.0], seconds=2.5)
    assert rounds_to(rows, 3.5) == 2 and rounds_to(rows, 2.0) is None
    assert rounds_to(_rows([3.0, 4.0], 1.0), 3.0) is None  # round 0 does not count
    assert compute_seconds(rows) == 3 * 2.5 * 4


def test_report_table(tmp_path):
    results = [
        {"method": "fedkseed", "seed": 0, "rows": _rows([6.0, 5.0, 4.0], 10.0, up=1200.0),
         "peak_mib": 900.0},
        {"method": "ferret", "seed": 0, "rows": _rows([6.0, 3.9, 2.0], 1.0, up=13000.0),
         "peak_mib": 1000.0},
    ]
    # Natural Instructions: Rouge-L per task with its evaluated count, at the evaluated rounds
    results[1]["rows"][0].update({"rouge_l": 0.1, "rouge_l/t1": 0.1, "evaluated/t1": 20})
    results[1]["rows"][2].update({"rouge_l": 0.25, "rouge_l/t1": 0.25, "evaluated/t1": 20})
    text = write(results, tmp_path, "test")
    assert "(4.000)" in text
    ferret = next(line for line in text.splitlines() if line.startswith("| ferret"))
    cells = [c.strip() for c in ferret.strip("|").split("|")]
    assert cells[1:] == ["2.000", "0.250", "1", "8", "1.0", "13.0", "1000"]
    fedkseed = next(line for line in text.splitlines() if line.startswith("| fedkseed"))
    assert [c.strip() for c in fedkseed.strip("|").split("|")][2] == "—"
    assert "| t1 | 20 | — | 0.250 |" in text
    assert "- ferret: 0: 6.000, 1: 3.900, 2: 2.000" in text
    assert (tmp_path / "full-parameter.md").read_text() == text


def test_suites_compare_the_full_parameter_methods():
    for name in ("full-parameter", "full-parameter-ni"):
        assert set(SUITES[name].methods) == {"fedkseed", "fedkseed-pro", "ferret", "fedit"}
        assert SUITES[name].full_report
    assert "ferret" in SUITES["smoke"].methods
