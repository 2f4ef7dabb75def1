"""Batch evaluation: discovery order, the seed commands end to end, CSV and HTML contents, the cache."""

from __future__ import annotations

import csv
import io
import logging
import os
import shutil
import sys

import pytest
import torch

from conftest import run_script, tiny_config_dict, write_config
from engine.evaluation.batch_eval import (
    batch_evaluate,
    checkpoint_labels,
    discover_checkpoints,
    main,
    split_trailing_positionals,
)
from engine.evaluation.evaluate import Evaluator
from engine.evaluation.page import DATA_ID, read_embedded_json
from engine.training.train import train
from util.errors import UserError

ROOT = "./datasets/7Scenes"
CHESS_TEST = f"{ROOT}/abs_7scenes_pose.csv_chess_test.csv"
ALL_SCENES = f"{ROOT}/7scenes_all_scenes.csv"
CONFIG = "./configs/tiny_config.json"
OUT = "./evals/hyperpose_7scenes_evals"


def user_folder(tmp_path_factory, data, name):
    """A working folder laid out as the seed commands expect (./datasets/7Scenes, ./configs, ./models)."""
    cwd = tmp_path_factory.mktemp(name)
    (cwd / "datasets").mkdir()
    (cwd / "datasets" / "7Scenes").symlink_to(data, target_is_directory=True)
    write_config(cwd / CONFIG, tiny_config_dict(n_epochs=2))  # 2 epochs: checkpoint-1, checkpoint-2, final
    return cwd


@pytest.fixture(scope="module")
def single_run(tmp_path_factory, scene7):
    """A hyperpose run folder with checkpoint-1, checkpoint-2 and final."""
    cwd = user_folder(tmp_path_factory, scene7, "batch_single")
    result = train(
        "hyperpose",
        "random",
        cwd / ROOT,
        scene7 / "abs_7scenes_pose.csv_chess_train.csv",
        cwd / CONFIG,
        cwd / "models",
        device="cpu",
    )
    return cwd, result.run_dir


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory, scenes3):
    """An mshyperpose run folder on 3 scenes with checkpoint-1, checkpoint-2 and final."""
    cwd = user_folder(tmp_path_factory, scenes3, "batch_multi")
    result = train("mshyperpose", "random", cwd / ROOT, cwd / ALL_SCENES, cwd / CONFIG, cwd / "models", device="cpu")
    return cwd, result.run_dir


def read_csv(path):
    return list(csv.DictReader(io.StringIO(path.read_text()))), path.read_text().splitlines()[0].split(",")


def best_by_rule(rows, pos_key, ori_key):
    """Minimum median position error, ties by orientation, then the earlier row."""
    return min(range(len(rows)), key=lambda i: (float(rows[i][pos_key]), float(rows[i][ori_key]), i))


def one_output(folder, suffix):
    files = sorted(folder.glob(f"*_batch_eval{suffix}"))
    assert len(files) == 1, files
    return files[0]


def no_browser_env(monkeypatch, tmp_path):
    """webbrowser.open runs $BROWSER: make it leave a marker file if anything tries to open a page."""
    marker = tmp_path / "browser_opened"
    monkeypatch.setenv("BROWSER", f"{sys.executable} -c \"open(r'{marker}', 'w')\"")
    return marker


