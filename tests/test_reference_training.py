"""Training as the reference did: head initialisation, the multi-scene frozen stage, the length of an
``equalize_scenes`` epoch, the BatchNorm sample, the logged learning rate; and the other ``head_init``s."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

from conftest import tiny_config_dict, write_config
from datasets.dataset import CameraPoseDataset
from datasets.samplers import EpochSampler, epoch_length, stratified_sample
from datasets.transforms import build_transform
from engine.training.batchnorm import plain_loader
from engine.training.train import train
from engine.training.trainer import read_metrics_csv
from models.backbone import new_backbone
from models.config import load_config
from models.hypernet import generated_heads, hyperfan_from_images, swish
from models.registry import build_model
from util.checkpoint import load_checkpoint

CPU = torch.device("cpu")


def model_with(name: str, head_init: str, backbone=None, **keys) -> nn.Module:
    config = dict(tiny_config_dict()[name], head_init=head_init, **keys)
    torch.manual_seed(0)
    backbone = backbone or new_backbone(config["backbone_type"])
    return build_model(name, config, backbone)


def head_linears(model: nn.Module, backbone_name: str) -> dict[str, nn.Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and not n.startswith(backbone_name)}


def assert_kaiming(name: str, weight: torch.Tensor) -> None:
    """Std sqrt(2 / fan_in) within five standard errors of a std estimate (1 / sqrt(2 n), relative)."""
    weight = weight.detach()
    expected = math.sqrt(2.0 / weight.shape[1])
    tolerance = 5.0 / math.sqrt(2 * weight.numel())
    assert float(weight.std()) == pytest.approx(expected, rel=tolerance), name
    assert abs(float(weight.mean())) < 5 * expected / math.sqrt(weight.numel()), name


@pytest.mark.parametrize(
    "name, backbone_name", [("hyperpose", "_backbone"), ("effposenet", "backbone"), ("posenet", "backbone")]
)
def test_reference_init_draws_every_head_linear_with_kaiming(name, backbone_name):
    model = model_with(name, "reference")
    layers = head_linears(model, backbone_name)
    assert len(layers) == (11 if name == "hyperpose" else 3)  # fc1-3 and four hyper layers per branch
    for layer_name, layer in layers.items():
        assert_kaiming(layer_name, layer.weight)


def test_torch_init_keeps_pytorch_defaults():
    """kaiming_uniform with a = sqrt 5: std 1 / sqrt(3 fan_in), sqrt 6 times smaller than kaiming_normal's."""
    model = model_with("hyperpose", "torch")
    for layer_name, layer in head_linears(model, "_backbone").items():
        expected = 1 / math.sqrt(3 * layer.weight.shape[1])
        assert float(layer.weight.detach().std()) == pytest.approx(
            expected, rel=5 / math.sqrt(2 * layer.weight.numel())
        ), layer_name


def test_posenet_redraws_googlenets_feature_layer_and_keeps_its_bias():
    """The reference's loop reaches GoogLeNet's pretrained ``fc`` (PoseNet's 1000-wide feature)."""
    for head_init in ("reference", "torch"):
        backbone = new_backbone("googlenet")
        with torch.no_grad():
            backbone.fc.weight.zero_()  # stands for the pretrained classifier
            backbone.fc.bias.fill_(0.5)
        model = model_with("posenet", head_init, backbone=backbone)
        assert torch.all(model.backbone.fc.bias == 0.5)
        if head_init == "reference":
            assert_kaiming("backbone.fc", model.backbone.fc.weight)
        else:
            assert torch.all(model.backbone.fc.weight == 0)


def generated_weights(model, img):
    """Every generated layer of every hyper head: its weight matrices (bias row last) per image, B x (in+1) x out."""
    captured = []
    hooks = [h.register_forward_pre_hook(lambda m, args: captured.append((m, args[0]))) for h in generated_heads(model)]
    with torch.no_grad():
        model.eval()(img, None)
        for hook in hooks:
            hook.remove()
        return [
            gen(swish(fc(h))).view(len(h), n_in + 1, n_out)
            for head, h in captured
            for fc, gen, (n_in, n_out) in zip(head.fc, head.heads, head.generated_shapes())
        ]


