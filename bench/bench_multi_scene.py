"""Throughput of the multi-scene models: mshyperpose vs ems-transposenet on the same random input.

Reports images/s for a training step (forward, pose + scene loss, backward, the training's Adam step) and for
inference (eval mode, no autograd), plus parameter counts, at each precision of ``--amp``. Warm-up
iterations are excluded and the models and precisions are timed alternately, iteration by iteration, so
that load changes on the machine hit all alike and their ratios stay fair. A second, separate pass splits the
training step's time into the
backbone's forward, the two transformers' forward, the rest of the forward (input projections, position
embeddings, heads, hypernetworks/generators, loss), backward, and the optimizer step; it synchronises
the device around each part, so its total is a little above the first pass's. A last pass times one
attention with dropout at the rot encoder's shape through ``scaled_dot_product_attention`` and through the
path training takes on a CPU (``models.transformer.cpu_dropout_attention``).

    python bench/bench_multi_scene.py --size 224 --batch 8 --iters 20 --device cuda
    python bench/bench_multi_scene.py --amp off bf16   # fp32 and bf16 interleaved: the bf16 speed-up
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections import defaultdict

import torch
from torch.nn import functional as F

from engine.training.train import build_optimizer
from models.backbone import load_backbone
from models.losses import CameraPoseLoss
from models.ms_transposenet import MSTransPoseNet
from models.mshyperpose import MSHyperPose
from models.transformer import cpu_dropout_attention
from util.device import autocast_dtype
from util.errors import UserError

MODELS = {"ems-transposenet": MSTransPoseNet, "mshyperpose": MSHyperPose}


def reference_config(num_scenes: int, nheads: int) -> dict:
    """Architecture of the reference configs' multi-scene section."""
    return {
        "hidden_dim": 256,
        "dim_feedforward": 256,
        "dropout": 0.1,
        "nheads": nheads,
        "num_t_encoder_layers": 4,
        "num_t_decoder_layers": 4,
        "num_rot_encoder_layers": 4,
        "num_rot_decoder_layers": 4,
        "reduction": ["reduction_4", "reduction_3"],
        "reg_hidden_dim": 1024,
        "hyper_dim_t": 256,
        "hyper_dim_rot": 512,
        "hyper_t_hidden_scale": 0.5,
        "num_scenes": num_scenes,
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, dtype):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _train_step(model, optimizer, pose_loss, img, pose_gt, scene_gt, dtype=None, clock=None) -> None:
    with _autocast(img.device, dtype):
        pose, log_probs = model(img, scene_gt)
        loss = pose_loss.total(pose, pose_gt, log_probs, scene_gt)[0]
    if clock is not None:
        clock.lap("forward")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clock is not None:
        clock.lap("backward")
    optimizer.step()
    if clock is not None:
        clock.lap("optimizer step")


def _infer_step(model, img, dtype=None) -> None:
    with torch.inference_mode(), _autocast(img.device, dtype):
        model(img)


class SplitClock:
    """Synchronised wall time per part of a training step; the named calls are wrapped to time themselves."""

    # part -> (attribute path of the object, method) whose calls belong to it
    PARTS = {
        "backbone": (("body", "extract"),),
        "transformers": (("transformer_t", "forward"), ("transformer_rot", "forward")),
    }

    def __init__(self, model, device: torch.device):
        self.device, self.seconds, self.inside = device, defaultdict(float), defaultdict(float)
        self._start = None
        for part, calls in self.PARTS.items():
            for attr, method in calls:
                obj = getattr(model, attr)
                setattr(obj, method, self._timed(getattr(obj, method), part))

    def _timed(self, fn, part: str):
        def timed(*args, **kwargs):
            _sync(self.device)
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            _sync(self.device)
            self.inside[part] += time.perf_counter() - t0
            return out

        return timed

    def start(self) -> None:
        _sync(self.device)
        self._start, self.inside = time.perf_counter(), defaultdict(float)

    def lap(self, name: str) -> None:
        _sync(self.device)
        now = time.perf_counter()
        spent = now - self._start
        if name == "forward":  # split the forward into the hooked parts and the rest
            for part, t in self.inside.items():
                self.seconds[f"{part} forward"] += t
                spent -= t
            name = "heads, generators, loss forward"
        self.seconds[name] += spent
        self._start = now