# Discovery and arguments ---------------------------------------------------------------------------------
def test_discovery_order_and_start_index(tmp_path):
    names = [
        "run_a_checkpoint-10.pth",
        "run_a_checkpoint-2.pth",
        "run_a_final.pth",
        "zeta.pth",
        "alpha.pth",
        "run_a_checkpoint-1.pth",
        ".hidden.pth",
        "notes.txt",
        ".run_a_checkpoint-3.pth.x1.tmp",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    order = [p.name for p in discover_checkpoints(tmp_path)]
    assert order == [
        "run_a_checkpoint-1.pth",
        "run_a_checkpoint-2.pth",
        "run_a_checkpoint-10.pth",
        "run_a_final.pth",
        "alpha.pth",
        "zeta.pth",
    ]
    assert checkpoint_labels(discover_checkpoints(tmp_path)) == [
        "checkpoint-1",
        "checkpoint-2",
        "checkpoint-10",
        "final",
        "alpha",
        "zeta",
    ]
    # As in the reference: numbered checkpoints with N below the index are skipped, the rest always kept.
    assert [p.name for p in discover_checkpoints(tmp_path, 2)] == [
        "run_a_checkpoint-2.pth",
        "run_a_checkpoint-10.pth",
        "run_a_final.pth",
        "alpha.pth",
        "zeta.pth",
    ]
    assert [p.name for p in discover_checkpoints(tmp_path, 11)][0] == "run_a_final.pth"
    with pytest.raises(UserError, match="ckpt_start_index must be >= 0"):
        discover_checkpoints(tmp_path, -1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no .pth checkpoints"):
        discover_checkpoints(tmp_path / "empty")
    with pytest.raises(UserError, match="checkpoints folder not found"):
        discover_checkpoints(tmp_path / "missing")


def test_trailing_positionals():
    assert split_trailing_positionals(["./models/run_x"]) == (None, "./models/run_x")
    assert split_trailing_positionals(["eval.json", "./models/run_x"]) == ("eval.json", "./models/run_x")
    with pytest.raises(UserError, match="not a .json file"):
        split_trailing_positionals(["eval.txt", "./models/run_x"])
    with pytest.raises(UserError, match="3 paths"):
        split_trailing_positionals(["a.json", "b.json", "./models/run_x"])
    with pytest.raises(UserError, match="must be the checkpoints folder"):
        split_trailing_positionals(["a.json", "b.json"])


# The seed commands ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_single_scene_seed_command(single_run, monkeypatch, tmp_path):
    cwd, run = single_run
    marker = no_browser_env(monkeypatch, tmp_path)
    proc = run_script(
        [
            "main_batch_eval_model.py",
            "hyperpose",
            "test",
            "random",
            ROOT,
            CHESS_TEST,
            CONFIG,
            f"./models/{run.name}",
            "--output_path",
            OUT,
        ],
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr
    out = cwd / OUT
    assert not [p for p in run.iterdir() if "batch_eval" in p.name]  # nothing written beside the checkpoints
    assert not marker.exists()

    rows, header = read_csv(one_output(out, ".csv"))
    assert header[:4] == ["checkpoint", "Model", "Median Position Error [m]", "Median Orientation Error[deg]"]
    assert {"epoch", "mean_pos_m", "mean_ori_deg", "recall_0.05m_5deg", "n_failed", "best_on_test"} <= set(header)
    assert "best" not in header and "val_median_pos_m" not in header
    assert [r["checkpoint"] for r in rows] == ["checkpoint-1", "checkpoint-2", "final"]
    assert [r["epoch"] for r in rows] == ["1", "2", "2"]
    assert all(r["Model"].endswith(".pth") and int(r["n_frames"]) == 4 for r in rows)
    best = best_by_rule(rows, "Median Position Error [m]", "Median Orientation Error[deg]")
    assert [r["best_on_test"] for r in rows] == ["1" if i == best else "0" for i in range(3)]
    # Without a validation set, the console says the best was chosen on the test set itself.
    assert f"{rows[best]['checkpoint']}" in proc.stdout and "<- best_on_test" in proc.stdout
    assert "chosen on the test set itself (an optimistic estimate" in proc.stdout

    page = one_output(out, ".html").read_text()
    assert "<script src=" not in page and "<link " not in page  # offline: plotly.js is inline
    errors = read_embedded_json(page, "fig-errors")
    curves = [t for t in errors["data"] if t["type"] == "scatter"]
    assert curves and all(t["x"] == ["checkpoint-1", "checkpoint-2", "final"] for t in curves)
    median = [t for t in curves if t["name"] == "median"]
    assert len(median) == 2  # position and orientation
    for trace, column in zip(median, ("Median Position Error [m]", "Median Orientation Error[deg]")):
        assert trace["y"] == pytest.approx([float(r[column]) for r in rows])
    assert [s["x0"] for s in errors["layout"]["shapes"]] == [best, best]
    data = read_embedded_json(page, DATA_ID)
    assert data["best"] == rows[best]["checkpoint"] and data["best_index"] == best
    cdf = read_embedded_json(page, "fig-cdf")
    assert max(cdf["data"][0]["y"]) == pytest.approx(1.0)
    positions = read_embedded_json(page, "fig-positions")
    assert {t["name"] for t in positions["data"]} == {"chess ground truth", "chess predicted", "chess error"}
    assert all(len(t["x"]) == 4 for t in positions["data"] if t["mode"] == "markers")
    assert 'class="best"' in page and "Best = chosen on the test set itself" in page
    assert "optimistic estimate" in page and data["best_chosen_on"] == "test"


@pytest.mark.slow
def test_multi_scene_seed_command(multi_run, monkeypatch, tmp_path):
    cwd, run = multi_run
    marker = no_browser_env(monkeypatch, tmp_path)
    # The reference's documented command, config passed twice (the second is the evaluation config).
    proc = run_script(
        [
            "main_batch_ms_eval.py",
            "mshyperpose",
            "test",
            "random",
            ROOT,
            ALL_SCENES,
            CONFIG,
            CONFIG,
            f"./models/{run.name}",
            "--output_path",
            OUT,
        ],
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists()
    rows, header = read_csv(one_output(cwd / OUT, ".csv"))
    scenes = ["chess", "fire", "heads"]
    assert header[:9] == ["model"] + [f"{s}_{c}" for s in scenes for c in ("x", "q")] + ["avrg_x", "avrg_q"]
    assert {"scene_acc", "chess_scene_acc", "mean_pos_m", "recall_1m_10deg", "n_failed", "epoch"} <= set(header)
    assert [r["model"] for r in rows] == ["1", "2", "final"]
    for r in rows:
        assert float(r["avrg_x"]) == pytest.approx(sum(float(r[f"{s}_x"]) for s in scenes) / 3)
        assert float(r["avrg_q"]) == pytest.approx(sum(float(r[f"{s}_q"]) for s in scenes) / 3)
        assert 0.0 <= float(r["scene_acc"]) <= 1.0
    best = best_by_rule(rows, "avrg_x", "avrg_q")
    assert rows[best]["best_on_test"] == "1"

    page = one_output(cwd / OUT, ".html").read_text()
    errors = read_embedded_json(page, "fig-errors")
    names = {t["name"] for t in errors["data"]}
    assert names == set(scenes) | {"average"}
    for trace in errors["data"]:
        assert len(trace["x"]) == len(trace["y"]) == 3  # one point per checkpoint
    avg_pos = next(t for t in errors["data"] if t["name"] == "average")
    assert avg_pos["y"] == pytest.approx([float(r["avrg_x"]) for r in rows])
    assert read_embedded_json(page, DATA_ID)["best_index"] == best
    cdf_names = {t["name"] for t in read_embedded_json(page, "fig-cdf")["data"]}
    assert cdf_names == set(scenes) | {"all"}


@pytest.mark.slow
def test_multi_scene_test_dataset_id(multi_run, tmp_path):
    """--test_dataset_id 7scenes evaluates the per-scene test CSVs found beside the labels file."""
    cwd, run = multi_run
    batch = batch_evaluate(
        "mshyperpose",
        "random",
        cwd / ROOT,
        cwd / ALL_SCENES,
        cwd / CONFIG,
        run,
        tmp_path,
        test_dataset_id="7scenes",
        ckpt_start_index=2,
        device="cpu",
        progress=False,
    )
    assert [r.label for r in batch.results] == ["checkpoint-2", "final"]
    assert batch.csv_path.name == f"{run.name}_7scenes_batch_eval.csv"
    for r in batch.results:
        assert [s["scene"] for s in r.scenes] == ["chess", "fire", "heads"]
        assert all(s["n_frames"] == 4 for s in r.scenes)  # the test split, not the training rows


# Choosing on a validation set ---------------------------------------------------------------------------
def labels_from_predictions(evaluator, checkpoint, path):
    """A label CSV of the evaluator's frames whose ground truth is what ``checkpoint`` predicts for them:
    on it that checkpoint scores (almost) zero error, so it must be the one chosen on validation."""
    result = evaluator.evaluate_checkpoint(checkpoint, timing=False)
    lines = ["scene,split,seq,img_path,t1,t2,t3,q1,q2,q3,q4"]
    for pred in result.predictions.values():
        for img, scene, pose in zip(pred.paths, pred.scene_names, pred.pose_pred_N7):
            lines.append(f"{scene},val,seq-01,{img}," + ",".join(f"{v:.9g}" for v in pose))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
def test_validation_set_chooses_the_best(single_run, tmp_path, capsys):
    """With --val_labels the best is the validation-best (here not the test-best), and says so."""
    cwd, run = single_run
    common = [
        "hyperpose",
        "test",
        "random",
        str(cwd / ROOT),
        str(cwd / CHESS_TEST),
        str(cwd / CONFIG),
        str(run),
        "--device",
        "cpu",
        "--quiet",
    ]
    assert main(common + ["--output_path", str(tmp_path / "test_only")]) == 0
    rows, _ = read_csv(one_output(tmp_path / "test_only", ".csv"))
    on_test = best_by_rule(rows, "Median Position Error [m]", "Median Orientation Error[deg]")
    # The validation set: the test frames again, labelled with the predictions of a checkpoint the test set
    # does not choose (checkpoint-1 or the final weights).
    other = 0 if on_test != 0 else 2
    evaluator = Evaluator(
        "hyperpose", "random", cwd / ROOT, cwd / CHESS_TEST, cwd / CONFIG, device="cpu", progress=False
    )
    val = labels_from_predictions(evaluator, run / rows[other]["Model"].split("/")[-1], tmp_path / "val.csv")
    capsys.readouterr()

    out = tmp_path / "with_val"
    assert main(common + ["--output_path", str(out), "--val_labels", str(val)]) == 0
    stdout = capsys.readouterr().out
    rows_v, header = read_csv(one_output(out, ".csv"))
    assert {"val_median_pos_m", "val_median_ori_deg", "best_on_val"} <= set(header)
    assert "best_on_test" not in header and "best" not in header
    # Test columns unchanged; the validation columns hold the validation errors.
    for a, b in zip(rows, rows_v):
        assert float(a["Median Position Error [m]"]) == pytest.approx(float(b["Median Position Error [m]"]))
    chosen = best_by_rule(rows_v, "val_median_pos_m", "val_median_ori_deg")
    assert chosen != on_test and float(rows_v[chosen]["val_median_pos_m"]) < 1e-4
    assert [r["best_on_val"] for r in rows_v] == ["1" if i == chosen else "0" for i in range(3)]
    assert "chosen on the validation set" in stdout and "<- best_on_val" in stdout
    assert stdout.splitlines()[chosen + 1].endswith("<- best_on_val")

    page = one_output(out, ".html").read_text()
    data = read_embedded_json(page, DATA_ID)
    assert data["best_index"] == chosen and data["best_chosen_on"] == "validation"
    assert data["checkpoints"][chosen]["val_overall"]["median_pos_m"] == pytest.approx(
        float(rows_v[chosen]["val_median_pos_m"])
    )
    assert "Best = chosen on the validation set" in page and "optimistic" not in page
    curves = {t["name"] for t in read_embedded_json(page, "fig-errors")["data"]}
    assert "validation median" in curves
    # The CDFs and the 3D view are the chosen checkpoint's, on the test set (4 test frames).
    positions = read_embedded_json(page, "fig-positions")
    assert all(len(t["x"]) == 4 for t in positions["data"] if t["mode"] == "markers")

    status = main(common + ["--output_path", str(out), "--val_labels", str(tmp_path / "missing.csv")])
    err = capsys.readouterr().err
    assert status == 2 and "--val_labels" in err and "missing.csv" in err and "Traceback" not in err


# The cache -----------------------------------------------------------------------------------------------
@pytest.fixture
def count_evaluations(monkeypatch):
    calls = []
    original = Evaluator.evaluate_checkpoint

    def counting(self, path, **kwargs):
        calls.append(os.path.basename(path))
        return original(self, path, **kwargs)

    monkeypatch.setattr(Evaluator, "evaluate_checkpoint", counting)
    return calls


def test_rerun_evaluates_only_new_or_changed_checkpoints(single_run, tmp_path, count_evaluations):
    cwd, run = single_run
    folder = tmp_path / run.name
    folder.mkdir()
    ckpts = sorted(run.glob("*.pth"))  # checkpoint-1, checkpoint-2, final
    for p in ckpts[:2]:
        shutil.copy2(p, folder / p.name)

    def batch():
        count_evaluations.clear()
        result = batch_evaluate(
            "hyperpose", "random", cwd / ROOT, cwd / CHESS_TEST, cwd / CONFIG, folder, device="cpu", progress=False
        )
        assert result.n_evaluated == len(count_evaluations)
        return result

    first = batch()
    assert sorted(count_evaluations) == sorted(p.name for p in ckpts[:2])
    assert first.csv_path.parent == folder  # default output: the checkpoints folder
    csv_before = first.csv_path.read_text()

    again = batch()
    assert count_evaluations == []
    assert again.csv_path.read_text() == csv_before
    assert again.best.frames is not None  # the best keeps its per-frame data in the cache

    shutil.copy2(ckpts[2], folder / ckpts[2].name)
    added = batch()
    assert count_evaluations == [ckpts[2].name]
    assert [r.label for r in added.results] == ["checkpoint-1", "checkpoint-2", "final"]
    assert added.csv_path.read_text().startswith(csv_before.splitlines()[0])

    st = (folder / ckpts[0].name).stat()
    os.utime(folder / ckpts[0].name, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    batch()
    assert count_evaluations == [ckpts[0].name]


def test_unreadable_and_mismatched_checkpoints_are_skipped(single_run, tmp_path, caplog, count_evaluations):
    cwd, run = single_run
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = next(run.glob("*_checkpoint-1.pth"))
    shutil.copy2(good, folder / good.name)
    (folder / "run_x_checkpoint-7.pth").write_bytes(b"this is not a checkpoint")
    other = torch.load(good, map_location="cpu", weights_only=True)
    other["model_name"] = "effposenet"
    torch.save(other, folder / "other_model.pth")

    with caplog.at_level(logging.WARNING, logger="engine.evaluation.batch_eval"):
        batch = batch_evaluate(
            "hyperpose",
            "random",
            cwd / ROOT,
            cwd / CHESS_TEST,
            cwd / CONFIG,
            folder,
            tmp_path / "out",
            device="cpu",
            progress=False,
        )
    assert [r.label for r in batch.results] == ["checkpoint-1"]
    assert sorted(p.name for p, _ in batch.skipped) == ["other_model.pth", "run_x_checkpoint-7.pth"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for name, pattern in (("run_x_checkpoint-7.pth", "skipping"), ("other_model.pth", "'effposenet' model")):
        lines = [w for w in warnings if name in w]
        assert len(lines) == 1 and "\n" not in lines[0] and pattern in lines[0], warnings
    rows, _ = read_csv(batch.csv_path)
    assert [r["checkpoint"] for r in rows] == ["checkpoint-1"]
    page = batch.html_path.read_text()
    assert "Skipped checkpoints" in page and "run_x_checkpoint-7.pth" in page
    assert read_embedded_json(page, DATA_ID)["skipped"][0][0] in ("other_model.pth", "run_x_checkpoint-7.pth")


def test_cli_errors_are_one_line(single_run, tmp_path, capsys):
    cwd, run = single_run
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "a_checkpoint-1.pth").write_bytes(b"\x00" * 10)
    common = ["random", str(cwd / ROOT), str(cwd / CHESS_TEST), str(cwd / CONFIG)]
    cases = [
        (["hyperpose", "train", *common, str(run)], "mode must be 'test'"),
        (["hyperpose", "test", *common, str(garbage)], "none of the 1 checkpoints"),
        (["hyperpose", "test", *common, str(tmp_path / "nope")], "checkpoints folder not found"),
        (["hyperpose", "test", *common, "x.txt", str(run)], "not a .json file"),
        (["hyperpose", "test", *common, str(run), "--ckpt_start_index", "99"], None),
    ]
    for argv, message in cases:
        status = main(argv + ["--output_path", str(tmp_path / "out"), "--device", "cpu", "--quiet"])
        err = capsys.readouterr().err
        if message is None:  # only the final checkpoint is left, and it runs
            assert status == 0, err
            continue
        assert status == 2
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, err
