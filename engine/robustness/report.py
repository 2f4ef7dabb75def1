"""Robustness to appearance change: several checkpoints on several test conditions, one CSV and one HTML page.

    python -m engine.robustness MODEL BACKBONE ROOT CONFIG --checkpoint_path A.pth B.pth \
        [--shifts | --ecl | --conditions NAME=CSV[:ROOT] ...] [--corruptions all --severities 1,3,5] \
        --output_path DIR

HyperPose claims that generated heads lose less accuracy than static ones under a domain shift. This puts
the claim in one table: for every checkpoint and condition the median and mean errors and recalls, and the
relative degradation from the base (first) condition. Each checkpoint's own model name and config win over
MODEL and CONFIG (CONFIG still gives the runtime settings), so hyperpose and effposenet sit in one report;
checkpoints trained on different scene maps are refused. A condition whose CSV or images are missing is
reported on one line and skipped. ``--corruptions`` adds the base condition's images under ImageNet-C-style
corruptions (:mod:`datasets.corruptions`), summarised per corruption and as the mean corruption error
relative to a baseline model. Checkpoints of several models and seeds are paired by seed
(:mod:`engine.robustness.compare`). Scores go through :class:`engine.evaluation.evaluate.Evaluator` (exactly as ``test``
mode) and are cached per checkpoint and condition (:mod:`engine.evaluation.result_cache`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from datasets.corruptions import parse_corruptions, parse_severities
from engine.cli import add_baseline_arguments, add_runtime_arguments, configure_console, parse_train_labels
from engine.evaluation.baselines import Baselines, recorded_train_files, score_baselines
from engine.evaluation.evaluate import EvalResult, Evaluator
from engine.evaluation.page import write_batch_report
from engine.evaluation.records import CheckpointResult, first_line, summarize_result
from engine.evaluation.result_cache import ResultCache, evaluator_context
from engine.robustness.compare import paired_csv, paired_rows, pairs_of
from engine.robustness.conditions import (
    Condition,
    base_test_csvs,
    check_condition,
    corruption_conditions,
    ecl_conditions,
    group_conditions,
    parse_condition,
    shift_conditions,
)
from engine.robustness.render import (
    build_report,
    corruption_csv,
    corruption_summary,
    format_summaries,
    format_table,
    results_csv,
)
from models.config import defaults, load_config
from models.registry import canonical_model_name, cli_choices, get_spec
from util.checkpoint import load_checkpoint
from util.config import GENERAL_KEYS, read_config_file
from util.errors import UserError, run_cli
from util.io import atomic_write_text, check_output_dir
from util.logs import add_log_file

log = logging.getLogger(__name__)

PREFIX = "robustness"


@dataclass
class Entry:
    """One checkpoint of the report, with the model and config it is evaluated with."""

    path: Path
    model_name: str
    config: dict
    scene_map: dict
    label: str = ""
    seed: int | None = None  # the training seed its config records
    group: str = ""  # what it is paired as (engine.robustness.compare): its model name unless given
    train: tuple[Path, Path] | None = None  # (training labels, dataset root) it records, where they still exist


@dataclass
class RobustnessResult:
    """What :func:`robustness_report` scored and wrote."""

    entries: list[Entry]
    conditions: list[Condition]  # the usable ones, base first
    records: dict[tuple[str, str], CheckpointResult]  # (entry label, condition name) -> record
    skipped: list[tuple[str, str]]  # (what, one-line reason)
    n_evaluated: int
    csv_path: Path
    html_path: Path
    cache_path: Path
    baseline: str = ""  # the group others are paired with and the mCE is relative to
    paired: list = field(default_factory=list)  # engine.robustness.compare.PairedRow, every group against the baseline
    corruption_rows: list = field(default_factory=list)  # robustness_report.corruption_summary
    paired_csv_path: Path | None = None
    corruption_csv_path: Path | None = None
    baseline_records: dict = field(default_factory=dict)  # (baseline name, condition) -> CheckpointResult

    @property
    def base(self) -> str:
        return self.conditions[0].name

    def change(self, label: str, condition: str, key: str) -> float:
        """Relative change of ``key`` from the base condition: (x - x_base) / x_base (NaN if unknown)."""
        base, here = self.records.get((label, self.base)), self.records.get((label, condition))
        if base is None or here is None or not base.overall[key] > 0:
            return float("nan")
        return (here.overall[key] - base.overall[key]) / base.overall[key]

    def rank(self, label: str, condition: str) -> int | None:
        """1 = the lowest median position error at this condition (ties: orientation), among the checkpoints."""
        scored = sorted(
            (r.sort_key(), e.label) for e in self.entries if (r := self.records.get((e.label, condition))) is not None
        )
        order = [lab for _, lab in scored]
        return order.index(label) + 1 if label in order else None


def load_entries(model_name: str, config_path: str | Path, checkpoints: Sequence[str | Path]) -> list[Entry]:
    """Read the checkpoints: model name, config and scene map of each (refuses differing scene maps)."""
    if not checkpoints:
        raise UserError("--checkpoint_path needs at least one checkpoint")
    model_name = canonical_model_name(model_name)
    general = read_config_file(config_path).get("general", {}) if config_path else {}
    runtime = {k: v for k, v in general.items() if k in GENERAL_KEYS}
    entries = []
    for path in map(Path, checkpoints):
        ckpt = load_checkpoint(path)
        if ckpt["format"] == "reference":  # a bare state_dict records neither: MODEL and CONFIG apply
            entries.append(Entry(path, model_name, load_config(config_path, model_name), {}))
        else:
            name = canonical_model_name(ckpt["model_name"])  # defaults fill keys older checkpoints lack
            entries.append(
                Entry(
                    path,
                    name,
                    {**defaults(name), **ckpt["config"], **runtime},
                    dict(ckpt["scene_map"]),
                    seed=ckpt["config"].get("seed"),
                    train=recorded_train_files(ckpt),
                )
            )
    maps = {json.dumps(sorted(e.scene_map.items())): e for e in entries if e.scene_map}
    if len(maps) > 1:
        a, b = list(maps.values())[:2]
        raise UserError(
            f"checkpoints of different scene maps cannot share a report: {a.path.name} has "
            f"{a.scene_map}, {b.path.name} has {b.scene_map}"
        )
    for e in entries:
        e.group = e.model_name
    return label_entries(entries)


def label_entries(entries: list[Entry]) -> list[Entry]:
    """Short unique labels: the group alone, else ``group seedN``, else the file's stem, else its path."""
    groups = [e.group for e in entries]
    seeds = {g: [e.seed for e in entries if e.group == g] for g in groups}
    for e in entries:
        if groups.count(e.group) == 1:
            e.label = e.group
        elif e.seed is not None and seeds[e.group].count(e.seed) == 1:
            e.label = f"{e.group} seed{e.seed}"
        else:
            e.label = f"{e.group} ({e.path.stem})"
    labels = [e.label for e in entries]
    for e in entries:
        if labels.count(e.label) > 1:
            e.label = f"{e.group} ({e.path})"
    return entries


