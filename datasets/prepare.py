"""Turn raw dataset downloads (or a COLMAP model) into the label CSVs every script reads (docs/datasets.md).

    python -m datasets.prepare 7scenes   RAW_ROOT --out datasets/7Scenes
    python -m datasets.prepare cambridge RAW_ROOT --out datasets/CambridgeLandmarks
    python -m datasets.prepare ecl       RAW_ROOT --out datasets/CambridgeLandmarks
    python -m datasets.prepare colmap    RAW_ROOT --out datasets/mine --scene mine --model sparse/0

``img_path`` in every CSV is relative to RAW_ROOT, so RAW_ROOT is the dataset root that the training and
evaluation commands take; the CSVs themselves can live anywhere (``--out``).

Conventions: ``t`` is the camera centre in the world frame (metres); ``q`` is scalar-first (w, x, y, z).
``7scenes`` and ``colmap`` rows hold the camera-to-world rotation with w >= 0 (the 7Scenes convention);
``cambridge`` and ``ecl`` rows copy the raw ``X Y Z W P Q R`` text (W P Q R = world-to-camera rotation).

Every file is written atomically and only when its content changes, so a re-run that changes nothing leaves
every file (and its mtime) alone. A validation report ends each run: rows per scene and split against the
official counts, missing or unreadable images, non-unit quaternions, non-orthonormal rotations and
translation outliers.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Union

import numpy as np

from datasets import label_io
from datasets.label_io import OFFICIAL_COUNTS, SPLITS, natural_key
from util.errors import UserError, run_cli
from util.logs import progress_bar, setup_logging
from util.pose import invert_rigid, pose_to_matrix

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

KINDS = ("7scenes", "cambridge", "ecl", "colmap")
ECL_STYLES = ("evening", "winter", "summer")
QUAT_NORM_TOL = 1e-3  # |1 - |q|| above this is listed as a non-unit quaternion
ORTHONORMAL_TOL = 1e-2  # max |R R^T - I| above this (or det R < 0) is listed as a bad rotation
MAX_ABS_TRANSLATION_M = 1e4  # any |t_i| above this is an outlier (public GreatCourt has one row at ~3e9 m)
OUTLIER_SPREAD = 10.0  # ... and so is a centre farther from the scene's median than 10x the median distance
OUTLIER_MIN_ROWS = 10  # (that relative rule only for scenes with at least this many rows)
MAX_LISTED = 20  # items listed per report section before "... and K more"
COLMAP_MODEL_CANDIDATES = (".", "sparse/0", "sparse")


@dataclass
class PrepareReport:
    """What a preparation run found and wrote; ``format()`` gives the text printed at the end."""

    kind: str
    raw_root: str
    out_dir: str
    counts: list = field(default_factory=list)  # (scene, split, rows, official or None)
    written: list = field(default_factory=list)  # file names rewritten
    unchanged: list = field(default_factory=list)  # file names already up to date
    multi_scene: dict = field(default_factory=dict)  # multi-scene file name -> its scenes
    missing_images: list = field(default_factory=list)  # img_path
    unreadable_images: list = field(default_factory=list)  # "img_path (reason)"
    images_checked: int | None = None
    non_unit_quats: list = field(default_factory=list)  # "img_path |q|=..."
    bad_rotations: list = field(default_factory=list)  # "img_path ..."
    translation_outliers: list = field(default_factory=list)  # "img_path t=... (d m from median)"
    skipped: list = field(default_factory=list)  # "path: reason" (rows not written)
    notes: list = field(default_factory=list)

    @property
    def count_mismatches(self) -> list:
        return [c for c in self.counts if c[3] is not None and c[2] != c[3]]

    @property
    def clean(self) -> bool:
        """No missing/unreadable image, suspicious pose, skipped row or count mismatch."""
        return not (
            self.missing_images
            or self.unreadable_images
            or self.non_unit_quats
            or self.bad_rotations
            or self.translation_outliers
            or self.skipped
            or self.count_mismatches
        )

    def format(self) -> str:
        lines = [
            f"prepared {self.kind} labels: raw root {self.raw_root} -> {self.out_dir}",
            f"{'scene':<16} {'split':<14} {'rows':>7} {'official':>9}",
        ]
        for scene, split, rows, official in self.counts:
            status = "" if official is None else ("  ok" if rows == official else "  DIFFERS")
            lines.append(f"{scene:<16} {split:<14} {rows:>7} {'-' if official is None else official:>9}{status}")
        if self.count_mismatches:
            lines.append(
                "row counts differ from the official release for "
                f"{len(self.count_mismatches)} split(s) (expected for a subset or a synthetic dataset)"
            )
        for name, scenes in self.multi_scene.items():
            lines.append(f"{name}: train rows of {', '.join(scenes)}")
        lines.append(f"files in {self.out_dir}: {len(self.written)} written, {len(self.unchanged)} unchanged")
        lines += [f"  written: {name}" for name in self.written]
        if self.images_checked is not None:
            lines.append(f"images checked (exist and decode): {self.images_checked}")
        sections = (
            ("missing images", self.missing_images),
            ("unreadable images", self.unreadable_images),
            ("non-unit quaternions", self.non_unit_quats),
            ("non-orthonormal rotations", self.bad_rotations),
            ("translation outliers", self.translation_outliers),
            ("skipped rows", self.skipped),
        )
        for title, items in sections:
            lines.append(f"{title}: {len(items) if items else 'none'}")
            lines += [f"  {item}" for item in items[:MAX_LISTED]]
            if len(items) > MAX_LISTED:
                lines.append(f"  ... and {len(items) - MAX_LISTED} more")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


# ---- shared steps -----------------------------------------------------------------------------------------


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise UserError(f"{what} {path} is not a directory")
    return path


def _select_scenes(root: Path, scenes: Sequence[str] | None, marker_files: Sequence[str], kind: str) -> list:
    """Scene folders to prepare: the requested ones (which must exist), else every folder holding a marker."""
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and any((p / m).is_file() for m in marker_files))
    if scenes:
        missing = [s for s in scenes if not (root / s).is_dir()]
        if missing:
            raise UserError(
                f"scene folder(s) {', '.join(missing)} not found under {root} (found: {', '.join(found) or 'none'})"
            )
        found = list(scenes)
    elif not found:
        raise UserError(f"no {kind} scene folders (folders holding {' or '.join(marker_files)}) under {root}")
    logger.info("%s: preparing %s from %s", kind, ", ".join(found), root)
    return found


def _check_poses(report: PrepareReport, rows: list, q_norm_N: np.ndarray) -> None:
    """List non-unit quaternions and translation outliers of one scene's rows."""
    for row, norm in zip(rows, q_norm_N):
        if abs(norm - 1.0) > QUAT_NORM_TOL:
            report.non_unit_quats.append(f"{row[3]} ({row[1]}): |q| = {norm:.6g}")
    if not rows:
        return
    t_N3 = np.array([[float(v) for v in row[4:7]] for row in rows])
    dist_N = np.linalg.norm(t_N3 - np.median(t_N3, axis=0), axis=1)
    limit = OUTLIER_SPREAD * max(float(np.median(dist_N)), 0.1)
    for row, t_3, d in zip(rows, t_N3, dist_N):
        if np.abs(t_3).max() > MAX_ABS_TRANSLATION_M or (len(rows) >= OUTLIER_MIN_ROWS and d > limit):
            report.translation_outliers.append(
                f"{row[3]} ({row[1]}): t = ({', '.join(row[4:7])}), {d:.4g} m from the scene's median position"
            )


