"""Every registered model against its reference layout tables, and the reference's PoseNet, AtLoc and
HyperAtLoc recomputed from the facts document (``reference_posenet_atloc.md``), layer by layer."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import GoogLeNet
from torchvision.models.resnet import ResNet

from models.backbone import new_backbone
from models.config import defaults
from models.loading import reconcile_config
from models.registry import build_model, get_spec, guess_reference_model, model_names
from tests.reference_layout import layout_path, random_state_dict, read_layout, read_layout_header, state_dict_layout
from util.errors import UserError

TABLES = [(name, table) for name in model_names() for table in get_spec(name).reference_tables]
SCENES = {"7Scenes": 7, "CambridgeLandmarks": 4}
NEW_MODELS = ("posenet", "atloc", "hyperatloc")


def _build(name: str, dataset: str = "CambridgeLandmarks", **overrides):
    spec = get_spec(name)
    config = dict(defaults(name), num_scenes=SCENES[dataset], **overrides)
    torch.manual_seed(0)
    return build_model(name, config, new_backbone(spec.default_backbone))


def _table(table: str):
    model, dataset = table.rsplit("_", 1)
    return layout_path(model, dataset), dataset


@pytest.mark.parametrize("name,table", TABLES)
def test_layout_and_parameter_count_equal_the_reference(name, table):
    path, dataset = _table(table)
    if name == "mshyperpose":
        pytest.skip("checked in test_models_multi.py (a 570 MB model)")
    model = _build(name, dataset)
    assert state_dict_layout(model.state_dict()) == read_layout(path)  # names, order, shapes, dtypes
    assert sum(p.numel() for p in model.parameters()) == read_layout_header(path)["total_params"]


@pytest.mark.parametrize("name", NEW_MODELS)
def test_reference_state_dict_loads_strictly_and_is_recognised(name):
    path, _ = _table(get_spec(name).reference_tables[0])
    state = random_state_dict(read_layout(path), seed=5)
    model = _build(name)
    model.load_state_dict(state, strict=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert guess_reference_model(state) == name
    # A reference state_dict of another model is refused with one line.
    other = "hyperatloc" if name != "hyperatloc" else "atloc"
    with pytest.raises(UserError, match=f"holds a '{name}' model \\(by its parameter names\\), not '{other}'"):
        reconcile_config({"format": "reference", "model_name": name, "model": state}, other, defaults(other), "x.pth")


def test_every_reference_table_is_recognised_as_its_model():
    for name, table in TABLES:
        state = {e.name: torch.empty(0) for e in read_layout(_table(table)[0])}
        assert guess_reference_model(state) == name, table


# ---------------------------------------------------------------------------------------------
# Forward passes recomputed from the facts document, one sample at a time, from raw tensors.


def _linear(sd, name, x):
    return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def _swish(x):
    return x * torch.sigmoid(x)


def _generated_layer(sd, branch, z):
    """Hyper branch: w = h2(swish(fc_2(proj(z)))) read as (H+1) x out row-major, last row the bias,
    applied to [hyper_in(z), 1]."""
    w_flat = _linear(
        sd,
        f"hypernet_{branch}_fc_h2",
        _swish(_linear(sd, f"hyper_in_{branch}_fc_2", _linear(sd, f"hyper_in_{branch}_proj", z))),
    )
    u = torch.cat([_linear(sd, f"hyper_in_{branch}", z), torch.ones(1, dtype=z.dtype)])
    return u @ w_flat.reshape(u.numel(), -1)


def _attention(sd, r):
    """AtLoc's non-local block on one vector: softmax_j(phi_i theta_j), y_i = sum_j a_ij g_j, z = W y + r."""
    g, theta, phi = _linear(sd, "att.g", r), _linear(sd, "att.theta", r), _linear(sd, "att.phi", r)
    y = torch.empty_like(g)
    for i in range(g.numel()):
        a = torch.softmax(phi[i] * theta, dim=0)
        y[i] = (a * g).sum()
    return _linear(sd, "att.W", y) + r