@pytest.mark.parametrize(
    "name, keys, n_layers",
    [("hyperpose", dict(hyper_dim_t=64, hyper_dim_rot=128), 2), ("mshyperpose", dict(num_scenes=2), 6)],
)
def test_hyperfan_gives_generated_weights_kaimings_variance(name, keys, n_layers):
    model = model_with(name, "hyperfan", **keys)
    img = torch.randn(16, 3, 48, 48)
    assert hyperfan_from_images(model, img) == 2
    layers = generated_weights(model, img)
    assert len(layers) == n_layers
    for w in layers:
        n_in = w.shape[1] - 1
        assert float(w[:, :n_in].var()) == pytest.approx(2.0 / n_in, rel=0.2)
        assert torch.all(w[:, n_in] == 0)  # bias rows start at zero


def test_zero_init_starts_as_the_static_twin():
    model = model_with("hyperpose", "zero").eval()
    img = torch.randn(4, 3, 48, 48)
    with torch.no_grad():
        pose, _ = model(img)
        feat = model._backbone.extract(img)["pooled"]
        latent = torch.relu(model.fc1(feat))
        static = torch.cat([model.fc2(latent), model.fc3(latent)], 1)
    torch.testing.assert_close(pose, static, rtol=0, atol=0)


def test_hyperfan_run_scales_on_training_images(scene7, tmp_path, caplog):
    cfg = tiny_config_dict(n_epochs=1)
    cfg["hyperpose"].update(head_init="hyperfan")
    with caplog.at_level(logging.INFO, logger="engine.training.train"):
        train(
            "hyperpose",
            "random",
            scene7,
            scene7 / "abs_7scenes_pose.csv_chess_train.csv",
            write_config(tmp_path / "c.json", cfg),
            tmp_path / "runs",
        )
    assert "head_init 'hyperfan': 2 generated head(s) scaled on 4 training images" in caplog.text


def test_static_models_refuse_the_hyper_inits(tmp_path):
    from util.errors import UserError

    cfg = tiny_config_dict()
    cfg["effposenet"]["head_init"] = "hyperfan"
    with pytest.raises(UserError, match="head_init"):
        load_config(write_config(tmp_path / "c.json", cfg), "effposenet")


# ------------------------------------------------------------------ multi-scene frozen stage


def frozen_stage_config(tmp_path, mode: str):
    cfg = tiny_config_dict(n_epochs=1)
    cfg["ems-transposenet"].update(freeze_mode=mode)
    stage2 = {
        "ems-transposenet": {
            "freeze": True,
            "freeze_exclude_phrase": ["regressor_head_t", "transformer_t", "input_proj_t"],
        }
    }
    return write_config(tmp_path / "c.json", cfg), write_config(tmp_path / "stage2.json", stage2)


def test_reference_frozen_stage_runs_the_body_in_eval_mode_without_gradients(tmp_path):
    from engine.training.train import apply_freeze

    config_path, stage2 = frozen_stage_config(tmp_path, "reference")
    config = dict(load_config(config_path, "ems-transposenet", stage2), num_scenes=2)
    model = build_model("ems-transposenet", config, new_backbone("efficientnet"))
    apply_freeze(model, config)
    model.train()
    body = model.body_modules()
    assert all(not m.training for module in body for m in module.modules())  # BatchNorm, dropout: eval
    assert all(not p.requires_grad for module in body for p in module.parameters())
    assert model.regressor_head_t[0].fc_h.weight.requires_grad and model.scene_embed.training
    desc_t, _, pooled = model.encode(torch.randn(2, 3, 48, 48))
    assert not desc_t.requires_grad and not pooled.requires_grad


