"""The prepared GPU check: every CUDA path of the toolkit in one script that leaves a Markdown report.

A GPU machine is lent for minutes, so this runs as one command (``make gpu-check``) and finishes within
about 8 minutes on one current data-centre GPU: the iteration counts are small on purpose, so its figures
are a first look, not a benchmark to quote. Steps, each with its own time limit, in this order:

1. ``pytest tests/test_cuda.py`` (fp16 with gradient scaling, bf16, pinned memory, NCCL when 2 GPUs);
2. with two GPUs or more, a 2-process NCCL ``torchrun`` training of hyperpose;
3. hyperpose and mshyperpose trained from image files through the image cache, with ``--amp bf16`` and
   ``--amp fp16`` (one epoch each on a small synthetic scene);
4. every benchmark with ``--device cuda``: single-scene (with the bare backbone's forward and backward
   beside hyperpose's), multi-scene (fp32, bf16, fp16), end to end at batch 8 and 64 while the GPU's
   utilisation is sampled, and export (onnxruntime only where it has a CUDA provider; the report says so).

Without CUDA it says so in one line and exits 0; ``--dry-run`` prints the steps and runs nothing. The report
(``--report``, default ``runs/gpu_check/report.md``) holds the GPU name, driver, torch and CUDA versions,
each step's command, time, exit status and output tail, and a list of the failures.

    python bench/gpu_check.py [--dry-run] [--report runs/gpu_check/report.md]
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
CONFIG = "configs/synthetic_config.json"


@dataclass
class Step:
    name: str
    argv: list[str]
    timeout_s: int
    min_gpus: int = 1
    sample_utilisation: bool = False
    result: dict = field(default_factory=dict)
    skipped: str = ""


def plan(work: Path) -> list[Step]:
    """The steps, in order; ``work`` holds the data and every run's output."""
    single, multi = work / "data", work / "data_ms"
    chess = str(single / "abs_7scenes_pose.csv_chess_train.csv")
    all_scenes = str(multi / "7scenes_all_scenes.csv")
    steps = [
        Step(
            "synthetic data",
            [
                PY,
                "-m",
                "datasets.synthetic",
                str(single),
                "--scenes",
                "1",
                "--size",
                "128x128",
                "--frames-per-seq",
                "20",
            ],
            120,
            min_gpus=0,
        ),
        Step(
            "synthetic data (3 scenes)",
            [PY, "-m", "datasets.synthetic", str(multi), "--scenes", "3", "--size", "128x128", "--frames-per-seq", "8"],
            120,
            min_gpus=0,
        ),
        Step("CUDA tests", [PY, "-m", "pytest", "-q", "-x", "tests/test_cuda.py"], 150),
        Step(
            "NCCL torchrun, 2 processes",
            [
                PY,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node",
                "2",
                "main_single_scene.py",
                "hyperpose",
                "train",
                "random",
                str(single),
                chess,
                CONFIG,
                "--output_path",
                str(work / "ddp"),
                "--device",
                "cuda",
                "--n_epochs",
                "1",
            ],
            120,
            min_gpus=2,
        ),
    ]
    for model, script, labels, extra in (
        ("hyperpose", "main_single_scene.py", chess, []),
        ("mshyperpose", "main_multi_scene.py", all_scenes, []),
    ):
        for amp in ("bf16", "fp16"):
            steps.append(
                Step(
                    f"{model} training, --amp {amp}, image cache",
                    [
                        PY,
                        script,
                        model,
                        "train",
                        "random",
                        str(single if model == "hyperpose" else multi),
                        labels,
                        CONFIG,
                        "--output_path",
                        str(work / f"{model}_{amp}"),
                        "--device",
                        "cuda",
                        "--amp",
                        amp,
                        "--n_epochs",
                        "1",
                        "--cache",
                        str(work / "cache"),
                        *extra,
                    ],
                    90,
                )
            )
    steps += [
        Step(
            "bench_single_scene (bare backbone beside every model)",
            [
                PY,
                "bench/bench_single_scene.py",
                "--device",
                "cuda",
                "--size",
                "224",
                "--batch",
                "32",
                "--iters",
                "10",
                "--warmup",
                "3",
            ],
            150,
        ),
        Step(
            "bench_multi_scene (fp32, bf16, fp16)",
            [
                PY,
                "bench/bench_multi_scene.py",
                "--device",
                "cuda",
                "--batch",
                "16",
                "--iters",
                "5",
                "--warmup",
                "2",
                "--amp",
                "off",
                "bf16",
                "fp16",
                "--no-split",
            ],
            150,
        ),
    ]
    for batch in (8, 64):
        steps.append(
            Step(
                f"bench_train_e2e, batch {batch}",
                [
                    PY,
                    "bench/bench_train_e2e.py",
                    "--device",
                    "cuda",
                    "--batch",
                    str(batch),
                    "--steps",
                    "10",
                    "--warmup",
                    "2",
                    "--frames",
                    str(max(48, batch * 2)),
                    "--models",
                    "effposenet",
                    "hyperpose",
                    "--formats",
                    "jpeg",
                    "--data",
                    str(work / "e2e"),
                ],
                150,
                sample_utilisation=True,
            )
        )
    steps.append(
        Step(
            "bench_export",
            [
                PY,
                "bench/bench_export.py",
                "--device",
                "cuda",
                "--models",
                "effposenet,hyperpose,mshyperpose",
                "--iters",
                "10",
                "--warmup",
                "2",
            ],
            150,
        )
    )
    return steps


