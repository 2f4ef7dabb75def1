"""Which head initialisation lets the hypernetwork help: hyperpose under each ``head_init`` against
effposenet (its static twin, reference init), over paired seeds, at every appearance-shift level.

On the demo scene (the ``make demo`` data and config, plus its shift levels), from a random EfficientNet-B0
and from the offline ImageNet start (``timm:tf_efficientnet_lite0`` with ``imagenet``), for each seed it
trains effposenet once and hyperpose once per ``head_init``. Both models of a seed share the seed, so the
same data order and augmentations. Every final checkpoint is tested on each shift level's test CSV. It
prints, per start, init and shift level, the mean of each model's median errors, and the paired difference
hyperpose minus effposenet with its standard error over seeds (``no difference`` when mean +- 2 SE covers
zero), and how many seeds hyperpose won. It also prints how large the generated part of each hyper head's
output is against the static part, at the first step and after training (median |hyper| / median |static|
over the test images), to show why an init works or fails. Accuracy, not speed: no timings. Finished runs
are kept (``<out>/results.jsonl``), so a re-run only trains what is missing.

    python bench/head_init.py [--seeds 0 1 2] [--starts random lite0] \
        [--inits reference torch hyperfan zero] [--data data/synthetic] [--out runs/bench_head_init]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from engine.reproduction.demo import CONFIG, DEMO_SHIFTS, ensure_data
from util.logs import setup_logging

STARTS = {"random": ("efficientnet", "random"), "lite0": ("timm:tf_efficientnet_lite0", "imagenet")}
INITS = ("reference", "torch", "hyperfan", "zero")
SCENE = "chess"


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean and standard error of the paired differences a - b (SE nan for one pair)."""
    d = [x - y for x, y in zip(a, b)]
    se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    return statistics.fmean(d), se


def verdict(mean: float, se: float) -> str:
    if math.isnan(se):
        return "one seed"
    if abs(mean) <= 2 * se:
        return "no difference"
    return "hyperpose better" if mean < 0 else "effposenet better"


@torch.no_grad()
def head_scales(model, img_B3HW: torch.Tensor, train_mode: bool) -> dict[str, float]:
    """Median over images of ||generated output|| / ||static output||, per branch of a hyperpose model.
    ``train_mode``: BatchNorm on batch statistics as a training step sees it (dropout off), else eval mode."""
    from models.hyperpose import hyper_branch_output
    from models.posenet import static_head_output

    model.train(train_mode)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.eval()
    feat = model._backbone.extract(img_B3HW)["pooled"]
    t, q = static_head_output(model, feat)
    out = {}
    for branch, static in (("t", t), ("rot", q)):
        hyper = hyper_branch_output(model, branch, feat)
        out[branch] = float((hyper.norm(dim=1) / static.norm(dim=1).clamp_min(1e-12)).median())
    model.eval()
    return out


def sample_loader(config: dict, data: Path, csv: Path):
    """The fixed sample of a CSV's images that training's BatchNorm checks and hyperfan init draw."""
    from datasets.dataset import CameraPoseDataset
    from datasets.transforms import build_transform
    from engine.training.batchnorm import plain_loader

    dataset = CameraPoseDataset(data, csv, transform=build_transform(config, train=False))
    return plain_loader(dataset, config, torch.device("cpu"))


def scales(init: str, start: str, seed: int, args) -> dict[str, dict[str, float]]:
    """Head scales of one hyperpose run: at step 0, built as its training run built it (training sample,
    train mode), and of its final checkpoint on the test images (eval mode)."""
    from engine.training.train import hyperfan_start, prepare_model
    from models.config import validate_config
    from util.checkpoint import load_checkpoint
    from util.device import seed_everything

    _, backbone = STARTS[start]
    final = next((args.out / start / f"seed{seed}" / f"hyperpose_{init}").glob("run_*/*_final.pth"))
    ckpt = load_checkpoint(final)
    config = validate_config("hyperpose", ckpt["config"])
    train_loader = sample_loader(config, args.data, args.data / f"abs_7scenes_pose.csv_{SCENE}_train.csv")
    seed_everything(config["seed"])
    model = prepare_model("hyperpose", backbone, config, torch.device("cpu"))
    if init == "hyperfan":
        hyperfan_start(model, train_loader, torch.device("cpu"))
    step0 = head_scales(model, next(iter(train_loader))["img"], train_mode=True)
    model.load_state_dict(ckpt["model"])
    test_loader = sample_loader(config, args.data, args.data / f"abs_7scenes_pose.csv_{SCENE}_test.csv")
    return {"step0": step0, "trained": head_scales(model, next(iter(test_loader))["img"], train_mode=False)}


