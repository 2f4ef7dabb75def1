"""The reproduction driver on two synthetic scenes: table, resume, no training on a re-run, dry run, bad roots,
the paper's three-stage recipe, the validation split, bad recipes."""
from __future__ import annotations

import csv
import io
import json

import pytest
import torch

import engine.train
from conftest import tiny_config_dict, write_config
from engine.reproduce import main

MODELS = "hyperpose,ems-transposenet"
# The released 7Scenes config's list for mshyperpose (one branch: rotation).
MS_PHRASES = ["hyper_in_rot_proj", "hyper_in_rot_fc_0", "hyper_in_rot_fc_1", "hyper_in_rot_fc_2", "regressor_hyper_rot",
              "regressor_head_rot", "transformer_rot", "input_proj_rot"]
T_PHRASES = ["hyper_in_t_proj", "hyper_in_t", "hyper_in_t_fc_2", "hypernet_t_fc_h2"]
ROT_PHRASES = [p.replace("_t", "_rot", 1) for p in T_PHRASES]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, scenes3):
    """Two of the three synthetic scenes; hyperpose and mshyperpose get a freeze stage (as the shipped configs
    define)."""
    cfg = tiny_config_dict(n_epochs=1)
    cfg["hyperpose"]["freeze_exclude_phrase"] = ["hyper_in_t", "hypernet_t_fc_h2"]
    cfg["mshyperpose"]["freeze_exclude_phrase"] = MS_PHRASES
    folder = tmp_path_factory.mktemp("repro")
    config = write_config(folder / "tiny.json", cfg)
    # The multi-scene file of the two scenes (scenes3 has three; its per-scene files are reused as they are).
    labels = folder / "labels"
    labels.mkdir()
    for scene in ("chess", "fire"):
        for split in ("train", "test"):
            name = f"abs_7scenes_pose.csv_{scene}_{split}.csv"
            (labels / name).write_text((scenes3 / name).read_text())
    rows = (scenes3 / "7scenes_all_scenes.csv").read_text().splitlines()
    (labels / "7scenes_all_scenes.csv").write_text(
        "\n".join([rows[0]] + [r for r in rows[1:] if r.split(",")[0] in ("chess", "fire")]) + "\n")
    args = ["7scenes", "--root", str(scenes3), "--labels", str(labels), "--backbone", "random", "--models", MODELS,
            "--scenes", "chess,fire", "--config", str(config), "--device", "cpu", "--quiet"]
    return folder, args


@pytest.fixture
def count_training(monkeypatch):
    calls = []
    original = engine.train.train

    def counting(*args, **kwargs):
        calls.append((args[0], kwargs.get("resume")))
        return original(*args, **kwargs)

    monkeypatch.setattr(engine.train, "train", counting)
    return calls


def test_driver_writes_the_table_resumes_and_skips_finished_stages(setup, tmp_path, capsys, count_training):
    _, args = setup
    out = tmp_path / "out"
    args = args + ["--out", str(out)]

    assert main(args + ["--dry-run"]) == 0
    dry = capsys.readouterr().out.splitlines()
    trains = [line for line in dry if " train " in line]
    # The released recipe. hyperpose: 2 scenes x 2 stages; ems-transposenet: one multi-scene run, one stage
    # (its freeze stage is skipped: the config lists no freeze_exclude_phrase for it).
    assert len(trains) == 5 and all(line.startswith(("python main_", "# ")) for line in dry)
    assert sum("stage2/override.json" in line for line in trains) == 2
    assert json.loads((out / "7scenes/hyperpose/chess/stage2/override.json").read_text()) == {
        "hyperpose": {"freeze": True}}
    assert not list(out.rglob("run_*"))  # a dry run trains nothing; it writes only what its commands read
    # The validation split: the last of the three training sequences of every scene.
    assert "chess_train.csv" in trains[0] and "--val_labels" in dry[-1]
    split = list(csv.DictReader(io.StringIO((out / "7scenes/splits/chess_val.csv").read_text())))
    assert {r["seq"] for r in split} == {"seq-03"}

    assert main(args) == 0, capsys.readouterr().err
    stdout = capsys.readouterr().out
    assert len(count_training) == 5
    rows = list(csv.DictReader(io.StringIO((out / "7scenes_results.csv").read_text())))
    table = {(r["model"], r["scene"]): r for r in rows if r["selection"] == "final"}
    assert set(table) == {(m, s) for m in MODELS.split(",") for s in ("chess", "fire", "average")}
    assert {r["selection"] for r in rows} == {"final", "best_on_val"}
    for model in MODELS.split(","):
        pos = [float(table[(model, s)]["median_pos_m"]) for s in ("chess", "fire")]
        assert float(table[(model, "average")]["median_pos_m"]) == pytest.approx(sum(pos) / 2)
    # Published numbers: configs/published_results.json (MS-Transformer only).
    assert table[("ems-transposenet", "chess")]["published_pos_m"] == "0.11"
    assert table[("hyperpose", "chess")]["published_pos_m"] == ""
    # The measured cell is the test-mode result of the final checkpoint.
    summary = json.loads(next((out / "7scenes" / "hyperpose" / "chess" / "test").glob("*_summary.json")).read_text())
    assert float(table[("hyperpose", "chess")]["median_pos_m"]) == pytest.approx(summary["scenes"][0]["median_pos_m"])
    assert "| average |" in stdout and (out / "7scenes_results.md").is_file()
    stage2 = out / "7scenes" / "hyperpose" / "chess" / "stage2"
    assert next(stage2.glob("batch_eval/*_batch_eval.csv")).is_file()

    count_training.clear()
    table_before = (out / "7scenes_results.csv").read_text()
    assert main(args) == 0
    assert count_training == [] and (out / "7scenes_results.csv").read_text() == table_before
    assert main(args + ["--dry-run"]) == 0
    assert not [line for line in capsys.readouterr().out.splitlines() if " train " in line]

    # A crash after the last checkpoint: the stage resumes from it in its own run folder, nothing else trains.
    run_dir = next(stage2.glob("run_*"))
    next(run_dir.glob("*_final.pth")).unlink()
    (stage2 / "stage.json").unlink()
    assert main(args) == 0
    assert [(m, r is not None) for m, r in count_training] == [("hyperpose", True)]
    assert next(run_dir.glob("*_final.pth")).is_file() and len(list(stage2.glob("run_*"))) == 1


def test_driver_refuses_a_root_without_label_files(setup, tmp_path, capsys, count_training):
    _, args = setup
    empty = tmp_path / "labels"
    empty.mkdir()
    bad = list(args)
    bad[bad.index("--labels") + 1] = str(empty)
    assert main(bad + ["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "lacks" in lines[0] and "Traceback" not in err
    assert count_training == [] and not (tmp_path / "out").exists()
