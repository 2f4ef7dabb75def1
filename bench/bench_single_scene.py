"""Throughput of every single-scene model, and what the hypernetwork head costs, on two backbones.

Variants (model on backbone): every single-scene model on its default backbone, plus effposenet and
hyperpose on a second backbone (timm:mobilenetv3_large_100 by default). All see the same random batch;
their timed iterations are interleaved in a rotating order, so a noisy, shared machine slows them alike
and the ratios stay fair; warm-up iterations are not timed. The hypernetwork overhead is the time of
each hyper model over its static twin on the same backbone (hyperpose / effposenet, hyperatloc / atloc).

    python bench/bench_single_scene.py --size 224 --batch 8 --iters 20 --device cpu
"""

from __future__ import annotations

import argparse
import time

import torch

from models.backbone import new_backbone
from models.config import defaults
from models.registry import build_model, get_spec, model_names

# Hyper model -> its static twin (same head otherwise, same backbone).
TWINS = {"hyperpose": "effposenet", "hyperatloc": "atloc"}


BARE = "backbone"  # the bare backbone: what every head adds to


class BareBackbone(torch.nn.Module):
    """The backbone alone, its first 7 pooled features standing for a pose: the floor of every model's time."""

    def __init__(self, backbone: torch.nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, img_B3HW):
        return self.backbone.extract(img_B3HW)["pooled"][:, :7], None


def variants(second_backbone: str) -> list[tuple[str, str]]:
    """(model, backbone_type) pairs: the bare EfficientNet-B0, every single-scene model on its default
    backbone, and the EfficientNet pair again on ``second_backbone``."""
    out = [(BARE, "efficientnet")]
    out += [(name, get_spec(name).default_backbone) for name in model_names(multi_scene=False)]
    out += [(name, second_backbone) for name in ("effposenet", "hyperpose") if second_backbone]
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_step(model, optimizer, img_B3HW, pose_B7):
    optimizer.zero_grad(set_to_none=True)
    loss = (model(img_B3HW)[0] - pose_B7).abs().mean()
    loss.backward()
    optimizer.step()


@torch.no_grad()
def _infer_step(model, img_B3HW):
    model(img_B3HW)[0]


VARIANTS: list[tuple[str, str]] = []


def bench(
    size: int,
    batch: int,
    iters: int,
    warmup: int,
    device: torch.device,
    memory_format: torch.memory_format = torch.channels_last,
) -> dict:
    """Seconds per iteration, per model and mode, measured interleaved."""
    torch.manual_seed(0)
    img_B3HW = torch.randn(batch, 3, size, size, device=device).to(memory_format=memory_format)
    pose_B7 = torch.randn(batch, 7, device=device)
    models = {}
    for name, backbone_type in VARIANTS:
        if name == BARE:
            model = BareBackbone(new_backbone(backbone_type))
        else:
            model = build_model(name, dict(defaults(name), backbone_type=backbone_type), new_backbone(backbone_type))
        models[(name, backbone_type)] = model.to(device, memory_format=memory_format)
    optimizers = {n: torch.optim.Adam(m.parameters(), lr=1e-4, eps=1e-10, weight_decay=1e-4) for n, m in models.items()}
    steps = {
        "train": lambda n: _train_step(models[n].train(), optimizers[n], img_B3HW, pose_B7),
        "infer": lambda n: _infer_step(models[n].eval(), img_B3HW),
    }
    wall = {(mode, n): [] for mode in steps for n in models}
    cpu = {(mode, n): [] for mode in steps for n in models}
    order = list(models)
    for mode, step in steps.items():
        for i in range(warmup + iters):
            for n in order[i % len(order) :] + order[: i % len(order)]:
                _sync(device)
                start, start_cpu = time.perf_counter(), time.process_time()
                step(n)
                _sync(device)
                if i >= warmup:
                    wall[(mode, n)].append(time.perf_counter() - start)
                    cpu[(mode, n)].append(time.process_time() - start_cpu)
    median = lambda v: sorted(v)[len(v) // 2]  # noqa: E731 - robust to spikes from other processes
    return {
        "seconds": {k: median(v) for k, v in wall.items()},
        "cpu_seconds": {k: median(v) for k, v in cpu.items()},
        "params": {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--size", type=int, default=224, help="square input size in pixels")
    parser.add_argument("--batch", type=int, default=8, help="images per batch")
    parser.add_argument("--iters", type=int, default=20, help="timed iterations per model and mode")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run")
    parser.add_argument(
        "--memory-format",
        choices=("channels_last", "contiguous"),
        default="channels_last",
        help="tensor layout of the models and the input (training and testing use channels_last)",
    )
    parser.add_argument(
        "--second-backbone",
        default="timm:mobilenetv3_large_100",
        help="second backbone for effposenet and hyperpose ('' for none)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads for torch (0: torch's default); 1 is steadier on a busy machine",
    )
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    device = torch.device(args.device)
    VARIANTS[:] = variants(args.second_backbone)
    fmt = torch.channels_last if args.memory_format == "channels_last" else torch.contiguous_format
    result = bench(args.size, args.batch, args.iters, args.warmup, device, fmt)
    sec, cpu = result["seconds"], result["cpu_seconds"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(
        f"device {name}, input {args.batch}x3x{args.size}x{args.size} {args.memory_format}, "
        f"median of {args.iters} iterations after {args.warmup} warm-up, all variants interleaved"
    )
    print(f"{'model':<12}{'backbone':<30}{'params':>13}{'train img/s':>14}{'infer img/s':>14}")
    for key in result["params"]:
        print(
            f"{key[0]:<12}{key[1]:<30}{result['params'][key]:>13,}{args.batch / sec[('train', key)]:>14.1f}"
            f"{args.batch / sec[('infer', key)]:>14.1f}"
        )
    print("hypernetwork overhead: time of the hyper model / time of its static twin on the same backbone")
    for hyper, static in TWINS.items():
        for key in result["params"]:
            if key[0] != hyper or (static, key[1]) not in result["params"]:
                continue
            parts = []
            for mode in ("train", "infer"):
                part = f"{mode} {sec[(mode, key)] / sec[(mode, (static, key[1]))]:.3f}"
                if device.type == "cpu":  # process CPU time is less disturbed by other processes' load
                    part += f" (CPU time {cpu[(mode, key)] / cpu[(mode, (static, key[1]))]:.3f})"
                parts.append(part)
            print(f"  {hyper}/{static} on {key[1]}: " + ", ".join(parts))


if __name__ == "__main__":
    main()
