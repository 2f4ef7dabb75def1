"""Tests of the dataset preparation tool: synthetic round trips, conventions, idempotence and bad inputs."""

from __future__ import annotations

import csv
import re
import runpy
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from datasets import label_io
from datasets.labels import read_labels
from datasets.prepare import ecl_image_name, main, prepare, read_colmap_images
from datasets.synthetic import generate
from util.errors import UserError
from util.pose import pose_to_matrix, quat_to_rotmat

FRAMES = 3
CAMBRIDGE_HEADER = "Visual Landmark Dataset V1\nImageFile, Camera Position [X Y Z W P Q R]\n\n"


def _read_csv(path: Path) -> list:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _csvs(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.csv"))}


@pytest.fixture(scope="module")
def raw_7scenes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw7")
    generate(root, scenes=2, layout="7scenes", frames_per_seq=FRAMES, size=(16, 12), seed=5)
    return root


@pytest.fixture(scope="module")
def raw_cambridge(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rawcam")
    generate(
        root, layout="cambridge", names=list(label_io.CAMBRIDGE_FOUR), frames_per_seq=FRAMES, size=(16, 12), seed=6
    )
    return root


@pytest.fixture()
def raw_7scenes_copy(raw_7scenes, tmp_path) -> Path:
    root = tmp_path / "raw"
    shutil.copytree(raw_7scenes, root)
    return root


@pytest.mark.parametrize("kind", ["7scenes", "cambridge"])
def test_prepared_csvs_equal_the_generators_byte_for_byte(kind, raw_7scenes, raw_cambridge, tmp_path):
    raw = raw_7scenes if kind == "7scenes" else raw_cambridge
    report = prepare(kind, raw, tmp_path, check_images=True)
    assert _csvs(tmp_path) == _csvs(raw)
    assert report.clean is False  # synthetic counts differ from the official ones...
    assert report.count_mismatches and not report.missing_images and not report.unreadable_images
    assert not (report.non_unit_quats or report.bad_rotations or report.translation_outliers or report.skipped)
    assert report.images_checked == sum(len(_read_csv(raw / n)) - 1 for n in _csvs(raw) if n.startswith("abs_"))
    if kind == "cambridge":
        assert {"cambridge_four_scenes.csv", "cambridge_all_scenes.csv"} <= set(_csvs(tmp_path))
        assert "cambridge_five_scenes.csv" not in _csvs(tmp_path)
    text = report.format()
    assert "DIFFERS" in text and "missing images: none" in text
    for name in _csvs(tmp_path):  # what the training scripts read
        labels = read_labels(tmp_path / name, dataset_root=raw)
        assert len(labels) == len(_read_csv(tmp_path / name)) - 1


def test_seven_scenes_round_trip_pose_to_csv_to_matrix(raw_7scenes, tmp_path):
    prepare("7scenes", raw_7scenes, tmp_path)
    rows = _read_csv(tmp_path / "abs_7scenes_pose.csv_fire_test.csv")
    assert rows[0] == list(label_io.LABEL_COLUMNS)
    assert [r[2] for r in rows[1:]] == ["seq-04"] * FRAMES
    for row in rows[1:]:
        T_file = np.loadtxt(raw_7scenes / row[3].replace(".color.png", ".pose.txt"))
        t, q = np.array(row[4:7], dtype=float), np.array(row[7:], dtype=float)
        assert q[0] >= 0
        np.testing.assert_allclose(pose_to_matrix(t, q), T_file, atol=1e-6)


def test_official_counts_match_for_full_size_scenes(tmp_path):
    """A Cambridge ShopFacade with the official 231 / 103 rows reports 'ok'."""
    scene = tmp_path / "raw" / "ShopFacade"
    scene.mkdir(parents=True)
    for split, n, seq in (("train", 231, 1), ("test", 103, 2)):
        lines = "".join(f"seq{seq}/frame{i:05d}.png {i} 0 1.5 1 0 0 0\n" for i in range(1, n + 1))
        (scene / f"dataset_{split}.txt").write_text(CAMBRIDGE_HEADER + lines)
    report = prepare("cambridge", tmp_path / "raw", tmp_path / "out")
    assert report.counts == [("ShopFacade", "train", 231, 231), ("ShopFacade", "test", 103, 103)]
    assert not report.count_mismatches and len(report.missing_images) == 334 and not report.notes
    assert "ShopFacade       train              231       231  ok" in report.format()
    (scene / "dataset_test.txt").write_text(CAMBRIDGE_HEADER + "seq1/frame00007.png 7 0 1.5 1 0 0 0\n")
    report = prepare("cambridge", tmp_path / "raw", tmp_path / "out")
    assert report.notes == ["1 image(s) in both the train and the test split, e.g. ShopFacade/seq1/frame00007.png"]


def test_cambridge_values_are_copied_verbatim_and_defects_listed(tmp_path):
    raw = tmp_path / "raw"
    (raw / "StMarysChurch").mkdir(parents=True)
    train = [
        ("seq10/frame00002.png", "1.50000", "-2.0E+00", "0.0", "0.70710678", "-0.7071068", "0", "0"),
        ("seq2/frame00009.png", "3e9", "1", "2", "1", "0", "0", "0"),  # GreatCourt-like outlier
        ("seq2/frame00003.png", "-0.5", "1", "2", "1.6", "1.2", "0", "0"),  # |q| = 2
        ("seq2/frame00010.png", "0.25", "1.0", "2.00", "0.5", "0.5", "0.5", "0.5"),
    ]
    test = [("seq1/frame00001.png", "1", "1", "1", "1", "0", "0", "0")]
    for split, entries in (("train", train), ("test", test)):
        text = CAMBRIDGE_HEADER + "".join(" ".join(e) + "\n" for e in entries)
        (raw / "StMarysChurch" / f"dataset_{split}.txt").write_text(text)
    report = prepare("cambridge", raw, tmp_path / "out")
    rows = _read_csv(tmp_path / "out" / "abs_cambridge_pose_sorted.csv_StMarysChurch_train.csv")[1:]
    # In the raw file's order, as the reference's Cambridge CSVs; values string-equal to the raw file.
    assert [r[3] for r in rows] == [f"StMarysChurch/{e[0]}" for e in train]
    by_name = {e[0]: list(e[1:]) for e in train}
    for row in rows:
        assert row[4:] == by_name[row[3].split("/", 1)[1]]
        assert row[2] == row[3].split("/")[1]
    assert [item.split(" ")[0] for item in report.non_unit_quats] == ["StMarysChurch/seq2/frame00003.png"]
    assert [item.split(" ")[0] for item in report.translation_outliers] == ["StMarysChurch/seq2/frame00009.png"]
    assert len(report.missing_images) == 5 and "StMarysChurch/seq1/frame00001.png" in report.missing_images
    assert report.counts[0] == ("StMarysChurch", "train", 4, 1487)
    assert "translation outliers: 1" in report.format()


def test_rerun_rewrites_nothing_and_a_change_rewrites_one_file(raw_7scenes_copy, tmp_path):
    out = tmp_path / "out"
    first = prepare("7scenes", raw_7scenes_copy, out)
    assert len(first.written) == 5 and not first.unchanged
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    second = prepare("7scenes", raw_7scenes_copy, out)
    assert second.written == [] and len(second.unchanged) == 5
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes
    pose = raw_7scenes_copy / "fire" / "seq-04" / "frame-000001.pose.txt"
    pose.write_text(pose.read_text().replace("\t", "  "))  # same numbers, other spacing: same labels
    assert prepare("7scenes", raw_7scenes_copy, out).written == []
    T = np.loadtxt(pose)
    T[0, 3] += 0.5
    pose.write_text("\n".join(" ".join(repr(float(v)) for v in row) for row in T) + "\n")
    assert prepare("7scenes", raw_7scenes_copy, out).written == ["abs_7scenes_pose.csv_fire_test.csv"]
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_missing_and_unreadable_images_and_non_finite_poses_are_listed(raw_7scenes_copy, tmp_path):
    (raw_7scenes_copy / "chess/seq-02/frame-000001.color.png").unlink()
    (raw_7scenes_copy / "fire/seq-04/frame-000002.color.png").write_bytes(b"not a png")
    nan_pose = raw_7scenes_copy / "fire/seq-01/frame-000000.pose.txt"
    nan_pose.write_text("nan 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n")
    report = prepare("7scenes", raw_7scenes_copy, tmp_path, check_images=True)
    assert report.missing_images == ["chess/seq-02/frame-000001.color.png"]
    assert [u.split(" ")[0] for u in report.unreadable_images] == ["fire/seq-04/frame-000002.color.png"]
    assert report.skipped == [f"{nan_pose}: non-finite values in the pose"]
    assert len(_read_csv(tmp_path / "abs_7scenes_pose.csv_chess_train.csv")) == 1 + 3 * FRAMES  # rows kept
    assert len(_read_csv(tmp_path / "abs_7scenes_pose.csv_fire_train.csv")) == 3 * FRAMES  # NaN row dropped
    assert prepare("7scenes", raw_7scenes_copy, tmp_path / "nocheck").unreadable_images == []


def test_scene_selection(raw_7scenes, tmp_path):
    report = prepare("7scenes", raw_7scenes, tmp_path, scenes=["fire"])
    assert {c[0] for c in report.counts} == {"fire"}
    assert report.multi_scene == {"7scenes_all_scenes.csv": ["fire"]}
    with pytest.raises(UserError, match="kitchen"):
        prepare("7scenes", raw_7scenes, tmp_path, scenes=["kitchen"])


def _one_line_error(match: str, *args, **kwargs) -> str:
    with pytest.raises(UserError, match=match) as info:
        prepare(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_seven_scenes_inputs_name_file_and_line(raw_7scenes_copy, tmp_path):
    root = raw_7scenes_copy
    pose = root / "chess/seq-03/frame-000002.pose.txt"
    lines = pose.read_text().splitlines()
    pose.write_text("\n".join(lines[:1] + [" ".join(lines[1].split()[:3])] + lines[2:]) + "\n")
    _one_line_error(re.escape(f"{pose}:2: expected 4 numbers"), "7scenes", root, tmp_path)
    pose.write_text("\n".join(lines[:3]) + "\n")
    _one_line_error(re.escape(f"{pose}: expected 4 rows"), "7scenes", root, tmp_path)
    pose.write_text("\n".join(lines[:2] + ["1 0 zero 1"] + lines[3:]) + "\n")
    _one_line_error(re.escape(f"{pose}:3: not a number"), "7scenes", root, tmp_path)
    pose.write_text("\n".join(lines) + "\n")

    (root / "fire/TrainSplit.txt").write_text("sequence1\nseq-02\n")
    _one_line_error(r"TrainSplit.txt:2: expected a line like 'sequence1'", "7scenes", root, tmp_path)
    (root / "fire/TrainSplit.txt").write_text("sequence1\nsequence7\n")
    _one_line_error(r"TrainSplit.txt:2: sequence7 has no folder .*seq-07", "7scenes", root, tmp_path)
    (root / "fire/TrainSplit.txt").unlink()
    _one_line_error(r"fire/TrainSplit.txt: split file missing", "7scenes", root, tmp_path)
    _one_line_error(r"is not a directory", "7scenes", root / "nowhere", tmp_path)
    assert not list(tmp_path.glob("*.csv"))  # nothing written by a failed run


def test_bad_cambridge_inputs_name_file_and_line(tmp_path):
    scene = tmp_path / "raw" / "KingsCollege"
    scene.mkdir(parents=True)
    good_row = "seq1/frame00001.png 1 2 3 1 0 0 0\n"
    (scene / "dataset_test.txt").write_text(CAMBRIDGE_HEADER + good_row)
    (scene / "dataset_train.txt").write_text("Visual Landmark Dataset V2\n" + CAMBRIDGE_HEADER[27:] + good_row)
    _one_line_error(
        r"dataset_train.txt:1: expected the header line 'Visual Landmark Dataset V1'",
        "cambridge",
        tmp_path / "raw",
        tmp_path / "out",
    )
    (scene / "dataset_train.txt").write_text(CAMBRIDGE_HEADER + good_row + "seq1/frame00002.png 1 2 3 1 0 0\n")
    _one_line_error(
        r"dataset_train.txt:5: expected 'IMAGE X Y Z W P Q R' \(8 fields\), got 7",
        "cambridge",
        tmp_path / "raw",
        tmp_path / "out",
    )
    (scene / "dataset_train.txt").write_text(CAMBRIDGE_HEADER + "seq1/frame00002.png 1 2 x 1 0 0 0\n")
    _one_line_error(r"dataset_train.txt:4: not a finite number 'x'", "cambridge", tmp_path / "raw", tmp_path / "out")
    (scene / "dataset_train.txt").unlink()
    _one_line_error(r"dataset_train.txt: split file missing", "cambridge", tmp_path / "raw", tmp_path / "out")


def test_ecl_styles(raw_cambridge, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(raw_cambridge, raw)
    test_rows = _read_csv(raw / "abs_cambridge_pose_sorted.csv_ShopFacade_test.csv")[1:]
    for row in test_rows:  # all winter images of ShopFacade, one evening image of OldHospital
        shutil.copy(raw / row[3], raw / "ShopFacade" / ecl_image_name(row[3].split("/", 1)[1], "winter"))
    shutil.copy(raw / "OldHospital/seq4/frame00001.png", raw / "OldHospital/seq4/frame00001_evening.png")
    report = prepare("ecl", raw, tmp_path / "out")
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == [
        "abs_cambridge_pose_sorted.csv_OldHospital_test_evening.csv",
        "abs_cambridge_pose_sorted.csv_ShopFacade_test_winter.csv",
    ]
    winter = _read_csv(tmp_path / "out" / written[1])[1:]
    assert [r[3] for r in winter] == [r[3].replace(".png", "_winter.png") for r in test_rows]
    assert [r[:3] + r[4:] for r in winter] == [r[:3] + r[4:] for r in test_rows]
    assert report.missing_images == [f"OldHospital/seq4/frame{i:05d}_evening.png" for i in range(2, FRAMES + 1)]
    assert ("ShopFacade", "test_winter", FRAMES, 103) in report.counts
    assert any("KingsCollege summer: no images found" in note for note in report.notes)
    assert ecl_image_name("seq2/frame00017.png", "summer") == "seq2/frame00017_summer.png"
    _one_line_error(r"dataset_test.txt: split file missing", "ecl", tmp_path, tmp_path / "x", scenes=["out"])


COLMAP_IMAGES = """# Image list with two lines of data per image:
#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME
#   POINTS2D[] as (X, Y, POINT3D_ID)
# Number of images: 3, mean observations per image: 1
2 0.70710678118654757 0 0 0.70710678118654757 {tx} {ty} {tz} 1 seq/img10.jpg
100.5 20.25 -1
1 1 0 0 0 0 0 0 1 seq/img2.jpg

3 0 1 0 0 0 0 2 1 seq/img1.jpg
1.0 2.0 5
"""


def _colmap_root(tmp_path: Path) -> Path:
    root = tmp_path / "mine"
    (root / "sparse" / "0").mkdir(parents=True)
    # Image 2: camera centre c = (1, 2, 3), world-to-camera rotation R_wc = 90 degrees about z, t_wc = -R_wc c.
    R_wc = quat_to_rotmat(np.array([np.sqrt(0.5), 0, 0, np.sqrt(0.5)]))
    tx, ty, tz = (repr(float(v)) for v in -R_wc @ np.array([1.0, 2.0, 3.0]))
    (root / "sparse" / "0" / "images.txt").write_text(COLMAP_IMAGES.format(tx=tx, ty=ty, tz=tz))
    (root / "images" / "seq").mkdir(parents=True)
    for name in ("img1.jpg", "img2.jpg", "img10.jpg"):
        (root / "images" / "seq" / name).write_bytes(b"")
    return root


def test_colmap_known_answer_and_split(tmp_path):
    root = _colmap_root(tmp_path)
    assert [im[0] for im in read_colmap_images(root / "sparse/0/images.txt")] == [
        "seq/img10.jpg",
        "seq/img2.jpg",
        "seq/img1.jpg",
    ]
    report = prepare("colmap", root, tmp_path / "out", scene="mine", test_every=3)
    train = _read_csv(tmp_path / "out" / "abs_colmap_pose.csv_mine_train.csv")[1:]
    test = _read_csv(tmp_path / "out" / "abs_colmap_pose.csv_mine_test.csv")[1:]
    # Sorted by name with numbers compared numerically: img1 (test: index 0), img2, img10.
    assert [r[3] for r in test] == ["images/seq/img1.jpg"]
    assert [r[3] for r in train] == ["images/seq/img2.jpg", "images/seq/img10.jpg"]
    assert train[0][:3] == ["mine", "train", "seq"]
    img10 = np.array(train[1][4:], dtype=float)
    np.testing.assert_allclose(img10[:3], [1, 2, 3], atol=1e-7)  # camera centre
    # Camera-to-world = R_wc^T = -90 degrees about z, written with w >= 0.
    np.testing.assert_allclose(img10[3:], [np.sqrt(0.5), 0, 0, -np.sqrt(0.5)], atol=1e-8)
    np.testing.assert_allclose(np.array(train[0][4:], dtype=float), [0, 0, 0, 1, 0, 0, 0], atol=0)
    # Image 1: R_wc = 180 degrees about x, t_wc = (0, 0, 2): centre -R^T t = (0, 0, 2).
    np.testing.assert_allclose(np.array(test[0][4:], dtype=float), [0, 0, 2, 0, 1, 0, 0], atol=1e-8)
    readme = (tmp_path / "out" / "README_labels.txt").read_text()
    assert "camera-to-world rotation R_wc^T with w >= 0" in readme and "i % 3 == 0" in readme
    assert report.missing_images == [] and report.counts == [("mine", "train", 2, None), ("mine", "test", 1, None)]

    (tmp_path / "test.txt").write_text("# held out\nseq/img10.jpg\n")
    prepare("colmap", root, tmp_path / "out2", scene="mine", test_list=tmp_path / "test.txt")
    assert [r[3] for r in _read_csv(tmp_path / "out2" / "abs_colmap_pose.csv_mine_test.csv")[1:]] == [
        "images/seq/img10.jpg"
    ]
    (tmp_path / "test.txt").write_text("seq/img3.jpg\n")
    _one_line_error(
        r"test.txt:1: image 'seq/img3.jpg' is not in",
        "colmap",
        root,
        tmp_path / "o",
        scene="m",
        test_list=tmp_path / "test.txt",
    )


def test_bad_colmap_inputs(tmp_path):
    root = _colmap_root(tmp_path)
    images = root / "sparse/0/images.txt"
    images.write_text(images.read_text().replace("3 0 1 0 0 0 0 2 1 seq/img1.jpg", "3 0 1 0 0 0 2 1 seq/img1.jpg"))
    _one_line_error(
        re.escape(f"{images}:9: expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME'"),
        "colmap",
        root,
        tmp_path / "out",
        scene="mine",
    )
    images.unlink()
    (root / "sparse/0/images.bin").write_bytes(b"\0")
    _one_line_error(r"binary COLMAP model; convert it to text first", "colmap", root, tmp_path / "out", scene="m")


def test_cli_prints_report_and_errors_exit_2(raw_7scenes, tmp_path, capsys, monkeypatch):
    main(["7scenes", str(raw_7scenes), "--out", str(tmp_path / "out"), "--scenes", "chess,fire"])
    out = capsys.readouterr().out
    assert "prepared 7scenes labels" in out and re.search(r"^chess +train +9 +4000  DIFFERS$", out, re.M)
    monkeypatch.setattr(sys, "argv", ["prepare", "cambridge", str(raw_7scenes), "--out", str(tmp_path / "c")])
    monkeypatch.delitem(sys.modules, "datasets.prepare")  # run it afresh as a script
    with pytest.raises(SystemExit) as info:
        runpy.run_module("datasets.prepare", run_name="__main__")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no Cambridge scene folders") and err.count("\n") == 1


def test_cambridge_rows_keep_the_raw_order(tmp_path):
    """As the reference's CSVs: KingsCollege test lists seq7, seq2, seq3; Street lists img_east first."""
    raw = tmp_path / "raw"
    listing = {
        "KingsCollege": {
            "train": ["seq8/frame00002.png", "seq1/frame00010.png", "seq1/frame00002.png"],
            "test": ["seq7/frame00001.png", "seq2/frame00001.png", "seq3/frame00001.png"],
        },
        "Street": {
            "train": [
                "img_east/frame00001.png",
                "img_north/frame00001.png",
                "img_west/frame00001.png",
                "img_south/frame00001.png",
            ],
            "test": ["img_south/frame00002.png", "img_east/frame00002.png"],
        },
    }
    for scene, splits in listing.items():
        (raw / scene).mkdir(parents=True)
        for split, names in splits.items():
            text = CAMBRIDGE_HEADER + "".join(f"{n} 1 2 3 1 0 0 0\n" for n in names)
            (raw / scene / f"dataset_{split}.txt").write_text(text)
    prepare("cambridge", raw, tmp_path / "out")
    for scene, splits in listing.items():
        for split, names in splits.items():
            rows = _read_csv(tmp_path / "out" / label_io.cambridge_csv_name(scene, split))[1:]
            assert [r[3] for r in rows] == [f"{scene}/{n}" for n in names]
    combined = [r[3] for r in _read_csv(tmp_path / "out" / "cambridge_all_scenes.csv")[1:]]
    assert combined == [f"{s}/{n}" for s in ("KingsCollege", "Street") for n in listing[s]["train"]]