def _check_rotation(report: PrepareReport, img_path: str, R_33: np.ndarray) -> None:
    error = np.abs(R_33 @ R_33.T - np.eye(3)).max()
    det = np.linalg.det(R_33)
    if error > ORTHONORMAL_TOL or det < 0:
        report.bad_rotations.append(f"{img_path}: max |R R^T - I| = {error:.3g}, det R = {det:.4g}")


def _check_images(report: PrepareReport, root: Path, rows: list, decode: bool) -> None:
    """Record missing images; with ``decode`` also open and decode every existing one."""
    paths = list(dict.fromkeys(row[3] for row in rows))
    present = []
    for img_path in paths:
        (present if (root / img_path).is_file() else report.missing_images).append(img_path)
    if not decode:
        return
    from PIL import Image

    for img_path in progress_bar(present, desc="decoding images", unit="img"):
        try:
            with Image.open(root / img_path) as img:
                img.load()
        except Exception as e:  # any decoder failure is a finding for the report, not a crash
            report.unreadable_images.append(f"{img_path} ({type(e).__name__}: {' '.join(str(e).split())[:80]})")
    report.images_checked = len(paths)


def _write_files(report: PrepareReport, out_dir: Path, files: dict) -> None:
    for name, file_rows in files.items():
        changed = label_io.write_label_csv(file_rows, out_dir / name)
        (report.written if changed else report.unchanged).append(name)
        if not name.startswith("abs_"):
            report.multi_scene[name] = sorted({r[0] for r in file_rows})


