"""Every single-scene model and several backbones through the real scripts, and a model added from a test.

posenet, atloc and hyperatloc train and test with the seed command shapes; hyperpose trains and tests on
non-default backbones (torchvision and timm); a toy model registered here trains, tests, validates its
config and declares its architecture keys like the shipped ones, which is what "Adding a model" in the README
promises.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from conftest import run_script, tiny_config_dict, write_config
from engine.cli import main as cli_main
from engine.evaluate import evaluate
from engine.train import train
from models.config import load_config
from models.loading import architecture_keys
from models.registry import ModelSpec, cli_choices, register, unregister
from util.errors import UserError
from util.schema import Key, at_least


def chess(root, split):
    return root / f"abs_7scenes_pose.csv_chess_{split}.csv"


@pytest.mark.parametrize("model", ["posenet", "atloc", "hyperatloc"])
def test_reference_models_train_and_test_through_the_script(model, scene7, tiny_config, tmp_path):
    proc = run_script(
        [
            "main_single_scene.py",
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
        proc = run_script(
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
    if model == "hyperatloc":
        proc = run_script(
            [
                "main_batch_eval_model.py",
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
        assert proc.returncode == 0, proc.stderr
        assert "csv:" in proc.stdout and next((tmp_path / "batch").rglob("*.html"))


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


class ToyNet(nn.Module):
    """A model as a user would add one: any backbone, a configurable head width."""

    def __init__(self, config: dict, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(
            nn.Linear(backbone.feature_dim, config["toy_width"]), nn.ReLU(), nn.Linear(config["toy_width"], 7)
        )

    def forward(self, img_B3HW, scene_B=None):
        return self.head(self.backbone.extract(img_B3HW)["pooled"]), None


@pytest.fixture
def toynet():
    spec = register(
        ModelSpec(
            name="toynet",
            target=ToyNet,
            multi_scene=False,
            summary="a test model",
            keys={"toy_width": Key(16, "int", at_least(1), doc="head width")},
            arch_keys=("toy_width",),
        )
    )
    yield spec
    unregister("toynet")


def test_a_model_registered_from_a_test_works_everywhere(toynet, scene7, tmp_path, capsys):
    assert "toynet" in cli_choices(multi_scene=False) and "toynet" not in cli_choices(multi_scene=True)
    cfg = tiny_config_dict(n_epochs=1)
    cfg["toynet"] = {"toy_width": 8, "n_epochs": 1, "batch_size": 4, "image_resize": 56, "image_crop": 48}
    config = write_config(tmp_path / "cfg.json", cfg)
    effective = load_config(config, "toynet")
    assert effective["toy_width"] == 8 and effective["backbone_type"] == "efficientnet"

    code = cli_main(
        [
            "toynet",
            "train",
            "random",
            str(scene7),
            str(chess(scene7, "train")),
            str(config),
            "--output_path",
            str(tmp_path / "models"),
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    ckpt = next((tmp_path / "models").glob("run_*/*_final.pth"))
    code = cli_main(
        [
            "toynet",
            "test",
            "random",
            str(scene7),
            str(chess(scene7, "test")),
            str(config),
            "--checkpoint_path",
            str(ckpt),
            "--output_path",
            str(tmp_path / "evals"),
            "--quiet",
        ]
    )
    assert code == 0 and next((tmp_path / "evals").glob("*_predictions.csv"))

    # Its config keys are validated, and its architecture key is checked against the checkpoint.
    cfg["toynet"]["toy_widht"] = 8
    with pytest.raises(UserError, match="did you mean 'toy_width'"):
        load_config(write_config(tmp_path / "typo.json", cfg), "toynet")
    assert "toy_width" in architecture_keys("toynet") and "backbone_type" in architecture_keys("toynet")
    assert json.loads((ckpt.parent / "config.json").read_text())["model_name"] == "toynet"
