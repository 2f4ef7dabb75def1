"""An incremental JSON cache of :class:`engine.evaluation.records.CheckpointResult` records.

One file holds a ``context`` (everything besides the checkpoint files that the results depend on) and one
entry per key. An entry is used again only while the context is unchanged, its checkpoint file has the
same size and mtime, and its own ``inputs`` (for instance the test files of one condition) are unchanged.
Writes are atomic; an unreadable or outdated file is ignored, never an error.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from engine.evaluation.evaluate import TEST_FILE_PATTERNS, Evaluator
from engine.evaluation.records import CheckpointResult
from util import jsonio
from util.io import atomic_write_text
from util.metrics import DEFAULT_THRESHOLDS

log = logging.getLogger(__name__)

CACHE_VERSION = 3  # 3: non-finite floats are tagged objects (util.jsonio)
# Config keys that cannot change a test result; editing them keeps the cache.
RUNTIME_KEYS = ("n_workers", "n_freq_print", "n_freq_checkpoint", "device_id", "batch_size", "cache_dir")


def file_stamp(path: Path) -> list:
    """[resolved path, size, mtime]: a file that changed has another stamp."""
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def evaluator_context(evaluator: Evaluator) -> dict:
    """Everything besides the checkpoint file that a test result of ``evaluator`` depends on."""
    labels = evaluator.labels_file
    files = [labels]
    if evaluator.test_dataset_id:
        files += sorted(labels.parent.glob(TEST_FILE_PATTERNS[evaluator.test_dataset_id].format(scene="*")))
    if getattr(evaluator, "scene_map_file", None):  # the scene ids of reference state_dicts
        files.append(Path(evaluator.scene_map_file))
    return {
        "model": evaluator.model_name,
        "amp": evaluator.amp,
        "dataset_root": str(evaluator.dataset_root.resolve()),
        "test_dataset_id": evaluator.test_dataset_id,
        "test_files": [file_stamp(f) for f in files if f.is_file()],
        "config": {k: v for k, v in sorted(evaluator.config.items()) if k not in RUNTIME_KEYS},
        **({"corruption": repr(evaluator.corruption)} if getattr(evaluator, "corruption", None) else {}),
    }


class ResultCache:
    """Key -> cached record, stored in one JSON file (see the module docstring)."""

    def __init__(self, path: str | Path, context: dict):
        self.path = Path(path)
        self.context = jsonio.encode({"version": CACHE_VERSION, "thresholds": DEFAULT_THRESHOLDS, **context})
        self.entries: dict[str, dict] = self._read()

    def _read(self) -> dict[str, dict]:
        if not self.path.is_file():
            return {}
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable cache %s (%s); evaluating everything again", self.path, exc)
            return {}
        if not isinstance(raw, dict) or raw.get("context") != self.context:
            log.info(
                "cache %s was made with another model, config, test set or AMP setting; evaluating again",
                self.path.name,
            )
            return {}
        return jsonio.decode(dict(raw.get("checkpoints", {})))

    def lookup(self, key: str, path: Path, label: str, inputs: dict | None = None) -> CheckpointResult | None:
        """The cached record of ``key`` if it is still valid for the file ``path``, else None."""
        entry = self.entries.get(key)
        if entry is None or entry.get("inputs") != jsonio.decode(jsonio.encode(inputs)):
            return None
        result = CheckpointResult.from_cache(path, label, entry)
        return result if result.is_current(path) else None

    def store(self, key: str, result: CheckpointResult, inputs: dict | None = None) -> None:
        self.entries[key] = dict(result.to_cache(), inputs=jsonio.decode(jsonio.encode(inputs)))

    def drop(self, key: str) -> None:
        self.entries.pop(key, None)

    def keep_only(self, keys) -> None:
        """Forget the entries of files that are gone."""
        keys = set(keys)
        self.entries = {k: v for k, v in self.entries.items() if k in keys}

    def save(self) -> None:
        atomic_write_text(self.path, jsonio.dumps({"context": self.context, "checkpoints": self.entries}) + "\n")
