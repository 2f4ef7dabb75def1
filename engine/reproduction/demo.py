"""The demo behind ``make demo`` / ``make demo-ms``: synthetic data, train, test, batch-evaluate, compare.

Everything runs on the bundled synthetic scenes with a randomly initialised backbone, so it needs no
download. The errors are printed beside those of always predicting the mean training pose, the baseline
any absolute pose regressor has to beat. The single-scene demo ends with the robustness step: both models
on the same test poses at three appearance-shift levels (:mod:`engine.robustness.report`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.cli import run_cli
from util.logs import setup_logging

log = logging.getLogger(__name__)

DEMO_SIZE = (64, 64)
DEMO_SHIFTS = (0.0, 0.5, 1.0)  # the robustness step: the test poses without, with the usual and a strong shift
CONFIG = Path(os.path.relpath(Path(__file__).resolve().parents[2] / "configs" / "synthetic_config.json"))


@dataclass(frozen=True)
class Demo:
    """What the single-scene and multi-scene demos differ in."""

    scenes: int  # synthetic scenes (chess first)
    frames_per_seq: int
    test_shifts: tuple[float, ...] | None  # test sequences rendered at these shift levels too
    models: tuple[str, str]  # the hypernetwork and its static twin
    train_csv: str
    test_csv: str
    test_dataset_id: str | None  # multi-scene: every scene's test file, found beside test_csv
    robustness: bool  # end with the robustness step over test_shifts


DEMOS = {
    "single": Demo(
        scenes=1,
        frames_per_seq=50,
        test_shifts=DEMO_SHIFTS,
        models=("hyperpose", "effposenet"),
        train_csv="abs_7scenes_pose.csv_chess_train.csv",
        test_csv="abs_7scenes_pose.csv_chess_test.csv",
        test_dataset_id=None,
        robustness=True,
    ),
    "multi": Demo(
        scenes=3,
        frames_per_seq=25,
        test_shifts=None,
        models=("mshyperpose", "ems-transposenet"),
        train_csv="7scenes_all_scenes.csv",
        test_csv="7scenes_all_scenes.csv",
        test_dataset_id="7scenes",
        robustness=False,
    ),
}


def mean_pose_errors(train_csv: Path, test_csv: Path, root: Path) -> tuple[float, float]:
    """Median errors of predicting the mean training pose for every test frame."""
    from datasets.dataset import CameraPoseDataset
    from util.pose import mean_pose, pose_errors

    mean_7 = mean_pose(CameraPoseDataset(root, train_csv).poses_N7.astype(np.float64))
    test = CameraPoseDataset(root, test_csv)
    pos, ori = pose_errors(np.repeat(mean_7[None], len(test), 0).astype(np.float64), test.poses_N7.astype(np.float64))
    return float(np.median(pos)), float(np.median(ori))


def ensure_data(data: Path, scenes: int, frames_per_seq: int, test_shifts=None) -> None:
    from datasets.synthetic import find_shift_csvs, generate

    if (data / "7scenes_all_scenes.csv").is_file() and (
        not test_shifts or len(find_shift_csvs(data / "abs_7scenes_pose.csv_chess_test.csv")) == len(test_shifts)
    ):
        return
    t0 = time.perf_counter()
    log.info("generating %d synthetic scene(s) in %s", scenes, data)
    # Small square frames (no crop shift at 64 px) on 16 short training sequences: dense coverage of the
    # room, which a randomly initialised backbone needs to learn positions in a few minutes on a CPU.
    generate(
        data,
        scenes=scenes,
        layout="7scenes",
        size=DEMO_SIZE,
        train_seqs=16,
        frames_per_seq=frames_per_seq,
        seed=0,
        test_shifts=test_shifts,
    )
    log.info("generated in %.1f s", time.perf_counter() - t0)


def robustness_step(model_name: str, checkpoints, data: Path, out: Path, scene: str, config: Path = CONFIG) -> None:
    """Both final checkpoints on the same test poses at each demo shift level: a table and an HTML report."""
    from engine.robustness.conditions import shift_conditions
    from engine.robustness.render import format_table
    from engine.robustness.report import robustness_report

    test_csv = data / f"abs_7scenes_pose.csv_{scene}_test.csv"
    result = robustness_report(model_name, "random", data, config, checkpoints, shift_conditions([test_csv], data), out)
    print(f"\nRobustness to appearance change ({scene}, median errors; same poses at every shift level):")
    print(format_table(result))
    print(f"robustness report: {result.html_path}")


def run_demo(kind: str, data: Path, out: Path, config: Path = CONFIG, demo: Demo | None = None) -> int:
    """``make demo`` (kind ``single``) or ``make demo-ms`` (``multi``); ``config`` and ``demo`` for smaller runs."""
    from engine.evaluation.batch_eval import batch_evaluate
    from engine.evaluation.evaluate import evaluate
    from engine.training.train import train

    t_start = time.perf_counter()
    demo = demo or DEMOS[kind]
    ensure_data(data, demo.scenes, demo.frames_per_seq, demo.test_shifts)
    train_csv, test_csv = data / demo.train_csv, data / demo.test_csv
    rows, finals = [], []
    for model_name in demo.models:
        log.info("training %s on %s", model_name, train_csv.name)
        result = train(model_name, "random", data, train_csv, config, out / model_name)
        finals.append(result.final_checkpoint)
        ev, paths = evaluate(
            model_name,
            "random",
            data,
            test_csv,
            config,
            result.final_checkpoint,
            out / model_name / "evals",
            test_dataset_id=demo.test_dataset_id,
        )
        print(ev.report_text())
        batch = batch_evaluate(
            model_name,
            "random",
            data,
            test_csv,
            config,
            result.run_dir,
            output_path=out / model_name / "batch_eval",
            test_dataset_id=demo.test_dataset_id,
        )
        log.info("batch evaluation of %d checkpoints: %s, %s", len(batch.results), batch.csv_path, batch.html_path)
        for s in ev.summaries:
            rows.append((model_name, s.scene, s.median_pos_m, s.median_ori_deg, ev.scene_acc.get(s.scene)))
    print()
    print(
        f"{'model':<18}{'scene':<12}{'median pos [m]':>16}{'median ori [deg]':>18}{'mean-pose pos':>15}"
        f"{'mean-pose ori':>15}" + ("  scene acc" if any(row[-1] is not None for row in rows) else "")
    )
    for model_name, s, pos, ori, acc in rows:
        test_csv = data / f"abs_7scenes_pose.csv_{s}_test.csv"
        s_train = data / f"abs_7scenes_pose.csv_{s}_train.csv"
        base_pos, base_ori = mean_pose_errors(s_train, test_csv, data)
        print(
            f"{model_name:<18}{s:<12}{pos:>16.3f}{ori:>18.2f}{base_pos:>15.3f}{base_ori:>15.2f}"
            + (f"  {acc:9.3f}" if acc is not None else "")
        )
    if demo.robustness:
        robustness_step(demo.models[0], finals, data, out / "robustness", "chess", config)
    print(f"\ndemo finished in {time.perf_counter() - t_start:.0f} s; outputs in {out}")
    return 0


# The evidence demo (make demo-evidence): three seeds per model, baselines, corruptions -------------------------
EVIDENCE_SEEDS = (0, 1, 2)
EVIDENCE_CORRUPTIONS = ("gaussian_noise", "motion_blur", "fog", "contrast", "jpeg_compression")
EVIDENCE_SEVERITIES = (1, 3, 5)


def train_seeds(models, seeds, data: Path, train_csv: Path, out: Path, config: Path = CONFIG) -> list[Path]:
    """The final checkpoint of every model and seed; a finished run is reused, not trained again."""
    from engine.training.train import train
    from util.io import atomic_write_text

    finals = []
    for seed in seeds:
        override = atomic_write_text(out / f"seed{seed}.json", f'{{"general": {{"seed": {seed}}}}}\n')
        for model_name in models:
            folder = out / model_name / f"seed{seed}"
            done = sorted(folder.glob("run_*/*_final.pth"))
            if done:
                log.info("%s seed %d: reusing %s", model_name, seed, done[-1])
                finals.append(done[-1])
                continue
            log.info("training %s seed %d on %s", model_name, seed, train_csv.name)
            finals.append(
                train(model_name, "random", data, train_csv, config, folder, override_config=override).final_checkpoint
            )
    return finals


def format_evidence(result) -> str:
    """Per condition: each model's mean +- sd over seeds, the paired difference, and both baselines."""
    from engine.robustness.compare import ALL_SCENES

    pos = {r.condition: r for r in result.paired if r.scene == ALL_SCENES and r.metric == "median_pos_m"}
    ori = {r.condition: r for r in result.paired if r.scene == ALL_SCENES and r.metric == "median_ori_deg"}
    first = next(iter(pos.values()))
    n, a, b = first.diff.n, first.a, first.b
    bases = list(dict.fromkeys(name for name, _ in result.baseline_records))
    head = (
        f"{'condition':<20}{a + ' [m]':>16}{b + ' [m]':>16}{a + ' - ' + b + ' [m]':>30}  "
        f"{'verdict':<26}{'orientation diff [deg]':>24}" + "".join(f"{name + ' [m]':>28}" for name in bases)
    )
    lines = [
        f"Median position error over {n} paired seeds (mean +- sd; difference: mean +- SE, seeds won "
        f"{a}:{b}); verdict at 95 %.",
        head,
    ]
    for c in result.conditions:
        p, o = pos.get(c.name), ori.get(c.name)
        if p is None:
            continue
        d = p.diff
        cells = [
            f"{d.mean_a:.3f} +- {d.sd_a:.3f}",
            f"{d.mean_b:.3f} +- {d.sd_b:.3f}",
            f"{d.mean:+.3f} +- {d.se:.3f} ({d.wins_a}:{d.wins_b})",
        ]
        line = f"{c.name:<20}{cells[0]:>16}{cells[1]:>16}{cells[2]:>30}  {p.words():<26}"
        line += f"{o.diff.mean:>+15.2f} +- {o.diff.se:.2f}" if o is not None else f"{'-':>24}"
        line += "".join(
            f"{r.overall['median_pos_m']:>28.3f}"
            if (r := result.baseline_records.get((name, c.name)))
            else f"{'-':>28}"
            for name in bases
        )
        lines.append(line)
    return "\n".join(lines)