def _count(report: PrepareReport, dataset: str, scene: str, split: str, rows: list, official_split=None) -> None:
    official = OFFICIAL_COUNTS.get(dataset, {}).get(scene)
    index = SPLITS.index(official_split or split)
    report.counts.append((scene, split, len(rows), None if official is None else official[index]))


# ---- 7Scenes ----------------------------------------------------------------------------------------------


def _seven_scenes_scene(root: Path, scene: str, report: PrepareReport) -> list:
    scene_dir = root / scene
    rows = []
    seen = {}
    for split in SPLITS:
        split_path = scene_dir / label_io.SEVEN_SCENES_SPLIT_FILES[split]
        split_rows = []
        for number, line_no in label_io.parse_split_file(split_path):
            if number in seen:
                report.notes.append(f"{split_path}:{line_no}: sequence{number} is also in the {seen[number]} split")
            seen[number] = split
            seq_name = label_io.seven_scenes_seq_name(number)
            seq_dir = scene_dir / seq_name
            if not seq_dir.is_dir():
                hint = (
                    " (the download ships each sequence as a zip inside the scene zip: unzip it)"
                    if (scene_dir / f"{seq_name}.zip").is_file()
                    else ""
                )
                raise UserError(f"{split_path}:{line_no}: sequence{number} has no folder {seq_dir}{hint}")
            pose_files = sorted(seq_dir.glob("frame-*.pose.txt"), key=lambda p: natural_key(p.name))
            if not pose_files:
                raise UserError(f"{seq_dir}: no frame-XXXXXX.pose.txt files (listed at {split_path}:{line_no})")
            for pose_path in pose_files:
                T_44 = label_io.parse_pose_txt(pose_path.read_text(encoding="utf-8", errors="replace"), str(pose_path))
                stem = pose_path.name[: -len(".pose.txt")]
                img_path = f"{scene}/{seq_name}/{stem}.color.png"
                try:
                    if not np.isfinite(T_44).all():
                        raise ValueError("non-finite values in the pose")
                    fields = label_io.seven_scenes_pose_fields(T_44)
                except ValueError as e:  # also a degenerate matrix without a rotation
                    report.skipped.append(f"{pose_path}: {e}")
                    continue
                _check_rotation(report, img_path, T_44[:3, :3])
                split_rows.append((scene, split, seq_name, img_path, *fields))
        _count(report, "7scenes", scene, split, split_rows)
        rows += split_rows
    return rows


def prepare_7scenes(
    raw_root: PathLike, out_dir: PathLike, scenes: Sequence[str] | None = None, check_images: bool = False
) -> PrepareReport:
    """7Scenes: ``<scene>/seq-XX/frame-XXXXXX.pose.txt`` (4x4 camera-to-world) and Train/TestSplit.txt -> CSVs."""
    root = _require_dir(Path(raw_root), "7Scenes raw root")
    report = PrepareReport("7scenes", str(root), str(out_dir))
    rows = []
    for scene in _select_scenes(root, scenes, tuple(label_io.SEVEN_SCENES_SPLIT_FILES.values()), "7Scenes"):
        scene_rows = _seven_scenes_scene(root, scene, report)
        q_norm_N = np.linalg.norm(np.array([[float(v) for v in r[7:]] for r in scene_rows]).reshape(-1, 4), axis=1)
        _check_poses(report, scene_rows, q_norm_N)
        rows += scene_rows
    _check_images(report, root, rows, check_images)
    _write_files(report, Path(out_dir), label_io.group_label_files("7scenes", rows))
    return report


