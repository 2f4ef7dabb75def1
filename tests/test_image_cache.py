"""The decoded-image cache: same samples as decoding, invalidation on any change, damaged files rebuilt."""

from __future__ import annotations

import logging
import shutil
import sys

import pytest
import torch

from conftest import tiny_config_dict, write_config
from datasets.dataset import CameraPoseDataset, load_image_uint8
from datasets.image_cache import open_image_cache
from datasets.transforms import build_transform, resize_short_side
from engine.evaluation.evaluate import Evaluator
from util.errors import UserError

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


def _train_then_test_with_and_without_cache(root, labels, tmp_path, **keys):
    """Train effposenet one epoch with its cache in ``train_cache``, then test the final checkpoint with the
    cache off and in ``test_cache``; the two prediction arrays."""
    from engine.training.train import train

    cfg = tiny_config_dict(n_epochs=1)
    cfg["effposenet"].update(keys)
    config = write_config(tmp_path / "cfg.json", cfg)
    run = train(
        "effposenet", "random", root, labels, config, tmp_path / "out", device="cpu", cache_dir=tmp_path / "train_cache"
    )
    test_csv = root / "abs_7scenes_pose.csv_chess_test.csv"
    scores = []
    for cache in ("off", tmp_path / "test_cache"):
        ev = Evaluator(
            "effposenet",
            "random",
            root,
            test_csv,
            config,
            device="cpu",
            cache_dir=cache,
            latency_images=1,
            warmup=0,
            progress=False,
        )
        result = ev.evaluate_checkpoint(run.final_checkpoint, timing=False)
        scores.append(next(iter(result.predictions.values())).pose_pred_N7)
    return scores


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
    root, labels = data
    scores = _train_then_test_with_and_without_cache(root, labels, tmp_path)
    assert len(_files(tmp_path / "train_cache")) == 1
    assert len(_files(tmp_path / "test_cache")) == 1
    assert (scores[0] == scores[1]).all()


@pytest.mark.slow
def test_by_default_runs_cache_in_the_user_folder_and_off_turns_it_off(data, tmp_path, monkeypatch):
    from engine.training.train import train

    root, labels = data
    monkeypatch.setenv("HYPERPOSE_CACHE_DIR", str(tmp_path / "user_cache"))
    cfg = tiny_config_dict(n_epochs=1)
    assert "cache_dir" not in cfg["effposenet"] and "cache_dir" not in cfg["general"]
    config = write_config(tmp_path / "cfg.json", cfg)
    train("effposenet", "random", root, labels, config, tmp_path / "out", device="cpu")
    assert len(_files(tmp_path / "user_cache")) == 1
    ev = Evaluator(
        "effposenet", "random", root, root / "abs_7scenes_pose.csv_chess_test.csv", config, device="cpu", progress=False
    )
    ev.test_sets({"chess": 0})
    assert len(_files(tmp_path / "user_cache")) == 2  # test mode caches its labels file too
    for off in ("off", None):
        cfg["effposenet"]["cache_dir"] = off
        monkeypatch.setenv("HYPERPOSE_CACHE_DIR", str(tmp_path / f"unused_{off}"))
        train(
            "effposenet",
            "random",
            root,
            labels,
            write_config(tmp_path / "off.json", cfg),
            tmp_path / "out",
            device="cpu",
        )
        assert not (tmp_path / f"unused_{off}").exists()


def test_the_command_line_turns_the_cache_off(data, tmp_path, monkeypatch, capsys):
    from conftest import run_main
    from engine.cli import main

    root, labels = data
    config = write_config(tmp_path / "cfg.json", tiny_config_dict(n_epochs=1))
    monkeypatch.setenv("HYPERPOSE_CACHE_DIR", str(tmp_path / "user_cache"))
    args = ["effposenet", "train", "random", root, labels, config, "--output_path", tmp_path / "out"]
    proc = run_main(main, args + ["--device", "cpu", "--no_cache"], capsys)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (tmp_path / "user_cache").exists()


def test_an_automatic_cache_that_cannot_be_written_is_skipped_with_a_warning(data, tmp_path, caplog):
    root, labels = data
    (tmp_path / "a_file").write_text("not a folder")
    ds = _dataset(root, labels)
    with caplog.at_level(logging.WARNING, logger="datasets.image_cache"):
        assert not ds.use_image_cache(tmp_path / "a_file" / "cache", RESIZE, required=False)
    assert ds.image_cache is None and len(caplog.records) == 1
    assert "cannot use the image cache folder" in caplog.records[0].getMessage()
    assert "decoding the images every epoch instead" in caplog.records[0].getMessage()
    with pytest.raises(UserError, match="cannot use the image cache folder"):
        ds.use_image_cache(tmp_path / "a_file" / "cache", RESIZE)


