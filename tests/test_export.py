"""ONNX and TorchScript exports of every registered model reproduce PyTorch; the export CLI and its errors.

Tolerance: every output within ``engine.deployment.export.EXPORT_TOLERANCE`` (1e-4) times max(1, its largest PyTorch
magnitude), on real (synthetic) images at the crop size; float32 rounding measured here is about 1e-5 of that.

Each model is exported with its head at the tiny config's sizes; the models that default to efficientnet
carry the compact backbone of the tests (conftest.COMPACT_BACKBONE), the reference models their own
(googlenet, resnet34). The efficientnet backbone itself goes through the CLI round trip.
"""

from __future__ import annotations

import csv
import io
import re

import numpy as np
import pytest
import torch

from conftest import COMPACT_BACKBONE, run_script, tiny_config_dict, write_config
from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD
from engine.cli import main as cli_main
from engine.deployment.export import EXPORT_TOLERANCE, export_checkpoint, load_check_images
from engine.deployment.exported import ExportedModel
from engine.deployment.localize import Localizer
from inference_helpers import is_multi_scene, save_tiny_checkpoint
from models.registry import model_names
from util.errors import UserError


@pytest.fixture(scope="module")
def images(scenes3):
    return sorted(scenes3.rglob("*.color.png"))


@pytest.fixture(scope="module")
def checkpoints(images, tmp_path_factory):
    """One checkpoint per registered model, so that a model added to the registry is covered here."""
    tmp = tmp_path_factory.mktemp("export_ckpts")
    scenes = sorted({p.relative_to(images[0].parents[2]).parts[0] for p in images})
    return {
        name: save_tiny_checkpoint(
            tmp / f"{name}_final.pth", name, images, scenes if is_multi_scene(name) else (), compact_backbone=True
        )
        for name in model_names()
    }


@pytest.fixture(scope="module")
def efficientnet_checkpoint(images, tmp_path_factory):
    """hyperpose on the efficientnet backbone (EfficientNet-B0), the default of the shipped configs."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("export_b0") / "hyperpose_final.pth", "hyperpose", images)


def assert_matches(got: dict, localizer: Localizer, crops_N3HW: torch.Tensor) -> None:
    """Exported outputs against the PyTorch Localizer on the same crop-sized images."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    pose_N7, logp_NS = localizer.predict_batch((crops_N3HW.float() / 255 - mean) / std)
    expected = {"position": pose_N7[:, :3], "quaternion": pose_N7[:, 3:]}
    if logp_NS is not None:
        expected["scene_logp"] = logp_NS
        top2 = logp_NS.topk(2, dim=1).values
        assert (top2[:, 0] - top2[:, 1]).min() > 1e-3  # no near-tie that float rounding could flip
    assert sorted(got) == sorted(expected)
    for name, ref in expected.items():
        ref = ref.numpy()
        bound = EXPORT_TOLERANCE * max(1.0, float(np.abs(ref).max()))
        assert np.abs(got[name] - ref).max() <= bound, (name, np.abs(got[name] - ref).max(), bound)


@pytest.mark.slow
@pytest.mark.parametrize("fmt,batch", [("onnx", "dynamic"), ("torchscript", 4)])
@pytest.mark.parametrize("model_name", model_names())
def test_export_reproduces_pytorch(model_name, fmt, batch, checkpoints, scenes3, tmp_path):
    ckpt = checkpoints[model_name]
    out = tmp_path / f"model.{fmt}"
    result = export_checkpoint(ckpt, out, fmt, batch=batch, check_images=str(scenes3 / "chess"))
    assert out.is_file() and all(result.max_abs_diff[n] <= result.tolerance[n] for n in result.max_abs_diff)

    localizer = Localizer.from_checkpoint(ckpt, device="cpu")
    crops = load_check_images(str(scenes3), localizer.config, limit=12)
    exported = ExportedModel(out)
    assert exported.metadata["model_name"] == model_name
    if batch == "dynamic":
        for sub in (crops[:1], crops[1:6]):
            assert_matches(exported(sub.numpy()), localizer, sub)
    else:
        assert_matches(exported(crops[:batch].numpy()), localizer, crops[:batch])
        with pytest.raises(UserError, match="exported for batches of 4"):
            exported(crops[:3].numpy())
    q = exported(crops[:4].numpy())["quaternion"]
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-6)


@pytest.mark.slow
def test_float_input_export(checkpoints, scenes3, tmp_path):
    ckpt = checkpoints["hyperpose"]
    out = tmp_path / "float.onnx"
    export_checkpoint(ckpt, out, "onnx", batch=2, input_dtype="float32", check_images=str(scenes3 / "chess"))
    exported = ExportedModel(out)
    localizer = Localizer.from_checkpoint(ckpt, device="cpu")
    crops = load_check_images(str(scenes3), localizer.config, limit=2)
    assert_matches(exported((crops.float() / 255).numpy()), localizer, crops)
    with pytest.raises(UserError, match="takes float32"):
        exported(crops.numpy())


