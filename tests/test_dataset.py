"""Label CSV checks, the pose dataset, transforms and the scene-balanced sampler, on tiny files in tmp_path."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from datasets.dataset import CameraPoseDataset, build_scene_map, load_image_uint8
from datasets.labels import LABEL_COLUMNS, format_lines, read_labels
from datasets.samplers import EpochSampler, SceneBalancedSampler, SeededSamples
from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform
from util.errors import UserError

HEADER = ",".join(LABEL_COLUMNS)
LABELS_LOGGER = "datasets.labels"


def row(img_path="s/a.png", scene="chess", t=(1.0, 2.0, 3.0), q=(1.0, 0.0, 0.0, 0.0), split="train", seq="seq-01"):
    return ",".join([scene, split, seq, img_path] + [str(v) for v in (*t, *q)])


def write_csv(tmp_path, lines, header=HEADER, name="labels.csv"):
    path = tmp_path / name
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


def write_image(path, array, **save_kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **save_kwargs)
    return path


def rgb_noise(height=12, width=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


# ---------------------------------------------------------------- labels


def test_format_lines_caps_the_list():
    assert format_lines([5]) == "CSV line 5"
    assert format_lines([2, 3]) == "CSV lines 2, 3"
    assert format_lines(range(2, 17), max_listed=10) == "CSV lines 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 and 5 more"


def test_read_labels_returns_typed_columns_and_unit_quaternions(tmp_path):
    path = write_csv(
        tmp_path,
        [
            row("s/a.png", q=(0.5, 0.5, 0.5, 0.5)),
            row("s/b.png", scene="fire", t=(-1.5, 0.0, 2.25), q=(0.0, 0.0, 0.0, -1.0)),
        ],
    )
    labels = read_labels(path)
    assert list(labels.columns) == LABEL_COLUMNS
    assert labels["img_path"].tolist() == ["s/a.png", "s/b.png"]
    assert labels["scene"].tolist() == ["chess", "fire"]
    np.testing.assert_allclose(labels[["t1", "t2", "t3"]].to_numpy(), [[1, 2, 3], [-1.5, 0, 2.25]])
    np.testing.assert_allclose(labels[["q1", "q2", "q3", "q4"]].to_numpy(), [[0.5] * 4, [0, 0, 0, -1]])


def test_missing_labels_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="labels file not found: .*nope.csv"):
        read_labels(tmp_path / "nope.csv")


def test_empty_file_and_header_only_are_user_errors(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(UserError, match="empty"):
        read_labels(empty)
    with pytest.raises(UserError, match="no data rows"):
        read_labels(write_csv(tmp_path, []))


def test_missing_columns_are_named(tmp_path):
    header = "scene,split,seq,img_path,t1,t2,q1,q2,q3"
    path = write_csv(tmp_path, ["chess,train,seq-01,a.png,1,2,1,0,0"], header=header)
    with pytest.raises(UserError, match=r"missing column\(s\) t3, q4;"):
        read_labels(path)


def test_non_finite_poses_are_reported_by_csv_line(tmp_path):
    lines = [
        row("a.png"),
        row("b.png", t=("nan", 0, 0)),
        row("c.png"),
        row("d.png", q=(1, 0, "inf", 0)),
        row("e.png", t=("abc", 0, 0)),
        "chess,train,seq-01,f.png,1,2,3,1,0,0,",
    ]
    # header = line 1, so the bad rows are lines 3, 5, 6 and 7
    with pytest.raises(UserError, match=r"non-finite t1\.\.q4 values at CSV lines 3, 5, 6, 7$"):
        read_labels(write_csv(tmp_path, lines))


def test_many_bad_rows_are_capped_and_blank_lines_keep_numbering(tmp_path):
    lines = [row("ok.png"), ""] + [row(f"{i}.png", t=("nan", 0, 0)) for i in range(15)]
    with pytest.raises(UserError, match=r"CSV lines 4, 5, 6, 7, 8, 9, 10, 11, 12, 13 and 5 more$"):
        read_labels(write_csv(tmp_path, lines))


def test_blank_lines_are_skipped(tmp_path):
    labels = read_labels(write_csv(tmp_path, [row("a.png"), "", row("b.png"), "", ""]))
    assert labels["img_path"].tolist() == ["a.png", "b.png"]
    assert labels.index.tolist() == [0, 1]


def test_empty_img_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="empty img_path at CSV line 3"):
        read_labels(write_csv(tmp_path, [row("a.png"), row("")]))


def test_zero_quaternion_is_a_user_error(tmp_path):
    lines = [row("a.png"), row("b.png", q=(0, 0, 0, 0)), row("c.png", q=(0.0, 0.0, 0.0, 1e-9))]
    with pytest.raises(UserError, match="zero quaternion .* at CSV lines 3, 4"):
        read_labels(write_csv(tmp_path, lines))


def test_non_unit_quaternions_are_renormalised_with_one_warning(tmp_path, caplog):
    lines = [
        row("a.png", q=(1.0005, 0, 0, 0)),  # within tolerance, silently normalised
        row("b.png", q=(2.01, 0, 0, 0)),
        row("c.png", q=(0, 0.6, 0, 0)),
        row("d.png", q=(0, 0, 1, 1)),
    ]
    with caplog.at_level(logging.WARNING, logger=LABELS_LOGGER):
        labels = read_labels(write_csv(tmp_path, lines))
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "3 quaternion(s) with norm off 1" in message
    assert "0.6..2.01" in message and "CSV lines 3, 4, 5" in message and "renormalised" in message
    q_N4 = labels[["q1", "q2", "q3", "q4"]].to_numpy()
    np.testing.assert_allclose(np.linalg.norm(q_N4, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(q_N4[3], [0, 0, 2**-0.5, 2**-0.5])


def test_implausible_translation_gives_one_warning_and_is_kept(tmp_path, caplog):
    lines = [
        row("a.png"),
        row("b.png", t=(3.0e9, 1.0, 2.0)),
        row("c.png", t=(0, -2e4, 0)),
        row("d.png", t=(9999, 0, 0)),
    ]
    with caplog.at_level(logging.WARNING, logger=LABELS_LOGGER):
        labels = read_labels(write_csv(tmp_path, lines))
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "2 row(s) with a translation component above 10000 m" in message
    assert "largest 3e+09 m" in message and "CSV lines 3, 4;" in message
    assert labels["t1"][1] == 3.0e9


def test_clean_labels_log_no_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger=LABELS_LOGGER):
        read_labels(write_csv(tmp_path, [row("a.png"), row("b.png", q=(0.6, 0.8, 0, 0))]))
    assert caplog.records == []


def test_missing_images_name_count_paths_and_the_root(tmp_path):
    root = tmp_path / "data"
    write_image(root / "s" / "a.png", rgb_noise())
    lines = [row("s/a.png")] + [row(f"s/missing{i}.png") for i in range(5)]
    path = write_csv(tmp_path, lines)
    with pytest.raises(UserError) as info:
        read_labels(path, dataset_root=root)
    message = str(info.value)
    assert "5 of 6 images not found" in message
    assert str(root / "s" / "missing0.png") in message and str(root / "s" / "missing2.png") in message
    assert "missing3.png" not in message and "and 2 more" in message
    assert "dataset root" in message
    assert len(read_labels(path, dataset_root=root, check_images=False)) == 6
    assert len(read_labels(path)) == 6  # no root: nothing to check


# ---------------------------------------------------------------- dataset


@pytest.fixture
def tiny_dataset(tmp_path):
    """Three scenes; PNG, JPEG, grayscale and RGBA images; one row per image."""
    root = tmp_path / "data"
    rgb = rgb_noise(12, 16)
    write_image(root / "stairs" / "rgb.png", rgb)
    write_image(root / "chess" / "rgb.jpg", rgb, quality=95)
    write_image(root / "chess" / "gray.png", rgb[..., 0])
    write_image(root / "fire" / "rgba.png", np.dstack([rgb, np.full((12, 16, 1), 7, np.uint8)]))
    lines = [
        row("stairs/rgb.png", scene="stairs", t=(1, 2, 3), q=(0, 2, 0, 0)),
        row("chess/rgb.jpg", scene="chess"),
        row("chess/gray.png", scene="chess"),
        row("fire/rgba.png", scene="fire"),
    ]
    return root, write_csv(tmp_path, lines), rgb


def test_sample_dict_shapes_dtypes_and_values(tiny_dataset):
    root, labels_file, rgb = tiny_dataset
    dataset = CameraPoseDataset(root, labels_file)
    assert len(dataset) == 4
    sample = dataset[0]
    assert set(sample) == {"img", "pose", "scene", "path"}
    assert sample["img"].shape == (3, 12, 16) and sample["img"].dtype == torch.float32
    torch.testing.assert_close(sample["img"], torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)
    assert sample["pose"].dtype == torch.float32 and sample["pose"].shape == (7,)
    torch.testing.assert_close(sample["pose"], torch.tensor([1.0, 2, 3, 0, 1, 0, 0]))
    assert sample["scene"].dtype == torch.long and sample["scene"].shape == () and sample["scene"].item() == 2
    assert sample["path"] == "stairs/rgb.png"
    assert dataset.poses_N7.dtype == np.float32 and dataset.scene_ids.dtype == np.int64
    assert dataset.img_paths == ["stairs/rgb.png", "chess/rgb.jpg", "chess/gray.png", "fire/rgba.png"]
    assert dataset.scene_names == ["stairs", "chess", "chess", "fire"]


def test_grayscale_and_rgba_images_load_as_rgb(tiny_dataset):
    root, labels_file, rgb = tiny_dataset
    dataset = CameraPoseDataset(root, labels_file)
    rgb_3HW = torch.from_numpy(rgb).permute(2, 0, 1)
    jpeg_3HW = (dataset[1]["img"] * 255).round().to(torch.uint8)
    with Image.open(root / "chess" / "rgb.jpg") as image:  # lossy: compare with PIL's decoding
        assert torch.equal(jpeg_3HW, torch.from_numpy(np.array(image)).permute(2, 0, 1))
    gray_3HW = (dataset[2]["img"] * 255).round().to(torch.uint8)
    assert gray_3HW.shape == (3, 12, 16)
    assert torch.equal(gray_3HW[0], rgb_3HW[0]) and torch.equal(gray_3HW[1], rgb_3HW[0])
    assert torch.equal(gray_3HW[2], rgb_3HW[0])
    rgba_3HW = (dataset[3]["img"] * 255).round().to(torch.uint8)
    assert torch.equal(rgba_3HW, rgb_3HW)  # alpha dropped


def test_other_formats_fall_back_to_pil_and_16_bit_png_becomes_uint8(tmp_path):
    rgb = rgb_noise(6, 5)
    img_3HW = load_image_uint8(write_image(tmp_path / "a.bmp", rgb))
    assert torch.equal(img_3HW, torch.from_numpy(rgb).permute(2, 0, 1))
    gray16 = np.arange(30, dtype=np.uint16).reshape(6, 5) * 2000
    img16_3HW = load_image_uint8(write_image(tmp_path / "g16.png", gray16))
    assert img16_3HW.dtype == torch.uint8
    assert torch.equal(img16_3HW[1], torch.from_numpy((gray16 >> 8).astype(np.uint8)))


def test_scene_map_is_sorted_or_taken_as_given(tiny_dataset):
    root, labels_file, _ = tiny_dataset
    assert build_scene_map(["stairs", "chess", "fire", "chess"]) == {"chess": 0, "fire": 1, "stairs": 2}
    dataset = CameraPoseDataset(root, labels_file)
    assert dataset.scene_map == {"chess": 0, "fire": 1, "stairs": 2} and dataset.num_scenes == 3
    assert dataset.scene_ids.tolist() == [2, 0, 0, 1]
    given = {"stairs": 0, "heads": 1, "fire": 2, "chess": 3}
    dataset = CameraPoseDataset(root, labels_file, scene_map=given)
    assert dataset.scene_map == given and dataset.num_scenes == 4
    assert dataset.scene_ids.tolist() == [0, 3, 3, 2]
    assert dataset[3]["scene"].item() == 2


def test_scene_missing_from_given_map_is_named(tiny_dataset):
    root, labels_file, _ = tiny_dataset
    with pytest.raises(UserError, match="scene.* fire, stairs not in the scene map, which has chess, heads"):
        CameraPoseDataset(root, labels_file, scene_map={"chess": 0, "heads": 1})


def test_undecodable_image_names_its_path(tiny_dataset):
    root, labels_file, _ = tiny_dataset
    dataset = CameraPoseDataset(root, labels_file)
    (root / "fire" / "rgba.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match="cannot decode image .*fire/rgba.png"):
        dataset[3]
    (root / "chess" / "rgb.jpg").write_bytes((root / "chess" / "rgb.jpg").read_bytes()[:200])
    with pytest.raises(UserError, match="cannot decode image .*chess/rgb.jpg"):
        dataset[1]
    (root / "stairs" / "rgb.png").unlink()
    with pytest.raises(UserError, match="image not found: .*stairs/rgb.png"):
        dataset[0]


def test_dataset_fails_early_on_a_wrong_root(tiny_dataset, tmp_path):
    _, labels_file, _ = tiny_dataset
    with pytest.raises(UserError, match="dataset root .*elsewhere is not a directory.*check the dataset root"):
        CameraPoseDataset(tmp_path / "elsewhere", labels_file)


def test_dataloader_batches_samples_with_a_transform(tiny_dataset):
    root, labels_file, _ = tiny_dataset
    transform = build_transform({"image_resize": 10, "image_crop": 8}, train=True)
    loader = DataLoader(CameraPoseDataset(root, labels_file, transform=transform), batch_size=3)
    batch = next(iter(loader))
    assert batch["img"].shape == (3, 3, 8, 8) and batch["img"].dtype == torch.float32
    assert batch["pose"].shape == (3, 7) and batch["scene"].tolist() == [2, 0, 0]
    assert batch["path"] == ["stairs/rgb.png", "chess/rgb.jpg", "chess/gray.png"]


# ---------------------------------------------------------------- transforms


def image_uint8(height=30, width=40, seed=0):
    return torch.from_numpy(rgb_noise(height, width, seed)).permute(2, 0, 1).contiguous()


@pytest.mark.parametrize("train", [True, False])
def test_transform_output_size_and_dtype(train):
    transform = build_transform({"image_resize": 20, "image_crop": 16}, train=train)
    for height, width in [(30, 40), (40, 30), (16, 16)]:
        out = transform(image_uint8(height, width))
        assert out.shape == (3, 16, 16) and out.dtype == torch.float32


def test_transform_defaults_follow_the_recipe():
    out = build_transform({}, train=False)(image_uint8(240, 320))
    assert out.shape == (3, 224, 224)


def test_test_transform_normalises_with_imagenet_statistics():
    gray_3HW = torch.full((3, 30, 40), 128, dtype=torch.uint8)
    out = build_transform({"image_resize": 20, "image_crop": 16}, train=False)(gray_3HW)
    expected_3 = (128 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(out, expected_3[:, None, None].expand(3, 16, 16))


def test_train_transform_is_random_but_reproducible_under_manual_seed():
    transform = build_transform({"image_resize": 20, "image_crop": 16}, train=True)
    img = image_uint8()
    torch.manual_seed(3)
    first = transform(img)
    torch.manual_seed(3)
    again = transform(img)
    torch.manual_seed(4)
    other = transform(img)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_no_augment_trains_with_the_test_transform():
    config = {"image_resize": 20, "image_crop": 16, "no_augment": True}
    img = image_uint8()
    test_out = build_transform(config, train=False)(img)
    torch.manual_seed(0)
    train_a = build_transform(config, train=True)(img)
    torch.manual_seed(1)
    train_b = build_transform(config, train=True)(img)
    assert torch.equal(train_a, test_out) and torch.equal(train_b, test_out)
    augmented = build_transform({**config, "no_augment": False}, train=True)(img)
    assert not torch.allclose(augmented, test_out)


def test_crop_larger_than_resize_is_a_user_error():
    with pytest.raises(UserError, match="image_crop"):
        build_transform({"image_resize": 200, "image_crop": 224}, train=True)


# ---------------------------------------------------------------- sampler


SCENE_IDS = np.array([0] * 10 + [1] * 3 + [2] * 1 + [5] * 6)


@pytest.mark.parametrize("num_samples", [None, 30, 31, 7])
def test_sampler_balances_scenes(num_samples):
    sampler = SceneBalancedSampler(SCENE_IDS, num_samples=num_samples, generator=torch.Generator().manual_seed(0))
    expected_len = len(SCENE_IDS) if num_samples is None else num_samples
    indices = list(sampler)
    assert len(sampler) == expected_len and len(indices) == expected_len
    assert all(0 <= i < len(SCENE_IDS) for i in indices)
    counts = np.bincount(SCENE_IDS[indices], minlength=6)[[0, 1, 2, 5]]
    assert counts.max() - counts.min() <= 1 and counts.sum() == expected_len


def test_sampler_draws_frames_without_replacement_within_a_scene():
    sampler = SceneBalancedSampler(SCENE_IDS, num_samples=24, generator=torch.Generator().manual_seed(1))
    indices = np.array(list(sampler))
    scene0 = indices[SCENE_IDS[indices] == 0]
    assert len(scene0) == 6 and len(set(scene0.tolist())) == 6  # 6 of 10 frames, all distinct
    scene1 = indices[SCENE_IDS[indices] == 1]
    assert sorted(scene1.tolist()) == [10, 10, 11, 11, 12, 12]  # 3 frames, each twice
    assert indices[SCENE_IDS[indices] == 2].tolist() == [13] * 6


def test_sampler_is_deterministic_given_a_generator_or_the_global_seed():
    def epochs(sampler):
        return [list(sampler), list(sampler)]

    a = epochs(SceneBalancedSampler(SCENE_IDS, generator=torch.Generator().manual_seed(7)))
    b = epochs(SceneBalancedSampler(SCENE_IDS, generator=torch.Generator().manual_seed(7)))
    assert a == b and a[0] != a[1]  # same sequence of epochs; epochs differ
    torch.manual_seed(11)
    c = epochs(SceneBalancedSampler(torch.as_tensor(SCENE_IDS)))
    torch.manual_seed(11)
    d = epochs(SceneBalancedSampler(SCENE_IDS.tolist()))
    assert c == d and c[0] != c[1]


def _shares(sampler_args: dict, world: int, epoch: int) -> list[list[tuple[int, int]]]:
    shares = []
    for rank in range(world):
        s = EpochSampler(**sampler_args, rank=rank, world_size=world)
        s.set_epoch(epoch)
        shares.append(list(s))
    return shares


@pytest.mark.parametrize("n, batch, world", [(12, 2, 2), (13, 2, 2), (10, 3, 3), (7, 4, 1)])
def test_epoch_sampler_splits_each_global_batch_between_processes(n, batch, world):
    args = dict(scene_ids=np.zeros(n, dtype=int), seed=3, batch_size=batch)
    (single,) = _shares({**args, "batch_size": batch * world}, 1, epoch=2)
    shares = _shares(args, world, epoch=2)
    assert sorted(i for i, _ in single) == list(range(n))  # a permutation, each with its own seed
    assert len({len(s) for s in shares}) == 1  # equal shares, so no process waits for a missing batch
    padded = sum(len(s) for s in shares)
    assert padded == -(-n // world) * world
    # Rank r's k-th batch is part r of the k-th global batch; the first n positions are the single order.
    rebuilt, pos = [], [0] * world
    for start in range(0, padded, batch * world):
        part = min(batch * world, padded - start) // world
        for r in range(world):
            rebuilt += shares[r][pos[r] : pos[r] + part]
            pos[r] += part
    assert rebuilt[:n] == single
    assert rebuilt[n:] == single[: padded - n]  # padding wraps around


def test_epoch_sampler_changes_with_the_epoch_and_keeps_scene_balance():
    scene_ids = np.array([0] * 10 + [1] * 2)
    args = dict(scene_ids=scene_ids, seed=0, batch_size=4, equalize_scenes=True)
    a, b = _shares(args, 1, 1)[0], _shares(args, 1, 2)[0]
    assert a != b and a == _shares(args, 1, 1)[0]
    # The reference's epoch: the largest scene's 10 frames x 2 scenes, half of the 20 draws from the small one.
    assert len(a) == 20 and sum(scene_ids[i] for i, _ in a) == 10


def test_seeded_samples_repeat_the_augmentation_and_leave_the_global_rng_alone(scene7):
    ds = SeededSamples(
        CameraPoseDataset(
            scene7,
            scene7 / "abs_7scenes_pose.csv_chess_train.csv",
            transform=build_transform({"image_resize": 56, "image_crop": 48}, True),
        )
    )
    torch.manual_seed(0)
    state = torch.get_rng_state()
    first = ds[(1, 123)]["img"]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(ds[(1, 123)]["img"], first)
    assert not torch.equal(ds[(1, 124)]["img"], first)


def test_a_directory_is_not_reported_as_missing(tmp_path):
    root = tmp_path / "data"
    write_image(root / "s" / "a.png", rgb_noise())
    (root / "s" / "b.png").mkdir()
    with pytest.raises(UserError, match=r"1 img_path value\(s\) name a directory, not an image file: .*b\.png"):
        read_labels(write_csv(tmp_path, [row("s/a.png"), row("s/b.png")]), dataset_root=root)
    with pytest.raises(UserError, match=r"image .*b\.png is a directory"):
        load_image_uint8(root / "s" / "b.png")
    with pytest.raises(UserError, match=r"labels file .*data is a directory, not a file"):
        read_labels(root)


@pytest.mark.parametrize(
    "height, width, resize, crop",
    [(480, 640, 256, 224), (1080, 1920, 256, 224), (48, 64, 40, 32), (301, 257, 256, 224)],
)
def test_pil_resize_backend_gives_the_reference_input_bit_for_bit(height, width, resize, crop):
    """The reference's test transform on a PIL image (ToPILImage, Resize, CenterCrop, ToTensor, Normalize)."""
    from torchvision import transforms as T

    rgb = rgb_noise(height, width, seed=height)
    reference = T.Compose(
        [T.ToPILImage(), T.Resize(resize), T.CenterCrop(crop), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )(rgb)
    img_3HW = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
    config = dict(image_resize=resize, image_crop=crop)
    assert torch.equal(build_transform(dict(config, resize_backend="pil"), train=False)(img_3HW), reference)
    tensor = build_transform(config, train=False)(img_3HW)  # the default differs by about a grey level
    assert tensor.shape == reference.shape and (tensor - reference).abs().max() < 0.05


def test_repeated_rows_are_counted_with_their_lines(tmp_path, caplog):
    lines = [row("a.png"), row("b.png"), row("a.png"), row("a.png"), row("a.png", t=(9, 9, 9))]
    with caplog.at_level(logging.WARNING, logger=LABELS_LOGGER):
        labels = read_labels(write_csv(tmp_path, lines))
    assert [r.getMessage().split(": ", 1)[1] for r in caplog.records] == [
        "2 row(s) repeat an earlier row exactly (at CSV lines 4, 5); each copy counts as a frame"
    ]
    assert len(labels) == 5


@pytest.mark.parametrize(
    "img_path, outside",
    [
        ("/data/chess/a.png", True),
        ("../other/a.png", True),
        ("chess/../../a.png", True),
        ("C:\\\\x\\\\a.png", True),
        ("chess/../fire/a.png", False),
        ("./chess/a.png", False),
        ("chess/seq-01/a..png", False),
    ],
)
def test_img_paths_outside_the_dataset_root_are_flagged(img_path, outside, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger=LABELS_LOGGER):
        read_labels(write_csv(tmp_path, [row("chess/b.png"), row(img_path)]))
    messages = [r.getMessage() for r in caplog.records]
    if outside:
        assert len(messages) == 1 and "1 img_path value(s) are absolute or leave the dataset root" in messages[0]
        assert "CSV line 3" in messages[0]
    else:
        assert messages == []


def test_an_image_above_the_pixel_limit_is_refused_from_its_header(tmp_path, monkeypatch):
    """A decompression bomb is refused before it is decoded, with one line naming the size and the limit."""
    from PIL import Image

    from datasets.dataset import load_image_uint8

    path = tmp_path / "big.png"
    Image.new("RGB", (300, 200)).save(path)
    assert load_image_uint8(path).shape == (3, 200, 300)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300 * 200 - 1)
    with pytest.raises(UserError, match=r"big\.png is 300 x 200 pixels, more than the 59,999 an image may have"):
        load_image_uint8(path)
