"""Batch evaluation of a folder of checkpoints: one CSV, one interactive HTML report, an incremental cache.

``main_batch_eval_model.py`` (single-scene models) and ``main_batch_ms_eval.py`` (multi-scene models) both
run :func:`main`, which calls :func:`batch_evaluate`. Every checkpoint goes through
:class:`engine.evaluation.evaluate.Evaluator`, so the test set is loaded once and scored exactly as in ``test`` mode.

Results are cached per checkpoint file in ``<prefix>_batch_eval_cache.json`` beside the CSV
(:mod:`engine.evaluation.result_cache`): a re-run evaluates only new or changed checkpoints, and everything again when
the model, the effective config, the test files, the dataset root or AMP change. Per-frame data (for the
CDFs and the 3D view) is kept for the best checkpoint only, which keeps the cache small. With a validation
CSV (``--val_labels``) every checkpoint is also scored on it, through a second evaluator and its own cache
(``<prefix>_batch_eval_val_cache.json``), and the best is chosen there; without one it is chosen on the
test set itself, and the outputs say so. Discovery lives in :mod:`engine.training.checkpoints`, the record in
:mod:`engine.evaluation.records`, the CSV and the page's data in :mod:`engine.evaluation.batch_report`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from engine.cli import (
    add_baseline_arguments,
    add_common_arguments,
    add_runtime_arguments,
    add_test_dataset_argument,
    configure_console,
    parse_train_labels,
    run_cli,
)
from engine.evaluation.baselines import baselines_csv, evaluator_baselines
from engine.evaluation.batch_report import CHOSEN_ON, build_report, format_batch, results_csv
from engine.evaluation.evaluate import EvalSettings, Evaluator
from engine.evaluation.page import write_batch_report
from engine.evaluation.records import CheckpointResult, first_line, summarize_result
from engine.evaluation.result_cache import ResultCache, evaluator_context
from engine.training.checkpoints import checkpoint_labels, discover_checkpoints
from models.registry import cli_choices, scene_setting
from util.errors import UserError
from util.io import atomic_write_text, check_input_file, check_output_dir
from util.logs import add_log_file, progress_bar

log = logging.getLogger(__name__)

__all__ = [
    "BatchResult",
    "BatchRun",
    "BatchSpec",
    "batch_evaluate",
    "build_parser",
    "checkpoint_labels",
    "discover_checkpoints",
    "format_batch",
    "main",
    "split_trailing_positionals",
]


@dataclass
class BatchResult:
    """What :func:`batch_evaluate` did and wrote."""

    results: list[CheckpointResult]  # test-set records in evaluation order; evaluated now or cached
    best: CheckpointResult  # the test record of the chosen checkpoint (see ``chosen_on``)
    skipped: list[tuple[Path, str]]  # (file, one-line reason)
    n_evaluated: int  # checkpoints run through the model on the test set in this call
    csv_path: Path
    html_path: Path
    cache_path: Path
    val: dict[Path, CheckpointResult] = field(default_factory=dict)  # validation record per checkpoint file
    val_labels: Path | None = None  # the validation CSV (--val_labels), None without one
    n_val_evaluated: int = 0  # checkpoints run through the model on the validation set in this call
    baselines: dict = field(default_factory=dict)  # name -> record of the mean-pose / retrieval baseline
    baseline_note: str = ""  # why there are none, when they were asked for
    baselines_path: Path | None = None

    @property
    def chosen_on(self) -> str:
        """``validation`` when the best was chosen on ``val_labels``, else ``test`` (an optimistic choice)."""
        return "validation" if self.val_labels is not None else "test"


class _Pass:
    """The checkpoints scored on one set of labels by one evaluator, through its cache.

    Per-frame data (for the CDFs and the 3D view) is kept for one checkpoint at most, the one ``keep``
    returns, which keeps the cache small.
    """

    def __init__(self, evaluator: Evaluator, cache_path: Path, checkpoints_dir: Path, what: str):
        self.evaluator, self.what = evaluator, what
        self.cache = ResultCache(cache_path, evaluator_context(evaluator))
        self.cache.keep_only(p.name for p in checkpoints_dir.glob("*.pth"))
        self.results: dict[Path, CheckpointResult] = {}
        self.skipped: list[tuple[Path, str]] = []
        self.n_evaluated = 0

    def evaluate(self, paths: Sequence[Path], keep: Callable[[], CheckpointResult | None], progress: bool) -> None:
        """Take what the cache holds, evaluate the rest."""
        todo = []
        for path, label in zip(paths, checkpoint_labels(paths)):
            cached = self.cache.lookup(path.name, path, label)
            if cached is not None:
                self.results[path] = cached
            else:
                todo.append((path, label))
        log.info(
            "%s set: %d checkpoints, %d cached, %d to evaluate",
            self.what,
            len(paths),
            len(paths) - len(todo),
            len(todo),
        )
        for path, label in progress_bar(
            todo, desc=f"checkpoints ({self.what})", unit="ckpt", enabled=progress and bool(todo)
        ):
            self.run(path, label, keep)

    def run(self, path: Path, label: str, keep: Callable[[], CheckpointResult | None]) -> None:
        reason = None
        try:
            st = path.stat()
            result = self.evaluator.evaluate_checkpoint(path, timing=False)
        except UserError as exc:
            reason = first_line(str(exc))
        except Exception as exc:  # one broken file must not end a long batch; the reason is still shown
            reason = first_line(f"cannot evaluate {path}: {type(exc).__name__}: {exc}")
            log.debug("traceback for %s", path, exc_info=True)
        if reason is not None:
            reason = reason if self.what == "test" else f"{self.what} set: {reason}"
            log.warning("skipping %s: %s", path.name, reason)
            self.skipped.append((path, reason))
            self.results.pop(path, None)
            self.cache.drop(path.name)
            return
        self.n_evaluated += 1
        self.results[path] = summarize_result(result, path, label, st, self.evaluator.multi)
        kept = keep()
        for r in self.results.values():
            if r is not kept:
                r.frames = None
        for p, r in self.results.items():
            self.cache.store(p.name, r)
        self.cache.save()
        o = self.results[path].overall
        log.info(
            "%s on the %s set: median %.4f m, %.3f deg%s",
            label,
            self.what,
            o["median_pos_m"],
            o["median_ori_deg"],
            f", scene accuracy {o['scene_acc']:.3f}" if self.evaluator.multi else "",
        )


@dataclass(frozen=True)
class BatchSpec:
    """What :func:`batch_evaluate` evaluates and where its outputs go (its arguments, grouped)."""

    model_name: str
    backbone_path: str
    dataset_root: str | Path
    labels_file: str | Path
    config_path: str | Path
    checkpoints_dir: str | Path
    output_path: str | Path | None = None
    override_config: str | Path | None = None
    ckpt_start_index: int = 0
    test_dataset_id: str | None = None
    scene_map_file: str | Path | None = None
    val_labels: str | Path | None = None
    baselines: bool = False
    train_labels: tuple[Path, Path] | None = None
    settings: EvalSettings = EvalSettings()  # device, AMP, batch size, progress bars, image cache


class BatchRun:
    """One batch evaluation: the test pass, the optional validation pass and the output paths.

    Building it finds the checkpoints, checks the output folder and the validation CSV and loads the test
    evaluator; :meth:`run` evaluates (:meth:`evaluate`) and writes the CSV and the report (:meth:`write_outputs`).
    """

    def __init__(self, spec: BatchSpec):
        self.spec = spec
        self.checkpoints_dir = Path(spec.checkpoints_dir)
        self.paths = discover_checkpoints(self.checkpoints_dir, spec.ckpt_start_index)
        self.out = check_output_dir(
            spec.output_path if spec.output_path else self.checkpoints_dir,
            "--output_path" if spec.output_path else "the checkpoints folder (the default --output_path)",
        )
        self.val_labels = check_input_file(spec.val_labels, "--val_labels") if spec.val_labels is not None else None
        self.evaluator = self._evaluator(spec.labels_file, test_dataset_id=spec.test_dataset_id)
        self.test_set = spec.test_dataset_id or Path(spec.labels_file).stem
        self.prefix = f"{self.checkpoints_dir.resolve().name}_{self.test_set}_batch_eval"
        self.csv_path = self.out / f"{self.prefix}.csv"
        self.html_path = self.out / f"{self.prefix}.html"
        self.cache_path = self.out / f"{self.prefix}_cache.json"
        self.test: _Pass | None = None  # set by run()
        self.val: _Pass | None = None  # set by run() when there is a validation CSV

    def _evaluator(self, labels_file: str | Path, test_dataset_id: str | None = None) -> Evaluator:
        spec = self.spec
        return Evaluator(
            spec.model_name,
            spec.backbone_path,
            spec.dataset_root,
            labels_file,
            spec.config_path,
            settings=spec.settings,
            override_config=spec.override_config,
            test_dataset_id=test_dataset_id,
            scene_map_file=spec.scene_map_file,
        )

    def run(self) -> BatchResult:
        """Evaluate and write the outputs, with the log also going to ``<prefix>.log``."""
        file_handler = add_log_file(self.out / f"{self.prefix}.log")
        try:
            self.test = _Pass(self.evaluator, self.cache_path, self.checkpoints_dir, "test")
            if self.val_labels is not None:
                self.val = _Pass(
                    self._evaluator(self.val_labels),
                    self.out / f"{self.prefix}_val_cache.json",
                    self.checkpoints_dir,
                    "validation",
                )
            log.info("%s: %d checkpoints; outputs go to %s", self.checkpoints_dir, len(self.paths), self.out)
            return self.write_outputs(self.evaluate())
        finally:
            logging.getLogger().removeHandler(file_handler)
            file_handler.close()

    def best(self) -> CheckpointResult | None:
        """The test record of the best checkpoint so far (on the validation set when there is one)."""
        test, val = self.test, self.val
        scored = [p for p in self.paths if p in test.results and (val is None or p in val.results)]
        if not scored:
            return None
        by = val.results if val is not None else test.results
        return test.results[min(scored, key=lambda p: by[p].sort_key())]

    def evaluate(self) -> CheckpointResult:
        """Run both passes (cached checkpoints are not run again); the test record of the best checkpoint,
        with its per-frame data."""
        test, val, progress = self.test, self.val, self.spec.settings.progress
        # tqdm's redirect swaps the console handler for one without its level: only while bars are shown.
        with logging_redirect_tqdm() if progress else contextlib.nullcontext():
            if val is not None:  # first, so that the test pass knows which checkpoint keeps its frames
                val.evaluate(self.paths, lambda: None, progress)
            test.evaluate([p for p in self.paths if val is None or p in val.results], self.best, progress)
            best, retried = self.best(), set()
            while best is not None and best.frames is None and best.path not in retried:
                # The best is cached without per-frame data (e.g. the former best lies before
                # --ckpt_start_index or was deleted): evaluate it again for the CDFs and the 3D view.
                log.info(
                    "evaluating %s again for its per-frame errors (the cache keeps them for the best only)", best.label
                )
                retried.add(best.path)
                test.run(best.path, best.label, self.best)
                best = self.best()
        if best is None:
            raise UserError(
                f"none of the {len(self.paths)} checkpoints in {self.checkpoints_dir} could be evaluated "
                f"(see the messages above)"
            )
        return best

    def write_outputs(self, best: CheckpointResult) -> BatchResult:
        """Write the CSV, the baselines and the HTML report; what was done and written."""
        spec, evaluator, test, val, out = self.spec, self.evaluator, self.test, self.val, self.out
        skipped = (val.skipped if val is not None else []) + test.skipped
        ordered = [test.results[p] for p in self.paths if p in test.results]
        val_of = {p: val.results[p] for p in self.paths if val is not None and p in val.results}
        test.cache.save()
        atomic_write_text(
            self.csv_path, results_csv(ordered, best, evaluator.model_name, evaluator.multi, val=val_of or None)
        )
        base_records, base_note, base_path = {}, "", None
        if spec.baselines:
            base_records, base_note = evaluator_baselines(evaluator, best.path, spec.train_labels)
            if base_records:
                base_path = atomic_write_text(out / f"{self.prefix}_baselines.csv", baselines_csv(base_records))
        report = build_report(
            ordered,
            best,
            skipped,
            model_name=evaluator.model_name,
            multi_scene=evaluator.multi,
            checkpoints_dir=self.checkpoints_dir,
            test_set=self.test_set,
            facts=self._facts(ordered, skipped, base_records, base_note),
            val=val_of or None,
        )
        write_batch_report(self.html_path, report)
        log.info(
            "best, chosen on the %s set: %s (test median %.4f m, %.3f deg); wrote %s and %s",
            "validation" if val is not None else "test",
            best.label,
            best.overall["median_pos_m"],
            best.overall["median_ori_deg"],
            self.csv_path,
            self.html_path,
        )
        return BatchResult(
            results=ordered,
            best=best,
            skipped=skipped,
            n_evaluated=test.n_evaluated,
            csv_path=self.csv_path,
            html_path=self.html_path,
            cache_path=self.cache_path,
            val=val_of,
            val_labels=self.val_labels,
            n_val_evaluated=val.n_evaluated if val is not None else 0,
            baselines=base_records,
            baseline_note=base_note,
            baselines_path=base_path,
        )

    def _facts(
        self, ordered: list[CheckpointResult], skipped: list, base_records: dict, base_note: str
    ) -> list[tuple[str, str]]:
        """The report's table of what was evaluated, how, and where."""
        spec, val = self.spec, self.val
        id_note = f" (--test_dataset_id {spec.test_dataset_id})" if spec.test_dataset_id else ""
        config_note = f" + {spec.override_config}" if spec.override_config else ""
        n_cached = len(ordered) - sum(r.evaluated for r in ordered)
        return [
            ("model", self.evaluator.model_name),
            ("checkpoints", str(self.checkpoints_dir)),
            ("test set", f"{spec.labels_file}{id_note}"),
            *([("validation set", str(self.val_labels))] if val is not None else []),
            ("best chosen on", CHOSEN_ON[val is not None]),
            ("dataset root", str(spec.dataset_root)),
            ("config", f"{spec.config_path}{config_note}"),
            (
                "results",
                f"{len(ordered)} checkpoints ({self.test.n_evaluated} in this run, {n_cached} from the "
                f"cache), {len(skipped)} skipped",
            ),
            ("device", f"{self.evaluator.device}{' (AMP)' if spec.settings.amp else ''}"),
            *(
                [
                    (
                        "baselines (same test frames)",
                        "; ".join(
                            f"{n}: {r.overall['median_pos_m']:.4f} m, {r.overall['median_ori_deg']:.3f} deg"
                            for n, r in base_records.items()
                        )
                        or f"none: {base_note}",
                    )
                ]
                if spec.baselines
                else []
            ),
        ]