def test_an_automatic_cache_leaves_room_on_its_disk(data, small_disk, caplog):
    root, labels = data
    disk = small_disk(256 * 1024)  # smaller than the cache plus the 1 GiB it keeps free
    ds = _dataset(root, labels)
    with caplog.at_level(logging.WARNING, logger="datasets.image_cache"):
        assert not ds.use_image_cache(disk / "cache", RESIZE, required=False)
    assert "the image cache needs about" in caplog.records[0].getMessage()
    assert ds.use_image_cache(disk / "cache", RESIZE)  # asked for by name, it only needs its own size
    assert len(_files(disk / "cache")) == 1


def test_a_cache_larger_than_the_free_space_is_refused_before_decoding(data, tmp_path):
    from datasets.image_cache import check_free_space, estimated_bytes

    root, labels = data
    ds = _dataset(root, labels)
    expected = estimated_bytes(root, ds.img_paths, RESIZE)
    check_free_space(tmp_path / "c", expected)
    ds.use_image_cache(tmp_path / "c", RESIZE)
    assert ds.image_cache.data_len == expected  # exact for a dataset of one image size
    with pytest.raises(UserError, match=r"needs about .* GiB but .* free"):
        check_free_space(tmp_path / "c", 1 << 60)
    import shutil as _shutil

    free = _shutil.disk_usage(tmp_path).free
    with pytest.raises(UserError, match=r"needs about \d+\.\d (KiB|MiB|GiB) but .* free") as info:
        check_free_space(tmp_path / "c", 1 << 20, spare=free)  # small sizes are not shown as "0.0 GiB"
    assert "0.0 GiB" not in str(info.value)


def test_building_with_more_workers_than_cpus_asks_for_no_more_than_the_cpus(data, tmp_path, recwarn):
    from util.device import cpu_count

    root, labels = data
    assert _dataset(root, labels).use_image_cache(tmp_path / "c", RESIZE, n_workers=cpu_count() + 2)
    assert not [w for w in recwarn if "worker" in str(w.message)], [str(w.message) for w in recwarn]


def test_a_read_only_cache_folder_is_found_before_decoding(data, read_only_dir, caplog, monkeypatch):
    import datasets.image_cache as image_cache

    root, labels = data
    ds = _dataset(root, labels)
    monkeypatch.setattr(image_cache.ImageCache, "build", lambda *a: pytest.fail("decoded into a read-only folder"))
    with caplog.at_level(logging.WARNING, logger="datasets.image_cache"):
        assert not ds.use_image_cache(read_only_dir, RESIZE, required=False)
    assert "it is not writable" in caplog.records[0].getMessage()
    with pytest.raises(UserError, match="cannot use the image cache folder .*: it is not writable"):
        ds.use_image_cache(read_only_dir, RESIZE)


# ---------------------------------------------------------------- resize_backend


def _reference_input(path, resize, crop):
    """The reference's test input of an image file: PIL open, RGB, short side resized with PIL's bilinear
    filter (torchvision's Resize on a PIL image), centre crop, ToTensor, Normalize."""
    from PIL import Image
    from torchvision import transforms as T

    from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD

    with Image.open(path) as image:
        rgb = image.convert("RGB")
    return T.Compose(
        [
            T.Resize(resize, interpolation=T.InterpolationMode.BILINEAR),
            T.CenterCrop(crop),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )(rgb)


def test_pil_backend_cached_samples_equal_decoded_ones_and_the_reference(data, tmp_path):
    root, labels = data
    config = {"image_resize": RESIZE, "image_crop": 48, "resize_backend": "pil"}
    transform = build_transform(config, train=False)
    plain = _dataset(root, labels, transform=transform)
    cached = _dataset(root, labels, transform=transform)
    assert cached.use_image_cache(tmp_path / "cache", RESIZE, resize_backend="pil")
    tensor_backend = _dataset(root, labels, transform=build_transform(dict(config, resize_backend="tensor"), False))
    n_differ = 0
    for i in range(len(plain)):
        img_3HW = plain[i]["img"]
        assert torch.equal(cached[i]["img"], img_3HW), i
        assert torch.equal(img_3HW, _reference_input(root / plain.img_paths[i], RESIZE, 48)), i
        n_differ += not torch.equal(tensor_backend[i]["img"], img_3HW)
    assert n_differ == len(plain)  # the backends differ here, so a cache of the other backend would fail


def test_pil_backend_augmented_cached_samples_equal_decoded_ones_for_a_seed(data, tmp_path):
    from datasets.samplers import SeededSamples

    root, labels = data
    transform = build_transform({"image_resize": RESIZE, "image_crop": 48, "resize_backend": "pil"}, train=True)
    plain = SeededSamples(_dataset(root, labels, transform=transform))
    cached_ds = _dataset(root, labels, transform=transform)
    cached_ds.use_image_cache(tmp_path / "cache", RESIZE, resize_backend="pil")
    cached = SeededSamples(cached_ds)
    for key in [(0, 3), (1, 3), (len(cached_ds) - 1, 11)]:
        assert torch.equal(plain[key]["img"], cached[key]["img"]), key


def test_the_resize_backend_is_part_of_the_key_and_switching_it_rebuilds(data, tmp_path, caplog):
    from datasets.image_cache import cache_key

    root, labels = data
    paths = _dataset(root, labels).img_paths
    keys = {backend: cache_key(labels, root, RESIZE, backend) for backend in ("tensor", "pil")}
    assert keys["tensor"] != keys["pil"]
    assert keys["tensor"]["resize"] == "torchvision-v2-bilinear-antialias"  # caches made before stay valid
    with pytest.raises(UserError, match="resize_backend must be 'tensor' or 'pil', got 'cv2'"):
        cache_key(labels, root, RESIZE, "cv2")
    caches = {}
    for backend in ("tensor", "pil"):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="datasets.image_cache"):
            caches[backend] = open_image_cache(tmp_path / "c", root, labels, paths, RESIZE, resize_backend=backend)
        assert "building" in caplog.text, backend  # the other backend's file is not reused
        for i, rel_path in enumerate(paths):
            expected = resize_short_side(load_image_uint8(root / rel_path), RESIZE, backend)
            assert torch.equal(caches[backend][i], expected), (backend, i)
    assert len(_files(tmp_path / "c")) == 2
    assert caches["tensor"].path != caches["pil"].path
    assert not torch.equal(caches["tensor"][0], caches["pil"][0])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="datasets.image_cache"):
        assert (
            open_image_cache(tmp_path / "c", root, labels, paths, RESIZE, resize_backend="pil").path
            == caches["pil"].path
        )
    assert "building" not in caplog.text


