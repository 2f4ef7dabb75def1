"""Device selection and seeding, each in one place."""

from __future__ import annotations

import contextlib
import logging
import os
import random

import numpy as np
import torch

from util.errors import UserError

log = logging.getLogger(__name__)


def select_device(requested: str = "auto", config_device_id: str | None = None) -> torch.device:
    """Resolve ``auto|cpu|cuda|cuda:N`` to a torch device.

    ``auto`` uses the config's ``device_id`` when CUDA is available and the CPU otherwise, so a config
    written for a GPU machine still runs on a laptop.
    """
    requested = (requested or "auto").strip().lower()
    if requested == "auto":
        if torch.cuda.is_available():
            wanted = (config_device_id or "cuda:0").strip().lower()
            return select_device("cuda" if wanted == "cuda" else wanted) if wanted != "cpu" else torch.device("cpu")
        return torch.device("cpu")
    if requested == "cpu":
        return torch.device("cpu")
    if requested == "cuda" or requested.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {requested}: CUDA is not available on this machine; use --device cpu or auto")
        index = 0
        if ":" in requested:
            try:
                index = int(requested.split(":", 1)[1])
            except ValueError:
                raise UserError(f"--device {requested}: expected cuda:N with an integer N") from None
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {requested}: only {torch.cuda.device_count()} CUDA device(s) visible")
        return torch.device("cuda", index)
    raise UserError(f"--device {requested}: expected auto, cpu, cuda or cuda:N")


def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask, as in containers and under taskset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


_capped_workers: set = set()


def cap_workers(requested: int, device: torch.device | None = None) -> int:
    """DataLoader workers for a loader that feeds ``device``: ``requested``, at most the CPU count (the
    reference configs ask for 4, which on a 2-core machine makes PyTorch warn and only adds contention).
    When the model runs on the CPU, also at most the CPUs its torch threads leave free (under torchrun, this
    process's share of those the node's processes leave): a worker that takes a core from one of them stalls
    them all, and the images then load faster in the process itself (``bench/bench_train_e2e.py`` measures
    both). Says so once per case, as an info line."""
    available = cpu_count()
    cap, why = available, f"the {available} CPUs of this machine"
    if device is not None and device.type == "cpu":
        # Under torchrun the processes of a node share its CPUs: each gets its part of the free ones.
        procs = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        threads = torch.get_num_threads()
        free = max(0, available - threads * procs) // procs
        if free < cap:
            cap = free
            by = f"the {threads} torch threads" + (f" of each of {procs} processes" if procs > 1 else "")
            why = (
                f"the CPUs left free by {by} on {available} CPUs (images load in the training process; "
                f"fewer threads, e.g. OMP_NUM_THREADS, leave CPUs to workers)"
                if cap == 0
                else f"the {cap} CPU(s) left free{' per process' if procs > 1 else ''} by {by} on {available} CPUs"
            )
    if requested <= cap:
        return requested
    if (requested, cap) not in _capped_workers:
        _capped_workers.add((requested, cap))
        log.info("n_workers %d capped at %s", requested, why)
    return cap


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices) with one number."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_deterministic() -> None:
    """Ask torch for deterministic kernels (CPU runs are then bit-reproducible for a seed)."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = False


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so wall-clock timings on CUDA measure the work and not the launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


AMP_CHOICES = ("auto", "bf16", "fp16")


def _cpu_has_native_bf16() -> bool:
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def autocast_dtype(amp, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--amp`` on ``device``: None (fp32) when off.

    ``auto`` is bf16 where the device supports it (GPUs from Ampere on, CPUs) and fp16 on older GPUs;
    fp16 needs CUDA. On a CPU without native bf16 instructions bf16 runs, with a warning that it may be
    slower than fp32.
    """
    if amp in (None, False, "", "off", "none"):
        return None
    amp = "auto" if amp is True else str(amp).strip().lower()
    if amp not in AMP_CHOICES:
        raise UserError(f"--amp {amp}: expected one of {', '.join(AMP_CHOICES)}")
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if amp == "bf16" and not bf16_ok:
            raise UserError(
                f"--amp bf16: {torch.cuda.get_device_name(device)} does not support bfloat16; use --amp fp16"
            )
        return torch.float16 if amp == "fp16" or (amp == "auto" and not bf16_ok) else torch.bfloat16
    if amp == "fp16":
        raise UserError("--amp fp16 (float16 mixed precision) needs a CUDA device; on the CPU use --amp bf16")
    if device.type == "cpu" and not _cpu_has_native_bf16():
        log.warning("--amp bf16: this CPU has no native bfloat16 instructions; it may run slower than fp32")
    return torch.bfloat16


class RandomStreams:
    """Separate torch random streams (CPU, plus ``device`` on CUDA), swapped in one at a time.

    Training with micro-batches gives micro-batch i its own stream, the one process i of a distributed run
    would draw from, so one process reproduces a multi-process run's dropout and drop-connect draws.
    """

    def __init__(self, seeds: list[int], device: torch.device):
        self.device = device
        self.states = []
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for seed in seeds:
                torch.manual_seed(seed)
                self.states.append(self._get())

    def _get(self):
        return (torch.get_rng_state(), torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None)

    def _set(self, state) -> None:
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], self.device)

    @contextlib.contextmanager
    def use(self, i: int):
        """Draw from stream ``i`` inside the block; the stream advances, the outer state is restored."""
        outer = self._get()
        self._set(self.states[i])
        try:
            yield
        finally:
            self.states[i] = self._get()
            self._set(outer)
