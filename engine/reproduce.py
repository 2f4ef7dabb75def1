"""The paper's recipe end to end: train every stage, test, batch-evaluate, one table per dataset.

    python -m engine.reproduce 7scenes --root ROOT --labels DIR --backbone B0.pth \
        --models hyperpose,effposenet,mshyperpose,ems-transposenet --out DIR [--dry-run]

Single-scene models are trained once per scene, multi-scene models once on the all-scenes file. Each run
goes through the training stages of the config: stage 1, then, where the model's section lists
``freeze_exclude_phrase``, stage 2 from stage 1's final weights with ``configs/stage2_freeze.json`` (only the
named modules train, as in the reference recipe). Every stage lives in its own folder,
``<out>/<dataset>/<model>/<scene or all>/stage<k>/``. A re-run skips a finished stage (its final checkpoint
is there) and resumes a crashed one from its newest checkpoint, so the driver can simply be started again.
The final checkpoints are tested (``test`` mode outputs), every run is batch-evaluated (its cache makes a
re-run cheap), and the per-scene medians go into ``<out>/<dataset>_results.md`` / ``.csv`` beside the
published numbers of ``configs/published_results.json``. ``--dry-run`` prints the equivalent commands of the
entry scripts and runs nothing. Everything the driver needs is checked before anything trains.
"""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from datasets import label_io
from datasets.labels import read_labels
from engine.checkpoints import checkpoint_number
from engine.cli import configure_console
from engine.result_cache import file_stamp
from engine.table import ReproTable
from models.registry import canonical_model_name, get_spec
from util.config import load_config
from util import jsonio
from util.errors import UserError, run_cli
from util.io import atomic_write_text

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
STAGE2_OVERRIDE = REPO / "configs" / "stage2_freeze.json"
MARKER = "stage.json"


@dataclass(frozen=True)
class DatasetRecipe:
    """Where a dataset's label files are and which config the paper used (SPEC sections 1 and 4)."""
    scenes: tuple[str, ...]
    csv_name: Callable[[str, str], str]
    multi_train: str
    config: Path


DATASETS = {
    "7scenes": DatasetRecipe(label_io.SEVEN_SCENES, label_io.seven_scenes_csv_name, "7scenes_all_scenes.csv",
                             REPO / "configs" / "7Scenes_config.json"),
    "cambridge": DatasetRecipe(label_io.CAMBRIDGE_FOUR, label_io.cambridge_csv_name, "cambridge_four_scenes.csv",
                               REPO / "configs" / "CambridgeLandmarks_config.json"),
}


@dataclass
class Job:
    """One model trained on one scene (single-scene) or on all scenes (multi-scene), all its stages."""
    model: str
    scene: str | None          # None: a multi-scene run over the all-scenes file
    train_csv: Path
    test_csv: Path             # multi-scene: the all-scenes file, tested with --test_dataset_id
    folder: Path
    stages: tuple[int, ...]

    @property
    def multi(self) -> bool:
        return self.scene is None

    def stage_dir(self, stage: int) -> Path:
        return self.folder / f"stage{stage}"