def gpu_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def environment() -> list[str]:
    import torch

    lines = [f"- torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"]
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        lines.append(f"- GPU {i}: {props.name}, {props.total_memory / 2**30:.0f} GiB")
    if shutil.which("nvidia-smi"):
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True
        )
        lines.append(f"- driver {out.stdout.strip().splitlines()[0] if out.stdout.strip() else 'unknown'}")
    return lines


class UtilisationSampler:
    """GPU utilisation (%) from nvidia-smi every half second while a step runs."""

    def __init__(self):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
            )
            first = out.stdout.strip().splitlines()[:1]
            if first and first[0].strip().isdigit():
                self.samples.append(float(first[0]))
            self._stop.wait(0.5)

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def summary(self) -> str:
        if not self.samples:
            return "GPU utilisation: not sampled (no nvidia-smi)"
        busy = [s for s in self.samples if s > 0]
        return (
            f"GPU utilisation: mean {sum(self.samples) / len(self.samples):.0f} % over {len(self.samples)} "
            f"samples, {len(busy)} of them busy"
        )


def run_step(step: Step) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), TQDM_DISABLE="1")
    t0 = time.perf_counter()
    sampler = UtilisationSampler() if step.sample_utilisation else None
    try:
        with sampler or _Null():
            proc = subprocess.run(step.argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=step.timeout_s)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        rc = "timeout"
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
    step.result = {
        "rc": rc,
        "seconds": time.perf_counter() - t0,
        "tail": out[-4000:],
        "utilisation": sampler.summary() if sampler else None,
    }


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def report(steps: list[Step], gpus: int, path: Path, seconds: float) -> str:
    lines = ["# GPU check", "", *environment(), f"- {gpus} GPU(s) visible; whole check {seconds:.0f} s", ""]
    failures = [s for s in steps if s.result and s.result["rc"] != 0]
    skipped = [s for s in steps if not s.result]
    lines += ["## Failures", ""] + ([f"- {s.name}: exit {s.result['rc']}" for s in failures] or ["- none"]) + [""]
    if skipped:
        lines += ["## Skipped", ""] + [f"- {s.name}: {s.skipped or 'not run'}" for s in skipped] + [""]
    for s in steps:
        if not s.result:
            continue
        lines += [
            f"## {s.name}",
            "",
            f"`{shlex.join(s.argv)}`",
            "",
            f"exit {s.result['rc']}, {s.result['seconds']:.0f} s"
            + (f"; {s.result['utilisation']}" if s.result["utilisation"] else ""),
            "",
            "```",
            s.result["tail"].rstrip(),
            "```",
            "",
        ]
    text = "\n".join(lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="print the steps, run nothing")
    parser.add_argument("--report", type=Path, default=Path("runs/gpu_check/report.md"), help="Markdown report")
    parser.add_argument("--work", type=Path, default=Path("runs/gpu_check/work"), help="data and runs")
    parser.add_argument(
        "--budget-s",
        type=int,
        default=450,
        help="whole-check time limit: a step gets at most what is left, later ones are skipped",
    )
    args = parser.parse_args(argv)
    steps = plan(args.work.resolve())
    if args.dry_run:
        for k, step in enumerate(steps, 1):
            needs = f" (needs {step.min_gpus} GPUs)" if step.min_gpus > 1 else ""
            print(f"{k}. {step.name}{needs}, limit {step.timeout_s} s: {shlex.join(step.argv)}")
        return 0
    gpus = gpu_count()
    if gpus == 0:
        print("gpu-check: no CUDA device here; nothing to check (run it on a GPU machine)")
        return 0
    t0 = time.perf_counter()
    for step in steps:
        left = args.budget_s - (time.perf_counter() - t0)
        if left < 20:
            step.skipped = "no time left in --budget-s"
            continue
        step.timeout_s = int(min(step.timeout_s, left))
        if gpus < step.min_gpus:
            step.skipped = f"needs {step.min_gpus} GPUs"
        else:
            print(f"gpu-check: {step.name} ...", flush=True)
            run_step(step)
            print(f"gpu-check: {step.name}: exit {step.result['rc']} in {step.result['seconds']:.0f} s", flush=True)
    report(steps, gpus, args.report, time.perf_counter() - t0)
    print(f"gpu-check: report in {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
