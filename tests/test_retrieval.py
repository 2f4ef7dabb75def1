"""Mean-pose and image-retrieval baselines: known answers for the pose averages and the k-average, exact
poses when the query is a training image, the descriptor cache, the command line."""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch

from datasets.dataset import CameraPoseDataset
from engine.evaluation.retrieval import (
    Descriptor,
    MeanPoseBaseline,
    RetrievalBaseline,
    main,
    retrieve_poses,
)
from engine.training.train import train_mean_pose
from models.backbone import new_backbone
from models.config import defaults
from models.registry import build_model
from util.checkpoint import save_checkpoint
from util.errors import UserError
from util.pose import (
    average_quaternions,
    axis_angle_to_quat,
    mean_pose,
    orientation_error_deg,
)

TRAIN_CSV = "abs_7scenes_pose.csv_chess_train.csv"
TEST_CSV = "abs_7scenes_pose.csv_chess_test.csv"
SIZE = 32  # descriptor images: 32 x 32 crops keep every backbone pass a few milliseconds


def rot_z(deg: float) -> np.ndarray:
    """Unit quaternion (w, x, y, z) of a rotation by ``deg`` about z."""
    return axis_angle_to_quat(np.array([0.0, 0.0, 1.0]), np.radians(deg))


@dataclass
class Darken:
    """A corruption with a stable repr, as the cache key needs."""

    factor: float

    def __call__(self, img_3HW: torch.Tensor, path: str) -> torch.Tensor:
        return (img_3HW.float() * self.factor).to(torch.uint8)


@pytest.fixture(scope="module")
def train_set(scene7) -> CameraPoseDataset:
    return CameraPoseDataset(scene7, scene7 / TRAIN_CSV)


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory) -> Descriptor:
    return Descriptor.imagenet(image_size=SIZE, cache_dir=tmp_path_factory.mktemp("desc_cache"))


@pytest.fixture(scope="module")
def effposenet_ckpt(tmp_path_factory):
    """A checkpoint of an untrained effposenet at 40 / 32 px: its backbone still tells images apart."""
    config = {**defaults("effposenet"), "image_resize": 40, "image_crop": SIZE}
    model = build_model("effposenet", config, new_backbone("efficientnet"))
    path = tmp_path_factory.mktemp("ckpt") / "effposenet_final.pth"
    return save_checkpoint(path, model_name="effposenet", config=config, model=model, epoch=1, scene_map={"chess": 0})


# Pose averages ------------------------------------------------------------------------------------------------
def test_average_of_identical_quaternions_is_that_quaternion():
    q_4 = rot_z(40.0)
    assert average_quaternions(np.stack([q_4] * 3)) == pytest.approx(q_4, abs=1e-12)


def test_average_of_q_and_minus_q_is_q_up_to_sign():
    q_4 = np.array([0.5, -0.5, 0.5, 0.5])
    mean_4 = average_quaternions(np.stack([q_4, -q_4]))
    assert abs(mean_4 @ q_4) == pytest.approx(1.0, abs=1e-12)
    assert mean_4[0] >= 0


def test_weighted_average_about_one_axis_lies_between():
    # About one axis, sum w q q^T has its top eigenvector at the circular mean of the rotation angles:
    # atan2(sum w sin(a), sum w cos(a)). Weights 3 and 1 on 0 and 90 deg: atan2(1, 3) = 18.43 deg.
    mean_4 = average_quaternions(np.stack([rot_z(0.0), -rot_z(90.0)]), np.array([3.0, 1.0]))
    expected = np.degrees(np.arctan2(1.0, 3.0))
    assert mean_4 == pytest.approx(rot_z(expected), abs=1e-12)
    assert 0.0 < expected < 45.0
    with pytest.raises(ValueError):
        average_quaternions(np.stack([rot_z(0.0), rot_z(90.0)]), np.array([1.0, -1.0]))