def _rel(path: Path) -> str:
    """A path as the user would type it: relative to the working folder when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def stage_state(stage_dir: Path) -> tuple[str, Path | None]:
    """("done", final) | ("resume", newest checkpoint) | ("new", None) for one stage folder."""
    marker = stage_dir / MARKER
    if marker.is_file():
        final = stage_dir / json.loads(marker.read_text())["final"]
        if final.is_file():
            return "done", final
    runs = sorted(p for p in stage_dir.glob("run_*") if p.is_dir()) if stage_dir.is_dir() else []
    if not runs:
        return "new", None
    newest = runs[-1]
    finals = sorted(newest.glob("*_final.pth"))
    if finals:
        return "done", finals[-1]
    numbered = sorted((checkpoint_number(p), p) for p in newest.glob("*_checkpoint-*.pth")
                      if checkpoint_number(p) is not None)
    return ("resume", numbered[-1][1]) if numbered else ("new", None)


class Reproduction:
    """The plan for one dataset and its execution (or, with ``dry_run``, its printout)."""

    def __init__(self, dataset: str, root, labels, backbone: str, models: Sequence[str], out, *,
                 config=None, scenes: Sequence[str] | None = None, stages: Sequence[int] = (1, 2),
                 device: str = "auto"):
        if dataset not in DATASETS:
            raise UserError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
        self.dataset, self.recipe = dataset, DATASETS[dataset]
        self.root, self.labels, self.out = Path(root), Path(labels), Path(out)
        self.backbone, self.device = backbone, device
        self.config = Path(config) if config else self.recipe.config
        self.scenes = list(scenes) if scenes else list(self.recipe.scenes)
        unknown = sorted(set(stages) - {1, 2})
        if unknown or not stages:
            raise UserError(f"--stages takes 1 and/or 2, got {','.join(map(str, stages)) or 'nothing'}")
        self.models = [canonical_model_name(m) for m in models]
        if not self.models:
            raise UserError("--models needs at least one model name")
        self.jobs = [job for m in self.models for job in self._jobs(m, tuple(sorted(set(stages))))]

    def _jobs(self, model: str, stages: tuple[int, ...]) -> list[Job]:
        config = load_config(self.config, model)  # a config error fails here, before anything trains
        defined = (1, 2) if config.get("freeze_exclude_phrase") else (1,)
        stages = tuple(s for s in stages if s in defined) or (1,)
        base = self.out / self.dataset / model
        if get_spec(model).multi_scene:
            train = self.labels / self.recipe.multi_train
            return [Job(model, None, train, train, base / "all", stages)]
        return [Job(model, s, self.labels / self.recipe.csv_name(s, "train"),
                    self.labels / self.recipe.csv_name(s, "test"), base / s, stages) for s in self.scenes]

    def check_inputs(self) -> None:
        """Every label file and image the plan needs, before anything trains (one line on the first miss)."""
        if not self.labels.is_dir():
            raise UserError(f"--labels {self.labels}: not a folder (expected the folder of the label CSVs)")
        if self.backbone != "random" and not Path(self.backbone).is_file():
            raise UserError(f"--backbone {self.backbone}: file not found")
        needed = {job.train_csv for job in self.jobs}
        needed |= {self.labels / self.recipe.csv_name(s, "test") for s in self.scenes}
        missing = [p for p in sorted(needed) if not p.is_file()]
        if missing:
            raise UserError(f"{self.labels} lacks {len(missing)} label file(s) of {self.dataset}, e.g. "
                            f"{missing[0].name} (write them with python -m datasets.prepare)")
        for path in sorted(needed):
            labels = read_labels(path, self.root, check_images=True)
            if any(job.multi and job.train_csv == path for job in self.jobs):
                # A multi-scene run is tested on the test file of every scene it trains on.
                tests = {self.labels / self.recipe.csv_name(s, "test") for s in labels["scene"].astype(str)}
                gone = sorted(p.name for p in tests if not p.is_file())
                if gone:
                    raise UserError(f"{path.name} trains on scenes without a test file in {self.labels}, e.g. "
                                    f"{gone[0]}")
                for test in sorted(tests - needed):
                    read_labels(test, self.root, check_images=True)

    # Commands -----------------------------------------------------------------------------------------------
    def _script(self, job: Job, batch: bool = False) -> str:
        if batch:
            return "main_batch_ms_eval.py" if job.multi else "main_batch_eval_model.py"
        return "main_multi_scene.py" if job.multi else "main_single_scene.py"

    def _tail(self, job: Job) -> list[str]:
        return (["--test_dataset_id", self.dataset] if job.multi else []) + \
               ([] if self.device == "auto" else ["--device", self.device])

    def train_command(self, job: Job, stage: int, resume: Path | None, init: Path | str | None) -> str:
        args = ["python", self._script(job), job.model, "train", self.backbone, _rel(self.root), _rel(job.train_csv),
                _rel(self.config)] + ([_rel(STAGE2_OVERRIDE)] if stage == 2 else [])
        if resume is not None:
            args += ["--resume", _rel(resume)]
        elif init is not None:
            args += ["--checkpoint_path", _rel(init) if isinstance(init, Path) else init]
        args += ["--output_path", _rel(job.stage_dir(stage))]
        return shlex.join(args + ([] if self.device == "auto" else ["--device", self.device]))

    def test_command(self, job: Job, final: Path | str) -> str:
        return shlex.join(["python", self._script(job), job.model, "test", self.backbone, _rel(self.root),
                           _rel(job.test_csv), _rel(self.config), "--checkpoint_path",
                           _rel(final) if isinstance(final, Path) else final,
                           "--output_path", _rel(job.folder / "test")] + self._tail(job))

    def batch_command(self, job: Job, stage: int, run_dir: Path | str) -> str:
        return shlex.join(["python", self._script(job, batch=True), job.model, "test", self.backbone,
                           _rel(self.root), _rel(job.test_csv), _rel(self.config),
                           _rel(run_dir) if isinstance(run_dir, Path) else run_dir,
                           "--output_path", _rel(job.stage_dir(stage) / "batch_eval")] + self._tail(job))

    def dry_run(self) -> list[str]:
        """What a run would do now: finished stages as comments, then the commands."""
        lines = []
        for job in self.jobs:
            final: Path | str | None = None
            for stage in job.stages:
                state, path = stage_state(job.stage_dir(stage))
                if state == "done":
                    lines.append(f"# done: {_rel(path)}")
                    final = path
                    continue
                init = final if stage == 2 else None
                lines.append(self.train_command(job, stage, path if state == "resume" else None, init))
                final = f"{_rel(job.stage_dir(stage))}/run_<stamp>/run_<stamp>_final.pth"
            lines.append(self.test_command(job, final))
            for stage in job.stages:
                lines.append(self.batch_command(job, stage, f"{_rel(job.stage_dir(stage))}/run_<stamp>"))
        return lines

    # Running ------------------------------------------------------------------------------------------------
    def run_stages(self, job: Job) -> Path:
        """Train the stages of one job that are not finished yet; returns the last stage's final checkpoint."""
        from engine.train import train

        final = None
        for stage in job.stages:
            stage_dir = job.stage_dir(stage)
            state, path = stage_state(stage_dir)
            if state == "done":
                log.info("%s: stage %d done (%s)", job.folder, stage, path.name)
                final = path
            else:
                resume = path if state == "resume" else None
                init = final if stage == 2 and resume is None else None
                log.info("running: %s", self.train_command(job, stage, resume, init))
                result = train(job.model, self.backbone, self.root, job.train_csv, self.config, stage_dir,
                               override_config=STAGE2_OVERRIDE if stage == 2 else None, resume=resume,
                               init_checkpoint=init, device=self.device)
                final = result.final_checkpoint
            atomic_write_text(stage_dir / MARKER, json.dumps({"final": str(final.relative_to(stage_dir))}) + "\n")
        return final

    def test(self, job: Job, final: Path) -> dict[str, tuple[float, float]]:
        """Per-scene medians of the final checkpoint (test-mode outputs written once per checkpoint file)."""
        from engine.evaluate import evaluate

        record = job.folder / "test" / "result.json"
        if record.is_file():
            saved = jsonio.loads(record.read_text())
            if saved["checkpoint"] == file_stamp(final):
                return {s: tuple(v) for s, v in saved["scenes"].items()}
        log.info("running: %s", self.test_command(job, final))
        result, _ = evaluate(job.model, self.backbone, self.root, job.test_csv, self.config, final,
                             job.folder / "test", device=self.device,
                             test_dataset_id=self.dataset if job.multi else None)
        scenes = {s.scene: (s.median_pos_m, s.median_ori_deg) for s in result.summaries}
        atomic_write_text(record, jsonio.dumps({"checkpoint": file_stamp(final), "scenes": scenes}) + "\n")
        return scenes

    def batch(self, job: Job) -> None:
        from engine.batch_eval import batch_evaluate

        for stage in job.stages:
            run_dir = stage_state(job.stage_dir(stage))[1].parent
            log.info("running: %s", self.batch_command(job, stage, run_dir))
            batch_evaluate(job.model, self.backbone, self.root, job.test_csv, self.config, run_dir,
                           job.stage_dir(stage) / "batch_eval", device=self.device,
                           test_dataset_id=self.dataset if job.multi else None, progress=False)

    def run(self) -> ReproTable:
        self.check_inputs()
        table = ReproTable(self.dataset, self.models, self.scenes)
        for job in self.jobs:
            final = self.run_stages(job)
            for scene, (pos, ori) in self.test(job, final).items():
                if scene in self.scenes:
                    table.add(job.model, scene, pos, ori)
            self.batch(job)
        table.write(self.out)
        return table


