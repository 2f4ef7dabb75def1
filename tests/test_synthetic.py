"""Tests of the synthetic dataset generator: images, poses, domain shift, determinism and both layouts."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets import label_io, synthetic
from datasets.synthetic import Appearance, Camera, Picture, Surface, World, generate, render
from util.errors import UserError
from util.pose import quat_to_rotmat, rotmat_to_quat

SIZE = (32, 24)
FRAMES = 4


def _files(root: Path) -> dict:
    """Relative path -> bytes of every file under ``root``."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _read_csv(path: Path) -> list:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _image(root: Path, img_path: str) -> np.ndarray:
    return np.asarray(Image.open(root / img_path), dtype=np.float64)


@pytest.fixture(scope="module")
def seven(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seven")
    generate(out, scenes=2, layout="7scenes", frames_per_seq=FRAMES, size=SIZE, test_shift=0.8, seed=3)
    return out


@pytest.fixture(scope="module")
def seven_no_shift(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seven_no_shift")
    generate(out, scenes=2, layout="7scenes", frames_per_seq=FRAMES, size=SIZE, test_shift=0.0, seed=3)
    return out


@pytest.fixture(scope="module")
def cambridge(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cambridge")
    generate(
        out,
        layout="cambridge",
        names=["ShopFacade", "KingsCollege"],
        frames_per_seq=FRAMES,
        size=SIZE,
        test_shift=0.5,
        seed=1,
    )
    return out


def test_seven_scenes_layout_and_csvs(seven):
    for scene in ("chess", "fire"):
        assert (seven / scene / "TrainSplit.txt").read_text() == "sequence1\nsequence2\nsequence3\n"
        assert (seven / scene / "TestSplit.txt").read_text() == "sequence4\n"
        for seq in range(1, 5):
            for frame in range(FRAMES):
                stem = seven / scene / f"seq-{seq:02d}" / f"frame-{frame:06d}"
                assert Path(f"{stem}.color.png").is_file() and Path(f"{stem}.pose.txt").is_file()
        for split, n in (("train", 3 * FRAMES), ("test", FRAMES)):
            rows = _read_csv(seven / f"abs_7scenes_pose.csv_{scene}_{split}.csv")
            assert ",".join(rows[0]) == "scene,split,seq,img_path,t1,t2,t3,q1,q2,q3,q4"
            assert len(rows) == 1 + n
            assert all(r[0] == scene and r[1] == split and (seven / r[3]).is_file() for r in rows[1:])
    all_rows = _read_csv(seven / "7scenes_all_scenes.csv")
    assert len(all_rows) == 1 + 2 * 3 * FRAMES and {r[1] for r in all_rows[1:]} == {"train"}
    assert all_rows[1][3] == "chess/seq-01/frame-000000.color.png"
    assert Image.open(seven / all_rows[1][3]).size == SIZE


def test_cambridge_layout_and_csvs(cambridge):
    scene_dir = cambridge / "ShopFacade"
    lines = (scene_dir / "dataset_train.txt").read_text().splitlines()
    assert lines[:3] == ["Visual Landmark Dataset V1", "ImageFile, Camera Position [X Y Z W P Q R]", ""]
    assert len(lines) == 3 + 3 * FRAMES and lines[3].startswith("seq1/frame00001.png ")
    assert (scene_dir / "seq4" / f"frame{FRAMES:05d}.png").is_file()
    names = {p.name for p in cambridge.glob("*.csv")}
    assert names == {
        f"abs_cambridge_pose_sorted.csv_{s}_{split}.csv"
        for s in ("ShopFacade", "KingsCollege")
        for split in ("train", "test")
    } | {"cambridge_all_scenes.csv"}
    rows = _read_csv(cambridge / "abs_cambridge_pose_sorted.csv_ShopFacade_test.csv")
    assert ",".join(rows[0]) == label_io.LABEL_HEADER
    assert rows[1][:4] == ["ShopFacade", "test", "seq4", "ShopFacade/seq4/frame00001.png"]


def test_cambridge_multi_scene_files_only_with_their_scenes(tmp_path):
    generate(tmp_path, layout="cambridge", scenes=5, frames_per_seq=2, size=(8, 8))
    four = _read_csv(tmp_path / "cambridge_four_scenes.csv")
    five = _read_csv(tmp_path / "cambridge_five_scenes.csv")
    assert {r[0] for r in four[1:]} == set(label_io.CAMBRIDGE_FOUR)
    assert {r[0] for r in five[1:]} == set(label_io.CAMBRIDGE_FIVE)
    assert len(_read_csv(tmp_path / "cambridge_all_scenes.csv")) == len(five)


def test_images_are_textured_and_pose_dependent(seven):
    rows = _read_csv(seven / "abs_7scenes_pose.csv_chess_train.csv")[1:]
    images = [_image(seven, r[3]) for r in rows]
    assert min(img.std() for img in images) > 15
    for a, b in zip(images, images[1:]):
        assert np.abs(a - b).mean() > 5


def test_scenes_look_different(seven_no_shift):
    """A nearest-centroid classifier on colour histograms tells the two scenes apart on the test frames."""
    root = seven_no_shift

    def histogram(img_path: str) -> np.ndarray:
        img = _image(root, img_path)
        return np.concatenate([np.histogram(img[..., c], bins=8, range=(0, 256))[0] for c in range(3)])

    centroids = [
        np.mean([histogram(r[3]) for r in _read_csv(root / f"abs_7scenes_pose.csv_{s}_train.csv")[1:]], axis=0)
        for s in ("chess", "fire")
    ]
    for label, scene in enumerate(("chess", "fire")):
        for row in _read_csv(root / f"abs_7scenes_pose.csv_{scene}_test.csv")[1:]:
            distances = [np.abs(histogram(row[3]) - c).sum() for c in centroids]
            assert int(np.argmin(distances)) == label


def test_test_shift_changes_only_test_appearance(seven, seven_no_shift):
    shifted, plain = _files(seven), _files(seven_no_shift)
    assert shifted.keys() == plain.keys()
    for name in shifted:
        if "/seq-04/" in name and name.endswith(".png"):
            assert shifted[name] != plain[name]
        else:  # train images, poses and labels do not depend on the shift
            assert shifted[name] == plain[name] or name == "synthetic.json", name
    test_rows = _read_csv(seven / "abs_7scenes_pose.csv_chess_test.csv")[1:]
    mean_shifted = np.mean([_image(seven, r[3]).mean(axis=(0, 1)) for r in test_rows], axis=0)
    mean_plain = np.mean([_image(seven_no_shift, r[3]).mean(axis=(0, 1)) for r in test_rows], axis=0)
    assert mean_shifted.mean() < 0.9 * mean_plain.mean()  # darker
    ratio = lambda m: m[0] / m[2]  # noqa: E731  red / blue
    assert ratio(mean_shifted) > 1.15 * ratio(mean_plain)  # warm colour cast


def test_zero_shift_renders_test_frames_like_training_frames():
    camera = Camera.for_size(*SIZE)
    world = synthetic.build_world("7scenes", 0, 0, texels_per_m=40.0)
    pose = synthetic.trajectory(world, 0, 4, 3, seed=0)[1]
    as_train = synthetic.frame_appearance(0, 0, 4, 1, test=False, test_shift=0.7)
    as_test = synthetic.frame_appearance(0, 0, 4, 1, test=True, test_shift=0.0)
    assert as_train == as_test
    np.testing.assert_array_equal(render(world, camera, pose, as_train), render(world, camera, pose, as_test))


def test_generation_is_deterministic(tmp_path, seven):
    generate(tmp_path / "again", scenes=2, layout="7scenes", frames_per_seq=FRAMES, size=SIZE, test_shift=0.8, seed=3)
    assert _files(tmp_path / "again") == _files(seven)
    generate(tmp_path / "other", scenes=1, layout="7scenes", frames_per_seq=FRAMES, size=SIZE, test_shift=0.8, seed=4)
    assert (tmp_path / "other/chess/seq-01/frame-000000.color.png").read_bytes() != (
        seven / "chess/seq-01/frame-000000.color.png"
    ).read_bytes()


def test_rerun_replaces_scene_folders(tmp_path):
    generate(tmp_path, scenes=1, frames_per_seq=5, size=(8, 8))
    generate(tmp_path, scenes=1, frames_per_seq=3, size=(8, 8))
    assert len(list((tmp_path / "chess" / "seq-01").glob("*.pose.txt"))) == 3
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_pose_files_hold_rotations_matching_the_csv(seven):
    for row in _read_csv(seven / "abs_7scenes_pose.csv_fire_train.csv")[1:]:
        pose_txt = (seven / row[3].replace(".color.png", ".pose.txt")).read_text()
        T = np.array([[float(v) for v in line.split()] for line in pose_txt.splitlines()])
        R = T[:3, :3]
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-8)
        assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-8)
        np.testing.assert_array_equal(T[3], [0, 0, 0, 1])
        q = np.array([float(v) for v in row[7:]])
        assert q[0] >= 0
        np.testing.assert_allclose(quat_to_rotmat(q), R, atol=1e-7)
        np.testing.assert_allclose([float(v) for v in row[4:7]], T[:3, 3], rtol=1e-8, atol=1e-8)


def test_cambridge_quaternion_is_world_to_camera(cambridge):
    """The W P Q R of the labels is the inverse of the rotation the camera was rendered with."""
    world = synthetic.build_world("cambridge", 0, 1, texels_per_m=10.0)
    poses = synthetic.trajectory(world, 0, 1, FRAMES, seed=1)
    rows = _read_csv(cambridge / "abs_cambridge_pose_sorted.csv_ShopFacade_train.csv")[1:]
    for row, cam_to_world in zip(rows, poses):  # seq1 frames come first
        q = np.array([float(v) for v in row[7:]])
        np.testing.assert_allclose(quat_to_rotmat(q), cam_to_world[:3, :3].T, atol=1e-7)
        np.testing.assert_allclose([float(v) for v in row[4:7]], cam_to_world[:3, 3], rtol=1e-8)


def _flat(rgb) -> Surface:
    return Surface(np.full((2, 2, 3), rgb, dtype=np.float32), 1.0)


def test_camera_convention_known_answer():
    """A picture projected with the pinhole model (x right, y down, z forward) lands where it is rendered."""
    picture = np.zeros((2, 2, 3), dtype=np.float32)
    picture[:, 0] = (1, 0, 0)  # left half red, right half blue (as seen from inside the room)
    picture[:, 1] = (0, 0, 1)
    world = World(
        lo_3=np.array([-5.0, -5.0, 0.0]),
        hi_3=np.array([5.0, 5.0, 3.0]),
        faces=[_flat(0.5)] * 6,
        boxes_lo_M3=np.zeros((0, 3)),
        boxes_hi_M3=np.zeros((0, 3)),
        box_surfaces=[],
        pictures=[Picture(3, -1.0, 1.0, 1.0, 2.0, picture, (0.5, 0.5, 0.5))],
        light_3=np.array([0.0, 0.0, 2.9]),
        light_shift_3=np.zeros(3),
    )
    camera = Camera.for_size(64, 48)
    flat = Appearance(noise_std=0.0)
    for yaw_deg, pitch_deg, roll_deg in ((0, 0, 0), (12, 5, 0), (-10, -4, 8)):
        cam_to_world = np.eye(4)
        cam_to_world[:3, :3] = synthetic.look_rotation(*np.deg2rad([[yaw_deg], [pitch_deg], [roll_deg]]))[0]
        cam_to_world[:3, 3] = (0.3, -2.0, 1.4)
        img = render(world, camera, cam_to_world, flat, supersampling=1).astype(float)
        K = np.array([[camera.fx, 0, camera.cx], [0, camera.fy, camera.cy], [0, 0, 1]])
        for point, colour in (((-0.5, 5.0, 1.5), 0), ((0.5, 5.0, 1.5), 2)):
            p_cam = cam_to_world[:3, :3].T @ (np.array(point) - cam_to_world[:3, 3])
            u, v, _ = K @ (p_cam / p_cam[2])
            pixel = img[int(v), int(u)]
            assert pixel[colour] > 100 and pixel[2 - colour] < 30, (yaw_deg, point, pixel)
    # Zero yaw, pitch and roll: looking along world +y (camera z), image right = world +x, image down = -z.
    assert np.allclose(
        synthetic.look_rotation(np.zeros(1), np.zeros(1), np.zeros(1))[0], [[1, 0, 0], [0, 0, 1], [0, -1, 0]]
    )


def test_default_orientations_stay_away_from_the_quaternion_sign_flip():
    world = synthetic.build_world("7scenes", 0, 0, texels_per_m=10.0)
    for seq in range(1, 5):
        q = rotmat_to_quat(synthetic.trajectory(world, 0, seq, 200, seed=0)[:, :3, :3])
        assert q[:, 0].min() > 0.2


def test_cli_and_bad_arguments(tmp_path, capsys):
    summary = synthetic.main(
        [
            str(tmp_path),
            "--scenes",
            "1",
            "--frames-per-seq",
            "2",
            "--size",
            "8x8",
            "--names",
            "kitchen",
            "--train-seqs",
            "2",
        ]
    )
    assert summary["frames"] == {"kitchen": {"train": 4, "test": 2}}
    assert (tmp_path / "kitchen/TestSplit.txt").read_text() == "sequence3\n"
    assert "kitchen: 4 train / 2 test frames" in capsys.readouterr().out
    for kwargs in (
        {"scenes": 8},
        {"test_shift": 1.5},
        {"layout": "tum"},
        {"names": ["a/b"]},
        {"names": ["x", "x"]},
        {"frames_per_seq": 1},
        {"size": (4, 4)},
    ):
        with pytest.raises(UserError):
            generate(tmp_path / "bad", **{"frames_per_seq": 2, "size": (8, 8), **kwargs})


# ---- shift levels -------------------------------------------------------------------------------------------

LEVELS = (0.0, 0.5, 1.0)


@pytest.fixture(scope="module")
def shifted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shifted")
    generate(
        out, scenes=1, layout="7scenes", frames_per_seq=FRAMES, size=SIZE, test_shift=0.5, seed=3, test_shifts=LEVELS
    )
    return out


def test_shift_levels_share_poses_and_differ_in_appearance(shifted):
    base = _read_csv(shifted / "abs_7scenes_pose.csv_chess_test.csv")
    found = synthetic.find_shift_csvs(shifted / "abs_7scenes_pose.csv_chess_test.csv")
    assert [level for level, _ in found] == list(LEVELS)
    assert [p.name for _, p in found] == [f"abs_7scenes_pose.csv_chess_test_shift{v:g}.csv" for v in LEVELS]
    images = {}
    for level, path in found:
        rows = _read_csv(path)
        assert rows[0] == base[0] and len(rows) == len(base)
        assert [r[4:] for r in rows[1:]] == [r[4:] for r in base[1:]]  # identical poses
        assert all(r[3].startswith(f"chess/test_shift{level:g}/seq-04/") for r in rows[1:])
        images[level] = np.stack([_image(shifted, r[3]) for r in rows[1:]])
    # The level equal to --test-shift renders the raw test sequence byte for byte.
    for r_base, r_half in zip(base[1:], _read_csv(found[1][1])[1:]):
        assert (shifted / r_base[3]).read_bytes() == (shifted / r_half[3]).read_bytes()
    # Stronger shift, further from the unshifted look (and darker).
    d_half = np.abs(images[0.5] - images[0.0]).mean()
    d_full = np.abs(images[1.0] - images[0.0]).mean()
    assert 0 < d_half < d_full
    assert images[1.0].mean() < images[0.5].mean() < images[0.0].mean()
    # The raw layout is untouched: the split file still names only the real test sequence.
    assert (shifted / "chess" / "TestSplit.txt").read_text() == "sequence4\n"


def test_one_shift_level_is_test_shift(tmp_path):
    generate(tmp_path / "a", scenes=1, frames_per_seq=2, size=SIZE, test_shift=0.8, seed=3)
    generate(tmp_path / "b", scenes=1, frames_per_seq=2, size=SIZE, seed=3, test_shifts=[0.8])
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


def test_shift_levels_cli_and_bad_levels(tmp_path, capsys):
    synthetic.main(
        [
            str(tmp_path / "c"),
            "--scenes",
            "1",
            "--frames-per-seq",
            "2",
            "--size",
            "16x12",
            "--layout",
            "cambridge",
            "--names",
            "ShopFacade",
            "--test-shifts",
            "0,1",
        ]
    )
    assert (tmp_path / "c" / "abs_cambridge_pose_sorted.csv_ShopFacade_test_shift1.csv").is_file()
    assert (tmp_path / "c" / "ShopFacade" / "test_shift0" / "seq4" / "frame00001.png").is_file()
    for levels, message in (([0.0, 1.5], "in \\[0, 1\\]"), ([0.5, 0.5], "repeats")):
        with pytest.raises(UserError, match=message):
            generate(tmp_path / "d", scenes=1, frames_per_seq=2, size=SIZE, test_shifts=levels)
