"""The single-scene demo over several training seeds: how far its medians spread, and which model wins.

Same data (``engine.reproduction.demo.ensure_data``), config (``configs/synthetic_config.json``) and models as
``make demo``; only the config's ``seed`` changes. An accuracy study, not a benchmark: no timings.

    python bench/demo_seeds.py [--seeds 0 1 2] [--data data/synthetic] [--out runs/demo_seeds] \
        [--bn_recalibrate_batches N]
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

MODELS = ("hyperpose", "effposenet")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data", type=Path, default=Path("data/synthetic"))
    parser.add_argument("--out", type=Path, default=Path("runs/demo_seeds"))
    parser.add_argument(
        "--bn_recalibrate_batches", type=int, default=None, help="override the config's value (default: keep it)"
    )
    args = parser.parse_args(argv)
    setup_logging()
    ensure_data(args.data, 1, 50)
    train_csv = args.data / "abs_7scenes_pose.csv_chess_train.csv"
    test_csv = args.data / "abs_7scenes_pose.csv_chess_test.csv"
    base = json.loads(Path(CONFIG).read_text())
    results = {m: [] for m in MODELS}
    for seed in args.seeds:
        for model in MODELS:
            base[model]["seed"] = seed
            if args.bn_recalibrate_batches is not None:
                base[model]["bn_recalibrate_batches"] = args.bn_recalibrate_batches
        config = args.out / f"config_seed{seed}.json"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(json.dumps(base, indent=2))
        for model in MODELS:
            run = train(model, "random", args.data, train_csv, config, args.out / f"seed{seed}" / model)
            ev, _ = evaluate(
                model,
                "random",
                args.data,
                test_csv,
                config,
                run.final_checkpoint,
                args.out / f"seed{seed}" / model / "evals",
            )
            s = ev.summaries[0]
            results[model].append((seed, s.median_pos_m, s.median_ori_deg))
            print(
                json.dumps(
                    {"seed": seed, "model": model, "median_pos_m": s.median_pos_m, "median_ori_deg": s.median_ori_deg}
                ),
                flush=True,
            )
    print("\n| seed | " + " | ".join(f"{m} pos [m] / ori [deg]" for m in MODELS) + " | better position |")
    print("|---|" + "---|" * len(MODELS) + "---|")
    wins = {m: 0 for m in MODELS}
    for i, seed in enumerate(args.seeds):
        cells = [f"{results[m][i][1]:.3f} / {results[m][i][2]:.2f}" for m in MODELS]
        best = min(MODELS, key=lambda m: results[m][i][1])
        wins[best] += 1
        print(f"| {seed} | " + " | ".join(cells) + f" | {best} |")
    for m in MODELS:
        pos = [r[1] for r in results[m]]
        print(
            f"{m}: median position {min(pos):.3f}-{max(pos):.3f} m (mean {statistics.fmean(pos):.3f}) over "
            f"{len(pos)} seeds; better in {wins[m]} of {len(pos)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
