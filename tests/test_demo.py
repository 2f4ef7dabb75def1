"""``make demo`` and ``make demo-ms`` through their code (engine.reproduction.demo.run_demo), on tiny scenes
with the compact backbone; the demos themselves run for minutes (their figures: README, docs/benchmarks.md)."""

from __future__ import annotations

import dataclasses

import pytest

from engine.reproduction.demo import DEMOS, run_demo

pytestmark = pytest.mark.slow  # end to end: trains two tiny models per demo


@pytest.mark.parametrize("kind", sorted(DEMOS))
def test_demo_trains_tests_and_prints_both_models_beside_the_mean_pose(kind, compact_config, tmp_path, capsys):
    demo = dataclasses.replace(DEMOS[kind], frames_per_seq=2)
    assert run_demo(kind, tmp_path / "data", tmp_path / "out", config=compact_config, demo=demo) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("model ") and "mean-pose pos" in line)
    assert ("scene acc" in lines[head]) == (kind == "multi")
    rows = [line.split() for line in lines[head + 1 : head + 1 + len(demo.models) * demo.scenes]]
    assert [r[0] for r in rows] == [m for m in demo.models for _ in range(demo.scenes)]
    assert all(float(r[2]) >= 0 and float(r[4]) > 0 for r in rows)  # the model's and the mean pose's errors
    assert ("Robustness to appearance change" in out) == demo.robustness
    for model in demo.models:
        assert list((tmp_path / "out" / model).rglob("*_final.pth"))
        assert list((tmp_path / "out" / model / "batch_eval").glob("*.html"))
