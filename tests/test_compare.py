"""Corruption conditions against test mode on corrupted copies on disk; the mean corruption error; paired
comparison over seeds (engine.robustness.compare) against a hand computation from the report's own rows; bad input."""

from __future__ import annotations

import csv
import io

import pytest

from conftest import tiny_config_dict, write_config
from datasets.corruptions import Corruption, write_corrupted_copies
from datasets.synthetic import generate
from engine.evaluation.evaluate import evaluate
from engine.robustness.compare import main as compare_main
from engine.robustness.report import main as robustness_main
from engine.training.train import train

pytestmark = pytest.mark.slow  # end to end: they train five tiny models

TEST_CSV = "abs_7scenes_pose.csv_chess_test.csv"
TRAIN_CSV = "abs_7scenes_pose.csv_chess_train.csv"
MODELS = ("hyperpose", "effposenet")
SEEDS = {"hyperpose": (0, 1, 2), "effposenet": (0, 1)}  # seed 2 of hyperpose has no partner


@pytest.fixture(scope="module")
def seeded_runs(tmp_path_factory):
    """One synthetic scene; hyperpose over seeds 0-2 and effposenet over seeds 0-1, one folder per model."""
    root = tmp_path_factory.mktemp("compare")
    generate(root, scenes=1, layout="7scenes", frames_per_seq=4, size=(64, 48), seed=3)
    runs = {}
    for model, seeds in SEEDS.items():
        for seed in seeds:
            cfg = tiny_config_dict(n_epochs=1, compact_backbone=True)
            cfg["general"]["seed"] = seed
            config = write_config(root / f"tiny_{seed}.json", cfg)
            train(model, "random", root, root / TRAIN_CSV, config, root / "runs" / model / f"seed{seed}", device="cpu")
        runs[model] = root / "runs" / model
    return root, runs


def rows_of(path):
    return list(csv.DictReader(io.StringIO(path.read_text())))


def run(main, args, capsys):
    status = main([str(a) for a in args] + ["--device", "cpu", "--quiet"])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_compare_pairs_by_seed_per_condition(seeded_runs, tmp_path, capsys):
    root, runs = seeded_runs
    out = tmp_path / "cmp"
    status, stdout, err = run(
        compare_main,
        [
            runs["hyperpose"],
            runs["effposenet"],
            root,
            "--conditions",
            f"clean={root / TEST_CSV}",
            "--corruptions",
            "gaussian_noise",
            "--severities",
            "3",
            "--output_path",
            out,
        ],
        capsys,
    )
    assert status == 0, err
    report = [r for r in rows_of(out / "robustness.csv") if r["group"] != "baseline"]
    paired = rows_of(out / "paired.csv")
    assert {(r["condition"], r["metric"]) for r in paired} == {
        (c, m) for c in ("clean", "gaussian_noise@3") for m in ("median_pos_m", "median_ori_deg")
    }
    for r in paired:
        value = {
            (row["group"], int(row["seed"])): float(row[r["metric"]])
            for row in report
            if row["condition"] == r["condition"]
        }
        diffs = [value[("hyperpose", s)] - value[("effposenet", s)] for s in (0, 1)]
        mean = sum(diffs) / 2
        se = abs(diffs[0] - diffs[1]) / 2  # sample sd of two values / sqrt(2)
        assert r["seeds"] == "0 1" and r["unpaired_a"] == "2" and r["unpaired_b"] == ""
        assert float(r["mean_diff"]) == pytest.approx(mean) and float(r["se"]) == pytest.approx(se)
        assert int(r["wins_a"]) == sum(d < 0 for d in diffs) and int(r["wins_b"]) == sum(d > 0 for d in diffs)
        assert float(r["mean_b"]) == pytest.approx((value[("effposenet", 0)] + value[("effposenet", 1)]) / 2)
        covers = float(r["ci95_low"]) <= 0 <= float(r["ci95_high"])
        assert (r["verdict"] == "no significant difference") == covers
    assert "hyperpose - effposenet, paired over 2 seed(s)" in stdout
    assert "left out unpaired seed(s) hyperpose only: 2" in stdout
    assert "Paired comparison over seeds" in (out / "robustness.html").read_text()


