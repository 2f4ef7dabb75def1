"""The mean-pose and retrieval baselines in test mode and batch evaluation: on the training frames retrieval
finds each frame's own pose; the mean pose against a hand computation; a missing training set is one line."""

from __future__ import annotations

import csv
import io
import shutil

import numpy as np
import pytest

from datasets.labels import POSE_COLUMNS, read_labels
from engine.cli import main as cli_main
from engine.evaluation.batch_eval import main as batch_main
from engine.training.train import train
from util.pose import mean_pose, pose_errors

pytestmark = pytest.mark.slow  # end to end: they train tiny models

TRAIN = "abs_7scenes_pose.csv_chess_train.csv"
TEST = "abs_7scenes_pose.csv_chess_test.csv"


@pytest.fixture(scope="module")
def run(scene7, tiny_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("baselines")
    return train("effposenet", "random", scene7, scene7 / TRAIN, tiny_config, out, device="cpu", n_epochs=1)


def cli(args, capsys, main=cli_main):
    status = main([str(a) for a in args] + ["--device", "cpu", "--quiet"])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def baseline_rows(path):
    return {r["baseline"]: r for r in csv.DictReader(io.StringIO(path.read_text()))}


def test_test_mode_prints_and_writes_both_baselines(run, scene7, tiny_config, tmp_path, capsys):
    # On the training frames themselves, the nearest training image of each frame is that frame.
    status, out, err = cli(
        [
            "effposenet",
            "test",
            "random",
            scene7,
            scene7 / TRAIN,
            tiny_config,
            "--checkpoint_path",
            run.final_checkpoint,
            "--output_path",
            tmp_path,
        ],
        capsys,
    )
    assert status == 0, err
    assert "baseline retrieval imagenet k=1: median 0.0000 m, 0.000 deg on the same frames" in out
    rows = baseline_rows(next(tmp_path.glob("*_baselines.csv")))
    assert float(rows["retrieval imagenet k=1"]["pos"]) == 0.0
    # On the test frames, the mean pose is the mean of the training poses.
    status, out, err = cli(
        [
            "effposenet",
            "test",
            "random",
            scene7,
            scene7 / TEST,
            tiny_config,
            "--checkpoint_path",
            run.final_checkpoint,
            "--output_path",
            tmp_path / "t",
        ],
        capsys,
    )
    assert status == 0, err
    train_poses = read_labels(scene7 / TRAIN)[POSE_COLUMNS].to_numpy(np.float64)
    test_poses = read_labels(scene7 / TEST)[POSE_COLUMNS].to_numpy(np.float64)
    mean_7 = mean_pose(train_poses)
    pos, ori = pose_errors(np.repeat(mean_7[None], len(test_poses), 0), test_poses)
    rows = baseline_rows(next((tmp_path / "t").glob("*_baselines.csv")))
    assert float(rows["mean pose"]["pos"]) == pytest.approx(np.median(pos), rel=1e-6)
    assert float(rows["mean pose"]["ori"]) == pytest.approx(np.median(ori), rel=1e-6)


def test_batch_evaluation_reports_the_baselines(run, scene7, tiny_config, tmp_path, capsys):
    status, out, err = cli(
        ["effposenet", "test", "random", scene7, scene7 / TEST, tiny_config, run.run_dir, "--output_path", tmp_path],
        capsys,
        batch_main,
    )
    assert status == 0, err
    assert "baseline mean pose: median" in out and "baseline retrieval imagenet k=1" in out
    assert set(baseline_rows(next(tmp_path.glob("*_baselines.csv")))) == {"mean pose", "retrieval imagenet k=1"}
    assert "baselines (same test frames)" in next(tmp_path.glob("*.html")).read_text()


def test_a_training_set_that_is_gone_is_one_line(run, scene7, tiny_config, tmp_path, capsys):
    moved = tmp_path / "moved"
    shutil.copytree(scene7, moved)
    ckpt = tmp_path / "c.pth"
    shutil.copy(run.final_checkpoint, ckpt)
    args = [
        "effposenet",
        "test",
        "random",
        moved,
        moved / TEST,
        tiny_config,
        "--checkpoint_path",
        ckpt,
        "--output_path",
        tmp_path / "o",
    ]
    status, out, err = cli(args + ["--train_labels", tmp_path / "nope.csv"], capsys)
    assert status == 2 and "--train_labels" in err and "nope.csv" in err
    status, out, err = cli(args + ["--train_labels", f"{moved / TRAIN}:{moved}"], capsys)
    assert status == 0 and "baseline mean pose" in out
    status, out, err = cli(args + ["--no_baselines"], capsys)
    assert status == 0 and "baseline" not in out


def test_evidence_demo_pairs_seeds_with_baselines_and_corruptions(compact_config, tmp_path, capsys):
    """The evidence demo's code path on a tiny scene: two seeds, one corruption at two severities."""
    from datasets.synthetic import generate
    from engine.reproduction.demo import DEMO_SHIFTS, run_evidence

    data = tmp_path / "data"
    generate(data, scenes=1, layout="7scenes", frames_per_seq=4, size=(64, 48), seed=2, test_shifts=DEMO_SHIFTS)
    assert (
        run_evidence(
            data, tmp_path / "out", seeds=(0, 1), config=compact_config, corruptions=("contrast",), severities=(1, 5)
        )
        == 0
    )
    out = capsys.readouterr().out
    table = out.split("verdict at 95 %.\n", 1)[1].splitlines()
    assert table[0].split()[:3] == ["condition", "hyperpose", "[m]"] and "mean pose [m]" in table[0]
    assert [line.split()[0] for line in table[1:6]] == ["shift0", "shift0.5", "shift1", "contrast@1", "contrast@5"]
    assert "mean corruption error relative to effposenet" in out
    assert len(list((tmp_path / "out").rglob("*_final.pth"))) == 4
    # A second run reuses the four finished runs.
    assert (
        run_evidence(
            data, tmp_path / "out", seeds=(0, 1), config=compact_config, corruptions=("contrast",), severities=(1, 5)
        )
        == 0
    )
    assert len(list((tmp_path / "out").rglob("*_final.pth"))) == 4
