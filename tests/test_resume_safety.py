"""Resuming never destroys a checkpoint: an older checkpoint is refused in place and branches into a new
run folder with --output_path; stale temporary files of killed writes are cleared."""

from __future__ import annotations

import hashlib
import shutil

import pytest
import torch

from conftest import tiny_config_dict, write_config
from engine.training.train import train
from engine.training.trainer import read_metrics_csv
from util.checkpoint import load_checkpoint
from util.errors import UserError

MODEL = "effposenet"


def digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.pth"))}


@pytest.fixture(scope="module")
def finished_run(scene7, tmp_path_factory):
    """One finished 3-epoch run; the tests that write into its folder work on a copy."""
    tmp = tmp_path_factory.mktemp("resume")
    cfg = tiny_config_dict(n_epochs=3)
    cfg["general"]["keep_optimizer_state"] = "all"
    config = write_config(tmp / "c.json", cfg)
    labels = scene7 / "abs_7scenes_pose.csv_chess_train.csv"
    result = train(MODEL, "random", scene7, labels, config, tmp / "runs")
    return result, config, labels


def test_resuming_an_older_checkpoint_in_place_is_refused_and_changes_nothing(finished_run, scene7):
    result, config, labels = finished_run
    before = digests(result.run_dir)
    older = next(result.run_dir.glob("*_checkpoint-1.pth"))
    for output_path in (None, result.run_dir.parent):  # the run's own folder, named or not
        with pytest.raises(UserError) as info:
            train(MODEL, "random", scene7, labels, config, output_path, resume=older)
        message = str(info.value)
        assert "\n" not in message and "checkpoint-2" in message and "--output_path" in message
    assert digests(result.run_dir) == before


def test_an_older_checkpoint_branches_into_a_new_run_folder(finished_run, scene7, tmp_path):
    result, config, labels = finished_run
    before = digests(result.run_dir)
    older = next(result.run_dir.glob("*_checkpoint-1.pth"))
    branch = train(MODEL, "random", scene7, labels, config, tmp_path / "branch", resume=older)
    assert digests(result.run_dir) == before  # no existing checkpoint changed
    assert branch.run_dir.parent == tmp_path / "branch" and branch.run_dir != result.run_dir
    assert [int(r["epoch"]) for r in read_metrics_csv(branch.run_dir / "metrics.csv")] == [1, 2, 3]
    # With every optimizer state kept, the branch ends where the uninterrupted run ended.
    a, b = load_checkpoint(result.final_checkpoint)["model"], load_checkpoint(branch.final_checkpoint)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resuming_in_place_clears_stale_temporary_files(finished_run, scene7, tmp_path):
    result, config, labels = finished_run
    run_dir = shutil.copytree(result.run_dir, tmp_path / result.run_dir.name)
    stale = run_dir / f".{result.final_checkpoint.name}.k1ll3d.tmp"
    stale.write_bytes(b"\0" * 1000)  # what a kill -9 during a save leaves
    more = train(MODEL, "random", scene7, labels, config, resume=run_dir / result.final_checkpoint.name, n_epochs=4)
    assert more.run_dir == run_dir and not stale.exists()