def test_corrupted_conditions_match_test_mode_on_corrupted_copies(seeded_runs, tmp_path, capsys):
    root, runs = seeded_runs
    ckpts = {m: sorted((runs[m] / "seed0").rglob("*_final.pth"))[0] for m in MODELS}
    out = tmp_path / "report"
    names, severities = ("gaussian_noise", "defocus_blur"), (1, 5)
    status, stdout, err = run(
        robustness_main,
        [
            "hyperpose",
            "random",
            root,
            root / "tiny_0.json",
            "--checkpoint_path",
            *ckpts.values(),
            "--conditions",
            f"clean={root / TEST_CSV}",
            "--corruptions",
            ",".join(names),
            "--severities",
            "1,5",
            "--output_path",
            out,
        ],
        capsys,
    )
    assert status == 0, err
    rows = [r for r in rows_of(out / "robustness.csv") if r["group"] != "baseline"]
    assert [r["condition"] for r in rows if r["model"] == "hyperpose"] == ["clean"] + [
        f"{n}@{s}" for n in names for s in severities
    ]
    for name in names:
        for severity in severities:
            copy = write_corrupted_copies(
                root / TEST_CSV, root, tmp_path / f"{name}{severity}", Corruption(name, severity, 0)
            )
            medians = {}
            for model, ckpt in ckpts.items():
                ev, _ = evaluate(
                    model,
                    "random",
                    tmp_path / f"{name}{severity}",
                    copy,
                    root / "tiny_0.json",
                    ckpt,
                    tmp_path / "evals",
                    device="cpu",
                )
                row = next(r for r in rows if r["model"] == model and r["condition"] == f"{name}@{severity}")
                assert float(row["median_pos_m"]) == pytest.approx(ev.summaries[0].median_pos_m, rel=1e-6)
                assert float(row["median_ori_deg"]) == pytest.approx(ev.summaries[0].median_ori_deg, rel=1e-6)
                medians[model] = (ev.summaries[0].median_pos_m, ev.summaries[0].median_ori_deg)
            ranked = sorted(MODELS, key=lambda m: medians[m])
            for model in MODELS:
                row = next(r for r in rows if r["model"] == model and r["condition"] == f"{name}@{severity}")
                assert int(row["rank"]) == ranked.index(model) + 1
    # The corruption error relative to effposenet: sum over severities of the errors / effposenet's sum.
    ce = {(r["model"], r["corruption"]): r for r in rows_of(out / "corruptions.csv")}
    for name in names:
        err = {
            m: [float(r["median_pos_m"]) for r in rows if r["model"] == m and r["condition"].startswith(name)]
            for m in MODELS
        }
        assert float(ce[("effposenet", name)]["pos_ce"]) == pytest.approx(1.0)
        assert float(ce[("hyperpose", name)]["pos_ce"]) == pytest.approx(sum(err["hyperpose"]) / sum(err["effposenet"]))
    assert "mean corruption error relative to effposenet" in stdout
    page = (out / "robustness.html").read_text()
    assert "Error against severity: noise" in page and "Error against severity: blur" in page


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--corruptions", "gausian_noise"], "gaussian_noise"),
        (["--corruptions", "all", "--severities", "0,6"], "1, 2, 3, 4, 5"),
    ],
)
def test_unknown_corruptions_and_severities_are_one_line(seeded_runs, tmp_path, capsys, flags, words):
    root, runs = seeded_runs
    ckpt = sorted(runs["hyperpose"].rglob("*_final.pth"))[0]
    status, _, err = run(
        robustness_main,
        [
            "hyperpose",
            "random",
            root,
            root / "tiny_0.json",
            "--checkpoint_path",
            ckpt,
            "--conditions",
            f"clean={root / TEST_CSV}",
            *flags,
            "--output_path",
            tmp_path / "o",
        ],
        capsys,
    )
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert status == 2 and len(lines) == 1 and words in lines[0] and "Traceback" not in err


def test_runs_that_cannot_be_paired_are_one_line(seeded_runs, tmp_path, capsys):
    root, runs = seeded_runs
    args = ["--conditions", f"clean={root / TEST_CSV}", "--output_path", tmp_path / "o"]
    # Two runs of one seed on one side.
    status, _, err = run(compare_main, [runs["hyperpose"], runs["effposenet"] / "seed0", root, *args], capsys)
    assert status == 0, err  # one run per seed is fine
    twice = tmp_path / "twice"
    twice.mkdir()
    for k, ckpt in enumerate(sorted((runs["effposenet"] / "seed0").rglob("*_final.pth")) * 2):
        (twice / f"r{k}_final.pth").write_bytes(ckpt.read_bytes())
    status, _, err = run(compare_main, [runs["hyperpose"], twice, root, *args], capsys)
    assert status == 2 and "two runs of seed 0" in err
    # Runs of different scenes (scene maps) cannot share a comparison.
    other = tmp_path / "other"
    generate(other, scenes=2, layout="7scenes", frames_per_seq=2, size=(64, 48), seed=4)
    cfg = write_config(other / "tiny.json", tiny_config_dict(n_epochs=1, compact_backbone=True))
    train(
        "effposenet", "random", other, other / "abs_7scenes_pose.csv_fire_train.csv", cfg, other / "runs", device="cpu"
    )
    status, _, err = run(compare_main, [runs["hyperpose"], other / "runs", root, *args], capsys)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert status == 2 and len(lines) == 1 and "different scene maps" in lines[0]