def batch_evaluate(
    model_name: str,
    backbone_path: str,
    dataset_root: str | Path,
    labels_file: str | Path,
    config_path: str | Path,
    checkpoints_dir: str | Path,
    output_path: str | Path | None = None,
    *,
    override_config: str | Path | None = None,
    ckpt_start_index: int = 0,
    device: str = "auto",
    amp: bool = False,
    batch_size: int | None = None,
    test_dataset_id: str | None = None,
    scene_map_file: str | Path | None = None,
    progress: bool = True,
    cache_dir: str | None = None,
    val_labels: str | Path | None = None,
    baselines: bool = False,
    train_labels: tuple[Path, Path] | None = None,
) -> BatchResult:
    """Evaluate the checkpoints of ``checkpoints_dir`` (cached ones are not run again) and write the CSV,
    the HTML report and the cache to ``output_path`` (default: ``checkpoints_dir``).

    With ``val_labels`` (a label CSV under the same dataset root, evaluated as it is, all its scenes) every
    checkpoint is also scored on it, and the best is chosen there: the checkpoint with the lowest median
    position error on the validation set (multi-scene: the mean of the per-scene medians), ties to the lower
    median orientation error, then to the earlier checkpoint. Without it the best is chosen on the test set
    itself, which flatters its error; the outputs say which. With ``baselines`` the mean training pose and
    image retrieval are scored on the test set too (:mod:`engine.evaluation.baselines`), from ``train_labels`` or the
    training set the best checkpoint records.
    """
    spec = BatchSpec(
        model_name,
        backbone_path,
        dataset_root,
        labels_file,
        config_path,
        checkpoints_dir,
        output_path,
        override_config=override_config,
        ckpt_start_index=ckpt_start_index,
        test_dataset_id=test_dataset_id,
        scene_map_file=scene_map_file,
        val_labels=val_labels,
        baselines=baselines,
        train_labels=train_labels,
        settings=EvalSettings(device=device, amp=amp, batch_size=batch_size, progress=progress, cache_dir=cache_dir),
    )
    return BatchRun(spec).run()


