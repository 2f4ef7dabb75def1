"""A toy backbone (tests/toy_backbone.py) and a toy model (tests/toy_model.py), each added in one file and
registered in-process, through every command: train, test, batch evaluation, predict, export, and the
backbone tool. This is what "Adding a model" and "Adding a backbone" in docs/models.md promise."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import toy_backbone
import toy_model

from conftest import tiny_config_dict, write_config
from engine.cli import main as cli_main
from engine.deployment import export
from engine.deployment.exported import ExportedModel
from engine.deployment.localize import Localizer
from engine.evaluation import batch_eval
from models import backbone as backbones
from models.config import load_config
from models.loading import architecture_keys
from models.registry import cli_choices, register, unregister
from util.errors import UserError


@pytest.fixture
def toys():
    """Both toys registered for one test, and gone after it (other tests enumerate the registries)."""
    backbones.register_backbone(toy_backbone.SPEC)
    register(toy_model.SPEC)
    yield
    unregister(toy_model.SPEC.name)
    backbones.unregister_backbone(toy_backbone.SPEC.name)


def test_the_toys_leave_the_registries_as_they_found_them():
    from models.registry import model_names

    assert "toyconv" not in backbones.backbone_names() and "toyapr" not in model_names()


@pytest.mark.slow
def test_toy_backbone_and_model_through_every_command(toys, scene7, tmp_path, capsys):
    train_csv, test_csv = (scene7 / f"abs_7scenes_pose.csv_chess_{s}.csv" for s in ("train", "test"))
    general = tiny_config_dict()["general"]
    toy = {"backbone_type": "toyconv", "n_epochs": 2, "batch_size": 4, "image_resize": 40, "image_crop": 32}
    config = write_config(tmp_path / "cfg.json", {"general": general, "toyapr": toy})

    # The model's facts come from its spec: the scripts' choices, its keys (a typo names the closest),
    # its architecture keys; the backbone's too: config validation, messages, help.
    assert "toyapr" in cli_choices(multi_scene=False) and "toyapr" not in cli_choices(multi_scene=True)
    assert "toy_width" in architecture_keys("toyapr") and "backbone_type" in architecture_keys("toyapr")
    with pytest.raises(UserError, match="did you mean 'toy_width'"):
        load_config(write_config(tmp_path / "typo.json", {"toyapr": {**toy, "toy_widht": 8}}), "toyapr")
    assert load_config(config, "toyapr")["backbone_type"] == "toyconv"
    assert "toyconv" in backbones.backbone_type_help()
    with pytest.raises(UserError, match="did you mean 'toyconv'"):
        backbones.parse_backbone_type("toyconf")
    with pytest.raises(UserError, match="'toyconv' has no ImageNet weights"):
        backbones.load_backbone("imagenet", "toyconv")

    # The backbone tool writes its weights and recognises the file as a toyconv one.
    weights = tmp_path / "toyconv.pth"
    assert "randomly initialised toyconv" in backbones.main(["write", str(weights), "--type", "toyconv"])
    assert backbones.main(["check", str(weights)]) == f"{weights}: toyconv state_dict, loads strictly"
    with pytest.raises(UserError, match="it looks like a backbone of type 'toyconv'"):
        backbones.load_backbone(str(weights), "efficientnet")

    def run(main, *argv):
        code = main([str(a) for a in argv] + ["--quiet"])
        assert code == 0, capsys.readouterr().err

    run(cli_main, "toyapr", "train", weights, scene7, train_csv, config, "--output_path", tmp_path / "models")
    ckpt = next((tmp_path / "models").glob("run_*/*_final.pth"))
    saved = torch.load(ckpt, weights_only=True)
    assert saved["model_name"] == "toyapr" and saved["config"]["backbone_type"] == "toyconv"
    assert json.loads((ckpt.parent / "config.json").read_text())["model_name"] == "toyapr"

    run(
        cli_main, "toyapr", "test", "random", scene7, test_csv, config, "--checkpoint_path", ckpt,
        "--output_path", tmp_path / "evals",
    )  # fmt: skip
    assert next((tmp_path / "evals").glob("*_predictions.csv"))

    run(
        batch_eval.main, "toyapr", "test", "random", scene7, test_csv, config, ckpt.parent,
        "--output_path", tmp_path / "batch", "--device", "cpu",
    )  # fmt: skip
    assert next((tmp_path / "batch").rglob("*.html"))

    run(
        cli_main, "toyapr", "predict", "random", scene7 / "chess", config, "--checkpoint_path", ckpt,
        "--output_path", tmp_path / "pred",
    )  # fmt: skip
    with open(next((tmp_path / "pred").glob("*_poses.csv")), newline="") as f:
        predicted = list(csv.DictReader(f))
    assert predicted

    onnx = tmp_path / "toyapr.onnx"
    code = export.main([str(ckpt), "--format", "onnx", "--out", str(onnx), "--batch", "dynamic"])
    assert code == 0, capsys.readouterr().err
    exported = ExportedModel(onnx)
    assert exported.metadata["model_name"] == "toyapr"
    crops = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    got = exported(crops.numpy())
    localizer = Localizer.from_checkpoint(ckpt, device="cpu")
    mean = torch.tensor(backbones.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(backbones.IMAGENET_STD).view(1, 3, 1, 1)
    pose_N7, _ = localizer.predict_batch((crops.float() / 255 - mean) / std)
    np.testing.assert_allclose(got["position"], pose_N7[:, :3].numpy(), atol=1e-4)
    np.testing.assert_allclose(got["quaternion"], pose_N7[:, 3:].numpy(), atol=1e-4)
