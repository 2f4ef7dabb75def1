"""Checkpoint files: what a foreign or unsafe file is called, reconciling a checkpoint with the config,
and what intermediate checkpoints keep."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from conftest import tiny_config_dict, write_config
from datasets.label_io import SEVEN_SCENES
from engine.evaluation.evaluate import evaluate
from models.backbone import load_backbone
from models.config import load_config
from models.loading import reconcile_config
from models.registry import build_model
from util.checkpoint import load_checkpoint, save_checkpoint
from util.device import seed_everything
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


# ---------------------------------------------------------------- one checkpoint, the config, the scene map


def _multi_config(tmp_path, **overrides):
    cfg = tiny_config_dict(n_epochs=1)
    cfg["mshyperpose"].update(overrides)
    return write_config(tmp_path / "cfg.json", cfg)


def _built(config_path, **overrides):
    config = dict(load_config(config_path, "mshyperpose"), **overrides)
    seed_everything(0)
    return config, build_model("mshyperpose", config, load_backbone("random"))


def _test_rows(paths):
    return [line.split(",") for line in paths["predictions"].read_text().splitlines()]


def test_a_seven_scene_reference_state_dict_tests_on_one_scene(scene7, tmp_path, caplog):
    """The reference allows it; a bare state_dict has no scene map, so the 7Scenes training order is used."""
    config_path = _multi_config(tmp_path, num_scenes=7)
    _, model = _built(config_path, num_scenes=7, nheads=8)
    bare = tmp_path / "reference_7scenes.pth"
    torch.save(model.state_dict(), bare)
    test_csv = scene7 / "abs_7scenes_pose.csv_chess_test.csv"
    with caplog.at_level(logging.INFO):
        result, paths = evaluate(
            "mshyperpose", "random", scene7, test_csv, config_path, bare, tmp_path / "ev", device="cpu"
        )
    assert "the 7Scenes training order (chess 0, fire 1, heads 2" in caplog.text
    assert "using 8 attention heads, as the reference code did (it ignored nheads=2)" in caplog.text
    rows = _test_rows(paths)
    assert {r[-1] for r in rows[1:]} <= set(SEVEN_SCENES) and result.summaries[0].scene == "chess"

    order = tmp_path / "order.csv"
    order.write_text("scene\n" + "\n".join(reversed(SEVEN_SCENES)) + "\n")
    with caplog.at_level(logging.INFO):
        evaluate(
            "mshyperpose",
            "random",
            scene7,
            test_csv,
            config_path,
            bare,
            tmp_path / "ev2",
            device="cpu",
            scene_map_file=order,
        )
    assert f"--scene_map {order} (stairs 0, redkitchen 1" in caplog.text
    order.write_text("scene\nchess\nfire\n")
    with pytest.raises(UserError, match=r"lists 2 scenes but checkpoint .* has 7 scene heads"):
        evaluate(
            "mshyperpose",
            "random",
            scene7,
            test_csv,
            config_path,
            bare,
            tmp_path / "ev3",
            device="cpu",
            scene_map_file=order,
        )


def test_the_checkpoint_architecture_wins_over_the_config(scenes3, tmp_path, caplog):
    """A model fine-tuned with 8 heads (e.g. from reference weights) tests with a config that says 2."""
    config_path = _multi_config(tmp_path)
    config, model = _built(config_path, num_scenes=3, nheads=8)
    ckpt = save_checkpoint(
        tmp_path / "ft.pth",
        model_name="mshyperpose",
        config=config,
        model=model,
        epoch=1,
        scene_map={"chess": 0, "fire": 1, "heads": 2},
    )
    with caplog.at_level(logging.WARNING):
        result, _ = evaluate(
            "mshyperpose",
            "random",
            scenes3,
            scenes3 / "7scenes_all_scenes.csv",
            config_path,
            ckpt,
            tmp_path / "ev",
            device="cpu",
        )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "architecture" in r.message]
    assert warnings == ["checkpoint ft.pth: using its architecture: nheads=8 (config: 2)"]
    assert len(result.summaries) == 3
    reconciled = reconcile_config(
        torch.load(ckpt, weights_only=True), "mshyperpose", load_config(config_path, "mshyperpose"), ckpt
    )
    assert reconciled["nheads"] == 8 and reconciled["num_scenes"] == 3
    assert reconciled["batch_size"] == load_config(config_path, "mshyperpose")["batch_size"]  # not architecture


def test_atomic_writes_flush_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    """A power loss after the rename must not leave an empty file: fsync(file), rename, fsync(folder)."""
    import os

    from util import io as uio

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(
        os,
        "fsync",
        lambda fd: (events.append(("fsync", os.path.isdir(f"/proc/self/fd/{fd}") or _is_dir_fd(fd))), real_fsync(fd))[
            1
        ],
    )
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", None)), real_replace(a, b))[1])
    for write in (lambda p: uio.atomic_write_text(p, "x"), lambda p: uio.atomic_torch_save({"a": 1}, p)):
        events.clear()
        write(tmp_path / "f")
        assert events == [("fsync", False), ("replace", None), ("fsync", True)]


def _is_dir_fd(fd: int) -> bool:
    import os
    import stat

    return stat.S_ISDIR(os.fstat(fd).st_mode)
