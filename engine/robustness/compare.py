"""Paired comparison of two models over seeds, per condition and scene.

    python -m engine.robustness.compare RUNS_A RUNS_B ROOT (--shifts | --ecl | --conditions ... | --corruptions ...) \
        --output_path DIR

RUNS_A and RUNS_B are checkpoints or folders of runs; a folder contributes every ``*_final.pth`` below it
(``engine.reproduction.reproduce --seeds`` writes one per seed). Each checkpoint's config records its seed; the
runs of A and B with the same seed saw the same data in the same order, so their errors are compared seed by seed
(:func:`util.stats.paired_difference`): the mean difference A - B of the median position and orientation
errors, its standard error and 95 % interval, the seeds each side won, and each side's mean and spread. Where
the interval covers zero the report says "no significant difference". A seed that only one side has is
reported and left out. Everything is evaluated through :func:`engine.robustness.report.robustness_report`, so the
comparison is a section of that report (``robustness.html``) with its own CSV (``paired.csv``).
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.evaluation.page import Column, Section
from util.errors import UserError
from util.stats import PairedDifference, paired_difference

if TYPE_CHECKING:
    from engine.robustness.report import Entry, RobustnessResult

log = logging.getLogger(__name__)

METRICS = {"median_pos_m": ("position", "m"), "median_ori_deg": ("orientation", "deg")}
ALL_SCENES = "all"  # the pooled row (multi-scene: the mean of the per-scene medians)


@dataclass(frozen=True)
class PairedRow:
    """``a`` minus ``b`` of one metric on one condition and scene, over the seeds both have."""

    a: str
    b: str
    condition: str
    scene: str
    metric: str
    diff: PairedDifference

    def words(self) -> str:
        return self.diff.verdict(self.a, self.b)


def _value(record, scene: str, metric: str) -> float | None:
    if scene == ALL_SCENES:
        return record.overall[metric]
    return next((s[metric] for s in record.scenes if s["scene"] == scene), None)


def _by_seed(
    result: RobustnessResult, entries: Sequence[Entry], condition: str, scene: str, metric: str
) -> dict[int, float]:
    out = {}
    for e in entries:
        record = result.records.get((e.label, condition))
        value = None if record is None else _value(record, scene, metric)
        if value is not None:
            out[e.seed] = value
    return out


def check_pairable(entries: Sequence[Entry], group: str) -> None:
    """Every run of a group records a seed, and no seed twice (one line naming the clash)."""
    seen: dict[int, Entry] = {}
    for e in entries:
        if e.seed is None:
            raise UserError(f"{e.path} records no seed (a bare state_dict?): it cannot be paired")
        if e.seed in seen:
            raise UserError(
                f"{group} has two runs of seed {e.seed}: {seen[e.seed].path} and {e.path}; keep one per seed"
            )
        seen[e.seed] = e


def paired_rows(result: RobustnessResult, a: str, b: str) -> list[PairedRow]:
    """Group ``a`` against group ``b``: one row per condition, scene (pooled first) and metric."""
    runs = {g: [e for e in result.entries if e.group == g] for g in (a, b)}
    for group, entries in runs.items():
        if not entries:
            raise UserError(f"no checkpoint of {group} in the report")
        check_pairable(entries, group)
    scenes = sorted({s["scene"] for r in result.records.values() for s in r.scenes})
    rows = []
    for condition in result.conditions:
        for scene in [ALL_SCENES] + (scenes if len(scenes) > 1 else []):
            for metric in METRICS:
                diff = paired_difference(*(_by_seed(result, runs[g], condition.name, scene, metric) for g in (a, b)))
                if diff is not None:
                    rows.append(PairedRow(a, b, condition.name, scene, metric, diff))
    return rows


def pairs_of(result: RobustnessResult, baseline: str) -> list[tuple[str, str]]:
    """(group, baseline group) for every other group with seeds; the baseline defaults to the first group."""
    groups = list(dict.fromkeys(e.group for e in result.entries if e.seed is not None))
    if len(groups) < 2:
        return []
    base = baseline if baseline in groups else groups[0]
    return [(g, base) for g in groups if g != base]


def unpaired_seeds(rows: Sequence[PairedRow]) -> list[str]:
    """One line per group pair whose seeds do not all match."""
    lines = {}
    for r in rows:
        if r.diff.only_a or r.diff.only_b:
            lines[(r.a, r.b)] = f"{r.a} vs {r.b}: left out unpaired seed(s) " + "; ".join(
                f"{g} only: {', '.join(map(str, s))}" for g, s in ((r.a, r.diff.only_a), (r.b, r.diff.only_b)) if s
            )
    return list(lines.values())


# Outputs ------------------------------------------------------------------------------------------------
CSV_COLUMNS = [
    "a",
    "b",
    "condition",
    "scene",
    "metric",
    "n_seeds",
    "seeds",
    "mean_diff",
    "se",
    "ci95_low",
    "ci95_high",
    "wins_a",
    "wins_b",
    "mean_a",
    "sd_a",
    "mean_b",
    "sd_b",
    "verdict",
    "unpaired_a",
    "unpaired_b",
]


def paired_csv(rows: Sequence[PairedRow]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)
    for r in rows:
        d = r.diff
        w.writerow(
            [
                r.a,
                r.b,
                r.condition,
                r.scene,
                r.metric,
                d.n,
                " ".join(map(str, d.seeds)),
                d.mean,
                d.se,
                d.low,
                d.high,
                d.wins_a,
                d.wins_b,
                d.mean_a,
                d.sd_a,
                d.mean_b,
                d.sd_b,
                r.words(),
                " ".join(map(str, d.only_a)),
                " ".join(map(str, d.only_b)),
            ]
        )
    return buf.getvalue()


def _cell(r: PairedRow) -> str:
    d, unit = r.diff, METRICS[r.metric][1]
    se = "" if d.n < 2 else f" +- {d.se:.3f}"
    return f"{d.mean:+.3f}{se} {unit} ({d.wins_a}:{d.wins_b}; {r.words()})"


def format_paired(rows: Sequence[PairedRow]) -> str:
    """Console lines: per pair, condition and scene, the position and orientation differences in words."""
    lines = []
    for a, b in dict.fromkeys((r.a, r.b) for r in rows):
        mine = [r for r in rows if (r.a, r.b) == (a, b)]
        n = max(r.diff.n for r in mine)
        lines.append(f"{a} - {b}, paired over {n} seed(s): mean difference +- SE (seeds won {a}:{b}; verdict at 95 %)")
        for key in dict.fromkeys((r.condition, r.scene) for r in mine):
            cells = {r.metric: r for r in mine if (r.condition, r.scene) == key}
            where = key[0] if key[1] == ALL_SCENES else f"{key[0]} {key[1]}"
            lines.append(
                f"  {where}: position {_cell(cells['median_pos_m'])}; orientation {_cell(cells['median_ori_deg'])}"
                if len(cells) == 2
                else f"  {where}: -"
            )
    return "\n".join(lines + unpaired_seeds(rows))


def paired_section(rows: Sequence[PairedRow]) -> Section:
    """The HTML report's section: one table row per pair, condition, scene and metric."""
    f3 = "{:.4f}"
    columns = [
        Column("A"),
        Column("B"),
        Column("condition"),
        Column("scene"),
        Column("metric"),
        Column("seeds", "{:.0f}"),
        Column("mean A - B", f3),
        Column("SE", f3),
        Column("95 % low", f3),
        Column("95 % high", f3),
        Column("won A", "{:.0f}"),
        Column("won B", "{:.0f}"),
        Column("mean A", f3),
        Column("sd A", f3),
        Column("mean B", f3),
        Column("sd B", f3),
        Column("verdict"),
    ]
    table = [
        [
            r.a,
            r.b,
            r.condition,
            r.scene,
            r.metric,
            r.diff.n,
            r.diff.mean,
            r.diff.se,
            r.diff.low,
            r.diff.high,
            r.diff.wins_a,
            r.diff.wins_b,
            r.diff.mean_a,
            r.diff.sd_a,
            r.diff.mean_b,
            r.diff.sd_b,
            r.words(),
        ]
        for r in rows
    ]
    note = (
        "Runs paired by training seed (same data order). Difference = A - B of the median error, negative: "
        "A better. 95 % interval from Student's t over the paired seeds; where it covers zero there is no "
        "significant difference. " + " ".join(unpaired_seeds(rows))
    )
    return Section("Paired comparison over seeds", note.strip(), columns, table)


