"""File checks and atomic writes: nothing already written is lost if a process dies or the disk fills up.

A failed write is a :class:`UserError` naming the file, the error and the free space left, and the file that
was there before stays as it was. :func:`check_output_dir` checks a folder before any work is done in it;
:func:`check_input_file` tells a missing file from a directory given in its place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from util.errors import UserError

# torch.save reports a failed write as a RuntimeError from its zip writer, not as an OSError.
_TORCH_WRITE_ERRORS = ("inline_container", "PytorchStreamWriter", "iostream error", "file write failed")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def format_bytes(n: float) -> str:
    """``1.5 GiB``, ``312 KiB``, ``0 B``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def free_space(path: str | os.PathLike) -> str:
    """Free space on the file system holding ``path`` (or its nearest existing parent), as text."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return format_bytes(shutil.disk_usage(path).free)
    except OSError:
        return "unknown space"


def _is_write_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) or (
        isinstance(exc, RuntimeError) and any(s in str(exc) for s in _TORCH_WRITE_ERRORS)
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if text.startswith("[enforce fail"):  # "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"
        text = text.split("]", 1)[-1].lstrip(" .")
    return f"torch.save failed ({text})"


def write_error(path: str | os.PathLike, exc: BaseException) -> UserError:
    """The one-line error for a failed write of ``path``."""
    path = Path(path)
    return UserError(f"cannot write {path}: {_describe(exc)}; {free_space(path.parent)} free in {path.parent}")


def check_input_file(path: str | Path, what: str) -> Path:
    """``path`` as a Path if it is a file; a one-line UserError saying "not found" or "is a directory"."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory, not a file")
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    return path


def check_output_dir(path: str | os.PathLike, what: str = "--output_path", create: bool = True) -> Path:
    """Check that files can be written in folder ``path``; a one-line UserError if not.

    Called before any work, so that a read-only mount or a file given as output folder fails at once rather
    than after a whole training run or evaluation. ``create``: make the folder now; otherwise a missing folder
    is checked through its nearest existing parent and nothing is left behind (the writes create it later).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder; give a folder (it is created if missing)")
    probe_dir = path
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise UserError(f"{what} {path}: cannot create the folder, a part of the path is a file") from None
        except OSError as exc:
            raise UserError(f"{what} {path}: cannot create the folder ({exc.strerror})") from None
    else:
        probe_dir = path.absolute()
        while not probe_dir.exists() and probe_dir != probe_dir.parent:
            probe_dir = probe_dir.parent
        if not probe_dir.is_dir():
            raise UserError(f"{what} {path}: cannot create the folder, a part of the path is a file")
    try:  # os.access answers for the permission bits only; a real file also catches read-only mounts
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=probe_dir)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise UserError(f"{what} {path} is not writable ({exc.strerror})") from None
    return path


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the rename itself is still atomic
    finally:
        os.close(fd)


def _atomic(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place. The file is
    flushed to disk before the rename and the folder after it, so a power loss leaves the old file or the
    new one, never an empty one."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        _fsync_file(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        # Measure the free space before the partial file goes, so that a full disk shows as (nearly) 0 free.
        error = write_error(path, exc) if _is_write_error(exc) else None
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        if error is not None:
            raise error from None
        raise
    return path


def atomic_write_with(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` to fill a temporary file, then rename it to ``path`` (for large streamed files)."""
    return _atomic(path, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)

    return _atomic(path, write)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return _atomic(path, write)


def atomic_torch_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically."""
    return _atomic(path, lambda tmp: torch.save(obj, tmp))
