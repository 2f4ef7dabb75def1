"""The table of a reproduction: per-scene median errors of each model and their average, beside the
published numbers (``configs/published_results.json``), as Markdown and CSV."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Sequence

from util.io import atomic_write_text

PUBLISHED = Path(__file__).resolve().parent.parent / "configs" / "published_results.json"


def published(dataset: str) -> dict[str, dict[str, tuple[float, float]]]:
    """model -> scene (or ``average``) -> (median m, median deg) as published; empty where none is known."""
    table = json.loads(PUBLISHED.read_text(encoding="utf-8")).get(dataset, {})
    return {model: {scene: tuple(v) for scene, v in rows.items()} for model, rows in table.items()}


class ReproTable:
    """Measured medians per model and scene; ``average`` is the mean of the per-scene medians."""

    def __init__(self, dataset: str, models: Sequence[str], scenes: Sequence[str]):
        self.dataset, self.models, self.scenes = dataset, list(models), list(scenes)
        self.values: dict[tuple[str, str], tuple[float, float]] = {}
        self.published = published(dataset)

    def add(self, model: str, scene: str, pos_m: float, ori_deg: float) -> None:
        self.values[(model, scene)] = (float(pos_m), float(ori_deg))

    def measured(self, model: str, scene: str) -> tuple[float, float] | None:
        if scene != "average":
            return self.values.get((model, scene))
        rows = [self.values[(model, s)] for s in self.scenes if (model, s) in self.values]
        if len(rows) != len(self.scenes):  # an average over some scenes only would not compare
            return None
        return sum(r[0] for r in rows) / len(rows), sum(r[1] for r in rows) / len(rows)

    def paper(self, model: str, scene: str) -> tuple[float, float] | None:
        return self.published.get(model, {}).get(scene)

    def markdown(self) -> str:
        def cell(v):
            return "-" if v is None else f"{v[0]:.3f} / {v[1]:.2f}"

        with_paper = [m for m in self.models if m in self.published]
        head = ["scene"] + self.models + [f"{m} (published)" for m in with_paper]
        lines = [f"{self.dataset}: median position [m] / orientation [deg]", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for scene in self.scenes + ["average"]:
            cells = [cell(self.measured(m, scene)) for m in self.models]
            cells += [cell(self.paper(m, scene)) for m in with_paper]
            lines.append(f"| {scene} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["dataset", "model", "scene", "median_pos_m", "median_ori_deg", "published_pos_m",
                    "published_ori_deg"])
        for m in self.models:
            for scene in self.scenes + ["average"]:
                ours, paper = self.measured(m, scene), self.paper(m, scene)
                w.writerow([self.dataset, m, scene, *(ours or ("", "")), *(paper or ("", ""))])
        return buf.getvalue()

    def paths(self, out: Path) -> tuple[Path, Path]:
        return out / f"{self.dataset}_results.md", out / f"{self.dataset}_results.csv"

    def write(self, out: Path) -> tuple[Path, Path]:
        md, csv_path = self.paths(out)
        atomic_write_text(md, self.markdown())
        atomic_write_text(csv_path, self.csv())
        return md, csv_path