def _merge(results: Sequence[EvalResult]) -> EvalResult:
    """The parts of one condition as one result (their scenes side by side, as a multi-scene test has)."""
    first = results[0]
    return EvalResult(
        first.model_name,
        first.checkpoint,
        [s for r in results for s in r.summaries],
        {k: v for r in results for k, v in r.scene_acc.items()},
        {f"{i}:{name}": p for i, r in enumerate(results) for name, p in r.predictions.items()},
        multi_scene=first.multi_scene,
    )


def robustness_report(
    model_name: str,
    backbone_path: str,
    dataset_root: str | Path,
    config_path: str | Path,
    checkpoints: Sequence[str | Path | Entry],
    conditions: Sequence[Condition],
    output_path: str | Path,
    *,
    device: str = "auto",
    amp: bool = False,
    batch_size: int | None = None,
    progress: bool = True,
    cache_dir: str | None = None,
    baseline: str = "effposenet",
    train: tuple[Path, Path] | None = None,
    baselines: bool = True,
) -> RobustnessResult:
    """Evaluate every checkpoint on every usable condition and write the CSV, the HTML report and the cache.

    ``checkpoints`` are paths, or the entries :func:`load_entries` made of them. Groups (model names, unless
    the entries say otherwise) are paired by seed against ``baseline`` (the first group when it is absent),
    which is also the reference of the mean corruption error. With ``baselines``, the mean training pose and
    image retrieval (:mod:`engine.evaluation.baselines`) are scored on every condition too, from ``train``
    (labels, root) or the training set the checkpoints record."""
    entries = (
        list(checkpoints)
        if checkpoints and all(isinstance(c, Entry) for c in checkpoints)
        else load_entries(model_name, config_path, checkpoints)
    )
    out = check_output_dir(output_path)  # a read-only or mistyped folder: one line, before any evaluation
    csv_path, html_path, cache_path = (out / f"{PREFIX}.csv", out / f"{PREFIX}.html", out / f"{PREFIX}_cache.json")
    file_handler = add_log_file(out / f"{PREFIX}.log")
    try:
        skipped, usable = [], []
        for condition in conditions:
            reason = check_condition(condition)
            if reason is None:
                usable.append(condition)
            else:
                log.warning("skipping condition %s: %s", condition.name, reason)
                skipped.append((f"condition {condition.name}", reason))
        if not usable:
            raise UserError(
                f"none of the {len(conditions)} conditions is usable: "
                + "; ".join(f"{what}: {why}" for what, why in skipped)
            )

        cache = ResultCache(cache_path, {"amp": bool(amp)})
        evaluators: dict[tuple, Evaluator] = {}
        records: dict[tuple[str, str], CheckpointResult] = {}
        n_evaluated, keys = 0, []
        for condition in usable:
            for e in entries:
                key = f"{condition.name}|{e.path.resolve()}"
                keys.append(key)
                try:
                    evs = []
                    for csv_file, root in condition.parts:
                        ev_key = (
                            e.model_name,
                            json.dumps(e.config, sort_keys=True, default=str),
                            csv_file,
                            root,
                            repr(condition.corruption),
                        )
                        if ev_key not in evaluators:
                            evaluators[ev_key] = Evaluator(
                                e.model_name,
                                backbone_path,
                                root,
                                csv_file,
                                config_path,
                                config=e.config,
                                device=device,
                                amp=amp,
                                batch_size=batch_size,
                                progress=progress,
                                cache_dir=cache_dir,
                                corruption=condition.corruption,
                            )
                        evs.append(evaluators[ev_key])
                    inputs = {"parts": [evaluator_context(ev) for ev in evs]}
                    record = cache.lookup(key, e.path, e.label, inputs)
                    if record is None:
                        stat = e.path.stat()
                        merged = _merge([ev.evaluate_checkpoint(e.path, timing=False) for ev in evs])
                        record = summarize_result(merged, e.path, e.label, stat, evs[0].multi)
                        cache.store(key, record, inputs)
                        cache.save()
                        n_evaluated += 1
                except UserError as exc:
                    reason = first_line(str(exc))
                    log.warning("skipping %s on %s: %s", e.label, condition.name, reason)
                    skipped.append((f"{e.label} on {condition.name}", reason))
                    continue
                records[(e.label, condition.name)] = record
                log.info(
                    "%s on %s: median %.4f m, %.3f deg",
                    e.label,
                    condition.name,
                    record.overall["median_pos_m"],
                    record.overall["median_ori_deg"],
                )
        usable = [c for c in usable if any((e.label, c.name) in records for e in entries)]
        if not usable:
            raise UserError("no checkpoint could be evaluated on any condition (see the messages above)")
        cache.keep_only(keys)
        cache.save()
        result = RobustnessResult(entries, usable, records, skipped, n_evaluated, csv_path, html_path, cache_path)
        if baselines:
            add_baselines(result, train, device, cache_dir)
        summarize_groups(result, baseline, out)
        atomic_write_text(csv_path, results_csv(result))
        facts = [
            ("checkpoints", ", ".join(f"{e.label}: {e.path}" for e in entries)),
            ("conditions", "; ".join(f"{c.name}: {c.describe()}" for c in usable)),
            ("base condition", result.base),
            ("config", f"{config_path} (runtime settings; each checkpoint's own config wins)"),
            (
                "results",
                f"{len(records)} ({n_evaluated} evaluated in this run, "
                f"{len(records) - n_evaluated} from the cache), {len(skipped)} skipped",
            ),
            ("device", str(next(iter(evaluators.values())).device) + (" (AMP)" if amp else "")),
        ]
        write_batch_report(html_path, build_report(result, facts))
        log.info("wrote %s and %s", csv_path, html_path)
        return result
    finally:
        logging.getLogger().removeHandler(file_handler)
        file_handler.close()