@pytest.mark.parametrize("backend", ["tensor", "pil"])
@pytest.mark.parametrize(
    "height, width, size",
    [(48, 64, 56), (64, 48, 56), (301, 257, 256), (257, 301, 256), (1080, 1920, 256), (49, 50, 40), (50, 49, 40)],
)
def test_both_resizes_leave_an_image_at_its_target_size_unchanged(backend, height, width, size):
    """What makes cached samples equal decoded ones: the transform's resize of a cached image is a no-op."""
    from datasets.transforms import short_side_resize

    img_3HW = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    resized_3hw = resize_short_side(img_3HW, size, backend)
    assert min(resized_3hw.shape[1:]) == size
    assert short_side_resize(backend, size)(resized_3hw) is resized_3hw


def _cached_backends(cache_dir, root, labels):
    """The resize backends that ``cache_dir`` holds a cache of ``labels`` for (at the tiny config's size)."""
    paths = _dataset(root, labels).img_paths
    return [
        backend
        for backend in ("tensor", "pil")
        if open_image_cache(cache_dir, root, labels, paths, RESIZE, build=False, resize_backend=backend) is not None
    ]


@pytest.mark.slow
def test_train_and_test_mode_cache_with_the_configs_resize_backend(data, tmp_path):
    root, labels = data
    scores = _train_then_test_with_and_without_cache(root, labels, tmp_path, resize_backend="pil")
    assert _cached_backends(tmp_path / "train_cache", root, labels) == ["pil"]
    test_csv = root / "abs_7scenes_pose.csv_chess_test.csv"
    assert _cached_backends(tmp_path / "test_cache", root, test_csv) == ["pil"]
    assert (scores[0] == scores[1]).all()


def test_the_cache_builder_draws_no_progress_bar_into_a_redirected_log(scene7, tmp_path, monkeypatch, capsys):
    """A log file is not a terminal: the builder's bar stays out of it (and --quiet turns every bar off)."""
    import util.logs

    monkeypatch.setattr(util.logs, "_progress_bars", True)  # bars allowed, as without --quiet
    assert not sys.stderr.isatty()  # captured, as a redirected log
    d = CameraPoseDataset(scene7, scene7 / "abs_7scenes_pose.csv_chess_train.csv")
    d.use_image_cache(tmp_path / "c", 56)
    err = capsys.readouterr().err
    assert "caching" not in err and "it/s" not in err


def test_a_labels_file_naming_one_image_on_many_rows_stores_it_once(scene7, tmp_path):
    """Every row reads its own image back, but the file holds each distinct image once."""
    from datasets.image_cache import open_image_cache

    rows = (scene7 / "abs_7scenes_pose.csv_chess_test.csv").read_text().splitlines()
    labels = tmp_path / "repeated.csv"
    labels.write_text("\n".join([rows[0]] + [rows[1]] * 40 + rows[2:4]) + "\n")
    ds = CameraPoseDataset(scene7, labels)
    cache = open_image_cache(tmp_path / "c", scene7, labels, ds.img_paths, RESIZE)
    assert len(cache) == 42 and len(cache.shapes) == 3
    single = cache.offsets[1] - cache.offsets[0]
    assert cache.data_len < 4 * single  # 3 stored images, not 42
    assert torch.equal(cache[0], cache[39]) and not torch.equal(cache[0], cache[41])
    assert torch.equal(cache[40], resize_short_side(load_image_uint8(scene7 / ds.img_paths[40]), RESIZE))
