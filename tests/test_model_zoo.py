"""Every single-scene model and several backbones through the real scripts.

posenet, atloc and hyperatloc train and test with the seed command shapes; hyperpose trains and tests on
non-default backbones (torchvision and timm). A model and a backbone added from a test: tests/test_toys.py.
"""

from __future__ import annotations

import subprocess

import pytest
import torch

from conftest import run_script, tiny_config_dict, write_config
from engine.cli import main as cli_main
from engine.evaluation.evaluate import evaluate
from engine.training.train import train


def chess(root, split):
    return root / f"abs_7scenes_pose.csv_chess_{split}.csv"


@pytest.fixture(scope="module")
def one_epoch_config(tmp_path_factory):
    """The tiny config with one epoch: the scripts' train and test modes are the point here, not training."""
    return write_config(tmp_path_factory.mktemp("zoo_cfg") / "tiny_1epoch.json", tiny_config_dict(n_epochs=1))


@pytest.mark.slow
@pytest.mark.parametrize("model", ["posenet", "atloc", "hyperatloc"])
def test_reference_models_train_and_test_through_the_script(model, scene7, one_epoch_config, tmp_path, capsys):
    tiny_config = one_epoch_config
    # Training through the script's entry point in this process; the test mode below also runs as a script.
    proc = _in_process(
        [
            model,
            "train",
            "random",
            str(scene7),
            str(chess(scene7, "train")),
            str(tiny_config),
            "--output_path",
            str(tmp_path / "models"),
        ]
    )
    assert proc.returncode == 0, proc.stderr
    ckpt = next((tmp_path / "models").glob("run_*/*_final.pth"))
    saved = torch.load(ckpt, weights_only=True)
    assert saved["model_name"] == model and saved["config"]["backbone_type"] in ("googlenet", "resnet34")
    outputs = []
    for run in range(2):  # test mode is deterministic (the reference's AtLoc dropout is off in eval)
        out = tmp_path / f"evals{run}"
        # The first run through the script's entry point in this process, the second as a real script run.
        launch = run_script if run else lambda args: _in_process(args[1:])
        proc = launch(
            [
                "main_single_scene.py",
                model,
                "test",
                "random",
                str(scene7),
                str(chess(scene7, "test")),
                str(tiny_config),
                "--checkpoint_path",
                str(ckpt),
                "--output_path",
                str(out),
            ]
        )
        assert proc.returncode == 0, proc.stderr
        outputs.append(next(out.glob("*_predictions.csv")).read_text())
    assert outputs[0] == outputs[1]
    if model == "hyperatloc":  # in this process: the batch script itself runs in test_batch_eval
        proc = _in_process_batch(
            [
                model,
                "test",
                "random",
                str(scene7),
                str(chess(scene7, "test")),
                str(tiny_config),
                str(ckpt.parent),
                "--output_path",
                str(tmp_path / "batch"),
            ]
        )
        assert proc.returncode == 0
        assert "csv:" in capsys.readouterr().out and next((tmp_path / "batch").rglob("*.html"))


def _in_process_batch(args: list[str]) -> subprocess.CompletedProcess:
    """``main_batch_eval_model.py ARGS`` (engine.evaluation.batch_eval.main) called in this process."""
    from engine.evaluation.batch_eval import main as batch_main

    return subprocess.CompletedProcess(args, batch_main(args, multi_scene=False), "", "")


def _in_process(args: list[str]) -> subprocess.CompletedProcess:
    """``main_single_scene.py ARGS`` (engine.cli.main) called in this process: no interpreter start-up."""
    return subprocess.CompletedProcess(args, cli_main(args), "", "")


@pytest.mark.parametrize("backbone_type", ["googlenet", "timm:mobilenetv3_large_100"])
def test_hyperpose_on_other_backbones(backbone_type, scene7, tmp_path):
    cfg = tiny_config_dict(n_epochs=1)
    cfg["hyperpose"]["backbone_type"] = backbone_type
    config = write_config(tmp_path / "cfg.json", cfg)
    result = train("hyperpose", "random", scene7, chess(scene7, "train"), config, tmp_path / "models", device="cpu")
    saved = torch.load(result.final_checkpoint, weights_only=True)
    assert saved["config"]["backbone_type"] == backbone_type
    ev, _ = evaluate(
        "hyperpose",
        "random",
        scene7,
        chess(scene7, "test"),
        config,
        result.final_checkpoint,
        tmp_path / "evals",
        device="cpu",
    )
    assert ev.summaries[0].n_frames > 0 and ev.summaries[0].n_failed == 0


def test_a_model_that_does_not_accept_the_backbone_is_one_line(scene7, tmp_path, capsys):
    cfg = tiny_config_dict()
    cfg["atloc"]["backbone_type"] = "efficientnet"
    config = write_config(tmp_path / "cfg.json", cfg)
    code = cli_main(
        [
            "atloc",
            "train",
            "random",
            str(scene7),
            str(chess(scene7, "train")),
            str(config),
            "--output_path",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "model 'atloc' does not accept backbone_type 'efficientnet'; it accepts: resnet34" in err[0]
