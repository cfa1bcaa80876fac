"""The benchmark runner: a real (small) run, the table and the plot."""

import pytest

from simulations.benchmark import SUITES, _stat, main, table


@pytest.mark.slow  # six rounds of the centralized baseline
def test_smoke_suite_runs_a_method_and_writes_table_and_plot(tmp_path, capsys):
    assert main(["--suite", "smoke", "--methods", "centralized", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "results.md").read_text()
    assert "| centralized |" in md and "peak MiB" in md and "torch" in md
    row = next(line for line in md.splitlines() if line.startswith("| centralized"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # final held-out loss: untrained 6.19; measured 1.65, 1.55, 1.43, 1.45, 1.23, 1.14 over
    # the 6 rounds
    assert float(cells[3]) < 1.6
    assert float(cells[7]) > 100  # peak memory of the process tree, MiB
    assert (tmp_path / "results.png").stat().st_size > 10_000


def test_table_reports_mean_and_std_over_seeds():
    rows = lambda em, loss: [{"round": 0, "eval_loss": 6.0, "exact_match": 0.0},  # noqa: E731
                             {"round": 1, "eval_loss": loss, "exact_match": em, "clients": 4,
                              "bytes_down_per_client": 100, "bytes_up_per_client": 50}]
    results = [{"method": "fedit", "seed": s, "rows": rows(em, loss), "wall": 10.0 + s,
                "peak_mib": 500.0, "total_bytes": 150}
               for s, (em, loss) in enumerate([(0.5, 1.0), (0.7, 2.0)])]
    md = table("smoke", SUITES["smoke"], results, [0, 1])
    assert "| fedit | 0.600 ± 0.141 | 0.600 ± 0.141 | 1.500 ± 0.707 | 150 ± 0 |" in md
    assert _stat([1.0], ".1f") == "1.0"
