"""Which checkpoint files a batch evaluation runs, in which order, and under which names.

Training writes ``run_<stamp>_checkpoint-<N>.pth`` every ``n_freq_checkpoint`` epochs and
``run_<stamp>_final.pth`` (README, output files); batch evaluation sorts the numbered ones by N, final last.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch

from util.errors import UserError

_NUMBERED = re.compile(r".+_checkpoint-(\d+)\.pth")


def checkpoint_number(path: str | Path) -> int | None:
    """N of ``*_checkpoint-N.pth``, else None."""
    match = _NUMBERED.fullmatch(Path(path).name)
    return int(match.group(1)) if match else None


def discover_checkpoints(folder: str | Path, start_index: int = 0) -> list[Path]:
    """The ``.pth`` files of ``folder`` in evaluation order.

    Order: ``*_checkpoint-N.pth`` by N, then ``*final*.pth``, then any other ``.pth``, each by name (hidden
    files are ignored). As in the reference, ``start_index`` skips the numbered checkpoints whose N (the
    epoch in the file name) is below it; final and other files are always kept.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(
            f"checkpoints folder not found: {folder} (expected a training run folder such as ./models/run_<stamp>)"
        )
    if start_index < 0:
        raise UserError(f"--ckpt_start_index must be >= 0, got {start_index}")
    files = [p for p in folder.iterdir() if p.suffix == ".pth" and p.is_file() and not p.name.startswith(".")]
    numbered = sorted((checkpoint_number(p), p.name, p) for p in files if checkpoint_number(p) is not None)
    finals = sorted((p for p in files if checkpoint_number(p) is None and "final" in p.name), key=lambda p: p.name)
    others = sorted((p for p in files if checkpoint_number(p) is None and "final" not in p.name), key=lambda p: p.name)
    selected = [p for n, _, p in numbered if n >= start_index] + finals + others
    if not selected:
        if not files:
            raise UserError(f"no .pth checkpoints in {folder}")
        raise UserError(
            f"--ckpt_start_index {start_index} skips all {len(files)} checkpoints in {folder} "
            f"(highest N: {max(n for n, _, _ in numbered)})"
        )
    return selected


def checkpoint_labels(paths: Sequence[Path]) -> list[str]:
    """Short unique names: ``checkpoint-N``, ``final`` (the reference's names), else the file stem."""
    labels = []
    for p in paths:
        n = checkpoint_number(p)
        labels.append(f"checkpoint-{n}" if n is not None else "final" if p.stem.endswith("_final") else p.stem)
    return [lab if labels.count(lab) == 1 else p.stem for lab, p in zip(labels, paths)]


def read_epoch(path: Path) -> int | None:
    """The epoch stored in one of our checkpoints, read without loading its tensors (None if unknown)."""
    n = checkpoint_number(path)
    if n is not None:
        return n
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        epoch = ckpt.get("epoch") if isinstance(ckpt, dict) else None
        return int(epoch) if isinstance(epoch, int) else None
    except Exception:  # mmap needs the zip format (not legacy files); the epoch is only informative
        return None
