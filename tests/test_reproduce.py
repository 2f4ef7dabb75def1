"""The reproduction driver on two synthetic scenes: table, resume, no training on a re-run, dry run, bad roots,
the paper's three-stage recipe, the validation split, bad recipes."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil

import pytest
import torch

import engine.training.train
from conftest import tiny_config_dict, write_config
from engine.reproduction.reproduce import main

MODELS = "hyperpose,ems-transposenet"
# The released 7Scenes config's list for mshyperpose (one branch: rotation).
MS_PHRASES = [
    "hyper_in_rot_proj",
    "hyper_in_rot_fc_0",
    "hyper_in_rot_fc_1",
    "hyper_in_rot_fc_2",
    "regressor_hyper_rot",
    "regressor_head_rot",
    "transformer_rot",
    "input_proj_rot",
]
T_PHRASES = ["hyper_in_t_proj", "hyper_in_t", "hyper_in_t_fc_2", "hypernet_t_fc_h2"]
ROT_PHRASES = [p.replace("_t", "_rot", 1) for p in T_PHRASES]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, scenes3):
    """Two of the three synthetic scenes; hyperpose and mshyperpose get a freeze stage (as the shipped configs
    define)."""
    cfg = tiny_config_dict(n_epochs=1, compact_backbone=True)
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
        "\n".join([rows[0]] + [r for r in rows[1:] if r.split(",")[0] in ("chess", "fire")]) + "\n"
    )
    args = [
        "7scenes",
        "--root",
        str(scenes3),
        "--labels",
        str(labels),
        "--backbone",
        "random",
        "--models",
        MODELS,
        "--scenes",
        "chess,fire",
        "--config",
        str(config),
        "--device",
        "cpu",
        "--quiet",
    ]
    return folder, args


def finals_only(args, folder):
    """``args`` with a config whose runs save only their final checkpoint (one epoch, checkpoints every 2):
    half the checkpoints to write and to evaluate, for the tests that need no numbered checkpoint."""
    args = list(args)
    i = args.index("--config") + 1
    cfg = json.loads(open(args[i]).read())
    cfg["general"]["n_freq_checkpoint"] = 2
    args[i] = str(write_config(folder / "finals_only.json", cfg))
    return args


@pytest.fixture
def count_training(monkeypatch):
    calls = []
    original = engine.training.train.train

    def counting(*args, **kwargs):
        calls.append((args[0], kwargs.get("resume")))
        return original(*args, **kwargs)

    monkeypatch.setattr(engine.training.train, "train", counting)
    return calls


@pytest.mark.slow
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
        "hyperpose": {"freeze": True}
    }
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


@pytest.mark.parametrize("case", ["no_labels_folder", "no_label_files", "no_root", "unknown_scene", "missing_image"])
def test_the_dry_run_makes_the_real_runs_input_checks(case, setup, tmp_path, capsys):
    """A plan that prints is a plan that runs: every input error of a real run also stops the dry run."""
    _, args = setup
    bad = list(args)
    if case == "no_labels_folder":
        bad[bad.index("--labels") + 1], pattern = str(tmp_path / "nowhere"), "not a folder"
    elif case == "no_label_files":
        (tmp_path / "empty").mkdir()
        bad[bad.index("--labels") + 1], pattern = str(tmp_path / "empty"), "lacks"
    elif case == "no_root":
        bad[bad.index("--root") + 1], pattern = str(tmp_path / "nowhere"), "--root"
    elif case == "unknown_scene":
        bad[bad.index("--scenes") + 1], pattern = "chess,atlantis", "atlantis"
    else:
        root = tmp_path / "root"
        shutil.copytree(bad[bad.index("--root") + 1], root)
        next((root / "fire").rglob("*.png")).unlink()
        bad[bad.index("--root") + 1], pattern = str(root), "not found|missing"
    assert main(bad + ["--out", str(tmp_path / "out"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and re.search(pattern, lines[0]) and "Traceback" not in err, err


def _params(path):
    """The model parameters of a checkpoint (buffers such as BatchNorm statistics left out)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in ckpt["model"].items() if "running_" not in k and "num_batches_tracked" not in k}


