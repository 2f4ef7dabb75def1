"""Batch evaluation of a folder of checkpoints: one CSV, one interactive HTML report, an incremental cache.

``main_batch_eval_model.py`` (single-scene models) and ``main_batch_ms_eval.py`` (multi-scene models) both
run :func:`main`, which calls :func:`batch_evaluate`. Every checkpoint goes through
:class:`engine.evaluate.Evaluator`, so the test set is loaded once and scored exactly as in ``test`` mode.

Results are cached per checkpoint file in ``<prefix>_batch_eval_cache.json`` beside the CSV, keyed by the
file's size and mtime: a re-run evaluates only new or changed checkpoints. The cache also records what the
results depend on (model, effective config, test files, dataset root, AMP); when that changes, everything is
evaluated again. Per-frame data (positions and errors, for the CDFs and the 3D view) is kept for the best
checkpoint only, which keeps the cache small.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from engine.cli import (add_common_arguments, add_runtime_arguments,
                        add_test_dataset_argument, configure_console, run_cli)
from engine.evaluate import TEST_FILE_PATTERNS, EvalResult, Evaluator
from models.registry import cli_choices
from util.errors import UserError
from util.io import atomic_write_text
from util.logs import add_log_file
from util.metrics import DEFAULT_THRESHOLDS, summarize
from util.report import BatchReport, Column, write_batch_report

log = logging.getLogger(__name__)

CACHE_VERSION = 1
# Config keys that cannot change a test result; editing them keeps the cache.
RUNTIME_KEYS = ("n_workers", "n_freq_print", "n_freq_checkpoint", "device_id", "batch_size", "cache_dir")
BEST_RULE = ("Best = the lowest median position error ({what}); ties go to the lower median orientation error, "
             "then to the earlier checkpoint.")
SINGLE_REF_COLUMNS = ["checkpoint", "Model", "Median Position Error [m]", "Median Orientation Error[deg]"]
_NUMBERED = re.compile(r".+_checkpoint-(\d+)\.pth")


# Discovery ---------------------------------------------------------------------------------------------------
def checkpoint_number(path: str | Path) -> int | None:
    """N of ``*_checkpoint-N.pth``, else None."""
    match = _NUMBERED.fullmatch(Path(path).name)
    return int(match.group(1)) if match else None


def discover_checkpoints(folder: str | Path, start_index: int = 0) -> list[Path]:
    """The ``.pth`` files of ``folder`` in evaluation order.

    Order: ``*_checkpoint-N.pth`` by N, then ``*final*.pth``, then any other ``.pth``, each by name (hidden
    files are ignored). As in the reference, ``start_index`` skips the numbered checkpoints whose N (the
    epoch in the file name) is below it; final and other files are always kept.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"checkpoints folder not found: {folder} (expected a training run folder such as "
                        f"./models/run_<stamp>)")
    if start_index < 0:
        raise UserError(f"--ckpt_start_index must be >= 0, got {start_index}")
    files = [p for p in folder.iterdir() if p.suffix == ".pth" and p.is_file() and not p.name.startswith(".")]
    numbered = sorted((checkpoint_number(p), p.name, p) for p in files if checkpoint_number(p) is not None)
    finals = sorted((p for p in files if checkpoint_number(p) is None and "final" in p.name), key=lambda p: p.name)
    others = sorted((p for p in files if checkpoint_number(p) is None and "final" not in p.name),
                    key=lambda p: p.name)
    selected = [p for n, _, p in numbered if n >= start_index] + finals + others
    if not selected:
        if not files:
            raise UserError(f"no .pth checkpoints in {folder}")
        raise UserError(f"--ckpt_start_index {start_index} skips all {len(files)} checkpoints in {folder} "
                        f"(highest N: {max(n for n, _, _ in numbered)})")
    return selected


def checkpoint_labels(paths: Sequence[Path]) -> list[str]:
    """Short unique names: ``checkpoint-N``, ``final`` (the reference's names), else the file stem."""
    labels = []
    for p in paths:
        n = checkpoint_number(p)
        labels.append(f"checkpoint-{n}" if n is not None else "final" if p.stem.endswith("_final") else p.stem)
    return [lab if labels.count(lab) == 1 else p.stem for lab, p in zip(labels, paths)]


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


