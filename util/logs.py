"""Logging set-up, done once by each entry script: console plus a log file in the run folder."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: int = logging.INFO) -> None:
    """Send records of every module to stderr at ``level`` (idempotent)."""
    root = logging.getLogger()
    console = next((h for h in root.handlers if getattr(h, "_hyperpose_console", False)), None)
    if console is None:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter(_FORMAT, "%H:%M:%S"))
        console._hyperpose_console = True
        root.addHandler(console)
    console.setLevel(level)
    root.setLevel(min(level, root.level) if root.level else level)
    for noisy in ("PIL", "matplotlib", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def add_log_file(path: str | Path, level: int = logging.DEBUG) -> logging.Handler:
    """Also write records down to ``level`` to ``path``; returns the handler, for removal when the run ends."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.setLevel(level)
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > level or root.level == logging.NOTSET:
        root.setLevel(level)
    return handler
