"""The training benchmarks run and print their tables (tiny counts; the figures themselves are not checked)."""

from __future__ import annotations

import re

import pytest
import torch

from conftest import run_script


@pytest.mark.slow
def test_bench_train_e2e_prints_each_setting_and_the_ratio(tmp_path):
    proc = run_script(
        [
            "bench/bench_train_e2e.py",
            "--data",
            str(tmp_path / "data"),
            "--frames",
            "8",
            "--width",
            "64",
            "--height",
            "48",
            "--resize",
            "56",
            "--crop",
            "48",
            "--batch",
            "2",
            "--workers",
            "0",
            "1",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--models",
            "effposenet",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("effposenet")]
    assert [(r[1], r[2], r[3]) for r in rows] == [
        (fmt, cache, workers) for fmt in ("png", "jpeg") for cache in ("no", "yes") for workers in ("0", "1")
    ]
    for r in rows:
        e2e, model_only, ratio = map(float, r[4:7])
        assert abs(ratio - e2e / model_only) < 0.01
    assert "bare backbone (efficientnet) forward+backward" in proc.stdout
    assert list((tmp_path / "data" / "jpeg").rglob("*.jpg"))


@pytest.mark.slow
def test_bench_multi_scene_prints_the_time_split():
    proc = run_script(
        [
            "bench/bench_multi_scene.py",
            "--size",
            "32",
            "--batch",
            "2",
            "--iters",
            "1",
            "--warmup",
            "0",
            "--num-scenes",
            "2",
            "--device",
            "cpu",
            "--amp",
            "off",
            "bf16",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for model in ("ems-transposenet", "mshyperpose"):
        assert f"{model}: bf16 / fp32 speed: train " in proc.stdout
        line = next(s for s in proc.stdout.splitlines() if s.startswith(f"{model} fp32 training step split"))
        parts = dict(re.findall(r"([a-z ,]+?) [\d.]+ ms \((\d+)%\)", line.split(": ", 1)[1]))
        assert {p.strip(", ") for p in parts} == {
            "backbone forward",
            "transformers forward",
            "heads, generators, loss forward",
            "backward",
            "optimizer step",
        }
        assert abs(sum(map(int, parts.values())) - 100) <= 3  # rounded percentages
    for amp in ("fp32", "bf16"):
        for path in ("sdpa", "cpu_dropout_attention"):
            assert f"attention with dropout, forward + backward, {amp}, {path}: " in proc.stdout


def test_amp_accuracy_pairs_the_precisions_by_seed():
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("amp_accuracy", REPO / "bench" / "amp_accuracy.py")
    amp_accuracy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(amp_accuracy)
    values = {
        (0, "fp32"): 0.6,
        (0, "bf16"): 0.7,
        (1, "fp32"): 0.8,
        (1, "bf16"): 0.7,
        (2, "fp32"): 0.5,
        (2, "bf16"): 0.8,
        (3, "bf16"): 9.0,
    }  # seed 3 has no fp32 run: left out
    rows = [{"seed": s, "model": "m", "amp": amp, "x": v} for (s, amp), v in values.items()]
    rows.append({"seed": 0, "model": "other", "amp": "fp32", "x": 5.0})
    paired = amp_accuracy.paired_difference(rows, "m", "x")
    # differences +0.1, -0.1, +0.3: mean 0.1, sd 0.2, se 0.2 / sqrt(3)
    assert paired["n"] == 3 and paired["worse"] == 2
    assert abs(paired["mean"] - 0.1) < 1e-9 and abs(paired["se"] - 0.2 / 3**0.5) < 1e-9
    assert abs(paired["t"] - 0.1 / (0.2 / 3**0.5)) < 1e-9
    assert abs(paired["sd_fp32"] - 0.15275252316) < 1e-9
    assert amp_accuracy.paired_difference(rows, "other", "x") is None


@pytest.mark.slow
def test_gpu_check_lists_its_steps_and_says_one_line_without_cuda(tmp_path):
    from conftest import run_script

    dry = run_script(["bench/gpu_check.py", "--dry-run", "--work", str(tmp_path / "work")])
    assert dry.returncode == 0, dry.stderr
    steps = dry.stdout.strip().splitlines()
    names = " ".join(steps)
    for needed in (
        "tests/test_cuda.py",
        "torch.distributed.run",
        "--amp bf16",
        "--amp fp16",
        "--cache",
        "bench_single_scene.py",
        "bench_multi_scene.py",
        "bench_train_e2e.py",
        "bench_export.py",
        "--batch 8",
        "--batch 64",
    ):
        assert needed in names, needed
    assert all("--device cuda" in s for s in steps if "bench/" in s or " train " in s)
    if not torch.cuda.is_available():
        real = run_script(["bench/gpu_check.py", "--work", str(tmp_path / "work"), "--report", str(tmp_path / "r.md")])
        assert real.returncode == 0 and len(real.stdout.strip().splitlines()) == 1 and "no CUDA" in real.stdout
        assert not (tmp_path / "r.md").exists()
