"""The table of a reproduction: per-scene median test errors of each model and their average, beside the
published numbers (``configs/published_results.json``), as Markdown and CSV.

Each model gets the errors of two checkpoints: its final one and, where there is a validation split, the one
chosen on it (``SELECTIONS``). No row is chosen on the test set, which would flatter the numbers. With
several seeds a cell is the mean over seeds with its standard deviation, the CSV has a row per seed and a
``mean`` row, and every model is paired with the baseline model seed by seed (:mod:`util.stats`).
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from util.io import atomic_write_text
from util.stats import paired_difference

PUBLISHED = Path(__file__).resolve().parents[2] / "configs" / "published_results.json"

# Which checkpoint a row reports, and how it was chosen.
SELECTIONS = {
    "final": "the final checkpoint of the last stage",
    "best_on_val": "the checkpoint of any stage with the lowest median position error on the validation split "
    "(ties: the lower median orientation error; multi-scene: the mean over scenes of the "
    "per-scene medians), tested on the test set; [stage, epoch] names it",
}


def published(dataset: str) -> dict[str, dict[str, tuple[float, float]]]:
    """model -> scene (or ``average``) -> (median m, median deg) as published; empty where none is known."""
    table = json.loads(PUBLISHED.read_text(encoding="utf-8")).get(dataset, {})
    return {model: {scene: tuple(v) for scene, v in rows.items()} for model, rows in table.items()}


@dataclass(frozen=True)
class Measured:
    """The median test errors of one checkpoint on one scene, and which checkpoint it is."""

    pos_m: float
    ori_deg: float
    stage: int | None = None
    epoch: int | None = None
    checkpoint: str = ""  # the file, relative to the output folder


class ReproTable:
    """Measured medians per selection, model, scene and seed; ``average`` is the mean of the per-scene medians.
    ``seeds`` (None: one run per model, seed as configured) lists the training seeds of a multi-seed run."""

    def __init__(
        self,
        dataset: str,
        models: Sequence[str],
        scenes: Sequence[str],
        selections: Sequence[str] = ("final",),
        seeds: Sequence[int] | None = None,
        baseline: str | None = None,
    ):
        unknown = [s for s in selections if s not in SELECTIONS]
        assert not unknown, unknown
        self.dataset, self.models, self.scenes = dataset, list(models), list(scenes)
        self.selections = list(selections)
        self.seeds: list[int | None] = list(seeds) if seeds else [None]
        self.baseline = baseline if baseline in self.models else self.models[0]
        self.values: dict[tuple[str, str, str, int | None], Measured] = {}
        self.published = published(dataset)

    def add(
        self,
        model: str,
        scene: str,
        pos_m: float,
        ori_deg: float,
        selection: str = "final",
        *,
        stage: int | None = None,
        epoch: int | None = None,
        checkpoint: str = "",
        seed: int | None = None,
    ) -> None:
        assert selection in self.selections and seed in self.seeds, (selection, seed)
        self.values[(selection, model, scene, seed)] = Measured(float(pos_m), float(ori_deg), stage, epoch, checkpoint)

    def per_seed(self, model: str, scene: str, selection: str = "final") -> dict[int | None, Measured]:
        """Seed -> the measured medians (``average``: the mean over scenes, only where every scene is known)."""
        out = {}
        for seed in self.seeds:
            if scene != "average":
                if (selection, model, scene, seed) in self.values:
                    out[seed] = self.values[(selection, model, scene, seed)]
                continue
            rows = [self.values[k] for s in self.scenes if (k := (selection, model, s, seed)) in self.values]
            if len(rows) == len(self.scenes):  # an average over some scenes only would not compare
                out[seed] = Measured(sum(r.pos_m for r in rows) / len(rows), sum(r.ori_deg for r in rows) / len(rows))
        return out

    def entry(self, model: str, scene: str, selection: str = "final") -> Measured | None:
        """One run's medians, or the mean over seeds (only when every seed is known)."""
        runs = self.per_seed(model, scene, selection)
        if len(runs) != len(self.seeds):
            return None
        if len(runs) == 1:
            return next(iter(runs.values()))
        return Measured(
            sum(r.pos_m for r in runs.values()) / len(runs), sum(r.ori_deg for r in runs.values()) / len(runs)
        )

    def spread(self, model: str, scene: str, selection: str = "final") -> tuple[float, float] | None:
        """Sample standard deviations over seeds of (position, orientation); None with one seed."""
        runs = list(self.per_seed(model, scene, selection).values())
        if len(runs) < 2 or len(runs) != len(self.seeds):
            return None
        return statistics.stdev(r.pos_m for r in runs), statistics.stdev(r.ori_deg for r in runs)

    def paired(self, model: str, scene: str, selection: str = "final"):
        """``model`` minus the baseline over the seeds both have: (position, orientation) PairedDifference."""
        a, b = self.per_seed(model, scene, selection), self.per_seed(self.baseline, scene, selection)
        return (
            paired_difference({s: m.pos_m for s, m in a.items()}, {s: m.pos_m for s, m in b.items()}),
            paired_difference({s: m.ori_deg for s, m in a.items()}, {s: m.ori_deg for s, m in b.items()}),
        )

    def measured(self, model: str, scene: str, selection: str = "final") -> tuple[float, float] | None:
        e = self.entry(model, scene, selection)
        return None if e is None else (e.pos_m, e.ori_deg)

    def paper(self, model: str, scene: str) -> tuple[float, float] | None:
        return self.published.get(model, {}).get(scene)

    @property
    def multi_seed(self) -> bool:
        return len(self.seeds) > 1

    def markdown(self) -> str:
        """One table per selection: scenes down, models across, then the published numbers; with several
        seeds, mean +- sd over seeds and the paired differences from the baseline model."""

        def cell(v: tuple[float, float] | None, where: str = "", sd: tuple[float, float] | None = None) -> str:
            if v is None:
                return "-"
            if sd is None:
                return f"{v[0]:.3f} / {v[1]:.2f}{where}"
            return f"{v[0]:.3f} +- {sd[0]:.3f} / {v[1]:.2f} +- {sd[1]:.2f}{where}"

        def chosen(e: Measured | None, selection: str) -> str:
            if e is None or selection == "final" or e.stage is None:
                return ""
            return f" [stage {e.stage}, epoch {'?' if e.epoch is None else e.epoch}]"

        with_paper = [m for m in self.models if m in self.published]
        head = ["scene"] + self.models + [f"{m} (published)" for m in with_paper]
        lines = [f"{self.dataset}: median position [m] / orientation [deg] on the test set"]
        if self.multi_seed:
            lines.append(f"Mean +- sample standard deviation over seeds {', '.join(map(str, self.seeds))}.")
        for selection in self.selections:
            lines += [
                "",
                f"{selection}: {SELECTIONS[selection]}.",
                "",
                "| " + " | ".join(head) + " |",
                "|" + "---|" * len(head),
            ]
            for scene in self.scenes + ["average"]:
                cells = []
                for m in self.models:
                    e = self.entry(m, scene, selection)
                    cells.append(
                        cell(
                            None if e is None else (e.pos_m, e.ori_deg),
                            "" if self.multi_seed else chosen(e, selection),
                            self.spread(m, scene, selection),
                        )
                    )
                cells += [cell(self.paper(m, scene)) for m in with_paper]
                lines.append(f"| {scene} | " + " | ".join(cells) + " |")
            if self.multi_seed and len(self.models) > 1:
                lines += self._paired_markdown(selection)
        return "\n".join(lines) + "\n"

    def _paired_markdown(self, selection: str) -> list[str]:
        others = [m for m in self.models if m != self.baseline]
        lines = [
            "",
            f"{selection}, paired by seed: model - {self.baseline}, mean difference +- SE (seeds won "
            f"model:{self.baseline}; verdict at 95 %).",
            "",
            "| scene | " + " | ".join(others) + " |",
            "|" + "---|" * (len(others) + 1),
        ]

        def words(d, unit, name) -> str:
            if d is None:
                return "-"
            se = "" if d.n < 2 else f" +- {d.se:.3f}"
            return f"{d.mean:+.3f}{se} {unit} ({d.wins_a}:{d.wins_b}, {d.verdict(name, self.baseline)})"

        for scene in self.scenes + ["average"]:
            cells = []
            for m in others:
                pos, ori = self.paired(m, scene, selection)
                cells.append(f"{words(pos, 'm', m)}; {words(ori, 'deg', m)}")
            lines.append(f"| {scene} | " + " | ".join(cells) + " |")
        return lines

    def csv(self) -> str:
        """One row per selection, model and scene (with several seeds: per seed, then the ``mean`` row)."""
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(
            [
                "dataset",
                "model",
                "scene",
                "selection",
                "median_pos_m",
                "median_ori_deg",
                "stage",
                "epoch",
                "checkpoint",
                "published_pos_m",
                "published_ori_deg",
                "seed",
            ]
        )

        def row(e: Measured | None) -> tuple:
            return (
                ("", "", "", "", "")
                if e is None
                else (
                    e.pos_m,
                    e.ori_deg,
                    "" if e.stage is None else e.stage,
                    "" if e.epoch is None else e.epoch,
                    e.checkpoint,
                )
            )

        for selection in self.selections:
            for m in self.models:
                for scene in self.scenes + ["average"]:
                    paper = self.paper(m, scene) or ("", "")
                    if self.multi_seed:
                        runs = self.per_seed(m, scene, selection)
                        for seed in self.seeds:
                            w.writerow([self.dataset, m, scene, selection, *row(runs.get(seed)), *paper, seed])
                    w.writerow(
                        [
                            self.dataset,
                            m,
                            scene,
                            selection,
                            *row(self.entry(m, scene, selection)),
                            *paper,
                            "mean" if self.multi_seed else "",
                        ]
                    )
        return buf.getvalue()

    def paths(self, out: Path) -> tuple[Path, Path]:
        return out / f"{self.dataset}_results.md", out / f"{self.dataset}_results.csv"

    def write(self, out: Path) -> tuple[Path, Path]:
        md, csv_path = self.paths(out)
        atomic_write_text(md, self.markdown())
        atomic_write_text(csv_path, self.csv())
        return md, csv_path