def _changed(stage_dir_a, stage_dir_b):
    """Names of the parameters that differ between the final checkpoints of two stages."""
    a, b = (_params(d / json.loads((d / "stage.json").read_text())["final"]) for d in (stage_dir_a, stage_dir_b))
    assert a.keys() == b.keys()
    return {k for k in a if not torch.equal(a[k], b[k])}, set(a)


@pytest.mark.slow
def test_paper_recipe_trains_one_hypernetwork_per_stage(setup, tmp_path, capsys, count_training):
    """--recipe paper: hyperpose in three stages (all, translation, rotation), mshyperpose in two; each later
    stage changes only the parameters it names and starts from the stage before; the table has the final and
    the best-on-validation rows."""
    _, args = setup
    out = tmp_path / "out"
    args = [a if a != MODELS else "hyperpose,mshyperpose" for a in finals_only(args, tmp_path)]
    args += ["--out", str(out), "--recipe", "paper", "--n_epochs", "1"]

    assert main(args + ["--dry-run"]) == 0
    dry = capsys.readouterr().out.splitlines()
    chess = [line for line in dry if " train " in line and "/hyperpose/chess/" in line]
    assert [f"stage{k}/override.json" in line for k, line in enumerate(chess, 1)] == [True] * 3
    assert "--checkpoint_path" not in chess[0]
    assert all("--checkpoint_path" in line and f"stage{k}/run_<stamp>" in line for k, line in enumerate(chess[1:], 1))
    assert sum(" train " in line and "/mshyperpose/" in line for line in dry) == 2
    override = json.loads((out / "7scenes/hyperpose/chess/stage2/override.json").read_text())["hyperpose"]
    assert override["freeze"] and override["freeze_exclude_phrase"] == T_PHRASES
    assert (override["n_epochs"], override["lr_scheduler_step_size"], override["lr_scheduler_gamma"]) == (100, 20, 0.75)

    assert main(args) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert [m for m, _ in count_training] == ["hyperpose"] * 6 + ["mshyperpose"] * 2
    for scene in ("chess", "fire"):
        folder = out / "7scenes" / "hyperpose" / scene
        changed, names = _changed(folder / "stage1", folder / "stage2")
        assert changed and all(any(p in n for p in T_PHRASES) for n in changed), changed
        changed, _ = _changed(folder / "stage2", folder / "stage3")
        assert changed and all(any(p in n for p in ROT_PHRASES) for n in changed), changed
        # stage.json lists what each stage trained: everything, then one hypernetwork each.
        trained = [set(json.loads((folder / f"stage{k}/stage.json").read_text())["trainable"]) for k in (1, 2, 3)]
        assert trained[0] == names
        assert trained[1] == {n for n in names if any(p in n for p in T_PHRASES)}
        assert trained[2] == {n for n in names if any(p in n for p in ROT_PHRASES)}
    ms = out / "7scenes" / "mshyperpose" / "all"
    changed, _ = _changed(ms / "stage1", ms / "stage2")
    assert changed and all(any(p in n for p in MS_PHRASES) for n in changed), changed

    rows = list(csv.DictReader(io.StringIO((out / "7scenes_results.csv").read_text())))
    by = {(r["selection"], r["model"], r["scene"]): r for r in rows}
    assert set(by) == {
        (sel, m, s)
        for sel in ("final", "best_on_val")
        for m in ("hyperpose", "mshyperpose")
        for s in ("chess", "fire", "average")
    }
    assert by[("final", "hyperpose", "chess")]["stage"] == "3" and by[("final", "mshyperpose", "fire")]["stage"] == "2"
    for model, stages in (("hyperpose", {"1", "2", "3"}), ("mshyperpose", {"1", "2"})):
        row = by[("best_on_val", model, "chess")]
        assert row["stage"] in stages and row["epoch"] == "1" and (out / row["checkpoint"]).is_file()
        # Its test error is that checkpoint's row in the stage's batch evaluation.
        batch = next((out / row["checkpoint"]).parent.parent.glob("batch_eval/*_batch_eval.csv"))
        evals = list(csv.DictReader(io.StringIO(batch.read_text())))
        chosen = [r for r in evals if r["best_on_val"] == "1"]
        assert len(chosen) == 1
        pos = chosen[0]["Median Position Error [m]"] if model == "hyperpose" else chosen[0]["chess_x"]
        assert float(row["median_pos_m"]) == pytest.approx(float(pos))
    assert "best_on_test" not in (out / "7scenes_results.md").read_text()
    assert "best_on_val:" in (out / "7scenes_results.md").read_text()


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_bad_recipes_stages_and_splits_are_one_line_errors(setup, tmp_path, capsys, count_training):
    _, args = setup
    args = args + ["--out", str(tmp_path / "out")]
    stage = {"name": "all", "override": {}}
    cases = [
        ("{not json", "not valid JSON"),
        (json.dumps({"hyperpse": [stage]}), "unknown model 'hyperpse'"),
        (json.dumps({"hyperpose": [{"name": "all"}], "default": [stage]}), "has no override"),
        (json.dumps({"hyperpose": [], "default": [stage]}), "non-empty list of stages"),
        (
            json.dumps({"mstransformer": [stage], "ems-transposenet": [stage], "default": [stage]}),
            "both name ems-transposenet",
        ),
        (json.dumps({"hyperpose": [stage]}), "no stages for ems-transposenet"),
        (json.dumps({"default": [{"name": "x", "override": {"n_epoch": 3}}]}), "n_epochs"),
    ]
    for k, (text, message) in enumerate(cases):
        recipe = tmp_path / f"recipe{k}.json"
        recipe.write_text(text)
        assert main(args + ["--recipe", str(recipe)]) == 2
        assert message in _one_error(capsys), text
    for extra, message in (
        (["--recipe", str(tmp_path / "nope.json")], "file not found"),
        (["--recipe", "paper", "--stages", "1,4"], "stages 1..3"),
        (["--val_sequences", "3"], "--val_sequences 0"),
    ):
        assert main(args + extra) == 2
        line = _one_error(capsys)
        assert message in line, line
    assert "scene 'chess'" in line and "3 sequence(s)" in line
    assert count_training == []