# ---- Cambridge Landmarks and its Extended (ECL) test styles ----------------------------------------------


def _cambridge_rows(root: Path, scene: str, split: str) -> list:
    entries = label_io.parse_cambridge_split(root / scene / label_io.CAMBRIDGE_SPLIT_FILES[split])
    rows = []
    for name, values, _ in entries:
        seq = PurePosixPath(name).parts[0] if len(PurePosixPath(name).parts) > 1 else ""
        rows.append((scene, split, seq, f"{scene}/{name}", *values))
    return rows


def _quat_norms(rows: list) -> np.ndarray:
    return np.array([math.sqrt(sum(float(v) ** 2 for v in r[7:11])) for r in rows])


def _report_duplicates(report: PrepareReport, rows: list) -> None:
    """Note images listed twice in a split, and images that are in both the train and the test split."""
    seen = set()
    for row in rows:
        key = (row[1], row[3])
        if key in seen:
            report.notes.append(f"{row[3]} appears more than once in the {row[1]} split")
        seen.add(key)
    train = {path for split, path in seen if split == "train"}
    both = sorted(train & {path for split, path in seen if split == "test"})
    if both:
        report.notes.append(f"{len(both)} image(s) in both the train and the test split, e.g. {both[0]}")


def prepare_cambridge(
    raw_root: PathLike, out_dir: PathLike, scenes: Sequence[str] | None = None, check_images: bool = False
) -> PrepareReport:
    """Cambridge Landmarks: ``<Scene>/dataset_{train,test}.txt`` -> CSVs, pose text copied exactly."""
    root = _require_dir(Path(raw_root), "Cambridge Landmarks raw root")
    report = PrepareReport("cambridge", str(root), str(out_dir))
    rows = []
    for scene in _select_scenes(root, scenes, tuple(label_io.CAMBRIDGE_SPLIT_FILES.values()), "Cambridge"):
        scene_rows = []
        for split in SPLITS:
            split_rows = _cambridge_rows(root, scene, split)
            _count(report, "cambridge", scene, split, split_rows)
            scene_rows += split_rows
        _check_poses(report, scene_rows, _quat_norms(scene_rows))
        _report_duplicates(report, scene_rows)
        rows += scene_rows
    _check_images(report, root, rows, check_images)
    _write_files(report, Path(out_dir), label_io.group_label_files("cambridge", rows))
    return report


def ecl_image_name(name: str, style: str) -> str:
    """``seq2/frame00017.png`` -> ``seq2/frame00017_winter.png`` (Extended Cambridge Landmarks naming)."""
    path = PurePosixPath(name)
    return str(path.with_name(f"{path.stem}_{style}{path.suffix}"))