# Results -----------------------------------------------------------------------------------------------------
@dataclass
class CheckpointResult:
    """The scores of one checkpoint file, as evaluated now or read from the cache."""
    path: Path
    label: str
    size: int
    mtime_ns: int
    epoch: int | None
    scenes: list[dict]            # PoseSummary.to_dict() per scene
    overall: dict                 # every frame pooled; multi-scene medians: mean of the per-scene medians
    scene_acc: dict[str, float] = field(default_factory=dict)
    frames: dict | None = None    # per-frame positions and errors (see frames_of); best checkpoint only
    evaluated: bool = False       # False when taken from the cache

    def sort_key(self) -> tuple[float, float]:
        """Best = lowest median position error, then lowest median orientation error (NaN counts as inf)."""
        def val(x):
            return math.inf if x is None or math.isnan(x) else x
        return val(self.overall["median_pos_m"]), val(self.overall["median_ori_deg"])

    def to_cache(self) -> dict:
        return {"size": self.size, "mtime_ns": self.mtime_ns, "epoch": self.epoch, "scenes": self.scenes,
                "overall": self.overall, "scene_acc": self.scene_acc, "frames": self.frames}

    @classmethod
    def from_cache(cls, path: Path, label: str, entry: dict) -> "CheckpointResult":
        return cls(path=path, label=label, size=entry["size"], mtime_ns=entry["mtime_ns"], epoch=entry["epoch"],
                   scenes=[_unjson(s) for s in entry["scenes"]], overall=_unjson(entry["overall"]),
                   scene_acc=entry["scene_acc"], frames=entry.get("frames"))


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


def _json_float(x):
    """JSON has no inf/NaN: store them as strings, read back by :func:`_unjson`."""
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


def _unjson(d: dict) -> dict:
    return {k: float(v) if v in ("inf", "-inf", "nan") else v for k, v in d.items()}


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else text


def _round(x: float, digits: int = 6) -> float | None:
    x = float(x)
    return float(f"{x:.{digits}g}") if math.isfinite(x) else None


def frames_of(result: EvalResult) -> dict:
    """Per-frame data of every test set, compact: scene index, t_gt, t_pred, pos_err, ori_err."""
    scenes, scene_idx, t_gt, t_pred, pos_err, ori_err = [], [], [], [], [], []
    for pred in result.predictions.values():
        pos, ori = pred.errors
        for name in pred.scene_names:
            if name not in scenes:
                scenes.append(name)
            scene_idx.append(scenes.index(name))
        t_gt += [[_round(v) for v in row] for row in pred.pose_gt_N7[:, :3]]
        t_pred += [[_round(v) for v in row] for row in pred.pose_pred_N7[:, :3]]
        pos_err += [_round(v) for v in pos]
        ori_err += [_round(v) for v in ori]
    return {"scenes": scenes, "scene_index": scene_idx, "t_gt": t_gt, "t_pred": t_pred,
            "pos_err": pos_err, "ori_err": ori_err}


def _frames_by_scene(frames: dict | None) -> dict[str, dict[str, np.ndarray]]:
    """Group the per-frame lists by scene as float arrays (missing values become NaN / inf errors)."""
    if not frames:
        return {}
    idx = np.asarray(frames["scene_index"], dtype=np.int64)

    def arr(key, fill):
        return np.array([fill if v is None else v for v in frames[key]], dtype=np.float64)

    t_gt = np.array([[np.nan if v is None else v for v in row] for row in frames["t_gt"]], dtype=np.float64)
    t_pred = np.array([[np.nan if v is None else v for v in row] for row in frames["t_pred"]], dtype=np.float64)
    pos, ori = arr("pos_err", np.inf), arr("ori_err", np.inf)
    return {scene: {"t_gt": t_gt[idx == k].reshape(-1, 3), "t_pred": t_pred[idx == k].reshape(-1, 3),
                    "pos": pos[idx == k], "ori": ori[idx == k]} for k, scene in enumerate(frames["scenes"])}


def read_epoch(path: Path) -> int | None:
    """The epoch stored in one of our checkpoints, read without loading its tensors (None if unknown)."""
    n = checkpoint_number(path)
    if n is not None:
        return n
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        epoch = ckpt.get("epoch") if isinstance(ckpt, dict) else None
        return int(epoch) if isinstance(epoch, int) else None
    except Exception:  # mmap needs the zip format (not legacy files); the epoch is only informative
        return None