# Command line -------------------------------------------------------------------------------------------
def final_checkpoints(source: str | Path) -> list[Path]:
    """A checkpoint file, or every ``*_final.pth`` below a folder (sorted); UserError when there is none."""
    path = Path(source)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserError(f"{path}: no such checkpoint or folder")
    found = sorted(path.rglob("*_final.pth"))
    if not found:
        raise UserError(f"{path}: no *_final.pth below it (give the folder of finished runs, or checkpoints)")
    return found


def build_parser() -> argparse.ArgumentParser:
    from engine.robustness.report import build_parser as robustness_parser

    parser = argparse.ArgumentParser(
        prog="python -m engine.robustness.compare",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Compare two models over paired seeds on one or more test conditions: the robustness "
        "report with a paired section (mean difference, SE, 95 %% interval, seeds won).",
    )
    parser.add_argument("runs_a", help="model A: a checkpoint or a folder of runs (every *_final.pth below it)")
    parser.add_argument("runs_b", help="model B (the baseline of the mean corruption error), the same way")
    parser.add_argument("dataset_path", help="dataset root; img_path in the label CSVs is relative to it")
    parser.add_argument("--name_a", default=None, help="what to call A (default: its model name, or the folder)")
    parser.add_argument("--name_b", default=None, help="what to call B")
    parser.add_argument("--config_file", default=None, help="JSON config with runtime settings (optional)")
    skip = {"model_name", "backbone_path", "dataset_path", "config_file", "checkpoint_path", "baseline_model", "help"}
    for action in robustness_parser()._actions:  # the conditions, corruptions, output and runtime options
        if action.dest not in skip:
            parser._add_action(action)
    return parser