@pytest.mark.parametrize("mode", ["reference", "train_listed"])
def test_frozen_stage_keeps_backbone_and_transformers_bit_identical(mode, scenes3, tmp_path):
    config, stage2 = frozen_stage_config(tmp_path, mode)
    labels = scenes3 / "7scenes_all_scenes.csv"
    first = train("ems-transposenet", "random", scenes3, labels, config, tmp_path / "stage1")
    second = train(
        "ems-transposenet",
        "random",
        scenes3,
        labels,
        config,
        tmp_path / "stage2",
        override_config=stage2,
        init_checkpoint=first.final_checkpoint,
    )
    before = load_checkpoint(first.final_checkpoint)["model"]
    after = load_checkpoint(second.final_checkpoint)["model"]
    body = [k for k in before if k.startswith(("transformer_", "input_proj_", "backbone.", "query_embed_"))]
    listed_body = [k for k in body if k.startswith(("transformer_t", "input_proj_t"))]
    head = [k for k in before if k.startswith("regressor_head_t")]
    assert any(not torch.equal(before[k], after[k]) for k in head)  # the listed head trained
    changed_body = [k for k in body if not torch.equal(before[k], after[k])]
    if mode == "reference":
        assert changed_body == []  # weights and BatchNorm statistics alike
        assert set(second.trainable) == {k for k in before if k.startswith("regressor_head_t")}
    else:
        assert set(listed_body) & set(changed_body)
        assert set(listed_body) <= set(second.trainable)


# ------------------------------------------------------------------ epochs, BatchNorm sample, lr


def test_equalize_scenes_epoch_has_the_reference_length():
    scene_ids = np.array([0] * 7 + [1] * 3 + [2] * 12)  # three scenes of unequal size
    assert epoch_length(scene_ids, equalize_scenes=True) == 12 * 3
    assert epoch_length(scene_ids, equalize_scenes=False) == 22
    sampler = EpochSampler(scene_ids, seed=0, batch_size=4, equalize_scenes=True)
    drawn = [i for i, _ in sampler]
    assert len(drawn) == len(sampler) == 36
    assert np.bincount(scene_ids[drawn]).tolist() == [12, 12, 12]
    assert sorted(i for i in drawn if scene_ids[i] == 2) == list(np.flatnonzero(scene_ids == 2))  # largest: once each
    two = [EpochSampler(scene_ids, 0, 4, True, rank=r, world_size=2) for r in (0, 1)]
    assert sum(len(list(s)) for s in two) == 36


def test_stratified_sample_holds_every_group_and_is_deterministic():
    groups = [("a", "seq-01")] * 50 + [("a", "seq-02")] * 3 + [("b", "seq-01")] * 20
    sample = stratified_sample(groups, 8, seed=3)
    assert {groups[i] for i in sample} == set(groups)
    assert sample == stratified_sample(groups, 8, seed=3) != stratified_sample(groups, 8, seed=4)
    assert len(set(sample)) == 8


def test_recalibration_batches_cover_every_sequence(scene7):
    labels = scene7 / "abs_7scenes_pose.csv_chess_train.csv"
    config = dict(
        load_config(write_config(scene7.parent / "cfg_bn.json", tiny_config_dict()), "effposenet"),
        batch_size=2,
        bn_recalibrate_batches=None,
    )
    dataset = CameraPoseDataset(scene7, labels, transform=build_transform(config, train=False))
    assert len(set(dataset.seqs)) > 1
    loader = plain_loader(dataset, config, CPU)
    seen = {dataset.seqs[i] for i in loader.dataset.indices}
    assert seen == set(dataset.seqs)
    assert loader.dataset.indices != sorted(loader.dataset.indices)  # shuffled, not file order


def test_logged_lr_is_the_rate_each_epoch_trained_with(scene7, tmp_path):
    cfg = tiny_config_dict(n_epochs=3)
    cfg["effposenet"].update(lr=0.01, lr_scheduler_step_size=1, lr_scheduler_gamma=0.5)
    result = train(
        "effposenet",
        "random",
        scene7,
        scene7 / "abs_7scenes_pose.csv_chess_train.csv",
        write_config(tmp_path / "c.json", cfg),
        tmp_path / "runs",
    )
    rows = read_metrics_csv(result.run_dir / "metrics.csv")
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.01, 0.005, 0.0025])