def summarize_result(result: EvalResult, path: Path, label: str, stat: os.stat_result,
                     multi_scene: bool) -> CheckpointResult:
    """Turn an :class:`EvalResult` into the cached row (per-frame data included)."""
    scenes = [{k: _json_float(v) for k, v in s.to_dict().items()} for s in result.summaries]
    pos = np.concatenate([p.errors[0] for p in result.predictions.values()])
    ori = np.concatenate([p.errors[1] for p in result.predictions.values()])
    # Means, recalls and failures over every frame pooled (frame-weighted across scenes).
    overall = summarize(pos, ori, scene="all", thresholds=DEFAULT_THRESHOLDS).to_dict()
    if multi_scene:
        # The medians of a multi-scene row are the reference's avrg_x / avrg_q: every scene counts once.
        overall.update(scene="average",
                       median_pos_m=float(np.mean([s.median_pos_m for s in result.summaries])),
                       median_ori_deg=float(np.mean([s.median_ori_deg for s in result.summaries])))
        n = {s.scene: s.n_frames for s in result.summaries}
        total = sum(n[s] for s in result.scene_acc)
        overall["scene_acc"] = (sum(result.scene_acc[s] * n[s] for s in result.scene_acc) / total
                                if total else float("nan"))
    return CheckpointResult(path=path, label=label, size=stat.st_size, mtime_ns=stat.st_mtime_ns,
                            epoch=read_epoch(path), scenes=scenes,
                            overall={k: _json_float(v) for k, v in overall.items()},
                            scene_acc=dict(result.scene_acc), frames=frames_of(result), evaluated=True)


# Cache -------------------------------------------------------------------------------------------------------
def _file_stamp(path: Path) -> list:
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def cache_context(evaluator: Evaluator, amp: bool) -> dict:
    """Everything besides the checkpoint file that a test result depends on."""
    labels = evaluator.labels_file
    files = [labels]
    if evaluator.test_dataset_id:
        files += sorted(labels.parent.glob(TEST_FILE_PATTERNS[evaluator.test_dataset_id].format(scene="*")))
    return {"version": CACHE_VERSION, "model": evaluator.model_name, "amp": evaluator.amp,
            "dataset_root": str(evaluator.dataset_root.resolve()), "test_dataset_id": evaluator.test_dataset_id,
            "test_files": [_file_stamp(f) for f in files if f.is_file()],
            "thresholds": [list(t) for t in DEFAULT_THRESHOLDS],
            "config": {k: v for k, v in sorted(evaluator.config.items()) if k not in RUNTIME_KEYS}}


def load_cache(path: Path, context: dict) -> dict[str, dict]:
    """File name -> cached entry; empty when the cache is missing, unreadable or for another context."""
    if not path.is_file():
        return {}
    try:
        cache = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable cache %s (%s); evaluating every checkpoint", path, exc)
        return {}
    if json.loads(json.dumps(context, default=str)) != cache.get("context"):
        log.info("cache %s was made with another model, config, test set or AMP setting; evaluating again",
                 path.name)
        return {}
    return dict(cache.get("checkpoints", {}))


def save_cache(path: Path, context: dict, entries: dict[str, dict]) -> None:
    atomic_write_text(path, json.dumps({"context": context, "checkpoints": entries}, default=str) + "\n")


# Outputs -----------------------------------------------------------------------------------------------------
def _scene_names(results: Sequence[CheckpointResult]) -> list[str]:
    names: list[str] = []
    for r in results:
        names += [s["scene"] for s in r.scenes if s["scene"] not in names]
    return names


def _recall_keys(results: Sequence[CheckpointResult]) -> list[str]:
    return [k for k in results[0].overall if k.startswith("recall_")]


def _scene_value(r: CheckpointResult, scene: str, key: str):
    return next((s[key] for s in r.scenes if s["scene"] == scene), None)


