"""The LoRA-aggregation suites' definitions and their report, from fake runs (fast)."""

from simulations.benchmark import SUITES
from simulations.lora_report import cumulative_bytes, table, write

VARIANTS = ("fedit", "ffa", "fedsa", "flora", "fedex")


def _run(method, seed, losses, em, down, up, fed=None, wall=10.0, peak=500.0):
    """A fake ``run_one`` result: round 0 plus one row per entry of ``losses[1:]``."""
    rows = [{"round": 0, "eval_loss": losses[0], "exact_match": 0.0, "clients": 0,
             "bytes_down_per_client": 0, "bytes_up_per_client": 0, "fed_eval_loss": None}]
    for i, loss in enumerate(losses[1:], start=1):
        rows.append({"round": i, "eval_loss": loss, "exact_match": em, "clients": 4,
                     "train_loss": loss + 0.1, "bytes_down_per_client": down,
                     "bytes_up_per_client": up, "fed_eval_loss": fed if i == 1 else None})
    total = (down + up) * (len(losses) - 1)
    return {"method": method, "seed": seed, "rows": rows, "wall": wall, "peak_mib": peak,
            "total_bytes": total, "run_dir": f"/tmp/{method}-{seed}"}


def _results():
    return [_run("fedit", 0, [6.0, 4.0, 3.0], 0.5, 1000, 1000, fed=2.5, wall=10.0),
            _run("fedit", 1, [6.0, 4.0, 2.0], 0.7, 1000, 1000, fed=3.5, wall=12.0),
            _run("ffa", 0, [6.0, 5.0, 4.0], 0.25, 500, 500),
            _run("ffa", 1, [6.0, 5.0, 4.0], 0.25, 500, 500),
            _run("fedit-het", 0, [6.0, 4.5, 3.5], 0.4, 1500, 1500),
            _run("fedit-het", 1, [6.0, 4.5, 3.5], 0.4, 1500, 1500)]


def test_lora_suites_run_every_variant_as_fedit():
    tiny, dolly = SUITES["lora-aggregation"], SUITES["lora-aggregation-dolly"]
    for suite in (tiny, dolly):
        assert suite.lora_report and not suite.privacy
        assert all(suite.methods[v] == f"lora-aggregation={v}" for v in VARIANTS)
        assert set(suite.algorithms) == set(suite.methods)
        assert set(suite.algorithms.values()) == {"fedit"}
    assert tiny.metric == "exact_match" and tiny.num_clients == 8 and tiny.common == ""
    assert tiny.recipe is None and list(tiny.methods)[:5] == list(VARIANTS)
    assert tiny.methods["fedit-het"] == "lora-aggregation=fedit lora-ranks=4,8,16"
    assert tiny.methods["flora-het"] == "lora-aggregation=flora lora-ranks=4,8,16"
    fresh = "lora-aggregation=flora lora-restart-init=fresh"  # the official FLoRA restart
    assert tiny.methods["flora-fresh"] == dolly.methods["flora-fresh"] == fresh
    assert len(tiny.methods) == 8
    assert dolly.recipe == "fedit-dolly" and dolly.metric == "rouge_l"
    assert dolly.num_clients == 10 and list(dolly.methods) == [*VARIANTS, "flora-fresh"]
    assert dolly.common == ("num-server-rounds=4 local-steps=10 eval-every=2 "
                            "max-new-tokens=24")
    assert not any("lora-ranks" in o for o in dolly.methods.values())


def test_cumulative_bytes_sums_down_and_up_over_rounds():
    rows = _run("fedit", 0, [6.0, 5.0, 4.0, 3.0], 0.0, 100, 30)["rows"]
    rows[2]["bytes_up_per_client"] = None  # a missing count is 0
    assert cumulative_bytes(rows) == [0.0, 130.0, 230.0, 360.0]
    assert cumulative_bytes([]) == []


def test_table_gives_losses_metric_and_bytes_per_method_in_order():
    md = table(_results(), [0, 1], "exact_match", "tiny")
    assert md.startswith("### LoRA aggregation: tiny")
    assert "| method | final held-out loss | final exact_match | final fed eval loss |" in md
    lines = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    assert [line.split("|")[1].strip() for line in lines[1:]] == ["fedit", "ffa", "fedit-het"]
    assert lines[1] == ("| fedit | 2.500 ± 0.707 | 0.600 ± 0.141 | 3.000 ± 0.707 | "
                        "4,000 ± 0 | 2,000 ± 0 | 11 ± 1 | 500 ± 0 |")
    assert lines[2] == ("| ffa | 4.000 ± 0.000 | 0.250 ± 0.000 | — | 2,000 ± 0 | 1,000 ± 0 | "
                        "10 ± 0 | 500 ± 0 |")
    one_seed = table(_results()[:1], [0], "exact_match")
    assert "| fedit | 3.000 | 0.500 | 2.500 | 4,000 | 2,000 | 10 | 500 |" in one_seed


def test_write_creates_markdown_and_plot(tmp_path):
    results = [_run(m, s, [6.0, 5.0 - i * 0.2, 4.0 - i * 0.3], 0.1 * i, 1000 * (i + 1), 1000)
               for i, m in enumerate(SUITES["lora-aggregation"].methods) for s in (0, 1)]
    for r in results:  # rouge_l rows instead: the metric is found in the rows
        for row in r["rows"]:
            row["rouge_l"] = row.pop("exact_match")
    md = write(results, [0, 1], tmp_path, "LoRA aggregation variants, fake")
    assert (tmp_path / "lora.md").read_text() == md
    assert "final rouge_l" in md and "| flora-het |" in md
    assert (tmp_path / "lora.png").stat().st_size > 10_000


def test_main_writes_the_lora_report_for_a_lora_suite(tmp_path, monkeypatch, capsys):
    import simulations.benchmark as benchmark

    def fake_run_one(suite, method, seed, out):
        return _run(method, seed, [6.0, 4.0], 0.5, 10, 10)

    monkeypatch.setattr(benchmark, "run_one", fake_run_one)
    argv = ["--suite", "lora-aggregation", "--methods", "fedit", "ffa", "--out", str(tmp_path)]
    assert benchmark.main(argv) == 0
    md = (tmp_path / "lora.md").read_text()
    assert "| fedit | 4.000 | 0.500 | — | 20 | 20 | 10 | 500 |" in md
    assert (tmp_path / "lora.png").exists() and (tmp_path / "results.md").exists()