def prepare_ecl(
    raw_root: PathLike,
    out_dir: PathLike,
    scenes: Sequence[str] | None = None,
    styles: Sequence[str] = ECL_STYLES,
    check_images: bool = False,
) -> PrepareReport:
    """Extended Cambridge Landmarks: one test CSV per scene and style from the scene's base test labels.

    RAW_ROOT is the Cambridge root with the restyled images beside the originals (``frame00017_winter.png``
    next to ``frame00017.png``). A style is written for a scene only when at least one of its images exists;
    its missing images are listed.
    """
    root = _require_dir(Path(raw_root), "Extended Cambridge Landmarks raw root")
    report = PrepareReport("ecl", str(root), str(out_dir))
    if not scenes:
        scenes = [s for s in label_io.CAMBRIDGE_FOUR if (root / s / label_io.CAMBRIDGE_SPLIT_FILES["test"]).is_file()]
        if not scenes:
            raise UserError(
                f"no Cambridge scene with {label_io.CAMBRIDGE_SPLIT_FILES['test']} under {root} "
                f"(looked for {', '.join(label_io.CAMBRIDGE_FOUR)})"
            )
    files = {}
    all_rows = []
    for scene in _select_scenes(root, scenes, (label_io.CAMBRIDGE_SPLIT_FILES["test"],), "Cambridge"):
        base_rows = _cambridge_rows(root, scene, "test")
        for style in styles:
            rows = [
                (r[0], r[1], r[2], f"{scene}/{ecl_image_name(r[3][len(scene) + 1 :], style)}", *r[4:])
                for r in base_rows
            ]
            present = sum((root / r[3]).is_file() for r in rows)
            if present == 0:
                report.notes.append(
                    f"{scene} {style}: no images found (e.g. {root / rows[0][3]}); "
                    f"{label_io.cambridge_csv_name(scene, 'test_' + style)} not written"
                    if rows
                    else f"{scene}: no test rows"
                )
                continue
            _count(report, "cambridge", scene, f"test_{style}", rows, official_split="test")
            files[label_io.cambridge_csv_name(scene, f"test_{style}")] = rows  # the base file's order
            all_rows += rows
        _check_poses(report, base_rows, _quat_norms(base_rows))
    _check_images(report, root, all_rows, check_images)
    _write_files(report, Path(out_dir), files)
    return report


# ---- COLMAP -----------------------------------------------------------------------------------------------


def read_colmap_images(images_txt: PathLike) -> list:
    """``(name, q_world_to_cam (w, x, y, z), t_world_to_cam, line_no)`` for each image of a COLMAP images.txt.

    Each image takes two lines: ``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME``, then its 2D points (possibly
    an empty line); ``#`` lines are comments.
    """
    path = Path(images_txt)
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    images = []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split()
        if len(fields) < 10:
            raise UserError(
                f"{path}:{i}: expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME', got "
                f"{len(fields)} fields in {line.strip()[:60]!r}"
            )
        try:
            numbers = [float(v) for v in fields[1:8]]
            int(fields[0]), int(fields[8])
        except ValueError:
            raise UserError(
                f"{path}:{i}: expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME' with numeric "
                f"ids and pose, got {line.strip()[:60]!r}"
            ) from None
        if not all(math.isfinite(v) for v in numbers):
            raise UserError(f"{path}:{i}: non-finite pose value in {line.strip()[:60]!r}")
        images.append((" ".join(fields[9:]), np.array(numbers[:4]), np.array(numbers[4:7]), i))
        i += 1  # the POINTS2D line that belongs to this image
    if not images:
        raise UserError(f"{path}: no images (expected lines 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME')")
    return images


def _find_colmap_model(root: Path, model: PathLike | None) -> Path:
    candidates = (
        [Path(model) if Path(model).is_absolute() else root / model]
        if model is not None
        else [root / c for c in COLMAP_MODEL_CANDIDATES]
    )
    for folder in candidates:
        if (folder / "images.txt").is_file():
            return folder
    for folder in candidates:
        if (folder / "images.bin").is_file():
            raise UserError(
                f"{folder} holds a binary COLMAP model; convert it to text first: colmap "
                f"model_converter --input_path {folder} --output_path {folder} --output_type TXT"
            )
    raise UserError(f"no COLMAP images.txt in {', '.join(str(c) for c in candidates)} (pass --model)")


