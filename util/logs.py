"""Logging set-up, done once by each entry script (console plus a log file in the run folder), and the
progress bars, which only a terminal gets."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from tqdm import tqdm

from util.errors import UserError

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_progress_bars = True  # set by the entry scripts: off with --quiet


class _ConsoleHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (a redirect or a test capture made
    after the set-up included), never to a stream that has since been closed."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; the property always answers sys.stderr
        pass


class _OncePerProcess(logging.Filter):
    """Each distinct warning reaches the console once per process (a demo builds eight random backbones;
    one "random init" line says it). Run log files still get every record."""

    def __init__(self):
        super().__init__()
        self.seen: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING:
            return True
        key = (record.name, record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def setup_logging(level: int = logging.INFO) -> None:
    """Send records of every module to stderr at ``level`` (idempotent)."""
    root = logging.getLogger()
    console = next((h for h in root.handlers if getattr(h, "_hyperpose_console", False)), None)
    if console is None:
        console = _ConsoleHandler()
        console.setFormatter(logging.Formatter(_FORMAT, "%H:%M:%S"))
        console._hyperpose_console = True
        console.addFilter(_OncePerProcess())
        root.addHandler(console)
    console.setLevel(level)
    root.setLevel(min(level, root.level) if root.level else level)
    for noisy in ("PIL", "matplotlib", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def set_progress_bars(enabled: bool) -> None:
    """Allow progress bars (the entry scripts turn them off with ``--quiet``)."""
    global _progress_bars
    _progress_bars = bool(enabled)


def progress_bar(iterable=None, *, enabled: bool = True, **kwargs) -> tqdm:
    """A tqdm bar on a terminal only, and never with ``--quiet``. Piped to a file, CI or ``nohup``,
    carriage-return updates would fill the log, so there the bar is off and the caller's log lines (one per
    epoch) are the progress. Every bar of the toolkit goes through here."""
    return tqdm(iterable, disable=None if (enabled and _progress_bars) else True, **kwargs)


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


def log_run_failure(handler: logging.Handler, exc: BaseException, logger: str = "engine.training.train") -> None:
    """Write why a run ended to ``handler`` (the run's log file) only; the console gets the script's one line.

    A user error is its message; anything else keeps its traceback in the file, for the bug report.
    """
    if isinstance(exc, KeyboardInterrupt):
        message, exc_info = "run failed: interrupted", None
    elif isinstance(exc, UserError):
        message, exc_info = f"run failed: {exc}", None
    else:
        message, exc_info = f"run failed: {type(exc).__name__}: {exc}", (type(exc), exc, exc.__traceback__)
    record = logging.LogRecord(logger, logging.ERROR, __file__, 0, message, None, exc_info)
    handler.handle(record)
    handler.flush()