def _list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _stages(text: str) -> list[int]:
    try:
        return [int(v) for v in _list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 1, 2 or 1,2, got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.reproduce",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     description="Reproduce the paper's tables: every training stage of every "
                                                 "model and scene, tests, batch evaluations, one table.")
    parser.add_argument("dataset", choices=tuple(DATASETS), help="which paper table")
    parser.add_argument("--root", required=True, help="dataset root (img_path in the label CSVs is relative to it)")
    parser.add_argument("--labels", required=True, help="folder of the label CSVs (datasets.prepare writes them)")
    parser.add_argument("--backbone", required=True, help="EfficientNet-B0 weights, or 'random'")
    parser.add_argument("--models", type=_list, required=True, help="comma-separated model names")
    parser.add_argument("--out", required=True, help="output folder (runs, tests, batch evaluations, tables)")
    parser.add_argument("--stages", type=_stages, default=[1, 2],
                        help="training stages to run: 1, 2 or 1,2 (stage 2 only where the config defines it)")
    parser.add_argument("--config", default=None,
                        help="config file (default: the shipped 7Scenes / CambridgeLandmarks config)")
    parser.add_argument("--scenes", type=_list, default=None, help="comma-separated scenes (default: the paper's)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--dry-run", action="store_true", help="print the commands it would run, run nothing")
    parser.add_argument("--quiet", action="store_true", help="only warnings on the console")
    args = parser.parse_args(argv)
    configure_console(args.quiet)

    def run() -> int:
        plan = Reproduction(args.dataset, args.root, args.labels, args.backbone, args.models, args.out,
                            config=args.config, scenes=args.scenes, stages=args.stages, device=args.device)
        if args.dry_run:
            print("\n".join(plan.dry_run()))
            return 0
        table = plan.run()
        print(table.markdown())
        print(f"tables: {table.paths(Path(args.out))[0]}, {table.paths(Path(args.out))[1]}")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
