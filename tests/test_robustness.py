"""Robustness report: two models on five synthetic shift levels, checked against test mode; bad input."""

from __future__ import annotations

import csv
import io
import shutil

import pytest
import torch

from conftest import tiny_config_dict, write_config
from datasets.synthetic import generate
from engine.evaluation.evaluate import evaluate
from engine.evaluation.page import DATA_ID, read_embedded_json
from engine.reproduction.demo import mean_pose_errors
from engine.robustness.report import main
from engine.training.train import train

pytestmark = pytest.mark.slow  # end to end: they train and evaluate tiny models

LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)
TEST_CSV = "abs_7scenes_pose.csv_chess_test.csv"
MODELS = ("hyperpose", "effposenet")


@pytest.fixture(scope="module")
def shifted_runs(tmp_path_factory):
    """One synthetic scene with 5 shift levels; a hyperpose and an effposenet final checkpoint."""
    root = tmp_path_factory.mktemp("robust")
    generate(root, scenes=1, layout="7scenes", frames_per_seq=4, size=(64, 48), seed=5, test_shifts=LEVELS)
    config = write_config(root / "tiny.json", tiny_config_dict(n_epochs=1, compact_backbone=True))
    ckpts = {
        m: train(
            m, "random", root, root / "abs_7scenes_pose.csv_chess_train.csv", config, root / "models", device="cpu"
        ).final_checkpoint
        for m in MODELS
    }
    return root, config, ckpts


def read_rows(path, baselines=False):
    """The CSV's rows: the checkpoints' (and with ``baselines`` the baselines' too)."""
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    return rows if baselines else [r for r in rows if r["group"] != "baseline"]


def run(args, capsys):
    status = main([str(a) for a in args] + ["--device", "cpu", "--quiet"])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_report_matches_test_mode_and_ranks_models_per_level(shifted_runs, tmp_path, capsys):
    root, config, ckpts = shifted_runs
    out = tmp_path / "report"
    status, stdout, err = run(
        ["hyperpose", "random", root, config, "--checkpoint_path", *ckpts.values(), "--shifts", "--output_path", out],
        capsys,
    )
    assert status == 0, err
    every = read_rows(out / "robustness.csv", baselines=True)
    rows = read_rows(out / "robustness.csv")
    names = [f"shift{v:g}" for v in LEVELS]
    assert [(r["model"], r["condition"]) for r in rows] == [(m, c) for m in MODELS for c in names]
    # The baselines on the same conditions, from the training set the checkpoints record.
    baselines = [(r["model"], r["condition"]) for r in every if r["group"] == "baseline"]
    assert baselines == [(b, c) for b in ("mean pose", "retrieval imagenet k=1") for c in names]
    for name, level in zip(names, LEVELS):
        pos, ori = mean_pose_errors(
            root / "abs_7scenes_pose.csv_chess_train.csv",
            root / f"abs_7scenes_pose.csv_chess_test_shift{level:g}.csv",
            root,
        )
        row = next(r for r in every if r["model"] == "mean pose" and r["condition"] == name)
        assert float(row["median_pos_m"]) == pytest.approx(pos) and float(row["median_ori_deg"]) == pytest.approx(ori)
    for name, level in zip(names, LEVELS):
        # The same checkpoint in test mode on that level's CSV scores exactly what the report says.
        medians = {}
        for model, ckpt in ckpts.items():
            ev, _ = evaluate(
                model,
                "random",
                root,
                root / f"abs_7scenes_pose.csv_chess_test_shift{level:g}.csv",
                config,
                ckpt,
                tmp_path / "evals",
                device="cpu",
            )
            s = ev.summaries[0]
            row = next(r for r in rows if r["model"] == model and r["condition"] == name)
            assert float(row["median_pos_m"]) == pytest.approx(s.median_pos_m, rel=1e-9)
            assert float(row["median_ori_deg"]) == pytest.approx(s.median_ori_deg, rel=1e-9)
            assert float(row["mean_pos_m"]) == pytest.approx(s.mean_pos_m, rel=1e-9)
            assert int(row["n_frames"]) == 4
            medians[model] = (s.median_pos_m, s.median_ori_deg)
        ranked = sorted(MODELS, key=lambda m: medians[m])
        for model in MODELS:
            row = next(r for r in rows if r["model"] == model and r["condition"] == name)
            assert int(row["rank"]) == ranked.index(model) + 1
    for model in MODELS:  # relative degradation from the base level
        mine = {r["condition"]: float(r["median_pos_m"]) for r in rows if r["model"] == model}
        for r in (r for r in rows if r["model"] == model):
            assert r["base"] == "shift0"
            expected = (mine[r["condition"]] - mine["shift0"]) / mine["shift0"]
            assert float(r["pos_change_vs_base"]) == pytest.approx(expected)
    assert "shift0.5" in stdout and "hyperpose" in stdout

    page = (out / "robustness.html").read_text()
    assert "<script src=" not in page  # self-contained
    errors = read_embedded_json(page, "fig-errors")
    assert {t["name"] for t in errors["data"]} == set(MODELS) | {"mean pose", "retrieval imagenet k=1"}
    assert all(t["x"] == names for t in errors["data"])
    hyper_pos = next(t for t in errors["data"] if t["name"] == "hyperpose")
    assert hyper_pos["y"] == pytest.approx([float(r["median_pos_m"]) for r in rows if r["model"] == "hyperpose"])
    assert {t["name"] for t in read_embedded_json(page, "fig-degradation")["data"]} == set(MODELS)
    cdf = {t["name"] for t in read_embedded_json(page, "fig-cdf")["data"]}
    assert cdf == {f"{m} @ {c}" for m in MODELS for c in names}
    assert read_embedded_json(page, DATA_ID)["base"] == "shift0"

    # A second run takes everything from the cache and writes the same CSV.
    csv_before = (out / "robustness.csv").read_text()
    status, stdout, _ = run(
        ["hyperpose", "random", root, config, "--checkpoint_path", *ckpts.values(), "--shifts", "--output_path", out],
        capsys,
    )
    assert status == 0 and (out / "robustness.csv").read_text() == csv_before
    assert "0 evaluated in this run" in (out / "robustness.html").read_text()


