"""The paper's tables end to end: train every stage of a recipe, test, batch-evaluate, one table per dataset.

    python -m engine.reproduction.reproduce 7scenes --root ROOT --labels DIR --backbone B0.pth \
        --models hyperpose,effposenet,mshyperpose,ems-transposenet --out DIR [--recipe paper] [--dry-run]

Single-scene models are trained once per scene, multi-scene models once on the all-scenes file. The stages
come from a recipe (``configs/recipes/``, :func:`load_recipe`): ``released`` runs the released configs'
stages (everything, then, where the config lists ``freeze_exclude_phrase``, only those modules), ``paper``
the paper's (single-scene hyperpose: everything, then only the translation hypernetwork, then only the
rotation one, with the paper's schedule). A stage that turns ``freeze`` on where the effective config lists
no ``freeze_exclude_phrase`` is skipped: that rule, kept here for every recipe, is what leaves models
without phrases at one stage under ``released``. Stage k lives in ``<out>/<dataset>/<model>/<scene or
all>/stage<k>/`` (k is its place in the recipe) with its ``override.json`` (the recipe's override as a
config file, passed to training as the second config) and, once finished, ``stage.json`` (its final
checkpoint and the names of the parameters it trained). A stage after the first starts from the final
weights of the stage before it. A re-run skips a finished stage and resumes a crashed one from its newest
checkpoint, so the driver can simply be started again.

With ``--val_sequences N`` (default 1) the last N training sequences of every scene are held out
(``<out>/<dataset>/splits/``) and training uses the rest. The last stage's final checkpoint is tested
(``test`` mode outputs); every stage is batch-evaluated on the test set and on the held-out sequences, and
``<out>/<dataset>_results.md`` / ``.csv`` report the test error of the final checkpoint and of the
checkpoint chosen on validation (:data:`engine.reproduction.table.SELECTIONS`), beside the published numbers of
``configs/published_results.json``.

``--seeds 0,1,2`` trains every model once per seed (``.../<scene or all>/seed<N>/stage<k>/``, the seed in the
``general`` section of each ``override.json``); the table then gives the mean and spread over seeds, and pairs
every model with ``--baseline_model`` seed by seed (mean difference, standard error, seeds won, in words
whether the 95 % interval covers zero). ``python -m engine.robustness.compare`` pairs the same runs on other conditions.

``--dry-run`` prints the equivalent commands of the entry scripts and trains nothing; it writes what those
commands read (each stage's ``override.json``, the split CSVs), so they run as printed. Everything the
driver needs is checked before anything trains.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from datasets import label_io
from datasets.labels import read_labels, split_last_sequences
from engine.cli import configure_console
from engine.evaluation.result_cache import file_stamp
from engine.reproduction.recipes import RECIPES, Stage, freezes_nothing, load_recipe
from engine.reproduction.table import ReproTable
from engine.training.checkpoints import checkpoint_number, read_epoch
from models.config import load_config
from models.registry import canonical_model_name, get_spec
from util import jsonio
from util.checkpoint import load_checkpoint
from util.errors import UserError, run_cli
from util.io import atomic_write_text

if TYPE_CHECKING:
    from engine.evaluation.batch_eval import BatchResult
    from engine.evaluation.records import CheckpointResult

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
MARKER = "stage.json"
OVERRIDE = "override.json"


@dataclass(frozen=True)
class DatasetRecipe:
    """Where a dataset's label files are, which config the paper used and its training recipe
    (docs/datasets.md, docs/configs.md)."""

    scenes: tuple[str, ...]
    csv_name: Callable[[str, str], str]
    multi_train: str
    config: Path
    paper_recipe: Path


DATASETS = {
    "7scenes": DatasetRecipe(
        label_io.SEVEN_SCENES,
        label_io.seven_scenes_csv_name,
        "7scenes_all_scenes.csv",
        REPO / "configs" / "7Scenes_config.json",
        RECIPES / "paper_7Scenes.json",
    ),
    "cambridge": DatasetRecipe(
        label_io.CAMBRIDGE_FOUR,
        label_io.cambridge_csv_name,
        "cambridge_four_scenes.csv",
        REPO / "configs" / "CambridgeLandmarks_config.json",
        RECIPES / "paper_CambridgeLandmarks.json",
    ),
}


def recipe_path(choice: str, dataset: DatasetRecipe) -> Path:
    """``released``, ``paper`` (the dataset's) or the path of a recipe file."""
    return {"released": RECIPES / "released.json", "paper": dataset.paper_recipe}.get(choice, Path(choice))


# The plan ---------------------------------------------------------------------------------------------------
@dataclass
class Job:
    """One model trained on one scene (single-scene) or on all scenes (multi-scene), all its stages."""

    model: str
    scene: str | None  # None: a multi-scene run over the all-scenes file
    source_csv: Path  # the training labels as prepared
    train_csv: Path  # what it trains on: source_csv, or its split without the held-out sequences
    val_csv: Path | None  # the held-out sequences; None without a validation split
    test_csv: Path  # multi-scene: the all-scenes file, tested with --test_dataset_id
    folder: Path
    stages: tuple[Stage, ...]  # the recipe's stages that apply
    selected: tuple[int, ...]  # the stage numbers to train now (--stages)
    skipped: tuple[Stage, ...] = ()  # the recipe's stages that freeze nothing here (see freezes_nothing)
    seed: int | None = None  # --seeds: the training seed (None: the config's)

    @property
    def multi(self) -> bool:
        return self.scene is None

    @property
    def title(self) -> str:
        return f"{self.model} {self.scene or 'all scenes'}" + ("" if self.seed is None else f" seed {self.seed}")

    def override(self, stage: Stage) -> dict:
        """The stage's override file for this job: the recipe's override as the model's section, and under
        --seeds the seed in ``general`` (which wins over the config's own ``general`` seed)."""
        return {**({} if self.seed is None else {"general": {"seed": self.seed}}), self.model: stage.override}

    def stage_dir(self, stage: int) -> Path:
        return self.folder / f"stage{stage}"

    def override_file(self, stage: int) -> Path:
        return self.stage_dir(stage) / OVERRIDE

    def previous(self, stage: Stage) -> Stage | None:
        """The stage whose final weights ``stage`` starts from (None for the first)."""
        earlier = [s for s in self.stages if s.number < stage.number]
        return earlier[-1] if earlier else None


def _rel(path: Path | str) -> str:
    """A path as the user would type it: relative to the working folder when inside it."""
    if isinstance(path, str):  # a placeholder such as .../run_<stamp>
        return path
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
    numbered = sorted(
        (checkpoint_number(p), p) for p in newest.glob("*_checkpoint-*.pth") if checkpoint_number(p) is not None
    )
    return ("resume", numbered[-1][1]) if numbered else ("new", None)


def best_on_validation(batches: Sequence[tuple[Stage, BatchResult]]) -> tuple[Stage, CheckpointResult]:
    """The checkpoint of any stage with the lowest validation median position error (multi-scene: the mean
    over scenes of the per-scene medians), ties to the lower orientation error, then to the earlier stage
    and checkpoint: (its stage, its test-set record). Each batch already chose its stage's best that way."""
    stage, batch = min(batches, key=lambda sb: sb[1].val[sb[1].best.path].sort_key())
    return stage, batch.best


class Reproduction:
    """The plan for one dataset and its execution (or, with ``dry_run``, its printout)."""

    def __init__(
        self,
        dataset: str,
        root,
        labels,
        backbone: str,
        models: Sequence[str],
        out,
        *,
        config=None,
        scenes: Sequence[str] | None = None,
        stages: Sequence[int] | None = None,
        recipe: str = "released",
        val_sequences: int = 1,
        n_epochs: int | None = None,
        device: str = "auto",
        seeds: Sequence[int] | None = None,
        baseline: str = "effposenet",
    ):
        if dataset not in DATASETS:
            raise UserError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
        self.dataset, self.spec = dataset, DATASETS[dataset]
        self.root, self.labels, self.out = Path(root), Path(labels), Path(out)
        self.backbone, self.device, self.n_epochs = backbone, device, n_epochs
        self.config = Path(config) if config else self.spec.config
        self.scenes = list(scenes) if scenes else list(self.spec.scenes)
        if val_sequences < 0:
            raise UserError(f"--val_sequences must be >= 0, got {val_sequences}")
        if n_epochs is not None and n_epochs < 1:
            raise UserError(f"--n_epochs must be >= 1, got {n_epochs}")
        self.val_sequences = val_sequences
        if seeds is not None and (not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0):
            raise UserError(
                f"--seeds expects distinct non-negative seeds such as 0,1,2, got "
                f"{','.join(map(str, seeds)) or 'nothing'}"
            )
        self.seeds = list(seeds) if seeds else None
        self.baseline = baseline
        self.recipe_path = recipe_path(recipe, self.spec)
        self.recipe = load_recipe(self.recipe_path)
        self.models = [canonical_model_name(m) for m in models]
        if not self.models:
            raise UserError("--models needs at least one model name")
        stages_of = {m: self._stages(m) for m in self.models}
        longest = max(len(self._recipe_of(m)) for m in self.models)
        if stages is not None:
            beyond = sorted(s for s in set(stages) if not 1 <= s <= longest)
            if beyond or not stages:
                raise UserError(
                    f"--stages {','.join(map(str, stages)) or 'nothing'}: the recipe "
                    f"{self.recipe_path.name} has stages 1..{longest} for {', '.join(self.models)}"
                )
        self.jobs = [job for m in self.models for job in self._jobs(m, stages_of[m], stages)]
        self._check_chains()

    def _recipe_of(self, model: str) -> tuple[Stage, ...]:
        stages = self.recipe.get(model) or self.recipe.get("default")
        if stages is None:
            raise UserError(f"recipe {self.recipe_path} has no stages for {model} and no 'default' ones")
        return stages

    def _stages(self, model: str) -> tuple[tuple[Stage, ...], tuple[Stage, ...]]:
        """(the stages of ``model`` that apply, those that freeze nothing with this config)."""
        config = load_config(self.config, model)  # a config error fails here, before anything trains
        stages = self._recipe_of(model)
        return (
            tuple(s for s in stages if not freezes_nothing(s, config)),
            tuple(s for s in stages if freezes_nothing(s, config)),
        )

    def _split_files(self, stem: str) -> tuple[Path, Path]:
        folder = self.out / self.dataset / "splits"
        return folder / f"{stem}_train.csv", folder / f"{stem}_val.csv"

    def _job(self, model, scene, source, test, stem, stages, selected, seed) -> Job:
        train, val = self._split_files(stem) if self.val_sequences else (source, None)
        applying, skipped = stages
        wanted = tuple(s.number for s in applying if selected is None or s.number in selected)
        folder = self.out / self.dataset / model / (scene or "all")
        folder = folder if seed is None else folder / f"seed{seed}"
        return Job(model, scene, source, train, val, test, folder, applying, wanted, skipped, seed)

    def _jobs(self, model: str, stages: tuple[tuple[Stage, ...], tuple[Stage, ...]], selected) -> list[Job]:
        jobs = []
        for seed in self.seeds or [None]:
            if get_spec(model).multi_scene:
                source = self.labels / self.spec.multi_train
                jobs.append(self._job(model, None, source, source, source.stem, stages, selected, seed))
                continue
            jobs += [
                self._job(
                    model,
                    s,
                    self.labels / self.spec.csv_name(s, "train"),
                    self.labels / self.spec.csv_name(s, "test"),
                    s,
                    stages,
                    selected,
                    seed,
                )
                for s in self.scenes
            ]
        return jobs

    def _check_chains(self) -> None:
        """A stage to train from scratch needs the final weights of the stage before it, now or from before."""
        for job in self.jobs:
            for stage in job.stages:
                prev = job.previous(stage)
                if (
                    stage.number in job.selected
                    and prev is not None
                    and prev.number not in job.selected
                    and stage_state(job.stage_dir(stage.number))[0] == "new"
                    and stage_state(job.stage_dir(prev.number))[0] != "done"
                ):
                    raise UserError(
                        f"{job.title}: stage {stage.number} starts from the final weights of stage "
                        f"{prev.number}, which {_rel(job.stage_dir(prev.number))} lacks; add "
                        f"{prev.number} to --stages"
                    )

    # Inputs -----------------------------------------------------------------------------------------------
    def check_inputs(self, check_images: bool = True) -> None:
        """Every label file and image the plan needs, before anything trains (one line on the first miss)."""
        if not self.labels.is_dir():
            raise UserError(f"--labels {self.labels}: not a folder (expected the folder of the label CSVs)")
        if not self.root.is_dir():
            raise UserError(
                f"--root {self.root}: not a folder (expected the dataset root the img_path values "
                f"of the label CSVs are relative to)"
            )
        if self.backbone != "random" and not Path(self.backbone).is_file():
            raise UserError(f"--backbone {self.backbone}: file not found")
        needed = {job.source_csv for job in self.jobs}
        needed |= {self.labels / self.spec.csv_name(s, "test") for s in self.scenes}
        missing = [p for p in sorted(needed) if not p.is_file()]
        if missing:
            raise UserError(
                f"{self.labels} lacks {len(missing)} label file(s) of {self.dataset}, e.g. "
                f"{missing[0].name} (write them with python -m datasets.prepare)"
            )
        for path in sorted(needed):
            labels = read_labels(path, self.root, check_images=check_images)
            if any(job.multi and job.source_csv == path for job in self.jobs):
                # A multi-scene run is tested on the test file of every scene it trains on.
                tests = {self.labels / self.spec.csv_name(s, "test") for s in labels["scene"].astype(str)}
                gone = sorted(p.name for p in tests if not p.is_file())
                if gone:
                    raise UserError(
                        f"{path.name} trains on scenes without a test file in {self.labels}, e.g. {gone[0]}"
                    )
                for test in sorted(tests - needed):
                    read_labels(test, self.root, check_images=check_images)

    def prepare(self, check_images: bool = True) -> None:
        """Check the inputs, then write what the training commands read: the split CSVs and every stage's
        ``override.json`` (each effective config is validated as it is written)."""
        self.check_inputs(check_images)
        splits = {job.source_csv: (job.train_csv, job.val_csv) for job in self.jobs if job.val_csv is not None}
        for source, (train, val) in splits.items():
            kept, held = split_last_sequences(
                source,
                self.val_sequences,
                advice=" (--val_sequences 0 trains on every sequence, without a validation split)",
            )
            label_io.write_label_csv(kept, train)  # rewritten only when its content changes
            label_io.write_label_csv(held, val)
        for job in self.jobs:
            for stage in job.stages:
                path = job.override_file(stage.number)
                text = json.dumps(job.override(stage), indent=2) + "\n"
                if not path.is_file() or path.read_text() != text:
                    atomic_write_text(path, text)
                load_config(self.config, job.model, path)

    # Commands ---------------------------------------------------------------------------------------------
    def _script(self, job: Job, batch: bool = False) -> str:
        setting = get_spec(job.model).setting
        return setting.batch_script if batch else setting.script

    def _test_dataset_id(self, job: Job) -> str | None:
        """What the model's scripts take as --test_dataset_id (multi-scene: every scene's test file)."""
        return self.dataset if get_spec(job.model).setting.test_dataset_option else None

    def _tail(self, job: Job) -> list[str]:
        test_dataset_id = self._test_dataset_id(job)
        return (["--test_dataset_id", test_dataset_id] if test_dataset_id else []) + (
            [] if self.device == "auto" else ["--device", self.device]
        )

    def train_command(self, job: Job, stage: Stage, resume: Path | None, init: Path | str | None) -> str:
        args = [
            "python",
            self._script(job),
            job.model,
            "train",
            self.backbone,
            _rel(self.root),
            _rel(job.train_csv),
            _rel(self.config),
            _rel(job.override_file(stage.number)),
        ]
        if resume is not None:
            args += ["--resume", _rel(resume)]
        elif init is not None:
            args += ["--checkpoint_path", _rel(init)]
        args += ["--output_path", _rel(job.stage_dir(stage.number))]
        args += [] if self.n_epochs is None else ["--n_epochs", str(self.n_epochs)]
        return shlex.join(args + ([] if self.device == "auto" else ["--device", self.device]))

    def test_command(self, job: Job, final: Path | str) -> str:
        return shlex.join(
            [
                "python",
                self._script(job),
                job.model,
                "test",
                self.backbone,
                _rel(self.root),
                _rel(job.test_csv),
                _rel(self.config),
                "--checkpoint_path",
                _rel(final),
                "--output_path",
                _rel(job.folder / "test"),
            ]
            + self._tail(job)
        )

    def batch_command(self, job: Job, stage: int, run_dir: Path | str) -> str:
        val = ["--val_labels", _rel(job.val_csv)] if job.val_csv is not None else []
        return shlex.join(
            [
                "python",
                self._script(job, batch=True),
                job.model,
                "test",
                self.backbone,
                _rel(self.root),
                _rel(job.test_csv),
                _rel(self.config),
                _rel(run_dir),
                "--output_path",
                _rel(job.stage_dir(stage) / "batch_eval"),
            ]
            + val
            + self._tail(job)
        )

    def dry_run(self) -> list[str]:
        """What a run would do now: a comment per job, finished stages as comments, then the commands. It
        makes the same input checks as a real run, so a plan that prints is a plan that can run."""
        self.prepare()
        lines = []
        for job in self.jobs:
            lines.append(
                f"# {job.title}: "
                + ", ".join(f"stage {s.number} {s.name}" for s in job.stages)
                + "".join(
                    f"; stage {s.number} {s.name} skipped (it sets freeze, the config lists no freeze_exclude_phrase)"
                    for s in job.skipped
                )
            )
            final: Path | str | None = None
            planned = []
            for stage in job.stages:
                state, path = stage_state(job.stage_dir(stage.number))
                if state == "done":
                    lines.append(f"# done: {_rel(path)}")
                    final = path
                elif stage.number in job.selected:
                    init = final if job.previous(stage) is not None else None
                    resume = path if state == "resume" else None
                    lines.append(self.train_command(job, stage, resume, init))
                    run = _rel(resume.parent) if resume else f"{_rel(job.stage_dir(stage.number))}/run_<stamp>"
                    final = f"{run}/{Path(run).name}_final.pth"
                else:
                    continue
                planned.append(stage.number)
            if final is None:
                continue
            lines.append(self.test_command(job, final))
            for number in planned:
                state, path = stage_state(job.stage_dir(number))
                run_dir = path.parent if state != "new" else f"{_rel(job.stage_dir(number))}/run_<stamp>"
                lines.append(self.batch_command(job, number, run_dir))
        return lines

    # Running ----------------------------------------------------------------------------------------------
    def _mark(self, job: Job, stage: Stage, final: Path, trainable: Sequence[str] | None = None) -> None:
        """``stage.json`` beside the run: its final checkpoint and the parameters it trained (from the
        checkpoint when the stage finished before)."""
        marker = job.stage_dir(stage.number) / MARKER
        if trainable is None:
            if marker.is_file() and "trainable" in json.loads(marker.read_text()):
                return
            trainable = load_checkpoint(final).get("extra", {}).get("trainable")
        record = {
            "final": str(final.relative_to(job.stage_dir(stage.number))),
            "stage": stage.number,
            "name": stage.name,
            "override": stage.override,
            "seed": job.seed,
            "n_trainable": None if trainable is None else len(trainable),
            "trainable": None if trainable is None else list(trainable),
        }
        atomic_write_text(marker, json.dumps(record, indent=1) + "\n")

    def run_stages(self, job: Job) -> list[tuple[Stage, Path]]:
        """Train the selected stages of one job that are not finished yet; returns (stage, final checkpoint)
        of every finished stage."""
        from engine.training.train import train

        for stage in job.skipped:
            log.info(
                "%s: stage %d (%s) skipped: it sets freeze, and %s lists no freeze_exclude_phrase for it",
                job.title,
                stage.number,
                stage.name,
                self.config.name,
            )
        done: list[tuple[Stage, Path]] = []
        for stage in job.stages:
            stage_dir = job.stage_dir(stage.number)
            state, path = stage_state(stage_dir)
            if state == "done":
                log.info("%s: stage %d done (%s)", job.title, stage.number, path.name)
                self._mark(job, stage, path)
            elif stage.number in job.selected:
                resume = path if state == "resume" else None
                prev = job.previous(stage)
                init = stage_state(job.stage_dir(prev.number))[1] if prev is not None and resume is None else None
                log.info("running: %s", self.train_command(job, stage, resume, init))
                result = train(
                    job.model,
                    self.backbone,
                    self.root,
                    job.train_csv,
                    self.config,
                    stage_dir,
                    override_config=job.override_file(stage.number),
                    resume=resume,
                    init_checkpoint=init,
                    device=self.device,
                    n_epochs=self.n_epochs,
                )
                path = result.final_checkpoint
                self._mark(job, stage, path, result.trainable)
            else:
                continue
            done.append((stage, path))
        return done

    def test(self, job: Job, final: Path) -> dict[str, tuple[float, float]]:
        """Per-scene medians of the final checkpoint (test-mode outputs written once per checkpoint file)."""
        from engine.evaluation.evaluate import evaluate

        record = job.folder / "test" / "result.json"
        if record.is_file():
            saved = jsonio.loads(record.read_text())
            if saved["checkpoint"] == file_stamp(final):
                return {s: tuple(v) for s, v in saved["scenes"].items()}
        log.info("running: %s", self.test_command(job, final))
        result, _ = evaluate(
            job.model,
            self.backbone,
            self.root,
            job.test_csv,
            self.config,
            final,
            job.folder / "test",
            device=self.device,
            test_dataset_id=self._test_dataset_id(job),
        )
        scenes = {s.scene: (s.median_pos_m, s.median_ori_deg) for s in result.summaries}
        atomic_write_text(record, jsonio.dumps({"checkpoint": file_stamp(final), "scenes": scenes}) + "\n")
        return scenes

    def batch(self, job: Job, stage: Stage, run_dir: Path) -> BatchResult:
        """Every checkpoint of one stage on the test set (and the validation split): the batch outputs."""
        from engine.evaluation.batch_eval import batch_evaluate

        log.info("running: %s", self.batch_command(job, stage.number, run_dir))
        return batch_evaluate(
            job.model,
            self.backbone,
            self.root,
            job.test_csv,
            self.config,
            run_dir,
            job.stage_dir(stage.number) / "batch_eval",
            device=self.device,
            test_dataset_id=self._test_dataset_id(job),
            progress=False,
            val_labels=job.val_csv,
        )

    def _in_out(self, path: Path) -> str:
        try:
            return str(path.resolve().relative_to(self.out.resolve()))
        except ValueError:
            return str(path)

    def run(self) -> ReproTable:
        self.prepare()
        table = ReproTable(
            self.dataset,
            self.models,
            self.scenes,
            ("final", "best_on_val") if self.val_sequences else ("final",),
            self.seeds,
            self.baseline,
        )
        for job in self.jobs:
            done = self.run_stages(job)
            if not done:
                log.warning("%s: no finished stage to test (--stages selects none of its recipe's)", job.title)
                continue
            stage, final = done[-1]
            where = dict(stage=stage.number, epoch=read_epoch(final), checkpoint=self._in_out(final), seed=job.seed)
            for scene, (pos, ori) in self.test(job, final).items():
                if scene in self.scenes:
                    table.add(job.model, scene, pos, ori, "final", **where)
            batches = [(s, self.batch(job, s, path.parent)) for s, path in done]
            if job.val_csv is not None:
                stage, best = best_on_validation(batches)
                where = dict(stage=stage.number, epoch=best.epoch, checkpoint=self._in_out(best.path), seed=job.seed)
                for s in best.scenes:
                    if s["scene"] in self.scenes:
                        table.add(job.model, s["scene"], s["median_pos_m"], s["median_ori_deg"], "best_on_val", **where)
        table.write(self.out)
        return table


def _list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _stages(text: str) -> list[int]:
    try:
        return [int(v) for v in _list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected stage numbers such as 1 or 1,3, got {text!r}") from None


def _seeds(text: str) -> list[int]:
    try:
        return [int(v) for v in _list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seeds such as 0,1,2, got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine.reproduction.reproduce",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Reproduce the paper's tables: every training stage of every "
        "model and scene, tests, batch evaluations, one table.",
    )
    parser.add_argument("dataset", choices=tuple(DATASETS), help="which paper table")
    parser.add_argument("--root", required=True, help="dataset root (img_path in the label CSVs is relative to it)")
    parser.add_argument("--labels", required=True, help="folder of the label CSVs (datasets.prepare writes them)")
    parser.add_argument(
        "--backbone", required=True, help="backbone weights file (of each model's backbone_type), or 'random'"
    )
    parser.add_argument("--models", type=_list, required=True, help="comma-separated model names")
    parser.add_argument("--out", required=True, help="output folder (runs, tests, batch evaluations, tables)")
    parser.add_argument(
        "--recipe",
        default="released",
        help="training stages: released (the released configs' stages), paper (the paper's "
        "three-stage recipe and schedule) or the path of a recipe JSON file",
    )
    parser.add_argument(
        "--stages",
        type=_stages,
        default=None,
        help="stage numbers of the recipe to train, e.g. 1 or 1,3 (default: all of them)",
    )
    parser.add_argument(
        "--val_sequences",
        type=int,
        default=1,
        help="hold out the last N training sequences of every scene as the validation split "
        "that chooses a checkpoint; 0: train on everything, no validation",
    )
    parser.add_argument(
        "--n_epochs",
        type=int,
        default=None,
        help="train every stage this many epochs instead of the recipe's (a quick trial)",
    )
    parser.add_argument(
        "--config", default=None, help="config file (default: the shipped 7Scenes / CambridgeLandmarks config)"
    )
    parser.add_argument("--scenes", type=_list, default=None, help="comma-separated scenes (default: the paper's)")
    parser.add_argument(
        "--seeds",
        type=_seeds,
        default=None,
        help="train every model once per seed, e.g. 0,1,2 (folders seed<N>); the table gives the "
        "mean and spread over seeds and pairs each model with --baseline_model seed by seed",
    )
    parser.add_argument(
        "--baseline_model",
        default="effposenet",
        help="the model the others are paired with under --seeds (the first model when absent)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the commands it would run and train nothing (it writes the files they read: "
        "override.json of each stage, the split CSVs)",
    )
    parser.add_argument("--quiet", action="store_true", help="only warnings on the console")
    args = parser.parse_args(argv)
    configure_console(args.quiet)

    def run() -> int:
        plan = Reproduction(
            args.dataset,
            args.root,
            args.labels,
            args.backbone,
            args.models,
            args.out,
            config=args.config,
            scenes=args.scenes,
            stages=args.stages,
            recipe=args.recipe,
            val_sequences=args.val_sequences,
            n_epochs=args.n_epochs,
            device=args.device,
            seeds=args.seeds,
            baseline=args.baseline_model,
        )
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
