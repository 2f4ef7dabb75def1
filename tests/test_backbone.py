"""EfficientNet-B0 backbone: one-pass endpoints, safe loading of every backbone file kind, the CLI."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from efficientnet_pytorch import EfficientNet
from torch import nn

from models.backbone import (endpoint_blocks, extract_features, global_pool, load_backbone,
                             new_backbone, read_backbone_file)
from util.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]
ALL_ENDPOINTS = ("reduction_1", "reduction_2", "reduction_3", "reduction_4", "reduction_5")


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def _run_cli(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "models.backbone", *map(str, args)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return new_backbone().eval()


def test_endpoint_shapes_at_224(backbone):
    with torch.no_grad():
        out = extract_features(backbone, torch.randn(2, 3, 224, 224), ("reduction_3", "reduction_4"))
    assert set(out) == {"features", "reduction_3", "reduction_4"}
    assert out["reduction_3"].shape == (2, 40, 28, 28)
    assert out["reduction_4"].shape == (2, 112, 14, 14)
    assert out["features"].shape == (2, 1280, 7, 7)
    assert global_pool(out["features"]).shape == (2, 1280)


def test_endpoint_blocks_of_b0(backbone):
    assert endpoint_blocks(backbone) == {"reduction_1": 0, "reduction_2": 2, "reduction_3": 4,
                                         "reduction_4": 10, "reduction_5": 15}


def test_one_pass_equals_extract_endpoints(backbone):
    img = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = extract_features(backbone, img, ALL_ENDPOINTS)
        theirs = backbone.extract_endpoints(img)
    for name in ALL_ENDPOINTS:
        assert torch.equal(ours[name], theirs[name]), name
    assert torch.equal(ours["features"], theirs["reduction_6"])
    assert torch.equal(ours["features"], backbone.extract_features(img))


def test_drop_connect_in_training_matches_library():
    torch.manual_seed(1)
    model = new_backbone().train()
    assert model._global_params.drop_connect_rate > 0
    img = torch.randn(2, 3, 64, 64)
    torch.manual_seed(5)
    ours = extract_features(model, img)["features"]
    torch.manual_seed(5)
    theirs = model.extract_features(img)
    torch.manual_seed(6)
    other_draw = extract_features(model, img)["features"]
    assert torch.equal(ours, theirs)
    assert not torch.equal(ours, other_draw)  # stochastic depth is really active in training


def test_unknown_endpoint_is_value_error(backbone):
    with pytest.raises(ValueError, match="reduction_3"):
        extract_features(backbone, torch.randn(1, 3, 64, 64), ("reduction_9",))


def test_random_spec_warns(caplog):
    with caplog.at_level("WARNING", logger="models.backbone"):
        model = load_backbone("random")
    assert isinstance(model, EfficientNet)
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
    with pytest.raises(UserError, match="neither an EfficientNet state_dict nor a pickled"):
        load_backbone(str(path))
    assert not _Payload.constructed


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
    with pytest.raises(UserError, match="not an EfficientNet-B0.*_fc.bias"):
        load_backbone(str(path))


def test_missing_file_is_one_line_user_error(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(UserError) as info:
        load_backbone(str(missing))
    message = str(info.value)
    assert "\n" not in message
    assert "backbone file not found" in message and str(missing) in message and "'random'" in message


@pytest.mark.parametrize("content", [b"not a torch file\n", b""])
def test_garbage_file_is_user_error(tmp_path, content):
    path = tmp_path / "junk.pth"
    path.write_bytes(content)
    with pytest.raises(UserError, match="neither an EfficientNet state_dict"):
        load_backbone(str(path))


def test_tensor_file_is_user_error(tmp_path):
    path = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), path)
    with pytest.raises(UserError, match="found Tensor"):
        load_backbone(str(path))


def test_cli_write_then_check_round_trip(tmp_path):
    out = tmp_path / "sub" / "b0.pth"
    written = _run_cli("write", out)
    assert written.returncode == 0, written.stderr
    assert out.is_file() and not list(out.parent.glob("*.tmp"))
    state = torch.load(out, weights_only=True)
    assert list(state) == list(new_backbone().state_dict())
    checked = _run_cli("check", out)
    assert checked.returncode == 0, checked.stderr
    assert "state_dict" in checked.stdout
    missing = _run_cli("check", tmp_path / "missing.pth")
    assert missing.returncode == 2
    lines = missing.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: backbone file not found:")


def test_cli_pretrained_fails_cleanly_without_network(tmp_path):
    # An unreachable proxy and an empty cache make the download fail whether or not there is internet.
    env = dict(os.environ, TORCH_HOME=str(tmp_path / "torch_home"),
               HTTPS_PROXY="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9",
               HTTP_PROXY="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9")
    env.pop("NO_PROXY", None)
    env.pop("no_proxy", None)
    out = tmp_path / "b0.pth"
    result = _run_cli("write", out, "--pretrained", env=env)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: could not download ImageNet weights")
    assert "Traceback" not in result.stderr
    assert not out.exists()