def prepare_colmap(
    raw_root: PathLike,
    out_dir: PathLike,
    scene: str,
    model: PathLike | None = None,
    image_dir: str = "images",
    test_every: int | None = 8,
    test_list: PathLike | None = None,
    check_images: bool = False,
) -> PrepareReport:
    """A COLMAP text model -> ``abs_colmap_pose.csv_<scene>_<split>.csv`` in the 7Scenes convention.

    COLMAP stores world-to-camera ``R_wc = R(q)``, ``t_wc``; rows get the camera centre ``-R_wc^T t_wc`` and the
    camera-to-world rotation ``R_wc^T`` as a quaternion with w >= 0. Images are sorted by name (numbers
    compared numerically); image ``i`` goes to the test split when ``i % test_every == 0``, or when its name
    is listed in ``test_list``. ``img_path`` = ``<image_dir>/<NAME>``, relative to RAW_ROOT.
    """
    root = _require_dir(Path(raw_root), "dataset root")
    if not scene or any(c in scene for c in '/\\,"'):
        raise UserError(f"--scene must be a plain name (no '/', ',' or quotes), got {scene!r}")
    if Path(image_dir).is_absolute():
        raise UserError(f"--image-dir must be relative to the dataset root {root}, got {image_dir}")
    model_dir = _find_colmap_model(root, model)
    images = sorted(read_colmap_images(model_dir / "images.txt"), key=lambda im: natural_key(im[0]))
    names = [im[0] for im in images]
    if test_list is not None:
        test_list = Path(test_list)
        if not test_list.is_file():
            raise UserError(f"test list {test_list} not found")
        known = set(names)
        test_names = set()
        for line_no, line in enumerate(test_list.read_text(encoding="utf-8").splitlines(), start=1):
            name = line.strip()
            if not name or name.startswith("#"):
                continue
            if name not in known:
                raise UserError(f"{test_list}:{line_no}: image {name!r} is not in {model_dir / 'images.txt'}")
            test_names.add(name)
        is_test = [n in test_names for n in names]
    else:
        if test_every is None or test_every < 1:
            raise UserError(f"--test-every must be a positive integer, got {test_every}")
        is_test = [i % test_every == 0 for i in range(len(names))]

    report = PrepareReport("colmap", str(root), str(out_dir))
    prefix = PurePosixPath(image_dir.replace(os.sep, "/")) if image_dir not in ("", ".") else None
    rows = []
    q_norms = []
    for (name, q_wc_4, t_wc_3, _), test in zip(images, is_test):
        T_cw_44 = invert_rigid(pose_to_matrix(t_wc_3, q_wc_4))
        img = PurePosixPath(name) if prefix is None else prefix / name
        seq = (
            str(PurePosixPath(name).parent)
            if PurePosixPath(name).parent != PurePosixPath(".")
            else (prefix.name if prefix is not None else scene)
        )
        rows.append((scene, "test" if test else "train", seq, str(img), *label_io.seven_scenes_pose_fields(T_cw_44)))
        q_norms.append(float(np.linalg.norm(q_wc_4)))
    for split in SPLITS:
        _count(report, "colmap", scene, split, [r for r in rows if r[1] == split])
    # The COLMAP quaternion's norm is what matters (the CSV's is unit by construction).
    _check_poses(report, rows, np.array(q_norms))
    _check_images(report, root, rows, check_images)
    files = {
        f"abs_colmap_pose.csv_{scene}_{split}.csv": [r for r in label_io.sort_rows(rows) if r[1] == split]
        for split in SPLITS
    }
    _write_files(report, Path(out_dir), files)
    readme = (
        f"Label CSVs of scene '{scene}' made by `python -m datasets.prepare colmap` from "
        f"{model_dir / 'images.txt'}.\n"
        "Columns: scene,split,seq,img_path,t1,t2,t3,q1,q2,q3,q4. img_path is relative to the dataset root "
        f"{root}.\n"
        "t = camera centre in the COLMAP world frame (-R_wc^T t_wc, in the model's units: metres only if the "
        "model was scaled to metres).\n"
        "q = (w, x, y, z) of the camera-to-world rotation R_wc^T with w >= 0 (the 7Scenes convention; "
        "COLMAP's own QW QX QY QZ is world-to-camera).\n"
        + (
            f"Split: images listed in {test_list} are test.\n"
            if test_list is not None
            else f"Split: images sorted by name (numbers compared numerically); the image at index i is "
            f"test when i % {test_every} == 0.\n"
        )
    )
    changed = label_io.write_if_changed(Path(out_dir) / "README_labels.txt", readme)
    (report.written if changed else report.unchanged).append("README_labels.txt")
    return report


# ---- command line -----------------------------------------------------------------------------------------


