"""The table of a reproduction: per-scene median test errors of each model and their average, beside the
published numbers (``configs/published_results.json``), as Markdown and CSV.

Each model gets the errors of two checkpoints: its final one and, where there is a validation split, the one
chosen on it (``SELECTIONS``). No row is chosen on the test set, which would flatter the numbers.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from util.io import atomic_write_text

PUBLISHED = Path(__file__).resolve().parent.parent / "configs" / "published_results.json"

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
    """Measured medians per selection, model and scene; ``average`` is the mean of the per-scene medians."""

    def __init__(self, dataset: str, models: Sequence[str], scenes: Sequence[str],
                 selections: Sequence[str] = ("final",)):
        unknown = [s for s in selections if s not in SELECTIONS]
        assert not unknown, unknown
        self.dataset, self.models, self.scenes = dataset, list(models), list(scenes)
        self.selections = list(selections)
        self.values: dict[tuple[str, str, str], Measured] = {}
        self.published = published(dataset)

    def add(self, model: str, scene: str, pos_m: float, ori_deg: float, selection: str = "final", *,
            stage: int | None = None, epoch: int | None = None, checkpoint: str = "") -> None:
        assert selection in self.selections, selection
        self.values[(selection, model, scene)] = Measured(float(pos_m), float(ori_deg), stage, epoch, checkpoint)

    def entry(self, model: str, scene: str, selection: str = "final") -> Measured | None:
        if scene != "average":
            return self.values.get((selection, model, scene))
        rows = [self.values[(selection, model, s)] for s in self.scenes if (selection, model, s) in self.values]
        if len(rows) != len(self.scenes):  # an average over some scenes only would not compare
            return None
        return Measured(sum(r.pos_m for r in rows) / len(rows), sum(r.ori_deg for r in rows) / len(rows))

    def measured(self, model: str, scene: str, selection: str = "final") -> tuple[float, float] | None:
        e = self.entry(model, scene, selection)
        return None if e is None else (e.pos_m, e.ori_deg)

    def paper(self, model: str, scene: str) -> tuple[float, float] | None:
        return self.published.get(model, {}).get(scene)

    def markdown(self) -> str:
        """One table per selection: scenes down, models across, then the published numbers."""
        def cell(v: tuple[float, float] | None, where: str = "") -> str:
            return "-" if v is None else f"{v[0]:.3f} / {v[1]:.2f}{where}"

        def chosen(e: Measured | None, selection: str) -> str:
            if e is None or selection == "final" or e.stage is None:
                return ""
            return f" [stage {e.stage}, epoch {'?' if e.epoch is None else e.epoch}]"

        with_paper = [m for m in self.models if m in self.published]
        head = ["scene"] + self.models + [f"{m} (published)" for m in with_paper]
        lines = [f"{self.dataset}: median position [m] / orientation [deg] on the test set"]
        for selection in self.selections:
            lines += ["", f"{selection}: {SELECTIONS[selection]}.", "",
                      "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for scene in self.scenes + ["average"]:
                cells = []
                for m in self.models:
                    e = self.entry(m, scene, selection)
                    cells.append(cell(None if e is None else (e.pos_m, e.ori_deg), chosen(e, selection)))
                cells += [cell(self.paper(m, scene)) for m in with_paper]
                lines.append(f"| {scene} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["dataset", "model", "scene", "selection", "median_pos_m", "median_ori_deg", "stage", "epoch",
                    "checkpoint", "published_pos_m", "published_ori_deg"])
        for selection in self.selections:
            for m in self.models:
                for scene in self.scenes + ["average"]:
                    e, paper = self.entry(m, scene, selection), self.paper(m, scene)
                    ours = ("", "", "", "", "") if e is None else (
                        e.pos_m, e.ori_deg, "" if e.stage is None else e.stage,
                        "" if e.epoch is None else e.epoch, e.checkpoint)
                    w.writerow([self.dataset, m, scene, selection, *ours, *(paper or ("", ""))])
        return buf.getvalue()

    def paths(self, out: Path) -> tuple[Path, Path]:
        return out / f"{self.dataset}_results.md", out / f"{self.dataset}_results.csv"

    def write(self, out: Path) -> tuple[Path, Path]:
        md, csv_path = self.paths(out)
        atomic_write_text(md, self.markdown())
        atomic_write_text(csv_path, self.csv())
        return md, csv_path