def add_baselines(
    result: RobustnessResult, train: tuple[Path, Path] | None, device: str, cache_dir: str | None
) -> None:
    """The mean pose and retrieval baselines on every condition (one skipped line when they cannot run)."""
    train = train or next((e.train for e in result.entries if e.train is not None), None)
    if train is None:
        result.skipped.append(
            (
                "baselines",
                "no training set: the checkpoints record none that exists here; give --train_labels CSV[:ROOT]",
            )
        )
        return
    first = result.entries[0]
    models = Baselines(
        *train, image_size=int(first.config.get("image_crop", 224)), device=device, cache_dir=cache_dir or "auto"
    )
    multi = get_spec(first.model_name).multi_scene
    try:
        for condition in result.conditions:
            for name, record in score_baselines(models, condition.parts, multi, condition.corruption).items():
                result.baseline_records[(name, condition.name)] = record
    except UserError as exc:
        result.baseline_records.clear()
        result.skipped.append(("baselines", first_line(str(exc))))


def summarize_groups(result: RobustnessResult, baseline: str, out: Path) -> None:
    """The paired comparison over seeds and the corruption summary, with their CSVs (where there are any)."""
    groups = list(dict.fromkeys(e.group for e in result.entries))
    result.baseline = baseline if baseline in groups else groups[0]
    try:
        result.paired = [row for a, b in pairs_of(result, result.baseline) for row in paired_rows(result, a, b)]
    except UserError as exc:
        log.warning("no paired comparison: %s", exc)
        result.skipped.append(("paired comparison", first_line(str(exc))))
    if result.paired:
        result.paired_csv_path = atomic_write_text(out / "paired.csv", paired_csv(result.paired))
    result.corruption_rows = corruption_summary(result, result.baseline)
    if result.corruption_rows:
        result.corruption_csv_path = atomic_write_text(out / "corruptions.csv", corruption_csv(result.corruption_rows))


