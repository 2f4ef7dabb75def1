"""The Python API: every input form, the README example, reference state_dicts, and bad input."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, tiny_config_dict, write_config
from datasets.dataset import load_image_uint8
from engine.deployment.localize import Localizer, Poses
from inference_helpers import save_tiny_checkpoint
from util.errors import UserError


@pytest.fixture(scope="module")
def images(scene7):
    return sorted(scene7.rglob("*.color.png"))


@pytest.fixture(scope="module")
def ckpt(images, tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("loc") / "hyperpose_final.pth", "hyperpose", images)


@pytest.fixture(scope="module")
def loc(ckpt):
    return Localizer.from_checkpoint(ckpt, device="cpu")


def test_every_input_form_gives_the_same_poses(loc, images):
    paths = images[:3]
    by_path = loc.predict([str(p) for p in paths])
    assert isinstance(by_path, Poses) and len(by_path) == 3
    assert by_path.positions.shape == (3, 3) and by_path.quaternions.shape == (3, 4) and by_path.scene_ids is None
    np.testing.assert_allclose(np.linalg.norm(by_path.quaternions, axis=1), 1.0, atol=1e-6)
    assert np.ptp(by_path.positions[:, 0]) > 1e-4
    pil = [Image.open(p) for p in paths]
    arrays = [np.asarray(im.convert("RGB")) for im in pil]
    uint8_tensors = [load_image_uint8(p) for p in paths]
    forms = {
        "pil": pil,
        "arrays": arrays,
        "array batch": np.stack(arrays),
        "uint8 tensors": uint8_tensors,
        "single path": None,
    }
    for name, form in forms.items():
        if name == "single path":
            got = np.concatenate([loc.predict(p).pose_N7 for p in paths])
        else:
            got = loc.predict(form, batch_size=2).pose_N7
        # Other batch sizes change the float32 summation order of the CPU kernels only: about 1e-6 here.
        np.testing.assert_allclose(got, by_path.pose_N7, rtol=0, atol=1e-5, err_msg=name)
    # A float batch is resized as floats, without the uint8 rounding of the paths above (about one grey
    # level, which this random network amplifies), so it is compared with the same floats one by one.
    float_batch = torch.stack(uint8_tensors).float() / 255
    np.testing.assert_allclose(
        loc.predict(float_batch).pose_N7, loc.predict(list(float_batch)).pose_N7, rtol=0, atol=1e-5
    )


def test_matches_the_checkpoint_config(loc):
    assert loc.model_name == "hyperpose" and loc.crop_size == tiny_config_dict()["hyperpose"]["image_crop"]
    assert loc.device.type == "cpu" and not loc.multi_scene


def test_multi_scene_names_and_probabilities(scenes3, tmp_path):
    imgs = sorted(scenes3.rglob("*.color.png"))
    scenes = ["chess", "fire", "heads"]
    ckpt = save_tiny_checkpoint(tmp_path / "ms.pth", "ems-transposenet", imgs, scenes)
    poses = Localizer.from_checkpoint(ckpt, device="cpu").predict(imgs[:5])
    assert set(poses.scene_names) <= set(scenes)
    assert [scenes[i] for i in poses.scene_ids] == poses.scene_names
    assert np.all((poses.scene_probs > 1 / 3 - 1e-6) & (poses.scene_probs <= 1))


def test_reference_state_dict_with_model_name_and_config(ckpt, loc, images, tmp_path):
    bare = tmp_path / "reference.pth"
    torch.save(torch.load(ckpt, weights_only=True)["model"], bare)
    with pytest.raises(UserError, match="pass config="):
        Localizer.from_checkpoint(bare)
    config = write_config(tmp_path / "tiny.json", tiny_config_dict())
    ref = Localizer.from_checkpoint(bare, device="cpu", config=config)  # model name guessed from the keys
    np.testing.assert_allclose(ref.predict(images[:2]).pose_N7, loc.predict(images[:2]).pose_N7, atol=1e-5)
    with pytest.raises(UserError, match="holds a 'hyperpose' model"):
        Localizer.from_checkpoint(bare, model_name="effposenet", config=config)


@pytest.mark.parametrize(
    "bad,pattern",
    [
        (np.zeros((8, 8), np.uint8), r"image 0: expected a uint8 array H x W x 3"),
        (np.zeros((8, 8, 3), np.float32), r"image 0: expected a uint8 array"),
        (torch.full((1, 3, 8, 8), 255.0), r"float images must hold RGB values in \[0, 1\]"),
        (torch.zeros(1, 4, 8, 8), r"expected B x 3 x H x W"),
        ([], r"nothing to localize"),
        (42, r"expected an image, a list of images or a tensor batch"),
        ("missing.png", r"image not found: missing.png"),
        (np.zeros((0, 0, 3), np.uint8), r"image 0: empty \(0 x 0 pixels\)"),
        (torch.zeros(3, 0, 5), r"image 0: empty \(0 x 5 pixels\)"),
        (torch.zeros(2, 3, 0, 8), r"expected B x 3 x H x W with H, W >= 1"),
    ],
)
def test_bad_input_is_a_user_error(loc, bad, pattern):
    with pytest.raises(UserError, match=pattern):
        loc.predict(bad)


def test_wrong_checkpoint_model_is_a_user_error(ckpt):
    with pytest.raises(UserError, match="holds a 'hyperpose' model, not 'effposenet'"):
        Localizer.from_checkpoint(ckpt, model_name="effposenet")


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(r"<!-- localize-example[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert match, "the README lost its Localizer example"
    return match.group(1)


@pytest.mark.slow
def test_readme_example_runs(ckpt, images, tmp_path):
    code = readme_example()
    assert len(code.strip().splitlines()) <= 10
    (tmp_path / "models" / "run_1").mkdir(parents=True)
    shutil.copy(ckpt, tmp_path / "models" / "run_1" / "hyperpose_final.pth")
    (tmp_path / "images").mkdir()
    for p in images[:3]:
        shutil.copy(p, tmp_path / "images" / f"{p.parent.name}_{p.name}")
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 5 and lines[0].startswith("images/")
    # The PIL image and the array are the first file again: same pose as its path.
    poses = [line[line.index("[") :] for line in lines]
    assert poses[3] == poses[0] and poses[4] == poses[0]