# Command line ------------------------------------------------------------------------------------------------
def split_trailing_positionals(paths: Sequence[str]) -> tuple[str | None, str]:
    """``[eval_config_file] checkpoints_dir`` -> (eval config or None, checkpoints folder).

    The reference's multi-scene command passes a second JSON config before the folder; it is an evaluation
    config whose sections override the first config.
    """
    paths = list(paths)
    if len(paths) == 1:
        config2, folder = None, paths[0]
    elif len(paths) == 2:
        config2, folder = paths
        if not config2.lower().endswith(".json"):
            raise UserError(
                f"expected '[eval_config_file.json] checkpoints_dir' after config_file, got "
                f"{config2!r} {folder!r}: the first is not a .json file"
            )
    else:
        raise UserError(
            f"expected '[eval_config_file.json] checkpoints_dir' after config_file, got "
            f"{len(paths)} paths: {' '.join(paths)}"
        )
    if folder.lower().endswith(".json"):
        raise UserError(f"the last positional must be the checkpoints folder, got the JSON file {folder!r}")
    return config2, folder


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except None (whose meaning the help text states)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser(multi_scene: bool) -> argparse.ArgumentParser:
    setting = scene_setting(multi_scene)
    script = setting.batch_script
    parser = argparse.ArgumentParser(
        prog=script,
        usage=f"{script} model_name test backbone_path dataset_path labels_file config_file "
        f"[eval_config_file] checkpoints_dir [options]",
        description=(
            f"Evaluate every checkpoint of a {setting.name} training run: a CSV and an interactive HTML report "
            "(re-runs evaluate only new checkpoints)."
        ),
        formatter_class=_HelpFormatter,
    )
    add_common_arguments(parser, cli_choices(multi_scene))
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="[eval_config_file] checkpoints_dir",
        help="optional second JSON config whose sections override the first (an evaluation "
        "config), then the folder of *.pth checkpoints (e.g. ./models/run_<stamp>)",
    )
    parser.add_argument(
        "--output_path",
        default=None,
        help="folder for the CSV, the HTML report, the cache and the log (default: the checkpoints folder)",
    )
    parser.add_argument(
        "--ckpt_start_index",
        type=int,
        default=0,
        help="skip *_checkpoint-N.pth with N below this (as in the reference); the final and "
        "other .pth files are always evaluated",
    )
    parser.add_argument(
        "--val_labels",
        default=None,
        metavar="CSV",
        help="a validation label CSV (images under the same dataset root, all its scenes "
        "evaluated): every checkpoint is also scored on it and the best is chosen on it "
        "(default: the best is chosen on the test set itself, an optimistic estimate)",
    )
    if setting.test_dataset_option:
        add_test_dataset_argument(parser)
    add_baseline_arguments(parser)
    add_runtime_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None, *, multi_scene: bool = False) -> int:
    """Entry point of both batch-evaluation scripts; returns the exit status."""
    args = build_parser(multi_scene).parse_args(argv)
    configure_console(args.quiet)

    def run() -> int:
        if args.mode != "test":
            raise UserError(
                f"batch evaluation tests checkpoints: mode must be 'test', got {args.mode!r} "
                f"(train with main_single_scene.py / main_multi_scene.py)"
            )
        override, folder = split_trailing_positionals(args.paths)
        batch = batch_evaluate(
            args.model_name,
            args.backbone_path,
            args.dataset_path,
            args.labels_file,
            args.config_file,
            folder,
            args.output_path,
            override_config=override,
            ckpt_start_index=args.ckpt_start_index,
            device=args.device,
            amp=args.amp,
            batch_size=args.batch_size,
            test_dataset_id=getattr(args, "test_dataset_id", None),
            scene_map_file=getattr(args, "scene_map", None),
            progress=not args.quiet,
            cache_dir=args.cache,
            val_labels=args.val_labels,
            baselines=not args.no_baselines,
            train_labels=parse_train_labels(args.train_labels),
        )
        print(format_batch(batch))
        val_note = f" (and {batch.n_val_evaluated} on the validation set)" if batch.val_labels else ""
        print(
            f"evaluated {batch.n_evaluated}{val_note}, from the cache "
            f"{sum(not r.evaluated for r in batch.results)}, skipped {len(batch.skipped)}"
        )
        print(f"csv: {batch.csv_path}")
        print(f"html: {batch.html_path}")
        if batch.baselines_path:
            print(f"baselines: {batch.baselines_path}")
        return 0

    return run_cli(run)