def time_attention(
    batch: int,
    tokens: int,
    nheads: int,
    head_dim: int,
    dropout: float,
    device: torch.device,
    dtypes: list,
    iters: int,
    warmup: int,
) -> list[dict]:
    """Forward + backward of one attention with dropout at the rot encoder's shape, through
    ``scaled_dot_product_attention`` and through ``cpu_dropout_attention`` (the path training takes on a CPU),
    interleaved; ms per call for each autocast dtype."""
    gen = torch.Generator().manual_seed(0)
    qkv = [torch.randn(batch, nheads, tokens, head_dim, generator=gen).to(device).requires_grad_() for _ in range(3)]
    paths = {
        "sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, dropout_p=dropout),
        "cpu_dropout_attention": lambda q, k, v: cpu_dropout_attention(q, k, v, dropout),
    }
    seconds = defaultdict(float)
    for it in range(warmup + iters):
        for dtype in dtypes:
            for path, fn in paths.items():
                _sync(device)
                start = time.perf_counter()
                with _autocast(device, dtype):
                    out = fn(*qkv)
                out.float().sum().backward()
                _sync(device)
                if it >= warmup:
                    seconds[(dtype, path)] += time.perf_counter() - start
    return [
        {"amp": _amp_name(dtype), "path": path, "ms": 1000 * seconds[(dtype, path)] / iters}
        for dtype in dtypes
        for path in paths
    ]


def _amp_name(dtype) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def bench(
    size: int,
    batch: int,
    iters: int,
    warmup: int,
    num_scenes: int,
    nheads: int,
    device_name: str,
    seed: int = 0,
    amps: tuple = (None,),
    split: bool = True,
) -> list[dict]:
    """Time both models at each precision (``amps``: None for fp32, "bf16", "fp16"), interleaved iteration
    by iteration; returns one row per model and precision with params and images/s."""
    if device_name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but CUDA is not available")
    if min(size, batch, iters) < 1 or warmup < 0:
        raise UserError("--size, --batch and --iters must be >= 1 and --warmup >= 0")
    device = torch.device(device_name)
    dtypes = [autocast_dtype(amp, device) for amp in amps]
    gen = torch.Generator().manual_seed(seed)
    img = torch.randn(batch, 3, size, size, generator=gen).to(device)
    pose_gt = torch.randn(batch, 7, generator=gen).to(device)
    scene_gt = torch.randint(0, num_scenes, (batch,), generator=gen).to(device)
    config = reference_config(num_scenes, nheads)

    runs = {}
    for name, cls in MODELS.items():
        for dtype in dtypes:
            torch.manual_seed(seed)
            model = cls(config, load_backbone("random")).to(device)
            pose_loss = CameraPoseLoss().to(device)
            optimizer = build_optimizer(model, pose_loss, {"lr": 1e-4, "eps": 1e-10, "weight_decay": 1e-4})
            runs[(name, dtype)] = {
                "model": model,
                "loss": pose_loss,
                "opt": optimizer,
                "dtype": dtype,
                "train_s": 0.0,
                "infer_s": 0.0,
            }

    for phase in ("train", "infer"):
        for run in runs.values():
            run["model"].train(phase == "train")
        for it in range(warmup + iters):
            for run in runs.values():
                _sync(device)
                start = time.perf_counter()
                if phase == "train":
                    _train_step(run["model"], run["opt"], run["loss"], img, pose_gt, scene_gt, run["dtype"])
                else:
                    _infer_step(run["model"], img, run["dtype"])
                _sync(device)
                if it >= warmup:
                    run[f"{phase}_s"] += time.perf_counter() - start

    if split:
        for run in runs.values():
            run["model"].train()
            run["clock"] = SplitClock(run["model"], device)
        for _ in range(iters):
            for run in runs.values():
                run["clock"].start()
                _train_step(run["model"], run["opt"], run["loss"], img, pose_gt, scene_gt, run["dtype"], run["clock"])

    return [
        {
            "model": name,
            "amp": _amp_name(dtype),
            "params": sum(p.numel() for p in run["model"].parameters()),
            "train_img_s": batch * iters / run["train_s"],
            "infer_img_s": batch * iters / run["infer_s"],
            "split_ms": {k: 1000 * v / iters for k, v in run["clock"].seconds.items()} if split else {},
        }
        for (name, dtype), run in runs.items()
    ]


