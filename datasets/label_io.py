"""Raw-label parsing and label-CSV writing shared by the preparation tool and the synthetic generator.

Both tools build every CSV row with the functions here, and write every file through
:func:`write_label_csv`, so a label CSV prepared from raw files is byte-identical to the one the synthetic
generator writes beside the same raw files.

Conventions (docs/datasets.md, ``util.pose``): ``t`` is the camera centre in the world frame in metres;
``q`` is scalar-first (w, x, y, z). 7Scenes rows hold the camera-to-world rotation with w >= 0 (computed
from the 4x4 camera-to-world ``frame-XXXXXX.pose.txt``); Cambridge rows hold the raw ``X Y Z W P Q R``
text of ``dataset_*.txt`` (W P Q R = world-to-camera rotation), copied character for character.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Union

import numpy as np

from util.errors import UserError
from util.io import atomic_write_text
from util.pose import rotmat_to_quat

PathLike = Union[str, os.PathLike]

LABEL_COLUMNS = ("scene", "split", "seq", "img_path", "t1", "t2", "t3", "q1", "q2", "q3", "q4")
LABEL_HEADER = ",".join(LABEL_COLUMNS)
SPLITS = ("train", "test")

SEVEN_SCENES = ("chess", "fire", "heads", "office", "pumpkin", "redkitchen", "stairs")
CAMBRIDGE_SCENES = ("ShopFacade", "KingsCollege", "OldHospital", "StMarysChurch", "GreatCourt", "Street")
CAMBRIDGE_FOUR = ("KingsCollege", "OldHospital", "ShopFacade", "StMarysChurch")
CAMBRIDGE_FIVE = CAMBRIDGE_FOUR + ("GreatCourt",)

# Rows per (scene, split) of the public releases, for the preparation report.
OFFICIAL_COUNTS = {
    "7scenes": {
        "chess": (4000, 2000),
        "fire": (2000, 2000),
        "heads": (1000, 1000),
        "office": (6000, 4000),
        "pumpkin": (4000, 2000),
        "redkitchen": (7000, 5000),
        "stairs": (2000, 1000),
    },
    "cambridge": {
        "GreatCourt": (1532, 760),
        "KingsCollege": (1220, 343),
        "OldHospital": (895, 182),
        "ShopFacade": (231, 103),
        "StMarysChurch": (1487, 530),
        "Street": (3015, 2923),
    },
}

CAMBRIDGE_HEADER = ("Visual Landmark Dataset V1", "ImageFile, Camera Position [X Y Z W P Q R]", "")
CAMBRIDGE_SPLIT_FILES = {"train": "dataset_train.txt", "test": "dataset_test.txt"}
SEVEN_SCENES_SPLIT_FILES = {"train": "TrainSplit.txt", "test": "TestSplit.txt"}

Row = tuple  # 11 strings in LABEL_COLUMNS order


def format_float(x: float) -> str:
    """Deterministic text of a label value: 9 significant digits (exact for float32), no negative zero."""
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"non-finite label value {x}")
    text = "%.9g" % x
    return "0" if text in ("-0", "0") else text


def natural_key(text: str) -> tuple:
    """Sort key that orders embedded numbers numerically (``seq2`` before ``seq10``)."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def _snippet(text: str, limit: int = 60) -> str:
    """A line quoted for a one-line error message."""
    text = text.strip()
    return repr(text if len(text) <= limit else text[:limit] + "...")


# ---- 7Scenes ----------------------------------------------------------------------------------------------


def seven_scenes_seq_name(number: int) -> str:
    """``seq-03`` for sequence 3 (the folder name)."""
    return f"seq-{number:02d}"


def seven_scenes_frame_stem(index: int) -> str:
    """``frame-000042`` for frame 42 (``.color.png`` / ``.pose.txt`` follow)."""
    return f"frame-{index:06d}"