# Command line ------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine.robustness",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Evaluate checkpoints on several test conditions (appearance changes of the same poses): "
        "one CSV and one self-contained HTML report with the degradation from the base condition.",
    )
    parser.add_argument(
        "model_name",
        choices=cli_choices(False) + cli_choices(True),
        help="model of checkpoints that do not record one (bare reference state_dicts)",
    )
    parser.add_argument(
        "backbone_path",
        help="backbone weights of the config's backbone_type (a file, 'imagenet' or 'random'); checkpoints hold theirs",
    )
    parser.add_argument("dataset_path", help="dataset root; img_path in the label CSVs is relative to it")
    parser.add_argument("config_file", help="JSON config: runtime settings, and the config of bare state_dicts")
    parser.add_argument(
        "--checkpoint_path",
        nargs="+",
        required=True,
        metavar="CKPT",
        help="one or more checkpoints, e.g. a hyperpose and an effposenet final checkpoint",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--conditions",
        nargs="+",
        metavar="NAME=CSV[:ROOT]",
        help="named test CSVs, the first is the base; repeat a name to add a scene's CSV",
    )
    which.add_argument(
        "--ecl",
        nargs="*",
        metavar="BASE_CSV",
        help="the base test CSV(s) and the ECL styles (evening, winter, summer) beside them; "
        "without CSVs, each scene's base test CSV in dataset_path",
    )
    which.add_argument(
        "--shifts",
        nargs="*",
        metavar="BASE_CSV",
        help="the synthetic shift levels (..._test_shift<level>.csv) beside the base test "
        "CSV(s); without CSVs, each scene's test CSV in dataset_path",
    )
    parser.add_argument(
        "--corruptions",
        metavar="all|NAME,...",
        help="also test the base condition's images under these corruptions (python -m "
        "datasets.corruptions list); alone, the base is each scene's test CSV in dataset_path",
    )
    parser.add_argument("--severities", default="1,2,3,4,5", help="corruption severities, 1 (mild) to 5")
    parser.add_argument(
        "--corruption_seed",
        type=int,
        default=0,
        help="seed of the corruptions' random draws (each image's draw is fixed by it)",
    )
    parser.add_argument(
        "--baseline_model",
        default="effposenet",
        help="the model others are paired against and the mean corruption error is relative to "
        "(the first model of the report when absent)",
    )
    add_baseline_arguments(parser)
    parser.add_argument("--output_path", required=True, help="folder for the CSV, the HTML report, cache and log")
    add_runtime_arguments(parser)
    return parser


