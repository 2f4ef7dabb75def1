"""Checkpoint files: what a foreign or unsafe file is called, reconciling a checkpoint with the config,
and what intermediate checkpoints keep."""
from __future__ import annotations

import os

import pytest
import torch

from util.checkpoint import load_checkpoint
from util.errors import UserError


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def test_random_bytes_are_not_a_pytorch_file(tmp_path):
    path = tmp_path / "noise.pth"
    path.write_bytes(bytes(range(7, 256)) * 20)  # not a zip archive, no pickle marker
    with pytest.raises(UserError, match=r"noise\.pth: it is not a PyTorch file") as info:
        load_checkpoint(path)
    assert "Python objects" not in str(info.value)


def test_an_unsafe_pickle_is_named_and_never_run(tmp_path, capfd):
    path = tmp_path / "evil.pth"
    torch.save({"model": _RunsCode()}, path)
    with pytest.raises(UserError, match=r"Python objects other than tensors \(posix\.system\)|\(nt\.system\)"):
        load_checkpoint(path)
    assert "must never run" not in capfd.readouterr().out


def test_a_directory_given_as_checkpoint(tmp_path):
    with pytest.raises(UserError, match=r"checkpoint .* is a directory, not a file"):
        load_checkpoint(tmp_path)
    with pytest.raises(UserError, match=r"checkpoint not found: .*nope\.pth"):
        load_checkpoint(tmp_path / "nope.pth")