def format_pose_txt(cam_to_world_44: np.ndarray) -> str:
    """A 7Scenes ``frame-XXXXXX.pose.txt``: the 4x4 camera-to-world matrix, 4 rows of 4 tab-separated floats."""
    T = np.asarray(cam_to_world_44, dtype=np.float64)
    assert T.shape == (4, 4)
    return "".join("\t".join("%.9e" % (v + 0.0) for v in row) + "\n" for row in T)


def parse_pose_txt(text: str, source: str) -> np.ndarray:
    """The 4x4 matrix of a 7Scenes pose file's text; ``UserError`` naming ``source`` and the line if malformed."""
    rows = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 4:
            raise UserError(
                f"{source}:{line_no}: expected 4 numbers per row of the 4x4 camera-to-world "
                f"matrix, got {len(fields)} in {_snippet(line)}"
            )
        try:
            rows.append([float(f) for f in fields])
        except ValueError:
            raise UserError(f"{source}:{line_no}: not a number in {_snippet(line)}") from None
    if len(rows) != 4:
        raise UserError(f"{source}: expected 4 rows of 4 numbers (a 4x4 camera-to-world matrix), got {len(rows)} rows")
    return np.array(rows, dtype=np.float64)


def parse_split_file(path: PathLike) -> list:
    """``(sequence number, line number)`` pairs of a 7Scenes ``TrainSplit.txt`` / ``TestSplit.txt``
    (the line ``sequence1`` means folder ``seq-01``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: split file missing (each 7Scenes scene needs TrainSplit.txt and TestSplit.txt)")
    numbers = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        match = re.fullmatch(r"sequence(\d+)", line.strip(), flags=re.IGNORECASE)
        if match is None:
            raise UserError(f"{path}:{line_no}: expected a line like 'sequence1', got {_snippet(line)}")
        numbers.append((int(match.group(1)), line_no))
    if not numbers:
        raise UserError(f"{path}: no 'sequenceN' lines")
    return numbers


def seven_scenes_pose_fields(cam_to_world_44: np.ndarray) -> list:
    """The 7 CSV values of a camera-to-world matrix: camera centre, then its rotation's quaternion (w >= 0)."""
    T = np.asarray(cam_to_world_44, dtype=np.float64)
    q_4 = rotmat_to_quat(T[:3, :3])
    return [format_float(v) for v in T[:3, 3]] + [format_float(v) for v in q_4]


# ---- Cambridge Landmarks ----------------------------------------------------------------------------------


def cambridge_frame_name(seq_number: int, frame_number: int) -> str:
    """``seq2/frame00017.png`` (the image name of a Cambridge split file, relative to the scene folder)."""
    return f"seq{seq_number}/frame{frame_number:05d}.png"


def format_cambridge_split(entries: Iterable[Sequence[str]]) -> str:
    """Text of a ``dataset_train.txt``/``dataset_test.txt``: the 3 header lines, then ``NAME X Y Z W P Q R``."""
    lines = list(CAMBRIDGE_HEADER) + [" ".join(entry) for entry in entries]
    return "\n".join(lines) + "\n"