def results_csv(results: Sequence[CheckpointResult], best: CheckpointResult, model_name: str,
                multi_scene: bool) -> str:
    """The CSV: the reference's columns first, then ours (see docs/batch_eval.md)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    recalls = _recall_keys(results)
    ours = ["epoch", "mean_pos_m", "mean_ori_deg"] + recalls + ["n_frames", "n_failed"]
    if multi_scene:
        scenes = _scene_names(results)
        w.writerow(["model"] + [f"{s}_{c}" for s in scenes for c in ("x", "q")] + ["avrg_x", "avrg_q"] +
                   ["checkpoint"] + ours + [f"{s}_scene_acc" for s in scenes] + ["scene_acc", "best"])
        for r in results:
            n = checkpoint_number(r.path)
            w.writerow([n if n is not None else r.label] +
                       [_scene_value(r, s, k) for s in scenes for k in ("median_pos_m", "median_ori_deg")] +
                       [r.overall["median_pos_m"], r.overall["median_ori_deg"], str(r.path)] +
                       [r.epoch] + [r.overall[k] for k in ours[1:]] +
                       [r.scene_acc.get(s) for s in scenes] + [r.overall["scene_acc"], int(r is best)])
    else:
        w.writerow(SINGLE_REF_COLUMNS + ours + ["best"])
        for r in results:
            w.writerow([r.label, str(r.path), r.overall["median_pos_m"], r.overall["median_ori_deg"], r.epoch] +
                       [r.overall[k] for k in ours[1:]] + [int(r is best)])
    return buf.getvalue()


def build_report(results: Sequence[CheckpointResult], best: CheckpointResult, skipped: Sequence[tuple[Path, str]],
                 *, model_name: str, multi_scene: bool, checkpoints_dir: Path, test_set: str,
                 facts: Sequence[tuple[str, str]]) -> BatchReport:
    """Assemble the plain data of the HTML page."""
    labels = [r.label for r in results]
    best_index = list(results).index(best)
    recalls = _recall_keys(results)
    scenes = _scene_names(results)
    pct = dict(fmt="{:.1f}", percent=True)
    columns = [Column("#", "{:.0f}"), Column("checkpoint"), Column("epoch", "{:.0f}")]
    if multi_scene:
        curves = {s: ([_scene_value(r, s, "median_pos_m") for r in results],
                      [_scene_value(r, s, "median_ori_deg") for r in results]) for s in scenes}
        curves["average"] = ([r.overall["median_pos_m"] for r in results],
                             [r.overall["median_ori_deg"] for r in results])
        columns += [Column("avrg median pos [m]"), Column("avrg median ori [deg]", "{:.2f}")]
        columns += [c for s in scenes for c in (Column(f"{s} pos [m]"), Column(f"{s} ori [deg]", "{:.2f}"))]
        columns += [Column("scene acc [%]", **pct)]
    else:
        curves = {"median": ([r.overall["median_pos_m"] for r in results],
                             [r.overall["median_ori_deg"] for r in results]),
                  "mean": ([r.overall["mean_pos_m"] for r in results], [r.overall["mean_ori_deg"] for r in results])}
        columns += [Column("median pos [m]"), Column("median ori [deg]", "{:.2f}")]
    columns += [Column("mean pos [m]"), Column("mean ori [deg]", "{:.2f}")]
    columns += [Column(k[len("recall_"):].replace("_", " / ") + " [%]", **pct) for k in recalls]
    columns += [Column("failed", "{:.0f}"), Column("frames", "{:.0f}"), Column("file")]
    rows = []
    for i, r in enumerate(results):
        row = [i + 1, r.label, r.epoch, r.overall["median_pos_m"], r.overall["median_ori_deg"]]
        if multi_scene:
            row += [_scene_value(r, s, k) for s in scenes for k in ("median_pos_m", "median_ori_deg")]
            row += [r.overall.get("scene_acc")]
        row += [r.overall["mean_pos_m"], r.overall["mean_ori_deg"]] + [r.overall[k] for k in recalls]
        row += [r.overall["n_failed"], r.overall["n_frames"], r.path.name]
        rows.append(row)

    per_scene = _frames_by_scene(best.frames)
    cdf = {s: (d["pos"], d["ori"]) for s, d in per_scene.items()}
    if len(cdf) > 1:
        cdf["all"] = (np.concatenate([d["pos"] for d in per_scene.values()]),
                      np.concatenate([d["ori"] for d in per_scene.values()]))
    what = "for multi-scene, the mean of the per-scene medians" if multi_scene else "all test frames"
    data = {"model": model_name, "multi_scene": multi_scene, "checkpoints_dir": str(checkpoints_dir),
            "test_set": test_set, "best": best.label, "best_index": best_index,
            "checkpoints": [{"label": r.label, "file": r.path.name, "epoch": r.epoch, "overall": r.overall,
                             "scenes": r.scenes, "scene_acc": r.scene_acc} for r in results],
            "skipped": [[p.name, reason] for p, reason in skipped]}
    return BatchReport(
        title=f"Batch evaluation: {model_name} on {test_set}", facts=list(facts), labels=labels, curves=curves,
        columns=columns, rows=rows, best_index=best_index, best_rule=BEST_RULE.format(what=what),
        cdf_errors=cdf, positions={s: (d["t_gt"], d["t_pred"]) for s, d in per_scene.items()},
        skipped=[(p.name, reason) for p, reason in skipped], data=data,
        hidden_curves=() if multi_scene else ("mean",))


# The batch ---------------------------------------------------------------------------------------------------
def batch_evaluate(model_name: str, backbone_path: str, dataset_root: str | Path, labels_file: str | Path,
                   config_path: str | Path, checkpoints_dir: str | Path, output_path: str | Path | None = None, *,
                   override_config: str | Path | None = None, ckpt_start_index: int = 0, device: str = "auto",
                   amp: bool = False, batch_size: int | None = None, test_dataset_id: str | None = None,
                   progress: bool = True, cache_dir: str | None = None) -> BatchResult:
    """Evaluate the checkpoints of ``checkpoints_dir`` (cached ones are not run again) and write the CSV,
    the HTML report and the cache to ``output_path`` (default: ``checkpoints_dir``)."""
    checkpoints_dir = Path(checkpoints_dir)
    paths = discover_checkpoints(checkpoints_dir, ckpt_start_index)
    evaluator = Evaluator(model_name, backbone_path, dataset_root, labels_file, config_path,
                          override_config=override_config, device=device, amp=amp, batch_size=batch_size,
                          test_dataset_id=test_dataset_id, progress=progress, cache_dir=cache_dir)
    multi = evaluator.multi
    out = Path(output_path) if output_path else checkpoints_dir
    out.mkdir(parents=True, exist_ok=True)
    test_set = test_dataset_id or Path(labels_file).stem
    prefix = f"{checkpoints_dir.resolve().name}_{test_set}_batch_eval"
    csv_path, html_path, cache_path = out / f"{prefix}.csv", out / f"{prefix}.html", out / f"{prefix}_cache.json"

    file_handler = add_log_file(out / f"{prefix}.log")
    try:
        context = cache_context(evaluator, amp)
        cache = load_cache(cache_path, context)
        present = {p.name for p in checkpoints_dir.glob("*.pth")}
        cache = {name: entry for name, entry in cache.items() if name in present}
        results, todo = {}, []
        for path, label in zip(paths, checkpoint_labels(paths)):
            st = path.stat()
            entry = cache.get(path.name)
            if entry and entry["size"] == st.st_size and entry["mtime_ns"] == st.st_mtime_ns:
                results[path] = CheckpointResult.from_cache(path, label, entry)
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
                reason = _first_line(str(exc))
            except Exception as exc:  # one broken file must not end a long batch; the reason is still shown
                reason = _first_line(f"cannot evaluate {path}: {type(exc).__name__}: {exc}")
                log.debug("traceback for %s", path, exc_info=True)
            if reason is not None:
                log.warning("skipping %s: %s", path.name, reason)
                skipped.append((path, reason))
                results.pop(path, None)
                cache.pop(path.name, None)
                return
            n_evaluated += 1
            results[path] = summarize_result(result, path, label, st, multi)
            best = best_of()
            for r in results.values():  # per-frame data is kept for the best checkpoint only
                if r is not best:
                    r.frames = None
            cache.update({p.name: r.to_cache() for p, r in results.items()})
            save_cache(cache_path, context, cache)
            o = results[path].overall
            log.info("%s: median %.4f m, %.3f deg%s", label, o["median_pos_m"], o["median_ori_deg"],
                     f", scene accuracy {o['scene_acc']:.3f}" if multi else "")

        with logging_redirect_tqdm():
            for path, label in tqdm(todo, desc="checkpoints", unit="ckpt", disable=not progress or not todo):
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
        save_cache(cache_path, context, cache)
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


def format_batch(batch: BatchResult) -> str:
    """A short text table for the console: one line per checkpoint, the best marked."""
    width = max(len(r.label) for r in batch.results)
    lines = [f"{'checkpoint'.ljust(width)}  {'median pos [m]':>14}  {'median ori [deg]':>16}"]
    for r in batch.results:
        mark = "  <- best" if r is batch.best else ""
        lines.append(f"{r.label.ljust(width)}  {r.overall['median_pos_m']:14.4f}  "
                     f"{r.overall['median_ori_deg']:16.3f}{mark}")
    return "\n".join(lines)


# Command line ------------------------------------------------------------------------------------------------
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
                               progress=not args.quiet, cache_dir=args.cache)
        print(format_batch(batch))
        print(f"evaluated {batch.n_evaluated}, from the cache {sum(not r.evaluated for r in batch.results)}, "
              f"skipped {len(batch.skipped)}")
        print(f"csv: {batch.csv_path}")
        print(f"html: {batch.html_path}")
        return 0

    return run_cli(run)
