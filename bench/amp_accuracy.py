"""Mixed precision on the multi-scene demo: does bf16 training keep the accuracy of fp32, and how much faster is it?

Trains each multi-scene model of ``make demo-ms`` (same data, ``configs/synthetic_config.json``, random
backbone) once per seed and precision, the precisions of one seed and model one after the other, then tests
each final checkpoint in fp32 on the per-scene test sets. Prints one JSON line per run and a table of the
median errors averaged over the scenes, the scene accuracy and the training images/s from the run's
metrics (the timed figure is the whole epoch, data included, at the demo's 64 px).

    python bench/amp_accuracy.py --seeds 0 1 --amp off bf16

With both precisions and two or more seeds it also prints, per model, the mean over the seeds of bf16 minus
fp32 (paired by seed) with its standard error: a difference within about two standard errors is within the
seed-to-seed noise of this benchmark.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from engine.evaluation.evaluate import evaluate
from engine.reproduction.demo import CONFIG, ensure_data
from engine.training.train import train
from util.logs import setup_logging

MODELS = ("mshyperpose", "ems-transposenet")


def run(model: str, seed: int, amp: str | None, data: Path, out: Path, device: str = "cpu") -> dict:
    """Train and test one model at one seed and precision; its scene-averaged medians and speed."""
    config = json.loads(Path(CONFIG).read_text())
    config[model]["seed"] = seed
    run_out = out / f"seed{seed}" / model / (amp or "fp32")
    run_out.mkdir(parents=True, exist_ok=True)
    (run_out / "config.json").write_text(json.dumps(config, indent=2))
    trained = train(
        model, "random", data, data / "7scenes_all_scenes.csv", run_out / "config.json", run_out, amp=amp, device=device
    )
    ev, _ = evaluate(
        model,
        "random",
        data,
        data / "7scenes_all_scenes.csv",
        run_out / "config.json",
        trained.final_checkpoint,
        run_out / "evals",
        test_dataset_id="7scenes",
        device=device,
    )
    speeds = [float(row["images_per_s"]) for row in trained.metrics[1:]] or [float(trained.metrics[0]["images_per_s"])]
    return {
        "seed": seed,
        "model": model,
        "amp": amp or "fp32",
        "median_pos_m": statistics.fmean(s.median_pos_m for s in ev.summaries),
        "median_ori_deg": statistics.fmean(s.median_ori_deg for s in ev.summaries),
        "scene_acc": statistics.fmean(ev.scene_acc.values()) if ev.scene_acc else None,
        "train_images_per_s": statistics.median(speeds),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument(
        "--amp",
        nargs="+",
        choices=("off", "bf16"),
        default=["off", "bf16"],
        help="precisions to train with (off = fp32)",
    )
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--data", type=Path, default=Path("data/synthetic_ms"))
    parser.add_argument("--out", type=Path, default=Path("runs/amp_accuracy"))
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to train and test")
    args = parser.parse_args(argv)
    setup_logging()
    ensure_data(args.data, 3, 25)
    rows = []
    for seed in args.seeds:
        for model in args.models:
            for amp in args.amp:
                rows.append(run(model, seed, None if amp == "off" else amp, args.data, args.out, args.device))
                print(json.dumps(rows[-1]), flush=True)
    print("\n| model | amp | seed | median pos [m] | median ori [deg] | scene acc | train img/s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        acc = "" if r["scene_acc"] is None else f"{r['scene_acc']:.3f}"
        print(
            f"| {r['model']} | {r['amp']} | {r['seed']} | {r['median_pos_m']:.3f} | {r['median_ori_deg']:.2f} | "
            f"{acc} | {r['train_images_per_s']:.1f} |"
        )
    for model in args.models:
        for amp in args.amp:
            mine = [r for r in rows if r["model"] == model and r["amp"] == (amp if amp != "off" else "fp32")]
            pos = [r["median_pos_m"] for r in mine]
            ori = statistics.fmean(r["median_ori_deg"] for r in mine)
            speed = statistics.fmean(r["train_images_per_s"] for r in mine)
            print(
                f"{model} {mine[0]['amp']}: median position {min(pos):.3f}-{max(pos):.3f} m (mean "
                f"{statistics.fmean(pos):.3f}), orientation mean {ori:.2f} deg, {speed:.1f} train img/s over "
                f"{len(mine)} seed(s)"
            )
        for key, unit in (("median_pos_m", "m"), ("median_ori_deg", "deg")):
            paired = paired_difference(rows, model, key)
            if paired is not None:
                print(
                    f"{model} bf16 - fp32 {key}: mean {paired['mean']:+.3f} {unit}, standard error "
                    f"{paired['se']:.3f} over {paired['n']} seeds (t = {paired['t']:+.2f}); bf16 worse for "
                    f"{paired['worse']} of {paired['n']}; fp32 seed-to-seed sd {paired['sd_fp32']:.3f}"
                )
    return 0


def paired_difference(rows: list[dict], model: str, key: str) -> dict | None:
    """bf16 minus fp32 of ``key`` per seed (same seed, same data order and initialisation): the mean, its
    standard error and t = mean / se, or None with fewer than two seeds run in both precisions."""
    by_seed = {(r["seed"], r["amp"]): r[key] for r in rows if r["model"] == model}
    seeds = sorted(s for s, amp in by_seed if amp == "fp32" and (s, "bf16") in by_seed)
    if len(seeds) < 2:
        return None
    diffs = [by_seed[s, "bf16"] - by_seed[s, "fp32"] for s in seeds]
    mean = statistics.fmean(diffs)
    se = statistics.stdev(diffs) / len(diffs) ** 0.5
    return {
        "n": len(seeds),
        "mean": mean,
        "se": se,
        "t": mean / se if se > 0 else float("inf"),
        "worse": sum(d > 0 for d in diffs),
        "sd_fp32": statistics.stdev(by_seed[s, "fp32"] for s in seeds),
    }


if __name__ == "__main__":
    sys.exit(main())
