"""Inference of every registered model as PyTorch eager, eager + channels_last, TorchScript and onnxruntime,
on the CPU or (``--device cuda``) a GPU, where onnxruntime runs with its CUDA provider if it has one.

Each model is built with its default config (random weights; ``--num_scenes`` scenes for multi-scene
models), wrapped as :class:`engine.deployment.export.ExportGraph` (uint8 image in, normalisation and unit
quaternion inside) and exported with a dynamic batch through :func:`engine.deployment.export.export_loaded`
(without its comparison with PyTorch, which ``tests/test_export.py`` makes on real images). Printed per model
and runtime: latency at batch 1 (median ms over ``--iters`` calls after ``--warmup``)
and throughput at batch ``--batch`` (images/s over ``--iters`` calls).

    python bench/bench_export.py --size 224 --iters 20 --threads 4
    python bench/bench_export.py --tiny --iters 2 --warmup 1            # check that it runs (small configs)
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from engine.deployment.export import ExportGraph, example_input, export_loaded, prepare_for_export
from engine.deployment.localize import LoadedModel
from models.backbone import new_backbone, resolve_backbone_type
from models.config import defaults
from models.registry import build_model, get_spec, model_names
from util.errors import UserError

# --tiny: the sizes of the test suite's configs, so that every model builds and exports in seconds.
TINY = dict(
    hidden_dim=32,
    nheads=2,
    num_t_encoder_layers=1,
    num_t_decoder_layers=1,
    num_rot_encoder_layers=1,
    num_rot_decoder_layers=1,
    dim_feedforward=32,
    reg_hidden_dim=32,
    hyper_dim_t=16,
    hyper_dim_rot=32,
)


def model_config(name: str, size: int, num_scenes: int, tiny: bool, backbone: str | None = None) -> dict:
    """The model's defaults at ``size``; ``backbone`` replaces the backbone type where the model accepts it."""
    config = dict(defaults(name), image_resize=size, image_crop=size)
    if tiny:
        config.update({k: v for k, v in TINY.items() if k in config})
    if backbone and get_spec(name).accepts_backbone(backbone):
        config["backbone_type"] = backbone
    if get_spec(name).multi_scene:
        config["num_scenes"] = num_scenes
    return config


def ort_providers(device: torch.device) -> list[str] | None:
    """onnxruntime's providers for ``device``; None when it has no CUDA provider on a CUDA device."""
    import onnxruntime as ort

    if device.type != "cuda":
        return ["CPUExecutionProvider"]
    return ["CUDAExecutionProvider"] if "CUDAExecutionProvider" in ort.get_available_providers() else None


def runners(
    name: str, config: dict, num_scenes: int, folder: Path, threads: int, device: torch.device = torch.device("cpu")
) -> dict:
    """Runtime name -> callable(uint8 batch as a tensor on ``device``); the results are synchronised."""
    import onnxruntime as ort

    model = build_model(name, config, new_backbone(config["backbone_type"])).eval()
    loaded = LoadedModel(model, name, config, {}, num_scenes if get_spec(name).multi_scene else 0)
    onnx_path, ts_path = folder / f"{name}.onnx", folder / f"{name}.pt"
    # Random weights can tie scene scores, which rounding then breaks either way: no comparison here (the
    # test suite checks the exports of every model on real images).
    export_loaded(loaded, onnx_path, "onnx", batch="dynamic", check=False)
    export_loaded(loaded, ts_path, "torchscript", batch="dynamic", check=False)
    graph = ExportGraph(prepare_for_export(model), uint8_input=True).eval().to(device)
    graph_cl = copy.deepcopy(graph).to(memory_format=torch.channels_last)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 marks torch.jit as deprecated
        scripted = torch.jit.load(str(ts_path), map_location=device)

    def synced(fn):
        def call(x):
            out = fn(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return out

        return call

    found = {
        "eager": synced(graph),
        "channels_last": synced(lambda x: graph_cl(x.contiguous(memory_format=torch.channels_last))),
        "torchscript": synced(scripted),
    }
    providers = ort_providers(device)
    if providers is not None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        found["onnxruntime"] = lambda x: session.run(None, {"image": x.cpu().numpy()})
    return found


@torch.no_grad()
def time_calls(fn, x: torch.Tensor, iters: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn(x)
    seconds = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn(x)
        seconds.append(time.perf_counter() - t0)
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--models", default=",".join(model_names()), help="comma-separated model names")
    parser.add_argument("--size", type=int, default=224, help="crop size (square input)")
    parser.add_argument("--batch", type=int, default=32, help="batch size of the throughput runs")
    parser.add_argument("--iters", type=int, default=20, help="timed calls per runtime and batch size")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first")
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="CPU threads, for torch and onnxruntime alike"
    )
    parser.add_argument("--num_scenes", type=int, default=7, help="scenes of the multi-scene models")
    parser.add_argument("--tiny", action="store_true", help="small configs (the test suite's sizes)")
    parser.add_argument(
        "--backbone",
        default=None,
        metavar="TYPE",
        help="backbone_type for every model that accepts it (default: each model's own), e.g. timm:resnet50",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run")
    args = parser.parse_args(argv)
    if args.backbone:
        try:
            resolve_backbone_type(args.backbone)
        except UserError as err:
            parser.error(str(err))
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    if ort_providers(device) is None:
        print("onnxruntime has no CUDA provider here (onnxruntime-gpu is not installed): no onnxruntime row")
    print(
        f"{where}, {args.size}x{args.size} uint8 input, torch {torch.__version__}; "
        f"latency: median of {args.iters} calls at batch 1; throughput: batch {args.batch}, "
        f"{args.iters} calls; {'tiny' if args.tiny else 'default'} configs"
        + (f", backbone {args.backbone} where accepted" if args.backbone else "")
    )
    header = f"{'model':<18}{'runtime':<15}{'latency b1 [ms]':>17}{'throughput [img/s]':>20}"
    print(header)
    print("-" * len(header))
    x1 = example_input(1, args.size, "uint8").to(device)
    xb = example_input(args.batch, args.size, "uint8", seed=1).to(device)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            config = model_config(name, args.size, args.num_scenes, args.tiny, args.backbone)
            for runtime, fn in runners(name, config, args.num_scenes, Path(tmp), args.threads, device).items():
                latency = statistics.median(time_calls(fn, x1, args.iters, args.warmup)) * 1e3
                throughput = args.batch * args.iters / sum(time_calls(fn, xb, args.iters, args.warmup))
                print(f"{name:<18}{runtime:<15}{latency:>17.2f}{throughput:>20.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
