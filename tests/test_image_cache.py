"""The decoded-image cache: same samples as decoding, invalidation on any change, damaged files rebuilt."""
from __future__ import annotations

import logging
import shutil

import pytest
import torch

from conftest import tiny_config_dict, write_config
from datasets.dataset import CameraPoseDataset, load_image_uint8
from datasets.image_cache import open_image_cache
from datasets.transforms import build_transform, resize_short_side
from engine.evaluate import Evaluator

RESIZE = 56


@pytest.fixture()
def data(scene7, tmp_path):
    """A private copy of the tiny scene, so tests may edit labels and images."""
    root = tmp_path / "data"
    shutil.copytree(scene7, root)
    return root, root / "abs_7scenes_pose.csv_chess_train.csv"


def _dataset(root, labels, **kw):
    return CameraPoseDataset(root, labels, **kw)


def _files(cache_dir):
    return sorted(cache_dir.glob("*.u8cache"))


def test_cached_samples_equal_decoded_ones(data, tmp_path):
    root, labels = data
    transform = build_transform({"image_resize": RESIZE, "image_crop": 48}, train=False)
    plain = _dataset(root, labels, transform=transform)
    cached = _dataset(root, labels, transform=transform)
    assert cached.use_image_cache(tmp_path / "cache", RESIZE)
    assert len(_files(tmp_path / "cache")) == 1
    for i in range(len(plain)):
        assert torch.equal(plain[i]["img"], cached[i]["img"]), i
        raw = cached.image_cache[i]
        assert raw.dtype == torch.uint8 and min(raw.shape[1:]) == RESIZE
        assert torch.equal(raw, resize_short_side(load_image_uint8(root / plain.img_paths[i]), RESIZE))


def test_augmented_samples_equal_decoded_ones_for_a_seed(data, tmp_path):
    root, labels = data
    transform = build_transform({"image_resize": RESIZE, "image_crop": 48}, train=True)
    plain = _dataset(root, labels, transform=transform)
    cached = _dataset(root, labels, transform=transform)
    cached.use_image_cache(tmp_path / "cache", RESIZE)
    torch.manual_seed(3)
    a = plain[1]["img"]
    torch.manual_seed(3)
    assert torch.equal(a, cached[1]["img"])


def test_second_open_reuses_the_file(data, tmp_path, caplog):
    root, labels = data
    paths = _dataset(root, labels).img_paths
    open_image_cache(tmp_path / "c", root, labels, paths, RESIZE)
    (first,) = _files(tmp_path / "c")
    stamp = first.stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="datasets.image_cache"):
        open_image_cache(tmp_path / "c", root, labels, paths, RESIZE)
    assert "building" not in caplog.text
    assert first.stat().st_mtime_ns == stamp
    assert not list((tmp_path / "c").glob("*.tmp"))


def test_any_change_of_labels_root_or_size_gives_another_cache(data, tmp_path):
    root, labels = data
    paths = _dataset(root, labels).img_paths
    open_image_cache(tmp_path / "c", root, labels, paths, RESIZE)
    open_image_cache(tmp_path / "c", root, labels, paths, RESIZE + 8)
    assert len(_files(tmp_path / "c")) == 2
    other_root = tmp_path / "copy"
    shutil.copytree(root, other_root)
    open_image_cache(tmp_path / "c", other_root, other_root / labels.name, paths, RESIZE)
    assert len(_files(tmp_path / "c")) == 3
    # Same file name, one pose digit changed: the content hash changes.
    text = labels.read_text()
    lines = text.splitlines()
    last = lines[-1].split(",")
    last[4] = str(float(last[4]) + 0.5)
    labels.write_text("\n".join(lines[:-1] + [",".join(last)]) + "\n")
    open_image_cache(tmp_path / "c", root, labels, paths, RESIZE)
    assert len(_files(tmp_path / "c")) == 4


@pytest.mark.parametrize("damage", ["truncate", "flip_pixel", "garbage"])
def test_damaged_cache_is_rebuilt_with_a_warning(damage, data, tmp_path, caplog):
    root, labels = data
    transform = build_transform({"image_resize": RESIZE, "image_crop": 48}, train=False)
    good = _dataset(root, labels, transform=transform)
    good.use_image_cache(tmp_path / "c", RESIZE)
    expected = [good[i]["img"] for i in range(len(good))]
    (path,) = _files(tmp_path / "c")
    blob = bytearray(path.read_bytes())
    if damage == "truncate":
        blob = blob[: len(blob) // 2]
    elif damage == "flip_pixel":
        blob[10] ^= 0xFF
    else:
        blob = bytearray(b"not a cache at all")
    path.write_bytes(bytes(blob))
    caplog.clear()

    again = _dataset(root, labels, transform=transform)
    with caplog.at_level(logging.WARNING, logger="datasets.image_cache"):
        assert again.use_image_cache(tmp_path / "c", RESIZE)
    assert "rebuilding" in caplog.text
    for i, img in enumerate(expected):
        assert torch.equal(again[i]["img"], img), i


def test_without_build_a_missing_cache_is_none(data, tmp_path):
    root, labels = data
    ds = _dataset(root, labels)
    assert not ds.use_image_cache(tmp_path / "none", RESIZE, build=False)
    assert ds.image_cache is None


def test_cache_is_read_by_workers(data, tmp_path):
    root, labels = data
    transform = build_transform({"image_resize": RESIZE, "image_crop": 48}, train=False)
    ds = _dataset(root, labels, transform=transform)
    ds.use_image_cache(tmp_path / "c", RESIZE)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1)
    imgs = torch.cat([b["img"] for b in loader])
    assert torch.equal(imgs, torch.stack([ds[i]["img"] for i in range(len(ds))]))


def test_test_mode_uses_the_cache_and_scores_the_same(data, tmp_path):
    from engine.train import train

    root, labels = data
    cfg = tiny_config_dict(n_epochs=1)
    config = write_config(tmp_path / "cfg.json", cfg)
    run = train("effposenet", "random", root, labels, config, tmp_path / "out", device="cpu",
                cache_dir=tmp_path / "train_cache")
    assert len(_files(tmp_path / "train_cache")) == 1
    test_csv = root / "abs_7scenes_pose.csv_chess_test.csv"
    scores = []
    for cache in (None, tmp_path / "test_cache"):
        ev = Evaluator("effposenet", "random", root, test_csv, config, device="cpu", cache_dir=cache,
                       latency_images=1, warmup=0, progress=False)
        result = ev.evaluate_checkpoint(run.final_checkpoint, timing=False)
        scores.append(next(iter(result.predictions.values())).pose_pred_N7)
    assert len(_files(tmp_path / "test_cache")) == 1
    assert (scores[0] == scores[1]).all()