def reference_head(name: str, sd: dict, feat: torch.Tensor) -> torch.Tensor:
    """The head of ``name`` on one pooled feature vector (eval mode: dropouts off)."""
    if name == "posenet":
        h = torch.relu(_linear(sd, "fc1", feat))
        return torch.cat([_linear(sd, "fc2", h), _linear(sd, "fc3", h)])
    z = _attention(sd, torch.relu(feat))
    xyz, wpqr = _linear(sd, "fc_xyz", z), _linear(sd, "fc_wpqr", z)
    if name == "hyperatloc":
        xyz, wpqr = xyz + _generated_layer(sd, "t", z), wpqr + _generated_layer(sd, "rot", z)
    return torch.cat([xyz, wpqr])


def _calibrated(name: str, dtype: torch.dtype):
    """A model holding a random reference state_dict whose BatchNorm statistics fit random images, so the
    eval-mode features of different images differ (random running statistics flatten them)."""
    path, _ = _table(get_spec(name).reference_tables[0])
    model = _build(name)
    model.load_state_dict(random_state_dict(read_layout(path), seed=7), strict=True)
    model = model.to(dtype)
    backbone = model.backbone if name == "posenet" else model.feature_extractor
    norms = [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    backbone.train()
    with torch.no_grad():
        backbone.extract(torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(1), dtype=dtype))
    return model.eval(), backbone


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("name", NEW_MODELS)
def test_forward_equals_the_facts_document(name, dtype, tolerance):
    model, backbone = _calibrated(name, dtype)
    img = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2), dtype=dtype)
    sd = {k: v.to(torch.float64) for k, v in model.state_dict().items()}
    library_forward = GoogLeNet.forward if name == "posenet" else ResNet.forward
    with torch.no_grad():
        pose_B7, scene_logp = model(img)
        # The backbone part through torchvision's own forward (GoogLeNet: input transform, dropout off,
        # the 1000-way fc; ResNet34: avgpool and the 2048-wide fc), in float64.
        feat = library_forward(backbone.to(torch.float64), img.to(torch.float64))
        expected = torch.stack([reference_head(name, sd, f) for f in feat])
    assert scene_logp is None and pose_B7.shape == (2, 7) and pose_B7.dtype == dtype
    assert (expected[0] - expected[1]).abs().max() > 1e-3 * expected.abs().max()  # images really differ
    error = (pose_B7.to(torch.float64) - expected).abs().max()
    assert error <= tolerance * (1.0 if dtype == torch.float64 else expected.abs().max()), float(error)


@pytest.mark.parametrize("name", ("atloc", "hyperatloc"))
def test_dropout_is_off_in_eval_and_on_in_training(name):
    """The reference leaves AtLoc's p=0.5 dropout on at test time; here eval is deterministic."""
    model, backbone = _calibrated(name, torch.float32)
    img = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.manual_seed(0)
        a = model(img)[0]
        torch.manual_seed(1)
        b = model(img)[0]
        assert torch.equal(a, b)
        model.train()
        backbone.eval()  # only the head's dropout is random
        torch.manual_seed(0)
        c = model(img)[0]
        torch.manual_seed(1)
        d = model(img)[0]
    assert not torch.equal(c, d)


def test_hyperatloc_reads_z_before_the_dropout():
    """Only fc_xyz / fc_wpqr see the dropped-out vector: with the static heads zeroed, training-mode
    outputs do not depend on the dropout draw."""
    model, backbone = _calibrated("hyperatloc", torch.float32)
    with torch.no_grad():
        for layer in (model.fc_xyz, model.fc_wpqr):
            layer.weight.zero_()
        model.train()
        backbone.eval()
        img = torch.randn(2, 3, 64, 64)
        torch.manual_seed(0)
        a = model(img)[0]
        torch.manual_seed(1)
        b = model(img)[0]
    assert torch.equal(a, b)
