"""Test conditions of a robustness report: named sets of label CSVs, each with its dataset root.

A condition is one appearance of the same test poses: the base test set, an ECL style (evening, winter,
summer: ``..._test_<style>.csv`` beside the base CSV, docs/datasets.md) or a synthetic shift level
(``..._test_shift<level>.csv``, :mod:`datasets.synthetic`). A multi-scene condition has one CSV per scene.
The first condition is the base the relative degradation is measured from.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from datasets.corruptions import Corruption
from datasets.labels import read_labels
from datasets.prepare import ECL_STYLES
from datasets.synthetic import find_shift_csvs, shift_label
from engine.evaluation.evaluate import TEST_FILE_PATTERNS
from engine.evaluation.records import first_line
from util.errors import UserError


@dataclass
class Condition:
    """One named test condition: (label CSV, dataset root) per part; parts are pooled like scenes. A
    corrupted condition applies ``corruption`` (:class:`datasets.corruptions.Corruption`) to every image."""

    name: str
    parts: list[tuple[Path, Path]] = field(default_factory=list)
    corruption: Corruption | None = None

    def describe(self) -> str:
        files = " + ".join(str(csv) for csv, _ in self.parts)
        if self.corruption is None:
            return files
        return f"{files}, {self.corruption.name} at severity {self.corruption.severity} (seed {self.corruption.seed})"


def parse_condition(text: str, default_root: Path) -> tuple[str, Path, Path]:
    """``NAME=CSV[:ROOT]`` -> (name, csv, root); the root defaults to the dataset root positional."""
    name, sep, rest = text.partition("=")
    if not sep or not name.strip() or not rest.strip():
        raise UserError(f"--conditions expects NAME=CSV[:ROOT], got {text!r}")
    csv, colon, root = rest.rpartition(":")
    if not colon or not csv.lower().endswith(".csv"):  # no ROOT part (or a ':' inside the path)
        csv, root = rest, ""
    return name.strip(), Path(csv), Path(root) if root else default_root


def group_conditions(items: Iterable[tuple[str, Path, Path]]) -> list[Condition]:
    """Conditions in first-mention order; a repeated name adds a part (one CSV per scene)."""
    conditions: dict[str, Condition] = {}
    for name, csv, root in items:
        conditions.setdefault(name, Condition(name)).parts.append((csv, root))
    return list(conditions.values())


def base_test_csvs(root: Path, scenes: Sequence[str]) -> list[Path]:
    """The base test CSV of each scene in ``root`` (7Scenes or Cambridge naming, docs/datasets.md)."""
    found = []
    for scene in scenes:
        candidates = [root / pattern.format(scene=scene) for pattern in TEST_FILE_PATTERNS.values()]
        hit = next((c for c in candidates if c.is_file()), None)
        if hit is None:
            raise UserError(
                f"no test CSV of scene {scene!r} in {root} (looked for {candidates[0].name} and "
                f"{candidates[1].name}); name the base test CSVs after --ecl / --shifts"
            )
        found.append(hit)
    return found


def ecl_conditions(base_csvs: Sequence[Path], root: Path) -> list[Condition]:
    """``base`` and each ECL style, from the files beside every base CSV (missing styles are kept, so the
    report says they are missing)."""
    items = []
    for csv in base_csvs:
        items.append(("base", csv, root))
        items += [(style, csv.with_name(f"{csv.stem}_{style}.csv"), root) for style in ECL_STYLES]
    return group_conditions(items)


def shift_conditions(base_csvs: Sequence[Path], root: Path) -> list[Condition]:
    """One condition per synthetic shift level found beside the base CSVs, lowest level (the base) first."""
    items = []
    for csv in base_csvs:
        levels = find_shift_csvs(csv)
        if not levels:
            raise UserError(
                f"--shifts: no {csv.stem}_shift<level>.csv beside {csv} (render them with "
                f"python -m datasets.synthetic OUT --test-shifts 0,0.5,1)"
            )
        items += [(shift_label(level), path, root) for level, path in levels]
    items.sort(key=lambda item: float(item[0][len("shift") :]))
    return group_conditions(items)


def corruption_conditions(
    base: Condition, names: Sequence[str], severities: Sequence[int], seed: int = 0
) -> list[Condition]:
    """The base condition's test images under every corruption and severity, ``NAME@SEVERITY``, by corruption
    then severity."""
    out = []
    for name in names:
        for severity in severities:
            corruption = Corruption(name, severity, seed)
            out.append(Condition(corruption.label, list(base.parts), corruption))
    return out


def check_condition(condition: Condition) -> str | None:
    """None when every CSV of the condition reads and all its images exist, else the one-line reason."""
    for csv, root in condition.parts:
        try:
            read_labels(csv, root, check_images=True)
        except UserError as exc:
            return first_line(str(exc))
    return None
