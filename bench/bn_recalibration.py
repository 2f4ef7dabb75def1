"""Eval-mode collapse after short training from a random backbone, with and without BatchNorm recalibration.

The setting of issue 13, item 14: one synthetic scene with 200 training frames, 15 epochs, batch 8,
``bn_momentum`` null (EfficientNet's 0.01), random backbone, hyperpose and effposenet. For each model it
trains with ``bn_recalibrate_batches`` 0 (off) and null (on: 20 batches for a random backbone), then scores
the final checkpoint on its own training images (test transform) in eval mode (running statistics) and in
"train mode" (BatchNorm on batch statistics of batches of 8, dropout off, nothing updated), and reports the
spread of the eval-mode test predictions. An accuracy study, not a benchmark: no timings.

    python bench/bn_recalibration.py [--epochs 15] [--frames 200] [--models hyperpose effposenet]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from datasets.dataset import CameraPoseDataset
from datasets.synthetic import generate
from datasets.transforms import build_transform
from engine.training.batchnorm import batchnorm_layers
from engine.training.train import prepare_model, train
from util.checkpoint import load_checkpoint
from util.pose import pose_errors

REPO = Path(__file__).resolve().parents[1]


@torch.no_grad()
def predict(model, dataset, batch_norm_train: bool) -> torch.Tensor:
    model = copy.deepcopy(model).eval()
    if batch_norm_train:
        for layer in batchnorm_layers(model):
            layer.train()
            layer.momentum = 0.0  # batch statistics, running ones left as they are
    loader = DataLoader(dataset, batch_size=8, shuffle=False)
    return torch.cat([model(b["img"], None)[0] for b in loader])


def median_pos(pred_N7: torch.Tensor, dataset) -> float:
    pos, _ = pose_errors(pred_N7.double(), torch.from_numpy(dataset.poses_N7).double())
    return float(torch.as_tensor(pos).median())


def spread(t_N3: torch.Tensor) -> float:
    return float((t_N3 - t_N3.mean(0)).norm(dim=1).median())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--frames", type=int, default=200, help="training frames (4 sequences)")
    parser.add_argument("--models", nargs="+", default=["hyperpose", "effposenet"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bn_recal_"))
    generate(
        work / "data",
        scenes=1,
        layout="7scenes",
        frames_per_seq=args.frames // 4,
        train_seqs=4,
        size=(64, 48),
        seed=args.seed,
    )
    labels = {s: work / "data" / f"abs_7scenes_pose.csv_chess_{s}.csv" for s in ("train", "test")}
    cfg = json.loads((REPO / "configs" / "synthetic_config.json").read_text())
    cfg["general"].update(n_workers=0, device_id="cpu", n_freq_checkpoint=args.epochs)
    results = []
    for model_name in args.models:
        for recal in (0, None):
            cfg[model_name].update(
                n_epochs=args.epochs, batch_size=8, bn_momentum=None, bn_recalibrate_batches=recal, seed=args.seed
            )
            config_path = work / f"{model_name}_{recal}.json"
            config_path.write_text(json.dumps(cfg))
            result = train(
                model_name, "random", work / "data", labels["train"], config_path, work / "runs", device="cpu"
            )
            ckpt = load_checkpoint(result.final_checkpoint)
            model = prepare_model(model_name, "random", ckpt["config"], torch.device("cpu"))
            model.load_state_dict(ckpt["model"])
            test_tf = build_transform(ckpt["config"], train=False)
            sets = {s: CameraPoseDataset(work / "data", labels[s], transform=test_tf) for s in ("train", "test")}
            row = {
                "model": model_name,
                "recalibration": "off" if recal == 0 else "on (20 batches)",
                "train_eval_m": median_pos(predict(model, sets["train"], False), sets["train"]),
                "train_trainmode_m": median_pos(predict(model, sets["train"], True), sets["train"]),
                "test_eval_m": median_pos(predict(model, sets["test"], False), sets["test"]),
                "test_eval_spread_m": spread(predict(model, sets["test"], False)[:, :3]),
                "test_true_spread_m": spread(torch.from_numpy(sets["test"].poses_N7[:, :3])),
            }
            row["eval_over_trainmode"] = row["train_eval_m"] / row["train_trainmode_m"]
            results.append(row)
            print(json.dumps(row), flush=True)
    print(
        "\n| model | recalibration | train imgs, eval mode [m] | train imgs, train-mode BN [m] | ratio | "
        "test, eval mode [m] | test eval spread [m] (labels) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['model']} | {r['recalibration']} | {r['train_eval_m']:.3f} | {r['train_trainmode_m']:.3f} | "
            f"{r['eval_over_trainmode']:.2f} | {r['test_eval_m']:.3f} | {r['test_eval_spread_m']:.3f} "
            f"({r['test_true_spread_m']:.3f}) |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