def format_rows(rows: list[dict], attention: list[dict] = ()) -> str:
    """A fixed-width table, the mshyperpose / ems-transposenet and low-precision / fp32 speed ratios, the
    step splits and the attention timings."""
    lines = [f"{'model':<18}{'amp':<6}{'params':>14}{'train img/s':>14}{'infer img/s':>14}"]
    for r in rows:
        lines.append(
            f"{r['model']:<18}{r['amp']:<6}{r['params']:>14,}{r['train_img_s']:>14.2f}{r['infer_img_s']:>14.2f}"
        )
    by_key = {(r["model"], r["amp"]): r for r in rows}
    for amp in dict.fromkeys(r["amp"] for r in rows):
        hyper, base = by_key[("mshyperpose", amp)], by_key[("ems-transposenet", amp)]
        lines.append(
            f"{amp}: mshyperpose / ems-transposenet speed: train "
            f"{hyper['train_img_s'] / base['train_img_s']:.2f}x, "
            f"inference {hyper['infer_img_s'] / base['infer_img_s']:.2f}x"
        )
    for (model, amp), r in by_key.items():
        if amp != "fp32" and (model, "fp32") in by_key:
            ref = by_key[(model, "fp32")]
            lines.append(
                f"{model}: {amp} / fp32 speed: train {r['train_img_s'] / ref['train_img_s']:.2f}x, "
                f"inference {r['infer_img_s'] / ref['infer_img_s']:.2f}x"
            )
    for r in rows:
        if r["split_ms"]:
            total = sum(r["split_ms"].values())
            parts = ", ".join(f"{k} {v:.1f} ms ({100 * v / total:.0f}%)" for k, v in r["split_ms"].items())
            lines.append(f"{r['model']} {r['amp']} training step split (synchronised, {total:.1f} ms): {parts}")
    for a in attention:
        lines.append(f"attention with dropout, forward + backward, {a['amp']}, {a['path']}: {a['ms']:.1f} ms")
    return "\n".join(lines)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--size", type=int, default=224, help="square input image size (pixels)")
    parser.add_argument("--batch", type=int, default=8, help="images per batch")
    parser.add_argument("--iters", type=int, default=10, help="timed iterations per model and phase")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations before timing")
    parser.add_argument("--num-scenes", type=int, default=7, help="number of scenes (7 for 7Scenes)")
    parser.add_argument("--nheads", type=int, default=8, help="attention heads per transformer layer")
    parser.add_argument(
        "--amp",
        nargs="+",
        choices=("off", "bf16", "fp16"),
        default=["off"],
        help="precisions to time, interleaved in one run (off = fp32; fp16: CUDA only)",
    )
    parser.add_argument("--no-split", action="store_true", help="skip the pass that splits the step's time")
    parser.add_argument(
        "--no-attention", action="store_true", help="skip timing one attention with dropout through both paths"
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu", help="where to run"
    )
    args = parser.parse_args(argv)
    amps = tuple(dict.fromkeys(None if a == "off" else a for a in args.amp))
    rows = bench(
        args.size,
        args.batch,
        args.iters,
        args.warmup,
        args.num_scenes,
        args.nheads,
        args.device,
        amps=amps,
        split=not args.no_split,
    )
    attention = (
        []
        if args.no_attention
        else time_attention(
            args.batch,
            (args.size // 8) ** 2,
            args.nheads,
            256 // args.nheads,
            0.1,
            torch.device(args.device),
            [autocast_dtype(a, torch.device(args.device)) for a in amps],
            args.iters,
            args.warmup,
        )
    )
    header = (
        f"device={args.device}"
        + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else f" ({torch.get_num_threads()} threads)")
        + f" size={args.size} batch={args.batch} iters={args.iters} warmup={args.warmup} "
        f"num_scenes={args.num_scenes} nheads={args.nheads} amp={' '.join(args.amp)}"
    )
    return header + "\n" + format_rows(rows, attention)


if __name__ == "__main__":
    try:
        print(main())
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