def test_missing_conditions_are_skipped_and_reported(shifted_runs, tmp_path, capsys):
    root, config, ckpts = shifted_runs
    no_images = tmp_path / "no_images.csv"
    text = (root / TEST_CSV).read_text().replace("chess/seq-04/", "chess/seq-99/")
    no_images.write_text(text)
    args = [
        "hyperpose",
        "random",
        root,
        config,
        "--checkpoint_path",
        ckpts["hyperpose"],
        "--conditions",
        f"base={root / TEST_CSV}",
        f"gone={tmp_path / 'nope.csv'}",
        f"blank={no_images}:{root}",
        "--output_path",
        tmp_path / "out",
    ]
    status, stdout, err = run(args, capsys)
    assert status == 0, err
    assert [r["condition"] for r in read_rows(tmp_path / "out" / "robustness.csv")] == ["base"]
    skipped = [line for line in stdout.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 2 and "nope.csv" in skipped[0] and "seq-99" in skipped[1]
    page = (tmp_path / "out" / "robustness.html").read_text()
    assert "condition gone" in page and "condition blank" in page

    status, _, err = run(
        args[:6] + ["--conditions", f"gone={tmp_path / 'nope.csv'}", "--output_path", tmp_path / "out2"], capsys
    )
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert status == 2 and len(lines) == 1 and "none of the 1 conditions is usable" in lines[0], err


def test_ecl_conditions_beside_the_base_csv(shifted_runs, tmp_path, capsys):
    """--ecl picks up ..._test_<style>.csv beside the base CSV; styles that are not there are skipped."""
    root, config, ckpts = shifted_runs
    base = tmp_path / TEST_CSV
    shutil.copy(root / TEST_CSV, base)
    shutil.copy(root / "abs_7scenes_pose.csv_chess_test_shift1.csv", tmp_path / (base.stem + "_winter.csv"))
    status, stdout, err = run(
        [
            "effposenet",
            "random",
            root,
            config,
            "--checkpoint_path",
            ckpts["effposenet"],
            "--ecl",
            base,
            "--output_path",
            tmp_path / "out",
        ],
        capsys,
    )
    assert status == 0, err
    assert [r["condition"] for r in read_rows(tmp_path / "out" / "robustness.csv")] == ["base", "winter"]
    assert sum(line.startswith("skipped condition") for line in stdout.splitlines()) == 2  # evening, summer


def test_different_scene_maps_are_refused(shifted_runs, tmp_path, capsys):
    root, config, ckpts = shifted_runs
    other = torch.load(ckpts["effposenet"], map_location="cpu", weights_only=True)
    other["scene_map"] = {"fire": 0}
    torch.save(other, tmp_path / "fire.pth")
    status, _, err = run(
        [
            "hyperpose",
            "random",
            root,
            config,
            "--checkpoint_path",
            ckpts["hyperpose"],
            tmp_path / "fire.pth",
            "--shifts",
            "--output_path",
            tmp_path / "out",
        ],
        capsys,
    )
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert status == 2 and len(lines) == 1 and "different scene maps" in lines[0] and "Traceback" not in err


def test_a_read_only_output_folder_is_one_line(shifted_runs, read_only_dir, capsys):
    root, config, ckpts = shifted_runs
    status, _, err = run(
        [
            "hyperpose",
            "random",
            root,
            config,
            "--checkpoint_path",
            ckpts["hyperpose"],
            "--shifts",
            "--output_path",
            read_only_dir / "out",
        ],
        capsys,
    )
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert status == 2 and len(lines) == 1 and "--output_path" in lines[0] and "Traceback" not in err


def test_demo_robustness_step(shifted_runs, tmp_path, capsys):
    from engine.reproduction.demo import robustness_step

    root, _, ckpts = shifted_runs
    robustness_step("hyperpose", list(ckpts.values()), root, tmp_path / "demo", "chess")
    out = capsys.readouterr().out
    assert "Robustness to appearance change" in out
    table = out.split("same poses at every shift level):\n", 1)[1].splitlines()
    assert table[0].split() == ["condition", *MODELS, "mean", "pose", "retrieval", "imagenet", "k=1"] and [
        line.split()[0] for line in table[1:6]
    ] == [f"shift{v:g}" for v in LEVELS]
    assert (tmp_path / "demo" / "robustness.html").is_file()


def test_multi_scene_condition_pools_one_csv_per_scene(scenes3, compact_config, tmp_path, capsys):
    """A repeated condition name adds a scene's CSV; the medians are the mean of the per-scene medians."""
    ckpt = train(
        "ems-transposenet",
        "random",
        scenes3,
        scenes3 / "7scenes_all_scenes.csv",
        compact_config,
        tmp_path / "models",
        device="cpu",
        n_epochs=1,
    ).final_checkpoint
    scenes = ("chess", "fire", "heads")
    conditions = [f"base={scenes3 / f'abs_7scenes_pose.csv_{s}_test.csv'}" for s in scenes]
    status, _, err = run(
        [
            "ems-transposenet",
            "random",
            scenes3,
            compact_config,
            "--checkpoint_path",
            ckpt,
            "--conditions",
            *conditions,
            "--output_path",
            tmp_path / "out",
        ],
        capsys,
    )
    assert status == 0, err
    (row,) = read_rows(tmp_path / "out" / "robustness.csv")
    ev, _ = evaluate(
        "ems-transposenet",
        "random",
        scenes3,
        scenes3 / "7scenes_all_scenes.csv",
        compact_config,
        ckpt,
        tmp_path / "evals",
        device="cpu",
        test_dataset_id="7scenes",
    )
    assert [s.scene for s in ev.summaries] == list(scenes)
    assert float(row["median_pos_m"]) == pytest.approx(sum(s.median_pos_m for s in ev.summaries) / 3)
    assert int(row["n_frames"]) == sum(s.n_frames for s in ev.summaries)
    assert 0.0 <= float(row["scene_acc"]) <= 1.0