def run_evidence(
    data: Path,
    out: Path,
    seeds=EVIDENCE_SEEDS,
    config: Path = CONFIG,
    corruptions=EVIDENCE_CORRUPTIONS,
    severities=EVIDENCE_SEVERITIES,
) -> int:
    """hyperpose against effposenet over paired seeds on the demo scene: clean, the shift levels and a few
    corruptions at severities 1, 3 and 5, beside the mean-pose and retrieval baselines."""
    from engine.robustness.conditions import corruption_conditions, shift_conditions
    from engine.robustness.render import format_corruptions
    from engine.robustness.report import robustness_report

    t_start = time.perf_counter()
    ensure_data(data, 1, 50, DEMO_SHIFTS)
    scene = "chess"
    train_csv = data / f"abs_7scenes_pose.csv_{scene}_train.csv"
    test_csv = data / f"abs_7scenes_pose.csv_{scene}_test.csv"
    finals = train_seeds(("hyperpose", "effposenet"), seeds, data, train_csv, out, config)
    shifts = shift_conditions([test_csv], data)
    conditions = shifts + corruption_conditions(shifts[0], corruptions, severities)
    result = robustness_report(
        "hyperpose", "random", data, config, finals, conditions, out / "report", baseline="effposenet"
    )
    print()
    print(format_evidence(result))
    print()
    print(format_corruptions(result.corruption_rows, result.baseline))
    print(f"\nreport: {result.html_path}; paired: {result.paired_csv_path}; corruptions: {result.corruption_csv_path}")
    print(f"evidence demo finished in {time.perf_counter() - t_start:.0f} s; outputs in {out}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Run the synthetic-scene demo.")
    parser.add_argument(
        "kind",
        choices=(*DEMOS, "evidence"),
        help="single-scene or multi-scene models, or the evidence demo (hyperpose against "
        "effposenet over three paired seeds, baselines and corruptions)",
    )
    parser.add_argument("--data", type=Path, default=Path("data/synthetic"), help="synthetic dataset folder")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    args = parser.parse_args(argv)
    setup_logging()
    if args.kind == "evidence":
        return run_cli(lambda: run_evidence(args.data, args.out))
    return run_cli(lambda: run_demo(args.kind, args.data, args.out))


if __name__ == "__main__":
    sys.exit(main())