def test_mean_pose_of_a_training_set(scene7, tmp_path):
    labels = pd.read_csv(scene7 / TRAIN_CSV).head(3)
    labels[["t1", "t2", "t3"]] = [[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [1.0, 3.0, 0.0]]
    labels[["q1", "q2", "q3", "q4"]] = np.stack([rot_z(10.0), -rot_z(20.0), rot_z(30.0)])
    labels.to_csv(tmp_path / "train.csv", index=False)
    train = CameraPoseDataset(scene7, tmp_path / "train.csv")
    expected_7 = np.concatenate([[1.0, 1.0, 0.0], rot_z(20.0)])  # symmetric angles: their mean is the middle
    assert mean_pose(train.poses_N7) == pytest.approx(expected_7, abs=1e-6)
    assert train_mean_pose(train) == pytest.approx(expected_7, abs=1e-6)
    pred = MeanPoseBaseline(train).predict(train)
    assert pred.name == "mean pose"
    assert pred.pose_pred_N7 == pytest.approx(np.tile(expected_7, (3, 1)), abs=1e-6)


# Retrieval ----------------------------------------------------------------------------------------------------
def test_retrieve_poses_k_average_by_hand():
    desc_TD = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    poses_T7 = np.stack(
        [
            np.concatenate([[0.0, 0.0, 0.0], rot_z(0.0)]),
            np.concatenate([[1.6, 0.0, 0.0], -rot_z(90.0)]),  # -q: the same rotation
            np.concatenate([[9.0, 9.0, 9.0], rot_z(180.0)]),
        ]
    )
    query_QD = np.array([[2.0, 0.0]])  # not unit: descriptors are normalised inside
    # Cosine similarities 1, 0.6, 0: k = 2 takes the first two with weights 1 and 0.6.
    pose_7 = retrieve_poses(query_QD, desc_TD, poses_T7, k=2)[0]
    assert pose_7[:3] == pytest.approx([0.6 * 1.6 / 1.6, 0.0, 0.0])
    assert pose_7[3:] == pytest.approx(rot_z(np.degrees(np.arctan2(0.6, 1.0))), abs=1e-12)
    assert (retrieve_poses(query_QD, desc_TD, poses_T7, k=1)[0] == poses_T7[0]).all()
    # Restricted to the nearest image's scene: the neighbour of the other scene is skipped, and the third
    # (similarity 0) gets no weight.
    pose_7 = retrieve_poses(query_QD, desc_TD, poses_T7, k=2, train_scenes_T=["a", "b", "a"])[0]
    assert pose_7 == pytest.approx(poses_T7[0], abs=1e-12)
    with pytest.raises(UserError, match="--k"):
        retrieve_poses(query_QD, desc_TD, poses_T7, k=4)


def test_imagenet_retrieval_of_a_training_image_returns_its_pose(train_set, imagenet):
    pred = RetrievalBaseline(train_set, imagenet, k=1).predict(train_set)
    assert pred.name == "retrieval imagenet k=1"
    assert (pred.pose_pred_N7 == train_set.poses_N7.astype(np.float64)).all()
    assert [s.median_pos_m for s in pred.summaries()] == [0.0]


def test_checkpoint_retrieval_of_a_training_image_returns_its_pose(train_set, effposenet_ckpt):
    descriptor = Descriptor.from_checkpoint(effposenet_ckpt, cache_dir="off")
    assert descriptor.name == "effposenet_final"
    assert descriptor.settings["image_resize"] == 40
    desc_ND = descriptor.describe(train_set)
    assert desc_ND.dtype == np.float32 and desc_ND.shape[0] == len(train_set)
    assert np.linalg.norm(desc_ND, axis=1) == pytest.approx(1.0, abs=1e-5)
    pred = RetrievalBaseline(train_set, descriptor, k=1).predict(train_set)
    assert (pred.pose_pred_N7 == train_set.poses_N7.astype(np.float64)).all()
    pred3 = RetrievalBaseline(train_set, descriptor, k=3).predict(train_set)
    assert pred3.name == "retrieval effposenet_final k=3"
    assert np.isfinite(pred3.pose_pred_N7).all()


# Descriptor cache ---------------------------------------------------------------------------------------------
def test_descriptor_cache_is_read_and_a_broken_one_rebuilt(scene7, imagenet, tmp_path, monkeypatch, caplog):
    def fresh() -> Descriptor:  # a new instance: nothing remembered in memory
        return Descriptor(imagenet.name, imagenet.backbone, imagenet.identity, SIZE, SIZE, cache_dir=tmp_path)

    test = CameraPoseDataset(scene7, scene7 / TEST_CSV)
    first = fresh().describe(test)
    files = list(tmp_path.glob("*.desc.npz"))
    assert len(files) == 1 and files[0].name.startswith("abs_7scenes_pose.csv_chess_test-")

    real_compute = Descriptor._compute
    monkeypatch.setattr(Descriptor, "_compute", lambda self, ds: pytest.fail("recomputed despite the cache"))
    assert (fresh().describe(test) == first).all()

    data = bytearray(files[0].read_bytes())
    data[len(data) // 2 : len(data) // 2 + 16] = b"\xff" * 16
    files[0].write_bytes(bytes(data))
    monkeypatch.setattr(Descriptor, "_compute", real_compute)
    with caplog.at_level(logging.WARNING, logger="engine.evaluation.retrieval"):
        assert (fresh().describe(test) == first).all()
    assert "unusable" in caplog.text and "rebuilding" in caplog.text
    assert list(tmp_path.glob("*.desc.npz")) == files

    # The corruption is part of the key, and honoured: darker images, other descriptors, another file.
    darker = CameraPoseDataset(scene7, scene7 / TEST_CSV, corruption=Darken(0.3))
    assert fresh().cache_key(darker) != fresh().cache_key(test)
    assert not np.allclose(fresh().describe(darker), first)
    assert len(list(tmp_path.glob("*.desc.npz"))) == 2


# Command line -------------------------------------------------------------------------------------------------
def test_cli_writes_the_report_and_predictions(scene7, effposenet_ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    status = main(
        [
            str(scene7 / TRAIN_CSV),
            str(scene7 / TEST_CSV),
            str(scene7),
            "--descriptor",
            str(effposenet_ckpt),
            "--k",
            "1",
            "2",
            "--device",
            "cpu",
            "--cache",
            str(tmp_path / "cache"),
            "--output_path",
            str(out),
            "--quiet",
        ]
    )
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "mean pose | chess" in captured.out and "retrieval effposenet_final k=2 | chess" in captured.out
    stem = "baselines_effposenet_final_abs_7scenes_pose.csv_chess_test"
    report = list(csv.DictReader(io.StringIO((out / f"{stem}_report.csv").read_text())))
    assert [r["baseline"] for r in report] == [
        "mean pose",
        "retrieval effposenet_final k=1",
        "retrieval effposenet_final k=2",
    ]
    assert all(r["scene"] == "chess" and r["n_frames"] == "4" for r in report)
    rows = list(csv.DictReader(io.StringIO((out / f"{stem}_predictions.csv").read_text())))
    assert len(rows) == 3 * 4
    train = CameraPoseDataset(scene7, scene7 / TRAIN_CSV)
    mean_q = train_mean_pose(train)[3:]
    first = rows[0]
    assert first["baseline"] == "mean pose"
    pred_q = np.array([float(first[f"{c}_pred"]) for c in ("q1", "q2", "q3", "q4")])
    assert orientation_error_deg(pred_q, mean_q) == pytest.approx(0.0, abs=1e-3)


@pytest.mark.parametrize(
    "test_csv, extra, message",
    [
        (TEST_CSV, ["--k", "0"], "--k must be"),
        (TEST_CSV, ["--k", "13"], "--k must be"),
        ("missing.csv", [], "not found"),
    ],
)
def test_cli_bad_input_is_one_line(scene7, capsys, test_csv, extra, message):
    status = main([str(scene7 / TRAIN_CSV), str(scene7 / test_csv), str(scene7), "--cache", "off", "--quiet", *extra])
    err = capsys.readouterr().err
    assert status != 0
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