def test_without_a_validation_split_training_uses_every_sequence(setup, tmp_path, capsys):
    _, args = setup
    out = tmp_path / "out"
    assert main(args + ["--out", str(out), "--val_sequences", "0", "--stages", "1", "--dry-run"]) == 0
    dry = capsys.readouterr().out.splitlines()
    trains = [line for line in dry if " train " in line]
    assert len(trains) == 3 and all("labels/" in line and "splits" not in line for line in trains)
    assert not any("--val_labels" in line for line in dry) and not (out / "7scenes" / "splits").exists()


@pytest.mark.slow
def test_seeds_train_each_model_once_per_seed_and_pair_them(setup, tmp_path, capsys, count_training):
    folder, args = setup
    args = [a if a != MODELS else "hyperpose,effposenet" for a in finals_only(args, tmp_path)]
    args[args.index("--scenes") + 1] = "chess"
    out = tmp_path / "out"
    assert main(args + ["--out", str(out), "--seeds", "0,1", "--stages", "1", "--val_sequences", "0"]) == 0
    assert len(count_training) == 4
    for model in ("hyperpose", "effposenet"):
        for seed in (0, 1):
            stage = out / "7scenes" / model / "chess" / f"seed{seed}" / "stage1"
            assert json.loads((stage / "override.json").read_text())["general"] == {"seed": seed}
            final = stage / json.loads((stage / "stage.json").read_text())["final"]
            assert torch.load(final, weights_only=True)["config"]["seed"] == seed
    rows = list(csv.DictReader(io.StringIO((out / "7scenes_results.csv").read_text())))
    chess = {(r["model"], r["seed"]): float(r["median_pos_m"]) for r in rows if r["scene"] == "chess"}
    assert set(chess) == {(m, s) for m in ("hyperpose", "effposenet") for s in ("0", "1", "mean")}
    assert chess[("hyperpose", "mean")] == pytest.approx((chess[("hyperpose", "0")] + chess[("hyperpose", "1")]) / 2)
    table = (out / "7scenes_results.md").read_text()
    diff = (
        chess[("hyperpose", "0")] - chess[("effposenet", "0")] + chess[("hyperpose", "1")] - chess[("effposenet", "1")]
    ) / 2
    assert "paired by seed: model - effposenet" in table and f"{diff:+.3f}" in table
    # Seeds must be distinct and non-negative.
    assert main(args + ["--out", str(out), "--seeds", "1,1"]) == 2
    assert "--seeds expects distinct" in capsys.readouterr().err
