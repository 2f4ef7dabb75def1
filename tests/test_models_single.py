"""Single-scene EfficientNet models (effposenet, hyperpose): reference layouts, strict loading, forward math."""

import pytest
import torch
import torch.nn.functional as F

from models.backbone import new_backbone
from models.effposenet import EffPoseNet
from models.hypernet import GeneratedMLP, apply_generated_linear, swish
from models.hyperpose import HyperPose
from models.registry import build_model, canonical_model_name, model_names
from tests.reference_layout import (
    DATASETS,
    layout_path,
    random_state_dict,
    read_layout,
    read_layout_header,
    state_dict_layout,
)

CONFIG = {"hyper_dim_t": 256, "hyper_dim_rot": 512}
SINGLE_SCENE = ("effposenet", "hyperpose")
PARAM_COUNTS = {"effposenet": 6_607_467, "hyperpose": 10_154_354}


def _build(name: str, config=CONFIG):
    torch.manual_seed(0)
    return build_model(name, config, new_backbone())


@pytest.mark.parametrize("name", SINGLE_SCENE)
def test_pose_shape_at_224(name):
    model = _build(name).eval()
    with torch.no_grad():
        pose_B7, scene_logp = model(torch.randn(2, 3, 224, 224))
    assert scene_logp is None
    assert pose_B7.shape == (2, 7) and pose_B7.dtype == torch.float32
    assert torch.isfinite(pose_B7).all()


@pytest.mark.parametrize("name", SINGLE_SCENE)
def test_parameter_count(name):
    model = _build(name)
    assert sum(p.numel() for p in model.parameters()) == PARAM_COUNTS[name]
    for dataset in DATASETS:
        assert read_layout_header(layout_path(name, dataset))["total_params"] == PARAM_COUNTS[name]


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("name", SINGLE_SCENE)
def test_state_dict_layout_equals_reference(name, dataset):
    ours = state_dict_layout(_build(name).state_dict())
    reference = read_layout(layout_path(name, dataset))
    assert [e.name for e in ours] == [e.name for e in reference]  # names and order
    assert ours == reference  # shapes and dtypes too


def test_hyper_dims_come_from_config():
    model = _build("hyperpose", {"hyper_dim_t": 8, "hyper_dim_rot": 16})
    assert model.hypernet_t_fc_h2.weight.shape == (3 * 9, 8)
    assert model.hypernet_rot_fc_h2.weight.shape == (4 * 17, 16)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 64, 64))[0].shape == (2, 7)


def _linear(state, name, x):
    return x @ state[f"{name}.weight"].T + state[f"{name}.bias"]


def _reference_forward(state, feat_BC, hyper: bool):
    """The head math written out from raw state_dict tensors, one sample at a time (eval mode)."""
    poses = []
    for f in feat_BC:
        latent = torch.relu(_linear(state, "fc1", f))
        t, q = _linear(state, "fc2", latent), _linear(state, "fc3", latent)
        if hyper:
            for branch, n_out in (("t", 3), ("rot", 4)):
                gen = _linear(state, f"hyper_in_{branch}_proj", f)
                gen = _linear(state, f"hyper_in_{branch}_fc_2", gen)
                gen = gen * torch.sigmoid(gen)
                w_flat = _linear(state, f"hypernet_{branch}_fc_h2", gen)
                x = _linear(state, f"hyper_in_{branch}", f)
                w = w_flat.reshape(x.numel() + 1, n_out)  # row-major, bias last
                y = torch.cat([x, torch.ones(1)]) @ w
                if branch == "t":
                    t = t + y
                else:
                    q = q + y
        poses.append(torch.cat([t, q]))
    return torch.stack(poses)


def _calibrate_batchnorm(backbone, img):
    """Set every BatchNorm's running statistics to those of ``img``.

    Random weights make the eval-mode backbone nearly input-independent; calibrated statistics
    keep the images' features apart, so a mix-up between samples in the head would show.
    """
    norms = [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:
        m.momentum = 1.0
    backbone.train()
    with torch.no_grad():
        backbone.extract_features(img)
    for m in norms:
        m.momentum = 0.01
    backbone.eval()


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("name", SINGLE_SCENE)
def test_reference_state_dict_loads_strictly_and_reproduces_head_math(name, dataset):
    state = random_state_dict(read_layout(layout_path(name, dataset)), seed=3)
    model = _build(name)
    model.load_state_dict(state, strict=True)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())

    prefix = "backbone." if name == "effposenet" else "_backbone."
    backbone = getattr(model, prefix[:-1])
    gen = torch.Generator().manual_seed(0)
    _calibrate_batchnorm(backbone, torch.randn(8, 3, 64, 64, generator=gen))
    model.eval()
    img = torch.randn(2, 3, 64, 64, generator=gen)
    with torch.no_grad():
        pose_B7 = model(img)[0]
        feat_BC = backbone.extract_features(img).mean(dim=(2, 3))
        expected_B7 = _reference_forward(state, feat_BC, hyper=name == "hyperpose")
    assert (feat_BC[0] - feat_BC[1]).abs().max() > 0.1
    assert (expected_B7[0] - expected_B7[1]).abs().max() > 0.01
    torch.testing.assert_close(pose_B7, expected_B7, rtol=1e-4, atol=1e-5)