def group_names(
    a: Sequence[Entry], b: Sequence[Entry], runs_a: str, runs_b: str, name_a: str | None, name_b: str | None
) -> tuple[str, str]:
    """The two groups' names: given, else the model name, else (same model) the folder names."""
    model_a = {e.model_name for e in a}
    model_b = {e.model_name for e in b}
    if name_a and name_b:
        names = (name_a, name_b)
    elif len(model_a) == 1 and len(model_b) == 1 and model_a != model_b:
        names = (name_a or model_a.pop(), name_b or model_b.pop())
    else:
        names = (name_a or Path(runs_a).name, name_b or Path(runs_b).name)
    if names[0] == names[1]:
        raise UserError(f"both sides are called {names[0]!r}: give --name_a and --name_b")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    from engine.cli import configure_console
    from engine.robustness.report import label_entries, load_entries, report_from_args
    from util.errors import run_cli

    args = build_parser().parse_args(argv)
    configure_console(args.quiet)

    def run() -> int:
        files = [final_checkpoints(args.runs_a), final_checkpoints(args.runs_b)]
        entries = load_entries("hyperpose", args.config_file, files[0] + files[1])
        a, b = entries[: len(files[0])], entries[len(files[0]) :]
        if any(e.seed is None for e in entries):
            raise UserError("bare state_dicts record no seed and cannot be paired; compare checkpoints of this toolkit")
        name_a, name_b = group_names(a, b, args.runs_a, args.runs_b, args.name_a, args.name_b)
        for e in a:
            e.group = name_a
        for e in b:
            e.group = name_b
        check_pairable(a, name_a)
        check_pairable(b, name_b)
        label_entries(entries)
        result = report_from_args(args, entries, "hyperpose", "random", name_b)
        print(format_paired(result.paired))
        print(f"csv: {result.paired_csv_path}")
        print(f"html: {result.html_path}")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
