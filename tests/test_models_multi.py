"""Multi-scene models (ems-transposenet, mshyperpose): reference layouts, numerics, selection, speed rules.

Layout tests build the full-size models on the meta device (no memory, no init cost). Numerical
tests re-compute the forward pass functionally from raw state_dict tensors, with per-sample loops
where the model is batched, and compare.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from models.backbone import load_backbone
from models.ms_transposenet import MSTransPoseNet
from models.mshyperpose import MSHyperPose
from models.transformer import Attention
from tests.reference_layout import (
    layout_path,
    random_state_dict,
    read_layout,
    read_layout_header,
    state_dict_layout,
)
from util.errors import UserError

MODELS = {"ems-transposenet": MSTransPoseNet, "mshyperpose": MSHyperPose}
NUM_SCENES = {"7Scenes": 7, "CambridgeLandmarks": 4}
EXPECTED_PARAMS = {
    ("ems-transposenet", "7Scenes"): 17_523_350,
    ("ems-transposenet", "CambridgeLandmarks"): 15_921_281,
    ("mshyperpose", "7Scenes"): 142_682_227,
    ("mshyperpose", "CambridgeLandmarks"): 142_680_691,
}


def reference_config(num_scenes: int, nheads: int = 8) -> dict:
    """The reference configs' mshyperpose section (8 heads: what the reference actually ran)."""
    return {
        "hidden_dim": 256,
        "dim_feedforward": 256,
        "dropout": 0.1,
        "nheads": nheads,
        "num_t_encoder_layers": 4,
        "num_t_decoder_layers": 4,
        "num_rot_encoder_layers": 4,
        "num_rot_decoder_layers": 4,
        "reduction": ["reduction_4", "reduction_3"],
        "reg_hidden_dim": 1024,
        "hyper_dim_t": 256,
        "hyper_dim_rot": 512,
        "hyper_t_hidden_scale": 0.5,
        "num_scenes": num_scenes,
    }


def small_config(num_scenes: int = 3, nheads: int = 4) -> dict:
    """A tiny configuration for behaviour tests."""
    return {
        "hidden_dim": 32,
        "dim_feedforward": 24,
        "dropout": 0.1,
        "nheads": nheads,
        "num_t_encoder_layers": 2,
        "num_t_decoder_layers": 1,
        "num_rot_encoder_layers": 1,
        "num_rot_decoder_layers": 2,
        "reduction": ["reduction_4", "reduction_3"],
        "reg_hidden_dim": 16,
        "hyper_dim_t": 12,
        "hyper_dim_rot": 10,
        "hyper_t_hidden_scale": 0.5,
        "num_scenes": num_scenes,
    }


def build(model_name: str, config: dict, seed: int = 0) -> torch.nn.Module:
    """A model with a random backbone whose BatchNorm statistics fit random images.

    At initialisation the running statistics (mean 0, var 1) shrink activations layer after layer,
    so an eval-mode random backbone gives near-constant maps and every scene query the same output;
    statistics of one batch make the tests see distinct scenes.
    """
    torch.manual_seed(seed)
    model = MODELS[model_name](config, load_backbone("random"))
    body = model.backbone[0].body
    for module in body.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: one batch sets the statistics
    body.train()
    with torch.no_grad():
        body.extract(images(batch=4, seed=123))
    for module in body.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 0.01
    return model.train()