def conditions_from_args(args, scenes: Sequence[str]) -> list[Condition]:
    root = Path(args.dataset_path)
    names = parse_corruptions(args.corruptions) if args.corruptions is not None else []
    severities = parse_severities(args.severities)
    if args.conditions is not None:
        conditions = group_conditions(parse_condition(text, root) for text in args.conditions)
    elif args.ecl is None and args.shifts is None:
        if not names:
            raise UserError("name the test conditions: --conditions, --ecl, --shifts and/or --corruptions")
        if not scenes:
            raise UserError(
                "the checkpoints record no scene names: give the base test CSV as "
                "--conditions clean=CSV beside --corruptions"
            )
        conditions = [Condition("clean", [(csv, root) for csv in base_test_csvs(root, scenes)])]
    else:
        listed = args.ecl if args.ecl is not None else args.shifts
        if not listed and not scenes:
            raise UserError("the checkpoints record no scene names: name the base test CSVs after --ecl / --shifts")
        base = [Path(p) for p in listed] if listed else base_test_csvs(root, scenes)
        conditions = ecl_conditions(base, root) if args.ecl is not None else shift_conditions(base, root)
    return conditions + corruption_conditions(conditions[0], names, severities, args.corruption_seed)


def report_from_args(
    args, entries: list[Entry], model_name: str, backbone_path: str, baseline: str
) -> RobustnessResult:
    """:func:`robustness_report` with the conditions, output and runtime options of a parsed command line
    (``engine.robustness.report`` and ``engine.robustness.compare`` share them)."""
    scenes = sorted({s for e in entries for s in e.scene_map})
    return robustness_report(
        model_name,
        backbone_path,
        args.dataset_path,
        args.config_file,
        entries,
        conditions_from_args(args, scenes),
        args.output_path,
        device=args.device,
        amp=args.amp,
        batch_size=args.batch_size,
        progress=not args.quiet,
        cache_dir=args.cache,
        baseline=baseline,
        train=parse_train_labels(args.train_labels),
        baselines=not args.no_baselines,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_console(args.quiet)

    def run() -> int:
        entries = load_entries(args.model_name, args.config_file, args.checkpoint_path)
        result = report_from_args(args, entries, args.model_name, args.backbone_path, args.baseline_model)
        print(format_table(result))
        if summaries := format_summaries(result):
            print(summaries)
        for what, reason in result.skipped:
            print(f"skipped {what}: {reason}")
        print(f"csv: {result.csv_path}")
        print(f"html: {result.html_path}")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
