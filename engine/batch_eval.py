"""Batch evaluation of a folder of checkpoints: one CSV, one interactive HTML report, an incremental cache.

``main_batch_eval_model.py`` (single-scene models) and ``main_batch_ms_eval.py`` (multi-scene models) both
run :func:`main`, which calls :func:`batch_evaluate`. Every checkpoint goes through
:class:`engine.evaluate.Evaluator`, so the test set is loaded once and scored exactly as in ``test`` mode.

Results are cached per checkpoint file in ``<prefix>_batch_eval_cache.json`` beside the CSV
(:mod:`engine.result_cache`): a re-run evaluates only new or changed checkpoints, and everything again when
the model, the effective config, the test files, the dataset root or AMP change. Per-frame data (for the
CDFs and the 3D view) is kept for the best checkpoint only, which keeps the cache small. Discovery lives in
:mod:`engine.checkpoints`, the record in :mod:`engine.records`, the CSV and the page's data in
:mod:`engine.batch_report`.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tqdm.contrib.logging import logging_redirect_tqdm

from engine.batch_report import build_report, format_batch, results_csv
from engine.checkpoints import checkpoint_labels, discover_checkpoints
from engine.cli import (add_common_arguments, add_runtime_arguments, add_test_dataset_argument,
                        configure_console, run_cli)
from engine.evaluate import Evaluator
from engine.records import CheckpointResult, first_line, summarize_result
from engine.result_cache import ResultCache, evaluator_context
from models.registry import cli_choices
from util.errors import UserError
from util.io import atomic_write_text, check_output_dir
from util.logs import add_log_file, progress_bar
from util.report import write_batch_report

log = logging.getLogger(__name__)

__all__ = ["BatchResult", "batch_evaluate", "build_parser", "checkpoint_labels", "discover_checkpoints",
           "format_batch", "main", "split_trailing_positionals"]


@dataclass
class BatchResult:
    """What :func:`batch_evaluate` did and wrote."""
    results: list[CheckpointResult]     # evaluation order; evaluated now or cached
    best: CheckpointResult
    skipped: list[tuple[Path, str]]     # (file, one-line reason)
    n_evaluated: int                    # checkpoints actually run through the model in this call
    csv_path: Path
    html_path: Path
    cache_path: Path


def batch_evaluate(model_name: str, backbone_path: str, dataset_root: str | Path, labels_file: str | Path,
                   config_path: str | Path, checkpoints_dir: str | Path, output_path: str | Path | None = None, *,
                   override_config: str | Path | None = None, ckpt_start_index: int = 0, device: str = "auto",
                   amp: bool = False, batch_size: int | None = None, test_dataset_id: str | None = None,
                   scene_map_file: str | Path | None = None, progress: bool = True,
                   cache_dir: str | None = None) -> BatchResult:
    """Evaluate the checkpoints of ``checkpoints_dir`` (cached ones are not run again) and write the CSV,
    the HTML report and the cache to ``output_path`` (default: ``checkpoints_dir``)."""
    checkpoints_dir = Path(checkpoints_dir)
    paths = discover_checkpoints(checkpoints_dir, ckpt_start_index)
    out = check_output_dir(output_path if output_path else checkpoints_dir,
                           "--output_path" if output_path else "the checkpoints folder (the default --output_path)")
    evaluator = Evaluator(model_name, backbone_path, dataset_root, labels_file, config_path,
                          override_config=override_config, device=device, amp=amp, batch_size=batch_size,
                          test_dataset_id=test_dataset_id, scene_map_file=scene_map_file, progress=progress,
                          cache_dir=cache_dir)
    multi = evaluator.multi
    test_set = test_dataset_id or Path(labels_file).stem
    prefix = f"{checkpoints_dir.resolve().name}_{test_set}_batch_eval"
    csv_path, html_path, cache_path = out / f"{prefix}.csv", out / f"{prefix}.html", out / f"{prefix}_cache.json"

    file_handler = add_log_file(out / f"{prefix}.log")
    try:
        cache = ResultCache(cache_path, evaluator_context(evaluator))
        cache.keep_only(p.name for p in checkpoints_dir.glob("*.pth"))
        results, todo = {}, []
        for path, label in zip(paths, checkpoint_labels(paths)):
            cached = cache.lookup(path.name, path, label)
            if cached is not None:
                results[path] = cached
            else:
                todo.append((path, label))
        log.info("%s: %d checkpoints, %d cached, %d to evaluate; outputs go to %s", checkpoints_dir,
                 len(paths), len(results), len(todo), out)

        skipped: list[tuple[Path, str]] = []
        n_evaluated = 0

        def best_of() -> CheckpointResult | None:
            done = [results[p] for p in paths if p in results]
            return min(done, key=CheckpointResult.sort_key) if done else None

        def run(path: Path, label: str) -> None:
            nonlocal n_evaluated
            reason = None
            try:
                st = path.stat()
                result = evaluator.evaluate_checkpoint(path, timing=False)
            except UserError as exc:
                reason = first_line(str(exc))
            except Exception as exc:  # one broken file must not end a long batch; the reason is still shown
                reason = first_line(f"cannot evaluate {path}: {type(exc).__name__}: {exc}")
                log.debug("traceback for %s", path, exc_info=True)
            if reason is not None:
                log.warning("skipping %s: %s", path.name, reason)
                skipped.append((path, reason))
                results.pop(path, None)
                cache.drop(path.name)
                return
            n_evaluated += 1
            results[path] = summarize_result(result, path, label, st, multi)
            best = best_of()
            for r in results.values():  # per-frame data is kept for the best checkpoint only
                if r is not best:
                    r.frames = None
            for p, r in results.items():
                cache.store(p.name, r)
            cache.save()
            o = results[path].overall
            log.info("%s: median %.4f m, %.3f deg%s", label, o["median_pos_m"], o["median_ori_deg"],
                     f", scene accuracy {o['scene_acc']:.3f}" if multi else "")

        with logging_redirect_tqdm():
            for path, label in progress_bar(todo, desc="checkpoints", unit="ckpt", enabled=progress and bool(todo)):
                run(path, label)
            best, retried = best_of(), set()
            while best is not None and best.frames is None and best.path not in retried:
                # The best is cached without per-frame data (e.g. the former best lies before
                # --ckpt_start_index or was deleted): evaluate it again for the CDFs and the 3D view.
                log.info("evaluating %s again for its per-frame errors (the cache keeps them for the best only)",
                         best.label)
                retried.add(best.path)
                run(best.path, best.label)
                best = best_of()
        if best is None:
            raise UserError(f"none of the {len(paths)} checkpoints in {checkpoints_dir} could be evaluated "
                            f"(see the messages above)")

        ordered = [results[p] for p in paths if p in results]
        cache.save()
        atomic_write_text(csv_path, results_csv(ordered, best, evaluator.model_name, multi))
        id_note = f" (--test_dataset_id {test_dataset_id})" if test_dataset_id else ""
        config_note = f" + {override_config}" if override_config else ""
        facts = [("model", evaluator.model_name), ("checkpoints", str(checkpoints_dir)),
                 ("test set", f"{labels_file}{id_note}"), ("dataset root", str(dataset_root)),
                 ("config", f"{config_path}{config_note}"),
                 ("results", f"{len(ordered)} checkpoints ({n_evaluated} in this run, "
                                 f"{len(ordered) - sum(r.evaluated for r in ordered)} from the cache), "
                                 f"{len(skipped)} skipped"),
                 ("device", f"{evaluator.device}{' (AMP)' if amp else ''}")]
        report = build_report(ordered, best, skipped, model_name=evaluator.model_name, multi_scene=multi,
                              checkpoints_dir=checkpoints_dir, test_set=test_set, facts=facts)
        write_batch_report(html_path, report)
        log.info("best: %s (median %.4f m, %.3f deg); wrote %s and %s", best.label, best.overall["median_pos_m"],
                 best.overall["median_ori_deg"], csv_path, html_path)
        return BatchResult(results=ordered, best=best, skipped=skipped, n_evaluated=n_evaluated,
                           csv_path=csv_path, html_path=html_path, cache_path=cache_path)
    finally:
        logging.getLogger().removeHandler(file_handler)
        file_handler.close()


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
            raise UserError(f"expected '[eval_config_file.json] checkpoints_dir' after config_file, got "
                            f"{config2!r} {folder!r}: the first is not a .json file")
    else:
        raise UserError(f"expected '[eval_config_file.json] checkpoints_dir' after config_file, got "
                        f"{len(paths)} paths: {' '.join(paths)}")
    if folder.lower().endswith(".json"):
        raise UserError(f"the last positional must be the checkpoints folder, got the JSON file {folder!r}")
    return config2, folder


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except None (whose meaning the help text states)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser(multi_scene: bool) -> argparse.ArgumentParser:
    script = "main_batch_ms_eval.py" if multi_scene else "main_batch_eval_model.py"
    parser = argparse.ArgumentParser(
        prog=script,
        usage=f"{script} model_name test backbone_path dataset_path labels_file config_file "
              f"[eval_config_file] checkpoints_dir [options]",
        description=("Evaluate every checkpoint of a %s training run: a CSV and an interactive HTML report "
                     "(re-runs evaluate only new checkpoints)." % ("multi-scene" if multi_scene else "single-scene")),
        formatter_class=_HelpFormatter)
    add_common_arguments(parser, cli_choices(multi_scene))
    parser.add_argument("paths", nargs="+", metavar="[eval_config_file] checkpoints_dir",
                        help="optional second JSON config whose sections override the first (an evaluation "
                             "config), then the folder of *.pth checkpoints (e.g. ./models/run_<stamp>)")
    parser.add_argument("--output_path", default=None,
                        help="folder for the CSV, the HTML report, the cache and the log "
                             "(default: the checkpoints folder)")
    parser.add_argument("--ckpt_start_index", type=int, default=0,
                        help="skip *_checkpoint-N.pth with N below this (as in the reference); the final and "
                             "other .pth files are always evaluated")
    if multi_scene:
        add_test_dataset_argument(parser)
    add_runtime_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None, *, multi_scene: bool = False) -> int:
    """Entry point of both batch-evaluation scripts; returns the exit status."""
    args = build_parser(multi_scene).parse_args(argv)
    configure_console(args.quiet)

    def run() -> int:
        if args.mode != "test":
            raise UserError(f"batch evaluation tests checkpoints: mode must be 'test', got {args.mode!r} "
                            f"(train with main_single_scene.py / main_multi_scene.py)")
        override, folder = split_trailing_positionals(args.paths)
        batch = batch_evaluate(args.model_name, args.backbone_path, args.dataset_path, args.labels_file,
                               args.config_file, folder, args.output_path, override_config=override,
                               ckpt_start_index=args.ckpt_start_index, device=args.device, amp=args.amp,
                               batch_size=args.batch_size, test_dataset_id=getattr(args, "test_dataset_id", None),
                               scene_map_file=getattr(args, "scene_map", None), progress=not args.quiet,
                               cache_dir=args.cache)
        print(format_batch(batch))
        print(f"evaluated {batch.n_evaluated}, from the cache {sum(not r.evaluated for r in batch.results)}, "
              f"skipped {len(batch.skipped)}")
        print(f"csv: {batch.csv_path}")
        print(f"html: {batch.html_path}")
        return 0

    return run_cli(run)
