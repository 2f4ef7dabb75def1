"""End-to-end training speed from image files, beside the model-only step on the same batch.

For each model, each image format (640x480 PNG as 7Scenes ships, and the same frames as JPEG) and with
and without the decoded-image cache, times the trainer's real path: DataLoader workers decoding (or reading
the cache), cropping, jittering, normalising, collating, the host-to-device copy and the training step
(engine/training/trainer.py). The model-only figure repeats the same step on one batch already on the device. The
ratio end-to-end / model-only is what the data path costs (1.0 = nothing). A last line times the bare
backbone's forward + backward on the same batch size, the ceiling the end-to-end figure is compared with on
a GPU; on CUDA the GPU utilisation sampled during the end-to-end steps is printed where pynvml is
installed. Images come from the repo's synthetic generator, rendered once into ``--data`` and reused.

Workers: by default the loader training builds from the config (``n_workers`` 4, capped for the device
by ``util.device.cap_workers``: on a CPU whose cores all run torch threads, none); ``--workers N ...``
forces each count in turn, to compare them in one run.

    python bench/bench_train_e2e.py --models hyperpose mshyperpose --batch 8 --steps 20
    python bench/bench_train_e2e.py --models hyperpose --formats png --workers 0 2 --steps 20
    python bench/bench_train_e2e.py --device cuda --batch 64 --workers 8 --amp bf16 --steps 50
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from datasets.dataset import CameraPoseDataset
from datasets.synthetic import generate
from datasets.transforms import build_transform
from engine.training.train import build_optimizer, prepare_model
from engine.training.trainer import RunFolder, Runtime, Trainer
from models.backbone import load_backbone
from models.config import validate_config
from models.losses import CameraPoseLoss
from models.registry import get_spec, model_names
from util.device import autocast_dtype, synchronize
from util.errors import UserError

LABELS = "7scenes_all_scenes.csv"


def make_data(root: Path, frames: int, size: tuple[int, int]) -> dict[str, Path]:
    """Two synthetic scenes as PNG (generator output) and as JPEG (quality 95); format -> labels file."""
    png = root / "png"
    if not (png / LABELS).is_file():
        generate(png, scenes=2, layout="7scenes", frames_per_seq=max(2, frames // 4), size=size, seed=0)
    jpeg = root / "jpeg"
    if not (jpeg / LABELS).is_file():
        with open(png / LABELS, newline="") as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            out = jpeg / Path(row["img_path"]).with_suffix(".jpg")
            out.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(png / row["img_path"]) as img:
                img.convert("RGB").save(out, quality=95)
            row["img_path"] = str(Path(row["img_path"]).with_suffix(".jpg").as_posix())
        with open(jpeg / LABELS, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return {"png": png / LABELS, "jpeg": jpeg / LABELS}


def make_trainer(
    model: str, labels: Path, args, device: torch.device, cache_dir: Path | None, compile: bool | None = None
) -> Trainer:
    config = validate_config(
        model,
        {
            "batch_size": args.batch,
            "image_resize": args.resize,
            "image_crop": args.crop,
            "seed": 0,
            "device_id": "cpu",
            "n_epochs": 10**6,
        },
    )
    dataset = CameraPoseDataset(labels.parent, labels, transform=build_transform(config, train=True))
    if get_spec(model).multi_scene:
        config["num_scenes"] = dataset.num_scenes
    if cache_dir is not None:
        dataset.use_image_cache(
            cache_dir, config["image_resize"], config["n_workers"], resize_backend=config["resize_backend"]
        )
    torch.manual_seed(0)
    net = prepare_model(model, "random", config, device)
    loss_fn = CameraPoseLoss.from_config(config).to(device)
    optimizer = build_optimizer(net, loss_fn, config)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10**6)
    return Trainer(
        model,
        net,
        loss_fn,
        optimizer,
        scheduler,
        dataset,
        config,
        RunFolder(Path(tempfile.gettempdir()), "bench"),
        Runtime(
            device,
            amp_dtype=autocast_dtype(args.amp, device),
            compile=args.compile if compile is None else compile,
        ),
    )


def _batches(trainer: Trainer, loader):
    """Batches forever, epoch after epoch, as training draws them (persistent workers)."""
    epoch = 1
    while True:
        trainer.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def _utilisation(device: torch.device) -> float | None:
    try:
        return float(torch.cuda.utilization(device)) if device.type == "cuda" else None
    except Exception:  # needs pynvml / the NVML library
        return None


def time_e2e(trainer: Trainer, steps: int, warmup: int, workers: int | None) -> tuple[float, dict, float | None, int]:
    """Images/s of loader + step over ``steps`` steps after ``warmup``; also one batch, the mean GPU
    utilisation (percent, None where it cannot be read) and the loader's worker count."""
    loader = trainer.make_loader(workers)
    trainer.model.train()
    batches = _batches(trainer, loader)
    batch = None
    for _ in range(warmup):
        batch = next(batches)
        trainer.step(batch, 1, 1)
    synchronize(trainer.device)
    n, t0, util = 0, time.perf_counter(), []
    for _ in range(steps):
        batch = next(batches)
        trainer.step(batch, 1, 1)
        n += batch["img"].shape[0]
        util.append(_utilisation(trainer.device))
    synchronize(trainer.device)
    seconds = time.perf_counter() - t0
    n_workers = loader.num_workers
    del batches, loader
    util = [u for u in util if u is not None]
    return n / seconds, batch, sum(util) / len(util) if util else None, n_workers