def images(batch: int = 2, size: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# Independent functional re-computation from raw state_dict tensors.


def _attention(sd, prefix, query_BQd, key_BKd, value_BKd, nheads):
    """Multi-head attention written out head by head."""
    w_in, b_in = sd[prefix + "in_proj_weight"], sd[prefix + "in_proj_bias"]
    d = query_BQd.shape[-1]
    q = query_BQd @ w_in[:d].T + b_in[:d]
    k = key_BKd @ w_in[d : 2 * d].T + b_in[d : 2 * d]
    v = value_BKd @ w_in[2 * d :].T + b_in[2 * d :]
    head_dim = d // nheads
    heads = []
    for h in range(nheads):
        cols = slice(h * head_dim, (h + 1) * head_dim)
        weights = torch.softmax(q[..., cols] @ k[..., cols].transpose(1, 2) / math.sqrt(head_dim), dim=-1)
        heads.append(weights @ v[..., cols])
    return torch.cat(heads, dim=-1) @ sd[prefix + "out_proj.weight"].T + sd[prefix + "out_proj.bias"]


def _layer_norm(sd, prefix, x):
    return F.layer_norm(x, x.shape[-1:], sd[prefix + "weight"], sd[prefix + "bias"], eps=1e-5)


def _feed_forward(sd, prefix, x):
    hidden = F.gelu(x @ sd[prefix + "linear1.weight"].T + sd[prefix + "linear1.bias"])
    return hidden @ sd[prefix + "linear2.weight"].T + sd[prefix + "linear2.bias"]


def _transformer(sd, prefix, src_BNd, pos_BNd, query_Sd, nheads, n_enc, n_dec):
    """Pre-norm DETR transformer in eval mode: positions on queries/keys only, zero decoder start."""
    x = src_BNd
    for i in range(n_enc):
        p = f"{prefix}encoder.layers.{i}."
        y = _layer_norm(sd, p + "norm1.", x)
        x = x + _attention(sd, p + "self_attn.", y + pos_BNd, y + pos_BNd, y, nheads)
        x = x + _feed_forward(sd, p, _layer_norm(sd, p + "norm2.", x))
    memory = _layer_norm(sd, f"{prefix}encoder.norm.", x)
    query_BSd = query_Sd.expand(src_BNd.shape[0], -1, -1)
    t = torch.zeros_like(query_BSd)
    for i in range(n_dec):
        p = f"{prefix}decoder.layers.{i}."
        y = _layer_norm(sd, p + "norm1.", t)
        t = t + _attention(sd, p + "self_attn.", y + query_BSd, y + query_BSd, y, nheads)
        y = _layer_norm(sd, p + "norm2.", t)
        t = t + _attention(sd, p + "multihead_attn.", y + query_BSd, memory + pos_BNd, memory, nheads)
        t = t + _feed_forward(sd, p, _layer_norm(sd, p + "norm3.", t))
    return _layer_norm(sd, f"{prefix}decoder.norm.", t)


def _position_map(sd, height, width):
    """Position embedding cell by cell: first half col_embed[x], second half row_embed[y]."""
    col, row = sd["backbone.1.col_embed.weight"], sd["backbone.1.row_embed.weight"]
    pos = torch.empty(height, width, 2 * col.shape[1])
    for y in range(height):
        for x in range(width):
            pos[y, x] = torch.cat([col[x], row[y]])
    return pos.reshape(height * width, -1)


def _descriptors(model, sd, config, img_B3HW):
    """Per-scene t and rot descriptors (B x S x d) and pooled features, recomputed functionally."""
    body = model.backbone[0].body
    maps = body.extract(img_B3HW)
    descs = []
    for branch, endpoint in zip(("t", "rot"), config["reduction"]):
        src = F.conv2d(maps[endpoint], sd[f"input_proj_{branch}.weight"], sd[f"input_proj_{branch}.bias"])
        src_BNd = src.flatten(2).transpose(1, 2)
        pos_Nd = _position_map(sd, *src.shape[2:])
        descs.append(
            _transformer(
                sd,
                f"transformer_{branch}.",
                src_BNd,
                pos_Nd,
                sd[f"query_embed_{branch}.weight"],
                config["nheads"],
                config[f"num_{branch}_encoder_layers"],
                config[f"num_{branch}_decoder_layers"],
            )
        )
    return descs[0], descs[1], body.extract_features(img_B3HW).mean(dim=(2, 3))


def _mlp(sd, prefix, x):
    hidden = F.gelu(x @ sd[prefix + "fc_h.weight"].T + sd[prefix + "fc_h.bias"])
    return hidden @ sd[prefix + "fc_o.weight"].T + sd[prefix + "fc_o.bias"]


def _scene_heads_loop(sd, desc_t_Bd, desc_rot_Bd, scene_B):
    """ems-transposenet heads, one sample at a time with that sample's scene head."""
    rows = []
    for b, k in enumerate(scene_B.tolist()):
        rows.append(
            torch.cat(
                [_mlp(sd, f"regressor_head_t.{k}.", desc_t_Bd[b]), _mlp(sd, f"regressor_head_rot.{k}.", desc_rot_Bd[b])]
            )
        )
    return torch.stack(rows)


def _hyper_loop(sd, branch, desc_Bd, pooled_BC):
    """mshyperpose generated MLP, one sample at a time, matrices read row-major with a bias row."""
    rows = []
    for b in range(desc_Bd.shape[0]):
        h = desc_Bd[b] + sd[f"hyper_in_{branch}_proj.weight"] @ pooled_BC[b] + sd[f"hyper_in_{branch}_proj.bias"]
        x = desc_Bd[b]
        for k in range(3):
            g = F.silu(sd[f"hyper_in_{branch}_fc_{k}.weight"] @ h + sd[f"hyper_in_{branch}_fc_{k}.bias"])
            w = sd[f"hypernet_{branch}_fc_h{k}.weight"] @ g + sd[f"hypernet_{branch}_fc_h{k}.bias"]
            w = w.view(x.shape[0] + 1, -1)
            x = x @ w[:-1] + w[-1]
            if k < 2:
                x = F.silu(x)
        rows.append(x)
    return torch.stack(rows)


def _shared_heads_plus_hyper(sd, desc_t_Bd, desc_rot_Bd, pooled_BC):
    t = _mlp(sd, "regressor_head_t.", desc_t_Bd) + _hyper_loop(sd, "t", desc_t_Bd, pooled_BC)
    q = _mlp(sd, "regressor_head_rot.", desc_rot_Bd) + _hyper_loop(sd, "rot", desc_rot_Bd, pooled_BC)
    return torch.cat([t, q], dim=1)


def _reference_forward(model_name, model, config, img_B3HW, scene_B=None):
    """The whole multi-scene forward, recomputed without the model's own code paths."""
    sd = model.state_dict()
    desc_t, desc_rot, pooled = _descriptors(model, sd, config, img_B3HW)
    logits = torch.cat([desc_t, desc_rot], dim=2) @ sd["scene_embed.weight"][0] + sd["scene_embed.bias"]
    log_probs = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    if scene_B is None:
        scene_B = log_probs.argmax(dim=1)
    rows = torch.arange(len(scene_B))
    desc_t_Bd, desc_rot_Bd = desc_t[rows, scene_B], desc_rot[rows, scene_B]
    if model_name == "ems-transposenet":
        return _scene_heads_loop(sd, desc_t_Bd, desc_rot_Bd, scene_B), log_probs
    return _shared_heads_plus_hyper(sd, desc_t_Bd, desc_rot_Bd, pooled), log_probs


# ---------------------------------------------------------------------------------------------
# Reference layouts (meta device: shapes only).


def meta_model(model_name, num_scenes):
    with torch.device("meta"):
        return MODELS[model_name](reference_config(num_scenes), load_backbone("random"))


@pytest.mark.parametrize("dataset", sorted(NUM_SCENES))
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_parameter_count_matches_reference(model_name, dataset):
    model = meta_model(model_name, NUM_SCENES[dataset])
    total = sum(p.numel() for p in model.parameters())
    assert total == EXPECTED_PARAMS[model_name, dataset]
    assert total == read_layout_header(layout_path(model_name, dataset))["total_params"]


@pytest.mark.parametrize("dataset", sorted(NUM_SCENES))
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_state_dict_layout_equals_reference(model_name, dataset):
    ours = state_dict_layout(meta_model(model_name, NUM_SCENES[dataset]).state_dict())
    reference = read_layout(layout_path(model_name, dataset))
    assert [e.name for e in ours] == [e.name for e in reference]  # names and order
    assert ours == reference  # shapes and dtypes too


# ---------------------------------------------------------------------------------------------
# Full-size models loaded strictly from random reference-layout state_dicts.


@pytest.fixture(scope="module")
def reference_models():
    """Both models at the 7Scenes reference size, strictly loaded from random reference state_dicts."""
    models = {}
    for seed, model_name in enumerate(sorted(MODELS)):
        model = build(model_name, reference_config(7))
        state = random_state_dict(read_layout(layout_path(model_name, "7Scenes")), seed=seed)
        model.load_state_dict(state, strict=True)
        for name, tensor in model.state_dict().items():  # the values really went in
            assert torch.equal(tensor, state[name]), name
        models[model_name] = model.eval()
    return models


@pytest.mark.slow  # shares the full-size models of reference_models (5 s to build)
def test_reference_ems_transposenet_heads_match_per_sample_loop(reference_models):
    model = reference_models["ems-transposenet"]
    img = images()
    with torch.no_grad():
        desc_t, desc_rot, pooled = model.encode(img)
        for scene_B in (torch.tensor([5, 2]), None):
            pose, log_probs = model(img, scene_B)
            chosen = log_probs.argmax(dim=1) if scene_B is None else scene_B
            rows = torch.arange(2)
            expected = _scene_heads_loop(model.state_dict(), desc_t[rows, chosen], desc_rot[rows, chosen], chosen)
            torch.testing.assert_close(pose, expected, rtol=1e-4, atol=1e-5)
    assert pose.shape == (2, 7) and log_probs.shape == (2, 7)
    torch.testing.assert_close(log_probs.exp().sum(dim=1), torch.ones(2))


@pytest.mark.slow  # shares the full-size models of reference_models (5 s to build)
def test_reference_mshyperpose_hyper_regressor_matches_per_sample_loop(reference_models):
    model = reference_models["mshyperpose"]
    img = images()
    with torch.no_grad():
        desc_t, desc_rot, pooled = model.encode(img)
        scene_B = torch.tensor([6, 0])
        pose, log_probs = model(img, scene_B)
        rows = torch.arange(2)
        expected = _shared_heads_plus_hyper(model.state_dict(), desc_t[rows, scene_B], desc_rot[rows, scene_B], pooled)
    assert pose.shape == (2, 7) and log_probs.shape == (2, 7)
    torch.testing.assert_close(pose, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(log_probs.exp().sum(dim=1), torch.ones(2))


@pytest.mark.slow  # shares the full-size models of reference_models (5 s to build)
def test_reference_size_input_gives_reference_shapes(reference_models):
    """224x224 input: 14x14 and 28x28 token grids fit the 50x50 position tables."""
    model = reference_models["ems-transposenet"]
    with torch.no_grad():
        pose, log_probs = model(images(batch=1, size=224))
    assert pose.shape == (1, 7) and log_probs.shape == (1, 7)
    assert torch.isfinite(pose).all() and torch.isfinite(log_probs).all()


# ---------------------------------------------------------------------------------------------
# Behaviour on small configurations.


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_forward_matches_functional_recomputation(model_name):
    config = small_config()
    model = build(model_name, config).eval()
    img = images()
    with torch.no_grad():
        for scene_B in (None, torch.tensor([2, 1])):
            pose, log_probs = model(img, scene_B)
            expected_pose, expected_log_probs = _reference_forward(model_name, model, config, img, scene_B)
            torch.testing.assert_close(log_probs, expected_log_probs, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(pose, expected_pose, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_under_bf16_autocast_the_heads_run_in_fp32(model_name):
    model = build(model_name, small_config()).eval()
    seen = []
    regress = model.regress

    def recording_regress(*args):
        seen.append((torch.is_autocast_enabled("cpu"), [a.dtype for a in args if a.is_floating_point()]))
        return regress(*args)

    model.regress = recording_regress
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        maps = model.body.extract(images())
        pose, log_probs = model(images())
    assert maps["pooled"].dtype == torch.bfloat16  # the backbone runs in bf16
    assert pose.dtype == log_probs.dtype == torch.float32
    assert seen == [(False, [torch.float32] * 3)]


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_one_backbone_pass_per_forward(model_name):
    model = build(model_name, small_config())
    calls = []
    model.backbone[0].body._conv_stem.register_forward_hook(lambda *_: calls.append(1))
    model(images(), torch.tensor([0, 2]))
    assert len(calls) == 1
    model.eval()
    with torch.no_grad():
        model(images())
    assert len(calls) == 2


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_scene_selection_argmax_or_given(model_name):
    model = build(model_name, small_config(num_scenes=4)).eval()
    img = images(batch=3)
    with torch.no_grad():
        pose, log_probs = model(img)
        argmax_B = log_probs.argmax(dim=1)
        pose_given, log_probs_given = model(img, argmax_B)
        torch.testing.assert_close(pose_given, pose, rtol=0, atol=0)
        other_B = (argmax_B + 1) % 4
        pose_other, log_probs_other = model(img, other_B)
    assert pose.shape == (3, 7) and log_probs.shape == (3, 4)
    torch.testing.assert_close(log_probs.exp().sum(dim=1), torch.ones(3))
    # The scene distribution does not depend on the selection, the pose does (for every sample).
    torch.testing.assert_close(log_probs_other, log_probs, rtol=0, atol=0)
    assert ((pose_other - pose).abs().amax(dim=1) > 1e-6).all()


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_nheads_is_honoured(model_name):
    four = build(model_name, small_config(nheads=4))
    eight = build(model_name, small_config(nheads=8))

    def attention_heads(model):
        return {m.nheads for m in model.modules() if isinstance(m, Attention)}

    assert attention_heads(four) == {4} and attention_heads(eight) == {8}
    eight.load_state_dict(four.state_dict(), strict=True)
    four.eval()
    eight.eval()
    img, scene_B = images(), torch.tensor([0, 1])
    with torch.no_grad():
        pose_4, _ = four(img, scene_B)
        pose_8, _ = eight(img, scene_B)
        expected_8, _ = _reference_forward(model_name, eight, small_config(nheads=8), img, scene_B)
    torch.testing.assert_close(pose_8, expected_8, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(pose_4, pose_8, rtol=1e-3, atol=1e-4)


def test_only_selected_scene_heads_receive_gradient():
    model = build("ems-transposenet", small_config(num_scenes=4))
    pose, log_probs = model(images(), torch.tensor([1, 3]))
    (pose.square().sum() - log_probs[:, 0].sum()).backward()
    for k in range(4):
        grad = model.regressor_head_t[k].fc_h.weight.grad
        assert (grad.abs().sum() > 0) == (k in (1, 3)), k
    assert model.backbone[0].body._conv_stem.weight.grad.abs().sum() > 0


def test_mshyperpose_trains_end_to_end():
    model = build("mshyperpose", small_config())
    pose, log_probs = model(images(), torch.tensor([0, 2]))
    (pose.square().sum() + F.nll_loss(log_probs, torch.tensor([0, 2]))).backward()
    for name in (
        "hypernet_t_fc_h0.weight",
        "hypernet_rot_fc_h2.weight",
        "regressor_head_t.fc_h.weight",
        "query_embed_rot.weight",
        "backbone.1.col_embed.weight",
        "backbone.0.body._conv_head.weight",
    ):
        assert model.get_parameter(name).grad.abs().sum() > 0, name


def test_missing_num_scenes_is_a_user_error():
    config = small_config()
    config["num_scenes"] = None
    with pytest.raises(UserError, match="num_scenes"):
        MSTransPoseNet(config, load_backbone("random"))


def test_feature_map_beyond_position_table_is_a_user_error():
    config = {**small_config(), "reduction": ["reduction_4", "reduction_1"]}
    model = build("ems-transposenet", config).eval()
    with torch.no_grad(), pytest.raises(UserError, match="position table"):
        model(images(batch=1, size=128))


def test_confident_scene_log_probs_stay_finite():
    """log_softmax, not log(softmax): a confident scene classifier must not give -inf."""
    model = build("ems-transposenet", small_config()).eval()
    with torch.no_grad():
        model.scene_embed.weight.mul_(1e4)
        _, log_probs = model(images())
    assert torch.isfinite(log_probs).all()
    assert log_probs.min() < -100  # the scores really are extreme
    torch.testing.assert_close(log_probs.exp().sum(dim=1), torch.ones(2))


def test_every_model_runs_in_float64_like_float32():
    """``model.double()`` works for every registered model and agrees with float32 to float32's precision."""
    from conftest import tiny_config_dict
    from models.backbone import new_backbone
    from models.registry import build_model, get_spec, model_names

    cfg = tiny_config_dict()
    img = torch.rand(2, 3, 48, 48)
    for name in model_names():
        config = dict(cfg[name], num_scenes=2) if get_spec(name).multi_scene else cfg[name]
        torch.manual_seed(0)
        model = build_model(name, config, new_backbone(config["backbone_type"])).eval()
        scene = torch.zeros(2, dtype=torch.long) if get_spec(name).multi_scene else None  # no argmax ties
        with torch.no_grad():
            pose32, _ = model(img, scene)
            pose64, _ = model.double()(img.double(), scene)
        assert pose64.dtype == torch.float64, name
        torch.testing.assert_close(pose64.float(), pose32, rtol=1e-3, atol=1e-4, msg=name)
