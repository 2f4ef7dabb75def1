"""BatchNorm recalibration before checkpoints, and the eval-mode collapse warning."""

from __future__ import annotations

import logging

import pytest
import torch

from conftest import tiny_config_dict, write_config
from datasets.dataset import CameraPoseDataset
from datasets.transforms import build_transform
from engine.training.batchnorm import batchnorm_layers, plain_loader, recalibrate, resolve_recalibrate_batches
from engine.training.train import train
from models.backbone import load_backbone
from models.config import load_config
from models.registry import build_model


def chess_train(root):
    return root / "abs_7scenes_pose.csv_chess_train.csv"


def test_recalibration_is_the_plain_average_over_the_batches(scene7, tiny_config):
    config = dict(load_config(tiny_config, "effposenet"), batch_size=4)
    model = build_model("effposenet", config, load_backbone("random", "efficientnet")).train()
    first = batchnorm_layers(model)[0]
    with torch.no_grad():
        first.running_mean.fill_(5.0)  # stale statistics
        first.running_var.fill_(100.0)
    weights = {k: v.clone() for k, v in model.named_parameters()}
    seen = []
    hook = first.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    dataset = CameraPoseDataset(scene7, chess_train(scene7), transform=build_transform(config, train=True))
    n = recalibrate(model, plain_loader(dataset, config, torch.device("cpu")), 2, torch.device("cpu"))
    hook.remove()
    assert n == 8 and len(seen) == 2
    x = torch.cat(seen)  # two batches of 4: the plain average of the batch means is the overall mean
    torch.testing.assert_close(first.running_mean, x.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    batch_vars = torch.stack([b.var((0, 2, 3), unbiased=True) for b in seen])
    torch.testing.assert_close(first.running_var, batch_vars.mean(0), rtol=1e-4, atol=1e-5)
    assert all(torch.equal(weights[k], v) for k, v in model.named_parameters())
    assert model.training and first.momentum == pytest.approx(0.01)  # EfficientNet's own, restored


def test_the_default_is_on_for_a_random_backbone_at_its_own_momentum_only():
    null = {"bn_recalibrate_batches": None, "bn_momentum": None}
    assert resolve_recalibrate_batches(null, random_backbone=True) == 20
    assert resolve_recalibrate_batches(null, random_backbone=False) == 0
    assert resolve_recalibrate_batches(dict(null, bn_momentum=0.1), random_backbone=True) == 0
    assert resolve_recalibrate_batches(dict(null, bn_recalibrate_batches=3), random_backbone=False) == 3


@pytest.mark.parametrize("batches", [0, None])
def test_eval_collapse_is_warned_and_recalibration_prevents_it(batches, scene7, tmp_path, caplog):
    """One epoch from a random backbone with EfficientNet's BatchNorm momentum of 0.01: the running
    statistics are still those of the first few batches, and eval mode predicts one point."""
    cfg = tiny_config_dict(n_epochs=1)
    cfg["effposenet"].update(bn_momentum=None, bn_recalibrate_batches=batches)
    with caplog.at_level(logging.INFO, logger="engine.training.batchnorm"):
        result = train(
            "effposenet",
            "random",
            scene7,
            chess_train(scene7),
            write_config(tmp_path / "c.json", cfg),
            tmp_path,
            device="cpu",
        )
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("epoch 1: eval-mode predictions spread") for m in messages), messages
    collapsed = any("have collapsed" in m for m in messages)
    assert collapsed == (batches == 0), messages
    saved = torch.load(result.final_checkpoint, weights_only=True)["config"]["bn_recalibrate_batches"]
    assert saved == (0 if batches == 0 else 20)


def test_the_collapse_warning_gives_only_advice_the_config_does_not_follow(caplog):
    from engine.training.batchnorm import log_spread

    def advice(config):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="engine.training.batchnorm"):
            log_spread(1, 0.0, 1.0, config)
        return caplog.text

    assert "bn_recalibrate_batches" in advice({"bn_momentum": None, "bn_recalibrate_batches": 0})
    assert "bn_momentum 0.1" in advice({"bn_momentum": None, "bn_recalibrate_batches": 0})
    text = advice({"bn_momentum": 0.1, "bn_recalibrate_batches": 0})
    assert "bn_recalibrate_batches" in text and "bn_momentum 0.1" not in text
    text = advice({"bn_momentum": 0.1, "bn_recalibrate_batches": 20})
    assert "collapsed" in text and "bn_momentum 0.1" not in text and "set bn_recalibrate" not in text