def time_model_only(trainer: Trainer, batch: dict, steps: int, warmup: int) -> float:
    """Images/s of the step alone, on one batch already on the device."""
    on_device = {k: v.to(trainer.device) if torch.is_tensor(v) else v for k, v in batch.items()}
    for _ in range(warmup):
        trainer.step(on_device, 1, 1)
    synchronize(trainer.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.step(on_device, 1, 1)
    synchronize(trainer.device)
    return steps * batch["img"].shape[0] / (time.perf_counter() - t0)


def time_backbone(args, device: torch.device) -> float:
    """Images/s of the bare EfficientNet-B0 forward + backward (sum of pooled features) at the crop size."""
    backbone = load_backbone("random", "efficientnet").to(device, memory_format=torch.channels_last).train()
    img = torch.randn(args.batch, 3, args.crop, args.crop, device=device).contiguous(memory_format=torch.channels_last)
    dtype = autocast_dtype(args.amp, device)

    def step():
        with torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext():
            loss = backbone.extract(img)["pooled"].float().sum()
        loss.backward()

    for _ in range(args.warmup):
        step()
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    synchronize(device)
    return args.steps * args.batch / (time.perf_counter() - t0)


def bench(args) -> list[dict]:
    device = torch.device(args.device)
    data = make_data(Path(args.data), args.frames, (args.width, args.height))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            for fmt in args.formats:
                for cached in (False, True):
                    for workers in args.workers or [None]:
                        cache_dir = Path(tmp) / "cache" if cached else None
                        t0 = time.perf_counter()
                        trainer = make_trainer(model, data[fmt], args, device, cache_dir)
                        setup_s = time.perf_counter() - t0
                        e2e, batch, util, n_workers = time_e2e(trainer, args.steps, args.warmup, workers)
                        model_only = time_model_only(trainer, batch, args.steps, args.warmup)
                        rows.append(
                            {
                                "model": model,
                                "format": fmt,
                                "cache": cached,
                                "workers": n_workers,
                                "e2e": e2e,
                                "util": util,
                                "model_only": model_only,
                                "ratio": e2e / model_only,
                                "setup_s": setup_s,
                            }
                        )
                        print(format_row(rows[-1]), flush=True)
                        if args.compile:
                            eager = time_model_only(
                                make_trainer(model, data[fmt], args, device, None, False),
                                batch,
                                args.steps,
                                args.warmup,
                            )
                            print(
                                f"  model-only step without compile: {eager:.2f} img/s; compiled / eager "
                                f"{model_only / eager:.2f}x",
                                flush=True,
                            )
    backbone = time_backbone(args, device)
    print(
        f"bare backbone (efficientnet) forward+backward: {backbone:.2f} img/s at batch {args.batch}; "
        f"end-to-end / backbone: "
        + ", ".join(
            f"{r['model']} {r['format']}{' cache' if r['cache'] else ''} w{r['workers']} {r['e2e'] / backbone:.2f}"
            for r in rows
        )
    )
    return rows


def format_row(r: dict) -> str:
    util = "" if r["util"] is None else f"{r['util']:>8.0f}%"
    return (
        f"{r['model']:<18}{r['format']:<6}{'yes' if r['cache'] else 'no':<7}{r['workers']:>8}{r['e2e']:>12.2f}"
        f"{r['model_only']:>14.2f}{r['ratio']:>8.2f}{r['setup_s']:>10.1f}{util}"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=["effposenet", "hyperpose", "ems-transposenet", "mshyperpose"],
        choices=model_names(),
        help="models to time",
    )
    parser.add_argument(
        "--formats", nargs="+", default=["png", "jpeg"], choices=("png", "jpeg"), help="image formats to train from"
    )
    parser.add_argument("--data", default="data/bench_e2e", help="folder for the rendered images (reused)")
    parser.add_argument("--frames", type=int, default=96, help="frames per scene (2 scenes, 4 sequences each)")
    parser.add_argument("--width", type=int, default=640, help="image width in pixels")
    parser.add_argument("--height", type=int, default=480, help="image height in pixels")
    parser.add_argument("--resize", type=int, default=256, help="image_resize (short side)")
    parser.add_argument("--crop", type=int, default=224, help="image_crop")
    parser.add_argument("--batch", type=int, default=8, help="batch size")
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=None,
        help="DataLoader worker counts to force, each in turn (default: what training uses)",
    )
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--amp", choices=("bf16", "fp16"), default=None, help="mixed precision")
    parser.add_argument("--compile", action="store_true", help="torch.compile the training module")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    if min(args.steps, args.batch, args.frames) < 1 or args.warmup < 0 or min(args.workers or [0]) < 0:
        parser.error("--steps, --batch and --frames must be >= 1, --warmup and --workers >= 0")
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"{torch.get_num_threads()} threads"
    print(
        f"device={args.device} ({name}) images {args.width}x{args.height} resize {args.resize} crop {args.crop} "
        f"batch {args.batch} workers {' '.join(map(str, args.workers)) if args.workers else 'as in training'} "
        f"steps {args.steps} warmup {args.warmup} "
        f"amp {args.amp or 'off'}{' compile' if args.compile else ''}"
    )
    print(
        f"{'model':<18}{'fmt':<6}{'cache':<7}{'workers':>8}{'e2e img/s':>12}{'model img/s':>14}{'ratio':>8}"
        f"{'setup s':>10}{'GPU util' if args.device == 'cuda' else ''}"
    )
    try:
        bench(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