def prepare(kind: str, raw_root: PathLike, out_dir: PathLike, **options) -> PrepareReport:
    """Dispatch to ``prepare_<kind>``; ``options`` are that function's keyword arguments."""
    functions = {
        "7scenes": prepare_7scenes,
        "cambridge": prepare_cambridge,
        "ecl": prepare_ecl,
        "colmap": prepare_colmap,
    }
    if kind not in functions:
        raise UserError(f"unknown dataset kind {kind!r}; choose one of {', '.join(KINDS)}")
    return functions[kind](raw_root, out_dir, **options)


def _scene_list(values: Sequence[str] | None) -> list | None:
    if not values:
        return None
    return [s for v in values for s in v.split(",") if s.strip()]


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("raw_root", help="dataset root: img_path in the CSVs is relative to it")
    common.add_argument("--out", required=True, default=argparse.SUPPRESS, help="folder for the label CSVs")
    common.add_argument("--check-images", action="store_true", help="also open and decode every image")
    parser = argparse.ArgumentParser(
        prog="python -m datasets.prepare",
        description="Write label CSVs (scene,split,seq,img_path,t1..t3,q1..q4) "
        "from raw dataset files, then print a validation report.",
    )
    sub = parser.add_subparsers(dest="kind", required=True, metavar="{" + ",".join(KINDS) + "}")
    formatter = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser(
        "7scenes",
        parents=[common],
        formatter_class=formatter,
        help="Microsoft 7-Scenes: seq-XX/frame-XXXXXX.pose.txt + TrainSplit/TestSplit.txt",
    )
    p.add_argument("--scenes", nargs="+", help="scene folders to prepare (default: all found)")
    p = sub.add_parser(
        "cambridge",
        parents=[common],
        formatter_class=formatter,
        help="Cambridge Landmarks: <Scene>/dataset_train.txt and dataset_test.txt",
    )
    p.add_argument("--scenes", nargs="+", help="scene folders to prepare (default: all found)")
    p = sub.add_parser(
        "ecl",
        parents=[common],
        formatter_class=formatter,
        help="Extended Cambridge Landmarks test styles (frameXXXXX_<style>.png)",
    )
    p.add_argument("--scenes", nargs="+", help="scenes (default: those of the four with dataset_test.txt)")
    p.add_argument("--styles", nargs="+", default=list(ECL_STYLES), help="styles to look for")
    p = sub.add_parser(
        "colmap",
        parents=[common],
        formatter_class=formatter,
        help="a COLMAP text model (images.txt) of your own images",
    )
    p.add_argument(
        "--scene", required=True, default=argparse.SUPPRESS, help="scene name written to the CSVs and their file names"
    )
    p.add_argument(
        "--model",
        default=None,
        help="folder with images.txt, relative to RAW_ROOT or absolute; None: the first of "
        f"{', '.join(COLMAP_MODEL_CANDIDATES)} under RAW_ROOT that has one",
    )
    p.add_argument(
        "--image-dir",
        default="images",
        help="folder of the images COLMAP saw, relative to RAW_ROOT (img_path = <image-dir>/<NAME>)",
    )
    split = p.add_mutually_exclusive_group()
    split.add_argument("--test-every", type=int, default=8, help="every Nth image (by name) is a test image")
    split.add_argument("--test-list", default=None, help="file listing the test images' names, one per line")
    return parser


def main(argv: Sequence[str] | None = None) -> PrepareReport:
    args = build_parser().parse_args(argv)
    setup_logging()
    options = {"check_images": args.check_images}
    if args.kind in ("7scenes", "cambridge", "ecl"):
        options["scenes"] = _scene_list(args.scenes)
    if args.kind == "ecl":
        options["styles"] = _scene_list(args.styles)
    if args.kind == "colmap":
        options.update(
            scene=args.scene,
            model=args.model,
            image_dir=args.image_dir,
            test_every=args.test_every,
            test_list=args.test_list,
        )
    report = prepare(args.kind, args.raw_root, args.out, **options)
    print(report.format())
    return report


if __name__ == "__main__":
    sys.exit(run_cli(main))