def run_one(model: str, init: str, start: str, seed: int, args, tests, done: dict) -> dict:
    """Train one model at one seed and init (unless done before) and test it at every shift level."""
    from engine.evaluation.evaluate import Evaluator
    from engine.training.train import train

    key = f"{model}|{init}|{start}|{seed}"
    if key in done:
        return done[key]
    backbone_type, backbone = STARTS[start]
    train_csv = args.data / f"abs_7scenes_pose.csv_{SCENE}_train.csv"
    with tempfile.TemporaryDirectory() as tmp:
        override = Path(tmp) / "override.json"
        override.write_text(json.dumps({model: {"backbone_type": backbone_type, "seed": seed, "head_init": init}}))
        out = args.out / start / f"seed{seed}" / f"{model}_{init}"
        result = train(model, backbone, args.data, train_csv, CONFIG, out, override_config=override)
        row = {"key": key, "model": model, "init": init, "start": start, "seed": seed, "shifts": {}}
        for level, csv in tests:
            evaluator = Evaluator(model, backbone, args.data, csv, CONFIG, override_config=override)
            s = evaluator.evaluate_checkpoint(result.final_checkpoint).summaries[0]
            row["shifts"][str(level)] = [s.median_pos_m, s.median_ori_deg]
    done[key] = row
    with open(args.out / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--starts", nargs="+", default=list(STARTS), choices=list(STARTS))
    parser.add_argument("--inits", nargs="+", default=list(INITS), choices=list(INITS))
    parser.add_argument("--data", type=Path, default=Path("data/synthetic"))
    parser.add_argument("--out", type=Path, default=Path("runs/bench_head_init"))
    args = parser.parse_args(argv)
    setup_logging(logging.WARNING)
    ensure_data(args.data, 1, 50, DEMO_SHIFTS)
    from datasets.synthetic import find_shift_csvs

    test_csv = args.data / f"abs_7scenes_pose.csv_{SCENE}_test.csv"
    tests = find_shift_csvs(test_csv)  # the demo's shift levels (its own test CSV is level 0.5)
    args.out.mkdir(parents=True, exist_ok=True)
    done = {}
    log = args.out / "results.jsonl"
    if log.is_file():
        for line in log.read_text().splitlines():
            row = json.loads(line)
            done[row["key"]] = row
    for start in args.starts:
        for seed in args.seeds:
            run_one("effposenet", "reference", start, seed, args, tests, done)
            for init in args.inits:
                run_one("hyperpose", init, start, seed, args, tests, done)
    report(done, args, tests)
    return 0


def report(done: dict, args, tests) -> None:
    levels = [str(lvl) for lvl, _ in tests]
    print(
        f"\n{len(args.seeds)} paired seeds ({', '.join(map(str, args.seeds))}); median test errors, mean over "
        f"seeds; difference = hyperpose - effposenet, +- one standard error"
    )
    print(
        "\n| start | hyperpose head_init | shift | effposenet m / deg | hyperpose m / deg | "
        "position difference [m] | orientation difference [deg] | hyperpose won | verdict (position) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for start in args.starts:
        eff = [done[f"effposenet|reference|{start}|{s}"] for s in args.seeds]
        for init in args.inits:
            hyp = [done[f"hyperpose|{init}|{start}|{s}"] for s in args.seeds]
            for level in levels:
                ep, eo = ([r["shifts"][level][k] for r in eff] for k in (0, 1))
                hp, ho = ([r["shifts"][level][k] for r in hyp] for k in (0, 1))
                dp, sp = paired(hp, ep)
                do, so = paired(ho, eo)
                won = sum(h < e for h, e in zip(hp, ep))
                print(
                    f"| {start} | {init} | {level} | {statistics.fmean(ep):.3f} / {statistics.fmean(eo):.1f} | "
                    f"{statistics.fmean(hp):.3f} / {statistics.fmean(ho):.1f} | {dp:+.3f} +- {sp:.3f} | "
                    f"{do:+.1f} +- {so:.1f} | {won} of {len(hp)} | {verdict(dp, sp)} |"
                )
    print(
        "\nGenerated / static output of hyperpose (median over images of the norm ratio), t / rot branch, "
        "mean over seeds: at step 0 as the first training step sees it, and after training in eval mode"
    )
    print("\n| start | head_init | at step 0 (t / rot) | after training (t / rot) |")
    print("|---|---|---|---|")
    for start in args.starts:
        for init in args.inits:
            found = [scales(init, start, s, args) for s in args.seeds]
            cells = [
                f"{statistics.fmean(f[when]['t'] for f in found):.2f} / "
                f"{statistics.fmean(f[when]['rot'] for f in found):.2f}"
                for when in ("step0", "trained")
            ]
            print(f"| {start} | {init} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    sys.exit(main())