def test_hyper_branch_changes_the_output():
    model = _build("hyperpose").eval()
    img = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(img)[0]
        model.hypernet_t_fc_h2.bias.add_(1.0)  # adds 1 to every generated weight and bias
        after = model(img)[0]
    assert not torch.allclose(before[:, :3], after[:, :3])
    assert torch.equal(before[:, 3:], after[:, 3:])


def test_every_head_parameter_gets_gradient():
    model = _build("hyperpose").train()
    model(torch.randn(2, 3, 64, 64))[0].square().sum().backward()
    missing = [
        n
        for n, p in model.named_parameters()
        if not n.startswith("_backbone._fc.") and (p.grad is None or not p.grad.abs().sum() > 0)
    ]
    assert missing == []
    assert model._backbone._fc.weight.grad is None  # stored for compatibility, never used


def test_head_dropout_only_in_training():
    model = _build("effposenet")
    img = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        model.train()
        model.backbone.eval()  # keep the backbone deterministic; only the head's dropout is random
        torch.manual_seed(0)
        a = model(img)[0]
        torch.manual_seed(1)
        b = model(img)[0]
        model.eval()
        c, d = model(img)[0], model(img)[0]
    assert not torch.equal(a, b)
    assert torch.equal(c, d)
    assert model.dropout.p == pytest.approx(0.1)


def test_apply_generated_linear_equals_per_sample_loop():
    gen = torch.Generator().manual_seed(0)
    x_BI = torch.randn(5, 6, generator=gen)
    w_flat_BK = torch.randn(5, 7 * 3, generator=gen)
    y_BO = apply_generated_linear(x_BI, w_flat_BK, 3)
    expected = torch.stack([torch.cat([x, torch.ones(1)]) @ w.view(7, 3) for x, w in zip(x_BI, w_flat_BK)])
    torch.testing.assert_close(y_BO, expected)
    # the last row of the generated matrix is the bias
    torch.testing.assert_close(apply_generated_linear(torch.zeros(5, 6), w_flat_BK, 3), w_flat_BK.view(5, 7, 3)[:, 6])


def test_generated_mlp_equals_per_sample_loop():
    torch.manual_seed(1)
    dims = (4, 5, 3, 2)
    head = GeneratedMLP(6, dims)
    h_BG, x_BI = torch.randn(3, 6), torch.randn(3, dims[0])
    with torch.no_grad():
        y = head(h_BG, x_BI)
        rows = []
        for b in range(3):
            x = x_BI[b]
            for k, (i, o) in enumerate(zip(dims[:-1], dims[1:])):
                w = head.heads[k](F.silu(head.fc[k](h_BG[b])))
                x = torch.cat([x, torch.ones(1)]) @ w.view(i + 1, o)
                x = F.silu(x) if k < 2 else x
            rows.append(x)
    torch.testing.assert_close(y, torch.stack(rows))
    torch.testing.assert_close(swish(x_BI), F.silu(x_BI))


def test_generated_mlp_attaches_under_reference_names():
    owner = torch.nn.Module()
    GeneratedMLP(4, (4, 3)).attach(owner, "t")
    assert list(owner.state_dict()) == [
        "hyper_in_t_fc_2.weight",
        "hyper_in_t_fc_2.bias",
        "hypernet_t_fc_h2.weight",
        "hypernet_t_fc_h2.bias",
    ]
    GeneratedMLP(4, (4, 5, 5, 3)).attach(owner, "rot")
    assert [k for k in owner.state_dict() if "rot" in k and k.endswith("weight")] == [
        "hyper_in_rot_fc_0.weight",
        "hyper_in_rot_fc_1.weight",
        "hyper_in_rot_fc_2.weight",
        "hypernet_rot_fc_h0.weight",
        "hypernet_rot_fc_h1.weight",
        "hypernet_rot_fc_h2.weight",
    ]


def test_apply_generated_linear_rejects_wrong_size():
    with pytest.raises(AssertionError):
        apply_generated_linear(torch.zeros(2, 4), torch.zeros(2, 4 * 3), 3)


def test_registry_names_and_classes():
    assert model_names() == (
        "posenet",
        "effposenet",
        "hyperpose",
        "atloc",
        "hyperatloc",
        "ems-transposenet",
        "mshyperpose",
    )
    assert canonical_model_name("mstransformer") == "ems-transposenet"
    assert isinstance(_build("effposenet"), EffPoseNet)
    assert isinstance(_build("hyperpose"), HyperPose)


def test_registry_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        build_model("posnet", CONFIG, new_backbone())
    for name in model_names() + ("mstransformer",):
        assert name in str(info.value)