@pytest.mark.slow
def test_export_cli_then_run_equals_predict(efficientnet_checkpoint, scenes3, tmp_path):
    """The CLI round trip: export, run the file on a folder, and compare with the predict mode's CSV."""
    ckpt = efficientnet_checkpoint
    out = tmp_path / "hyperpose.onnx"
    proc = run_script(
        [
            "-m",
            "engine.deployment.export",
            str(ckpt),
            "--format",
            "onnx",
            "--out",
            str(out),
            "--batch",
            "dynamic",
            "--opset",
            "18",
            "--check_images",
            str(scenes3 / "chess"),
        ]
    )
    assert proc.returncode == 0, proc.stderr
    assert "max |onnx - PyTorch| on the check images" in proc.stdout
    folder = scenes3 / "fire"
    run = run_script(["-m", "engine.deployment.exported", str(out), str(folder), "--resize_crop"])
    assert run.returncode == 0, run.stderr
    exported_rows = {r["img_path"]: r for r in csv.DictReader(io.StringIO(run.stdout))}
    config = write_config(tmp_path / "tiny.json", tiny_config_dict())
    # The predict mode through the script's entry point in this process (its script runs in test_predict).
    pred_rc = cli_main(
        [
            "hyperpose",
            "predict",
            "random",
            str(folder),
            str(config),
            "--checkpoint_path",
            str(ckpt),
            "--output_path",
            str(tmp_path / "pred"),
            "--quiet",
        ]
    )
    assert pred_rc == 0
    with open(next((tmp_path / "pred").glob("*_poses.csv")), newline="") as f:
        predicted = {r["img_path"]: r for r in csv.DictReader(f)}
    assert exported_rows.keys() == predicted.keys() and len(predicted) == 16
    cols = ("t1", "t2", "t3", "q1", "q2", "q3", "q4")
    got = np.array([[float(exported_rows[k][c]) for c in cols] for k in sorted(predicted)])
    want = np.array([[float(predicted[k][c]) for c in cols] for k in sorted(predicted)])
    assert np.abs(got - want).max() <= EXPORT_TOLERANCE * max(1.0, np.abs(want).max())


@pytest.mark.parametrize(
    "case",
    ["unknown_format", "wrong_model", "opset", "wrong_size", "not_exported", "training_checkpoint", "read_only_out"],
)
def test_export_errors_are_one_line(case, checkpoints, scenes3, tmp_path, capsys, monkeypatch, read_only_dir):
    """Each mistake: exit status 2 and one 'error:' line (the CLI functions, in-process to keep this fast)."""
    from engine.deployment import export, exported

    # The console handler would hold on to this test's captured stderr after it is closed.
    monkeypatch.setattr(export, "setup_logging", lambda level: None)

    ckpt = checkpoints["hyperpose"]
    out = tmp_path / "m.onnx"
    base = [str(ckpt), "--out", str(out)]
    if case == "unknown_format":
        rc, pattern = export.main(base + ["--format", "tflite"]), r"unknown export format 'tflite'"
    elif case == "wrong_model":
        rc = export.main(base + ["--format", "onnx", "--model_name", "effposenet"])
        pattern = r"holds a 'hyperpose' model, not 'effposenet'"
    elif case == "opset":
        rc, pattern = export.main(base + ["--format", "onnx", "--opset", "9"]), r"--opset 9: the exporter writes"
    elif case == "wrong_size":
        out = tmp_path / "m.pt"
        export_checkpoint(ckpt, out, "torchscript", batch=1, check_images=str(scenes3 / "chess"))
        capsys.readouterr()
        rc = exported.main([str(out), str(scenes3 / "chess")])
        pattern = r"is 64x48 pixels but m.pt takes 48x48 images"
    elif case == "read_only_out":
        monkeypatch.setattr(export, "load_for_inference", lambda *a, **k: pytest.fail("loaded before the check"))
        rc = export.main([str(ckpt), "--out", str(read_only_dir / "m.onnx"), "--format", "onnx"])
        pattern = r"the folder of --out .* (not writable|cannot create)"
    elif case == "training_checkpoint":
        rc = exported.main([str(ckpt), str(scenes3 / "chess")])
        pattern = (
            r"is a checkpoint \(torch.save\), not an exported model; export it with `python -m engine.deployment.export"
        )
    else:
        out.write_bytes(b"junk")
        rc, pattern = exported.main([str(out), str(scenes3 / "chess")]), r"neither an ONNX model nor a TorchScript"
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert re.search(pattern, lines[0]) and len(lines[0]) < 300, lines[0]
    if case in ("unknown_format", "wrong_model", "opset"):
        assert not out.exists()


@pytest.mark.slow
def test_bench_export_runs():
    """The benchmark runs end to end (one call per runtime; its figures are not looked at here)."""
    proc = run_script(
        [
            "bench/bench_export.py",
            "--tiny",
            "--backbone",
            COMPACT_BACKBONE,
            "--models",
            "hyperpose",
            "--size",
            "48",
            "--batch",
            "2",
            "--iters",
            "1",
            "--warmup",
            "0",
            "--threads",
            "1",
        ]
    )
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("hyperpose ")]
    assert [r[1] for r in rows] == ["eager", "channels_last", "torchscript", "onnxruntime"]
    assert all(float(r[2]) > 0 and float(r[3]) > 0 for r in rows)


@pytest.mark.slow
def test_reference_state_dict_exports_with_model_config_and_scenes(checkpoints, scenes3, tmp_path):
    bare = tmp_path / "reference.pth"
    torch.save(torch.load(checkpoints["ems-transposenet"], weights_only=True)["model"], bare)
    config = write_config(tmp_path / "tiny.json", tiny_config_dict(compact_backbone=True))
    out = tmp_path / "ref.pt"
    result = export_checkpoint(
        bare,
        out,
        "torchscript",
        batch=2,
        model_name="ems-transposenet",
        config=config,
        scenes=["heads", "chess", "fire"],
        check_images=str(scenes3 / "chess"),
    )
    assert result.metadata["scene_names"] == ["chess", "fire", "heads"]  # numbered in sorted order
    assert ExportedModel(out).poses(
        load_check_images(str(scenes3), tiny_config_dict()["ems-transposenet"], limit=2).numpy()
    ).scene_names[0] in ("chess", "fire", "heads")
