"""Device selection and seeding, each in one place."""
from __future__ import annotations

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


def cap_workers(requested: int) -> int:
    """DataLoader workers: ``requested``, at most the CPU count (the reference configs ask for 4, which on a
    2-core machine makes PyTorch warn and only adds contention). Says so once, as an info line."""
    available = cpu_count()
    if requested <= available:
        return requested
    if requested not in _capped_workers:
        _capped_workers.add(requested)
        log.info("n_workers %d capped at the %d CPUs of this machine", requested, available)
    return available


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
