"""simulations/gpu_check.py: its CPU dry run here (every function exercised, < 30 s), its CUDA
checks under the ``gpu`` marker (skipped without CUDA; tests/conftest.py)."""

from __future__ import annotations

import dataclasses
import json
import sys
import types
from pathlib import Path

import pytest
import torch

from simulations import gpu_check
from simulations.gpu_check import Plan, plan_for

DRY = plan_for(dry_run=True)
FULL = plan_for(dry_run=False)


def test_cpu_dry_run_runs_every_check_and_writes_json(tmp_path: Path, one_thread) -> None:
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--cpu-dry-run", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["ok"] and report["dry_run"] and report["device"] == "cpu"
    status = {r["check"]: r["status"] for r in report["results"]}
    assert set(status) == {"a/z", "a/replay", "a/add_codes_", "a/version", "b/fedit",
                           "b/fedkseed", "b/deterministic", "c/replay_", "c/add_perturbation_",
                           "c/add_codes_", "d/ray", "b/qlora", "b/qlora-deterministic", "b/vera"}
    for name in ("a/z", "a/replay", "a/version", "b/fedit", "b/fedkseed", "b/deterministic",
                 "c/replay_", "c/add_perturbation_", "b/qlora", "b/vera"):
        assert status[name] == "pass", report
    assert status["d/ray"] == "skip"  # parsed, not started: no Ray in the dry run
    rates = [r["data"]["seed_elements_per_s"] for r in report["results"]
             if r["check"] in ("c/replay_", "c/add_perturbation_")]
    assert all(rate > 0 for rate in rates)
    print(f"gpu_check --cpu-dry-run: {report['seconds']:.1f} s")


def _codes_hook(monkeypatch: pytest.MonkeyPatch, add_codes_) -> None:
    """Stand in for fedtune.seeded.fused (written elsewhere) to exercise the add_codes_ hook."""
    fused = types.SimpleNamespace(add_codes_=add_codes_)
    monkeypatch.setitem(sys.modules, "fedtune.seeded.fused", fused)


def test_add_codes_hook_checks_and_measures_it_when_present(monkeypatch, one_thread) -> None:
    _codes_hook(monkeypatch, gpu_check.reference_add_codes_)
    assert gpu_check.check_add_codes(DRY).status == "pass"
    assert [r.status for r in gpu_check.check_throughput(DRY)] == ["pass"] * 3

    def off_by_one(s, seeds, deltas, index, start):
        gpu_check.reference_add_codes_(s, seeds, deltas, index, start)
        s[7] += 1

    _codes_hook(monkeypatch, off_by_one)
    result = gpu_check.check_add_codes(DRY)
    assert result.status == "fail" and result.data["mismatched"] == {"cpu": 1}


def test_add_codes_check_gives_each_device_its_own_copy(one_thread) -> None:
    """Two devices where one is the CPU: the first sum must not leak into the second's input
    (on the H200 the CUDA half once started from the CPU half's result: every sum differed)."""
    result = gpu_check.check_add_codes(dataclasses.replace(DRY, other="cpu:0"))
    assert result.status == "pass" and result.data["mismatched"] == {"cpu": 0, "cpu:0": 0}


def test_a_raising_check_is_reported_not_fatal(monkeypatch) -> None:
    def broken(plan: Plan):
        raise RuntimeError("no kernel image")

    monkeypatch.setitem(gpu_check.CHECKS, "c", [broken, gpu_check.check_throughput])
    results = gpu_check.run_checks(DRY, "c")
    result = results[0]
    assert result.check == "c/broken" and result.status == "error"
    assert "no kernel image" in result.summary
    assert [r.check for r in results[1:]] == ["c/replay_", "c/add_perturbation_", "c/add_codes_"]
    assert all(r.status in ("pass", "skip") for r in results[1:])  # the others still ran
    assert "error" in gpu_check.format_table([result])


def test_runs_that_differ_fail_the_determinism_check(monkeypatch) -> None:
    calls = iter([0.5, 0.5, 0.25])

    def fake_run(plan: Plan, algorithm: str, **extra):
        return [{"eval_loss": 6.0}, {"eval_loss": next(calls), "train_loss": 1.0}], ""

    monkeypatch.setattr(gpu_check, "run_quiet", fake_run)
    result = gpu_check.check_deterministic(DRY)
    assert result.status == "pass" and not result.data["off_identical"]
    calls = iter([0.5, 0.25, 0.5])
    result = gpu_check.check_deterministic(DRY)
    assert result.status == "fail" and "DIFFER" in result.summary


def test_ray_check_skips_with_the_reason_where_ray_is_missing(monkeypatch) -> None:
    real = gpu_check.importlib.util.find_spec
    monkeypatch.setattr(gpu_check.importlib.util, "find_spec",
                        lambda name, *a: None if name == "ray" else real(name, *a))
    result = gpu_check.check_ray(FULL)
    assert result.status == "skip" and "Ray is not installed" in result.summary


@pytest.mark.skipif(torch.cuda.is_available(), reason="only meaningful without CUDA")
def test_without_cuda_it_asks_for_the_dry_run(capsys) -> None:
    assert gpu_check.main([]) == 2
    assert "--cpu-dry-run" in capsys.readouterr().err


@pytest.mark.gpu
def test_z_replay_codes_and_versions_are_bit_identical_on_cpu_and_cuda() -> None:
    results = [gpu_check.check_z(FULL), gpu_check.check_replay(FULL),
               gpu_check.check_add_codes(FULL), gpu_check.check_version(FULL)]
    assert all(r.status in ("pass", "skip") for r in results), results


@pytest.mark.gpu
@pytest.mark.parametrize("algorithm", ["fedit", "fedkseed"])
def test_default_runs_learn_on_cuda(algorithm: str) -> None:
    result = gpu_check.check_learning(FULL, algorithm)
    assert result.status == "pass", result


@pytest.mark.gpu
def test_deterministic_runs_repeat_bit_for_bit_on_cuda() -> None:
    result = gpu_check.check_deterministic(FULL)
    assert result.status == "pass", result


@pytest.mark.gpu
def test_qlora_learns_on_cuda_and_repeats_bit_for_bit() -> None:
    pytest.importorskip("bitsandbytes")
    results = gpu_check.check_qlora(FULL)
    assert all(r.status == "pass" for r in results), results


@pytest.mark.gpu
def test_throughput_on_cuda() -> None:
    results = gpu_check.check_throughput(FULL)
    assert all(r.status in ("pass", "skip") for r in results), results
    print(gpu_check.format_table(results))


@pytest.mark.gpu
def test_ray_with_gpu_fractions_finishes() -> None:
    pytest.importorskip("ray")
    result = gpu_check.check_ray(FULL)
    assert result.status == "pass", result
