"""Distributed training under ``torchrun``: which process this is, its device, and the few collectives used.

``torchrun --nproc_per_node N main_single_scene.py ...`` starts N processes and sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; without them (a plain ``python``
run) everything here is a no-op for one process. The backend is NCCL on CUDA and gloo on the CPU; each
process uses the GPU of its local rank.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from util.device import select_device
from util.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job: rank among ``world_size`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this code created the process group, so it also destroys it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, writes metrics, TensorBoard and checkpoints."""
        return self.rank == 0


def _env_int(name: str) -> int:
    try:
        return int(os.environ[name])
    except ValueError:
        raise UserError(f"environment variable {name}={os.environ[name]!r} is not an integer") from None


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def init_distributed(
    requested_device: str = "auto", config_device_id: str | None = None
) -> tuple[DistContext, torch.device]:
    """Join the process group that ``torchrun`` describes in the environment; returns (context, device).

    A single process (no ``WORLD_SIZE`` > 1) gets ``DistContext()`` and ``select_device``'s device.
    """
    if not launched_by_torchrun():
        return DistContext(), select_device(requested_device, config_device_id)
    ctx = DistContext(
        _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK"), owns_group=not dist.is_initialized()
    )
    device = select_device(requested_device, config_device_id)
    if device.type == "cuda":
        if ctx.local_rank >= torch.cuda.device_count():
            raise UserError(
                f"local rank {ctx.local_rank} has no GPU: only {torch.cuda.device_count()} visible; "
                f"start at most that many processes per node (--nproc_per_node)"
            )
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if ctx.owns_group:
        dist.init_process_group(backend, init_method="env://", rank=ctx.rank, world_size=ctx.world_size)
    log.info(
        "process %d of %d (local rank %d) on %s, backend %s", ctx.rank, ctx.world_size, ctx.local_rank, device, backend
    )
    return ctx, device


def shutdown(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def broadcast_object(ctx: DistContext, obj):
    """Rank 0's ``obj`` on every rank (e.g. the run folder rank 0 created)."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(ctx: DistContext, values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over ranks of a few numbers (float64)."""
    if not ctx.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_gather_cat(ctx: DistContext, t_N: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The concatenation over ranks of equally long 1-D tensors, on the CPU."""
    if not ctx.enabled:
        return t_N
    t_N = t_N.to(device)
    parts = [torch.empty_like(t_N) for _ in range(ctx.world_size)]
    dist.all_gather(parts, t_N)
    return torch.cat(parts).cpu()
