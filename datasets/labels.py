"""Read and validate the label CSVs that every script takes (docs/datasets.md).

One row per image: ``scene, split, seq, img_path, t1, t2, t3, q1, q2, q3, q4``. ``img_path`` is relative to
the dataset root (``<root>/<img_path>``); ``t`` is the camera centre in the world frame in metres; ``q`` is
scalar-first (w, x, y, z): the camera-to-world rotation for 7Scenes, the raw world-to-camera W P Q R for
Cambridge (see ``util.pose``). Problems are reported by CSV line number, the header being line 1.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np
import pandas as pd

from datasets.label_io import natural_key
from util.errors import UserError, printable
from util.io import check_input_file

logger = logging.getLogger(__name__)

LABEL_COLUMNS = ["scene", "split", "seq", "img_path", "t1", "t2", "t3", "q1", "q2", "q3", "q4"]
TEXT_COLUMNS = ["scene", "split", "seq", "img_path"]
REQUIRED_TEXT_COLUMNS = ["scene", "img_path"]
T_COLUMNS = ["t1", "t2", "t3"]
Q_COLUMNS = ["q1", "q2", "q3", "q4"]
POSE_COLUMNS = T_COLUMNS + Q_COLUMNS

QUAT_NORM_TOL = 1e-3  # |1 - |q|| above this is renormalised with a warning
QUAT_ZERO_NORM = 1e-6  # |q| below this has no direction: an error
MAX_ABS_TRANSLATION_M = 1e4  # a larger |t_i| is flagged (public GreatCourt has one row at ~3e9 m)
MAX_LISTED = 10  # line numbers / paths listed in a message before "and K more"
MAX_LISTED_PATHS = 3

PathLike = Union[str, os.PathLike]


def format_lines(lines: Sequence[int], max_listed: int = MAX_LISTED) -> str:
    """``"CSV line 5"`` / ``"CSV lines 2, 3, 9"`` / ``"CSV lines 2, ..., 11 and 4 more"`` (header = line 1)."""
    lines = [int(n) for n in lines]
    word = "line" if len(lines) == 1 else "lines"
    shown = ", ".join(str(n) for n in lines[:max_listed])
    more = f" and {len(lines) - max_listed} more" if len(lines) > max_listed else ""
    return f"CSV {word} {shown}{more}"


def read_labels_csv(labels_file: PathLike) -> pd.DataFrame:
    """Read a label CSV as text, one row per non-blank line, indexed by CSV line number (header = 1)."""
    path = check_input_file(labels_file, "labels file")
    try:
        # Everything as text: the pose columns are parsed by validate_labels so that a bad cell is reported
        # with its line instead of silently turning a whole column into strings.
        raw = pd.read_csv(
            path, dtype=str, na_filter=False, skip_blank_lines=False, skipinitialspace=True, encoding="utf-8-sig"
        )
    except pd.errors.EmptyDataError:
        raise UserError(f"labels file is empty: {path} (expected the header {','.join(LABEL_COLUMNS)})") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        message = " ".join(str(e).split())
        raise UserError(f"cannot parse labels file {path}: {message}") from None
    raw = raw.fillna("")  # short rows leave NaN in their missing trailing fields
    raw.columns = [str(c).strip() for c in raw.columns]
    raw.index = pd.RangeIndex(2, 2 + len(raw), name="csv_line")
    blank = (raw.apply(lambda col: col.str.strip()) == "").all(axis=1)
    return raw[~blank]


def validate_labels(raw: pd.DataFrame, source: str = "labels") -> pd.DataFrame:
    """Check a text table of labels and return it typed, with unit quaternions and a fresh 0..N-1 index.

    ``raw`` holds strings and is indexed by CSV line number (as from :func:`read_labels_csv`). Raises
    ``UserError`` for missing columns, no rows, empty scene/img_path, non-finite or unparsable poses and
    zero quaternions; logs one warning for non-unit quaternions (renormalised) and one for implausibly
    large translations (kept as they are).
    """
    missing = [c for c in LABEL_COLUMNS if c not in raw.columns]
    if missing:
        raise UserError(
            f"{source}: missing column(s) {', '.join(missing)}; "
            f"the header must be {','.join(LABEL_COLUMNS)} (found {printable(','.join(map(str, raw.columns)), 200)})"
        )
    if len(raw) == 0:
        raise UserError(f"{source}: no data rows after the header")

    text = raw[TEXT_COLUMNS].apply(lambda col: col.astype(str).str.strip())
    for column in REQUIRED_TEXT_COLUMNS:
        empty = text.index[text[column] == ""]
        if len(empty):
            raise UserError(f"{source}: empty {column} at {format_lines(empty)}")

    _warn_duplicates_and_outside_paths(raw, text, source)

    pose = raw[POSE_COLUMNS].apply(lambda col: pd.to_numeric(col.astype(str).str.strip(), errors="coerce"))
    pose_N7 = np.array(pose.to_numpy(dtype=np.float64))  # a writable copy (pandas copy-on-write)
    bad = pose.index[~np.isfinite(pose_N7).all(axis=1)]
    if len(bad):
        raise UserError(f"{source}: missing, non-numeric or non-finite t1..q4 values at {format_lines(bad)}")

    q_norm_N = np.linalg.norm(pose_N7[:, 3:], axis=1)
    zero = pose.index[q_norm_N < QUAT_ZERO_NORM]
    if len(zero):
        raise UserError(f"{source}: zero quaternion (q1..q4 all ~0, no orientation) at {format_lines(zero)}")
    off = np.abs(q_norm_N - 1.0) > QUAT_NORM_TOL
    if off.any():
        logger.warning(
            "%s: %d quaternion(s) with norm off 1 by more than %g (norms %.4g..%.4g, at %s); "
            "renormalised to unit length",
            source,
            int(off.sum()),
            QUAT_NORM_TOL,
            q_norm_N[off].min(),
            q_norm_N[off].max(),
            format_lines(pose.index[off]),
        )
    pose_N7[:, 3:] /= q_norm_N[:, None]

    t_max_N = np.abs(pose_N7[:, :3]).max(axis=1)
    far = t_max_N > MAX_ABS_TRANSLATION_M
    if far.any():
        logger.warning(
            "%s: %d row(s) with a translation component above %g m (largest %.3g m) at %s; "
            "likely a label defect, kept as is",
            source,
            int(far.sum()),
            MAX_ABS_TRANSLATION_M,
            t_max_N[far].max(),
            format_lines(pose.index[far]),
        )

    labels = text.reset_index(drop=True)
    labels[POSE_COLUMNS] = pose_N7
    return labels[LABEL_COLUMNS]


def _outside_root(img_path: str) -> bool:
    """An absolute path (POSIX or Windows), or one whose ``..`` parts climb above the dataset root."""
    if img_path.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:[\\/]", img_path):
        return True
    depth = 0
    for part in re.split(r"[\\/]+", img_path):
        depth += -1 if part == ".." else 0 if part in ("", ".") else 1
        if depth < 0:
            return True
    return False


def _warn_duplicates_and_outside_paths(raw: pd.DataFrame, text: pd.DataFrame, source: str) -> None:
    """Oddities that still load: repeated rows (weighted twice in training and testing), and img_path
    values that point outside the dataset root (read from there, so the dataset is not self-contained)."""
    cells = raw[LABEL_COLUMNS].apply(lambda col: col.astype(str).str.strip())
    repeated = cells.index[cells.duplicated(keep="first")]
    if len(repeated):
        logger.warning(
            "%s: %d row(s) repeat an earlier row exactly (at %s); each copy counts as a frame",
            source,
            len(repeated),
            format_lines(repeated),
        )
    outside = text.index[text["img_path"].map(_outside_root)]
    if len(outside):
        logger.warning(
            "%s: %d img_path value(s) are absolute or leave the dataset root with '..' (at %s, "
            "e.g. %s); they are read from there",
            source,
            len(outside),
            format_lines(outside),
            text.loc[outside[0], "img_path"],
        )


def find_missing_images(img_paths: Sequence[str], dataset_root: PathLike) -> list:
    """The ``<dataset_root>/<img_path>`` paths that are not files, in CSV order."""
    root = Path(dataset_root)
    return [root / p for p in img_paths if not os.path.isfile(root / p)]


def check_images_exist(img_paths: Sequence[str], dataset_root: PathLike, source: str = "labels") -> None:
    """Raise ``UserError`` with the count and the first few full paths if any image file is missing."""
    missing = find_missing_images(img_paths, dataset_root)
    if not missing:
        return
    folders = [p for p in missing if p.is_dir()]
    if folders:
        shown = ", ".join(str(p) for p in folders[:MAX_LISTED_PATHS])
        more = f" and {len(folders) - MAX_LISTED_PATHS} more" if len(folders) > MAX_LISTED_PATHS else ""
        raise UserError(
            f"{source}: {len(folders)} img_path value(s) name a directory, not an image file: {shown}{more}"
        )
    if not Path(dataset_root).is_dir():
        raise UserError(
            f"dataset root {dataset_root} is not a directory; the img_path values of {source} are "
            f"relative to it, check the dataset root argument"
        )
    shown = ", ".join(str(p) for p in missing[:MAX_LISTED_PATHS])
    more = f" and {len(missing) - MAX_LISTED_PATHS} more" if len(missing) > MAX_LISTED_PATHS else ""
    raise UserError(
        f"{source}: {len(missing)} of {len(img_paths)} images not found: {shown}{more}; "
        f"img_path is relative to the dataset root, check the dataset root argument "
        f"(got {dataset_root})"
    )


def split_last_sequences(labels_file: PathLike, n_held_out: int, advice: str = "") -> tuple[list, list]:
    """(kept rows, held-out rows) of a label CSV: the last ``n_held_out`` sequences of every scene are held out
    (e.g. as a validation split), the ``seq`` values ordered naturally (``seq-2`` before ``seq-10``).

    Rows are tuples of the cells' text in ``LABEL_COLUMNS`` order, in file order, so a split file written with
    :func:`datasets.label_io.write_label_csv` keeps every value as it was. A scene with no more than
    ``n_held_out`` sequences would leave nothing to train on: a ``UserError`` naming it, ``advice`` appended.
    """
    raw = read_labels_csv(labels_file)
    validate_labels(raw, source=str(labels_file))  # a bad row fails here, with its line number
    cells = raw[LABEL_COLUMNS].apply(lambda col: col.astype(str).str.strip())
    held: set = set()
    for scene, seqs in cells.groupby("scene", sort=False)["seq"]:
        names = sorted(set(seqs), key=natural_key)
        if len(names) <= n_held_out:
            raise UserError(
                f"{labels_file}: scene {scene!r} has {len(names)} sequence(s) "
                f"({', '.join(names) or 'no seq values'}), so holding out the last {n_held_out} "
                f"leaves none to train on{advice}"
            )
        held |= {(scene, seq) for seq in names[len(names) - n_held_out :]}
    rows = [tuple(r) for r in cells.itertuples(index=False)]
    out = [(r[0], r[2]) in held for r in rows]
    return [r for r, o in zip(rows, out) if not o], [r for r, o in zip(rows, out) if o]


def read_labels(labels_file: PathLike, dataset_root: PathLike | None = None, check_images: bool = True) -> pd.DataFrame:
    """Load and validate a label CSV; columns ``LABEL_COLUMNS``, one row per image, unit quaternions.

    With ``dataset_root`` given and ``check_images`` true, every ``<dataset_root>/<img_path>`` must exist, so
    a wrong root fails here with a hint rather than later inside a data-loader worker.
    """
    labels = validate_labels(read_labels_csv(labels_file), source=str(labels_file))
    if dataset_root is not None and check_images:
        check_images_exist(labels["img_path"].tolist(), dataset_root, source=str(labels_file))
    return labels