def parse_cambridge_split(path: PathLike) -> list:
    """Entries ``(name, [X, Y, Z, W, P, Q, R] as the original strings, line_no)`` of a Cambridge split file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"{path}: split file missing (each Cambridge scene needs dataset_train.txt and dataset_test.txt)"
        )
    lines = path.read_text(encoding="utf-8-sig", errors="replace").splitlines()
    for line_no, expected in enumerate(CAMBRIDGE_HEADER, start=1):
        got = lines[line_no - 1].strip() if line_no <= len(lines) else None
        if got is None or (got != expected and not (line_no == 2 and got.startswith("ImageFile"))):
            shown = "end of file" if got is None else _snippet(got)
            raise UserError(f"{path}:{line_no}: expected the header line {expected!r}, got {shown}")
    entries = []
    for line_no, line in enumerate(lines[3:], start=4):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 8:
            raise UserError(
                f"{path}:{line_no}: expected 'IMAGE X Y Z W P Q R' (8 fields), got {len(fields)} in {_snippet(line)}"
            )
        for value in fields[1:]:
            try:
                ok = math.isfinite(float(value))
            except ValueError:
                ok = False
            if not ok:
                raise UserError(f"{path}:{line_no}: not a finite number {value!r} in {_snippet(line)}")
        entries.append((fields[0], fields[1:], line_no))
    return entries


# ---- label CSV files --------------------------------------------------------------------------------------


def seven_scenes_csv_name(scene: str, split: str) -> str:
    return f"abs_7scenes_pose.csv_{scene}_{split}.csv"


def cambridge_csv_name(scene: str, split: str) -> str:
    """``split`` is ``train``, ``test`` or ``test_<style>`` (Extended Cambridge Landmarks)."""
    return f"abs_cambridge_pose_sorted.csv_{scene}_{split}.csv"


def sort_rows(rows: Iterable[Row]) -> list:
    """Rows in file order: by scene, then image path with numbers compared numerically (sequence, frame)."""
    return sorted(rows, key=lambda r: (r[0], natural_key(r[3])))


def group_label_files(kind: str, rows: Iterable[Row]) -> dict:
    """File name -> rows for every label CSV a dataset kind gets (per scene and split, multi-scene).

    7Scenes rows are sorted (:func:`sort_rows`). Cambridge rows keep the order they come in, which is the
    order of the raw ``dataset_*.txt`` files scene after scene: the reference's Cambridge CSVs keep that
    order (KingsCollege test lists seq7, seq2, seq3), so prepared files equal them byte for byte.

    ``7scenes``: ``abs_7scenes_pose.csv_<scene>_<split>.csv`` and ``7scenes_all_scenes.csv`` (all train rows).
    ``cambridge``: ``abs_cambridge_pose_sorted.csv_<Scene>_<split>.csv``, ``cambridge_all_scenes.csv`` (all
    train rows) and ``cambridge_four_scenes.csv`` / ``cambridge_five_scenes.csv`` (train rows of those scenes)
    when all of their scenes are present.
    """
    rows = sort_rows(rows) if kind == "7scenes" else list(rows)
    files: dict = {}
    name_of = {"7scenes": seven_scenes_csv_name, "cambridge": cambridge_csv_name}[kind]
    for row in rows:
        files.setdefault(name_of(row[0], row[1]), []).append(row)
    train = [r for r in rows if r[1] == "train"]
    if train:
        files[f"{kind}_all_scenes.csv"] = train
    scenes = {r[0] for r in train}
    if kind == "cambridge":
        for name, group in (
            ("cambridge_four_scenes.csv", CAMBRIDGE_FOUR),
            ("cambridge_five_scenes.csv", CAMBRIDGE_FIVE),
        ):
            if set(group) <= scenes:
                files[name] = [r for r in train if r[0] in group]
    return files


def format_label_csv(rows: Iterable[Row]) -> str:
    """CSV text: the header line, then one comma-separated line per row (values are never quoted)."""
    lines = [LABEL_HEADER]
    for row in rows:
        assert len(row) == len(LABEL_COLUMNS), row
        for value in row:
            if any(c in value for c in ',"\n\r'):
                raise UserError(
                    f"cannot write {value!r} to a label CSV: commas, quotes and newlines are "
                    f"not allowed in scene names or image paths"
                )
        lines.append(",".join(row))
    return "\n".join(lines) + "\n"


def write_if_changed(path: PathLike, text: str) -> bool:
    """Write ``text`` atomically unless the file already holds exactly it (keeps its mtime). True if written."""
    path = Path(path)
    data = text.encode("utf-8")
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    atomic_write_text(path, text)
    return True


def write_label_csv(rows: Iterable[Row], path: PathLike) -> bool:
    """Write a label CSV (the header of docs/datasets.md) atomically, only if its content changes. True if written."""
    return write_if_changed(path, format_label_csv(rows))
