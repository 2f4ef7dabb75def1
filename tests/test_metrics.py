"""Metrics: known answers for medians, means, recalls and failures; aggregation; the text table."""

import json
import logging
import math

import numpy as np
import pytest
import torch

from util.metrics import DEFAULT_THRESHOLDS, PoseSummary, aggregate, format_summaries, recall_label, summarize


def test_default_labels():
    s = summarize([0.0], [0.0])
    assert list(s.recalls) == ["recall_0.05m_5deg", "recall_0.25m_2deg", "recall_0.5m_5deg", "recall_1m_10deg"]
    assert len(DEFAULT_THRESHOLDS) == 4
    assert recall_label(0.05, 5.0) == "recall_0.05m_5deg"


def test_known_answers_without_failures():
    pos = [0.01, 0.10, 0.30, 0.60, 2.00]
    ori = [1.0, 1.5, 4.0, 9.0, 30.0]
    s = summarize(pos, ori, scene="chess")
    assert (s.scene, s.n_frames, s.n_failed) == ("chess", 5, 0)
    assert s.median_pos_m == pytest.approx(0.30)
    assert s.median_ori_deg == pytest.approx(4.0)
    assert s.mean_pos_m == pytest.approx(0.602)
    assert s.mean_ori_deg == pytest.approx(9.1)
    # 0.05m/5deg: frame 0; 0.25m/2deg: frames 0, 1; 0.5m/5deg: frames 0-2; 1m/10deg: frames 0-3.
    assert s.recalls == {
        "recall_0.05m_5deg": 0.2,
        "recall_0.25m_2deg": 0.4,
        "recall_0.5m_5deg": 0.6,
        "recall_1m_10deg": 0.8,
    }


def test_recall_needs_both_position_and_orientation():
    # Frame 0 is close in position but not in angle, frame 1 the other way round.
    s = summarize([0.01, 3.0], [20.0, 0.1], thresholds=[(0.05, 5.0)])
    assert s.recalls == {"recall_0.05m_5deg": 0.0}


def test_thresholds_are_inclusive_and_configurable():
    s = summarize([0.1, 0.2, 0.3], [1.0, 2.0, 3.0], thresholds=[(0.2, 2.0), (10, 1)])
    assert s.recalls == {"recall_0.2m_2deg": pytest.approx(2 / 3), "recall_10m_1deg": pytest.approx(1 / 3)}


def test_nan_row_counts_as_failed_and_as_infinite_error():
    pos = [0.1, 0.2, math.nan, 0.4]
    ori = [1.0, 2.0, 3.0, 4.0]
    s = summarize(pos, ori)
    assert s.n_frames == 4 and s.n_failed == 1
    # The failure is +inf, so it sorts last: median of [0.1, 0.2, 0.4, inf] = 0.3 (nanmedian would give 0.2).
    assert s.median_pos_m == pytest.approx(0.3)
    assert s.mean_pos_m == math.inf
    # Orientation of that frame is finite and is used as is.
    assert s.median_ori_deg == pytest.approx(2.5)
    assert s.mean_ori_deg == pytest.approx(2.5)
    # The failed frame is a miss, and recalls are over all 4 frames.
    assert s.recalls["recall_0.5m_5deg"] == pytest.approx(0.75)


def test_failures_in_both_columns_count_once_per_frame():
    s = summarize([math.nan, math.inf, 0.1, 0.1], [math.nan, 1.0, -math.inf, 1.0])
    assert s.n_failed == 3
    assert s.median_pos_m == math.inf and s.median_ori_deg == math.inf
    assert s.recalls["recall_1m_10deg"] == pytest.approx(0.25)


def test_majority_failures_make_the_median_infinite():
    s = summarize([math.nan, math.nan, 0.1], [1.0, 1.0, 1.0])
    assert s.median_pos_m == math.inf
    assert not math.isnan(s.median_pos_m)


@pytest.mark.parametrize("kind", ["numpy", "torch", "torch_grad", "list"])
def test_accepts_numpy_torch_and_lists(kind):
    pos, ori = [0.1, 0.2, 0.3], [1.0, 2.0, 3.0]
    if kind == "numpy":
        pos, ori = np.array(pos, dtype=np.float32), np.array(ori)
    elif kind == "torch":
        pos, ori = torch.tensor(pos, dtype=torch.float64), torch.tensor(ori)
    elif kind == "torch_grad":
        pos, ori = torch.tensor(pos, requires_grad=True), torch.tensor(ori, requires_grad=True)
    s = summarize(pos, ori)
    assert s.median_pos_m == pytest.approx(0.2) and s.median_ori_deg == pytest.approx(2.0)
    assert isinstance(s.median_pos_m, float) and isinstance(s.n_frames, int)


def test_empty_input_is_well_defined():
    s = summarize(np.zeros(0), torch.zeros(0), scene="empty")
    assert (s.n_frames, s.n_failed) == (0, 0)
    assert all(math.isnan(getattr(s, k)) for k in ("median_pos_m", "median_ori_deg", "mean_pos_m", "mean_ori_deg"))
    assert all(math.isnan(v) for v in s.recalls.values()) and len(s.recalls) == 4


@pytest.mark.parametrize(
    "pos, ori, thresholds, match",
    [
        ([0.1, 0.2], [1.0], DEFAULT_THRESHOLDS, "position errors"),
        ([[0.1, 0.2]], [[1.0, 2.0]], DEFAULT_THRESHOLDS, "1-D"),
        ([-0.1], [1.0], DEFAULT_THRESHOLDS, ">= 0"),
        ([0.1], [1.0], [(0.1, 1.0), (0.1, 1.0)], "duplicate"),
        ([0.1], [1.0], [(0.1,)], "pair"),
        ([0.1], [1.0], [(-1.0, 1.0)], ">= 0"),
    ],
)
def test_invalid_inputs_raise(pos, ori, thresholds, match):
    with pytest.raises(ValueError, match=match):
        summarize(pos, ori, thresholds=thresholds)


def test_to_dict_is_flat_and_json_ready():
    d = summarize([0.1, 0.3], [1.0, 3.0], scene="fire").to_dict()
    assert list(d)[:7] == [
        "scene",
        "n_frames",
        "n_failed",
        "median_pos_m",
        "median_ori_deg",
        "mean_pos_m",
        "mean_ori_deg",
    ]
    assert d["recall_0.25m_2deg"] == 0.5
    assert json.loads(json.dumps(d)) == d


def make_two_scenes():
    a = summarize([0.1, 0.2, 0.3, 0.4], [1.0, 2.0, 3.0, 40.0], scene="a")  # median 0.25 m / 2.5 deg
    b = summarize([1.0, 3.0], [10.0, 20.0], scene="b")  # median 2.0 m / 15 deg
    return a, b


def test_aggregate_known_answers():
    a, b = make_two_scenes()
    agg = aggregate([a, b])
    assert (agg["n_scenes"], agg["n_frames"], agg["n_failed"]) == (2, 6, 0)
    # Papers' "average": every scene counts once.
    assert agg["mean_of_median_pos_m"] == pytest.approx((0.25 + 2.0) / 2)
    assert agg["mean_of_median_ori_deg"] == pytest.approx((2.5 + 15.0) / 2)
    # Frame-weighted: scene a has 4 of the 6 frames.
    assert agg["weighted_median_pos_m"] == pytest.approx((4 * 0.25 + 2 * 2.0) / 6)
    assert agg["weighted_median_ori_deg"] == pytest.approx((4 * 2.5 + 2 * 15.0) / 6)
    assert agg["weighted_mean_pos_m"] == pytest.approx((0.1 + 0.2 + 0.3 + 0.4 + 1.0 + 3.0) / 6)
    assert agg["weighted_mean_ori_deg"] == pytest.approx((1 + 2 + 3 + 40 + 10 + 20) / 6)
    # Pooled recall: 0.5m/5deg holds for frames a0, a1, a2 (3 of 6).
    assert agg["recall_0.5m_5deg"] == pytest.approx(0.5)
    # 1m/10deg: a0-a2 and b0, which lies exactly on the (inclusive) threshold: 4 of 6.
    assert agg["recall_1m_10deg"] == pytest.approx(4 / 6)


def test_aggregate_keeps_failures_infinite_and_skips_empty_scenes(caplog):
    a, _ = make_two_scenes()
    failed = summarize([math.nan, 0.1], [1.0, 1.0], scene="broken")
    empty = summarize([], [], scene="nothing")
    with caplog.at_level(logging.WARNING, logger="util.metrics"):
        agg = aggregate([a, failed, empty])
    assert "nothing" in caplog.text
    assert agg["n_scenes"] == 2 and agg["n_frames"] == 6 and agg["n_failed"] == 1
    assert agg["mean_of_median_pos_m"] == math.inf and agg["weighted_mean_pos_m"] == math.inf
    assert agg["mean_of_median_ori_deg"] == pytest.approx((2.5 + 1.0) / 2)


def test_aggregate_rejects_nothing_and_mixed_thresholds():
    with pytest.raises(ValueError):
        aggregate([])
    with pytest.raises(ValueError):
        aggregate([summarize([], [])])
    with pytest.raises(ValueError, match="recall"):
        aggregate([summarize([0.1], [1.0]), summarize([0.1], [1.0], thresholds=[(1.0, 1.0)])])


def test_format_summaries_table():
    a, b = make_two_scenes()
    failed = summarize([math.nan], [1.0], scene="a_long_scene_name")
    empty = summarize([], [], scene="empty")
    text = format_summaries([a, b, failed, empty], average=aggregate([a, b]))
    lines = text.splitlines()
    assert len(lines) == 2 + 5
    assert len({len(line) for line in lines}) == 1, "fixed width: every line has the same length"
    header = lines[0]
    for column in ("scene", "frames", "failed", "med pos [m]", "med ori [deg]", "0.05m/5deg [%]", "1m/10deg [%]"):
        assert column in header
    row_a = lines[2].split()
    assert row_a[:5] == ["a", "4", "0", "0.250", "2.50"]
    assert lines[4].split()[:4] == ["a_long_scene_name", "1", "1", "inf"]
    assert lines[5].split()[1:] == ["0", "0"] + ["-"] * 8
    average = lines[6].split()
    assert average[0] == "average" and average[3] == f"{(0.25 + 2.0) / 2:.3f}"
    assert average[-1] == "66.7"


def test_summary_is_a_dataclass_with_expected_fields():
    s = PoseSummary("x", 1, 0, 0.1, 1.0, 0.1, 1.0, {"recall_1m_10deg": 1.0})
    assert s.to_dict()["recall_1m_10deg"] == 1.0


def test_predictions_csv_round_trips_float32_outputs():
    """9 significant digits: every float32 prediction is read back exactly, so agreement with another
    implementation can be checked far below 1e-6."""
    import csv
    import io

    from engine.evaluation.evaluate import EvalResult, Predictions, predictions_csv

    rng = np.random.default_rng(0)
    pred = rng.normal(size=(5, 7)).astype(np.float32) * np.float32(123.456)
    gt = rng.normal(size=(5, 7)).astype(np.float32)
    p = Predictions([f"f{i}.png" for i in range(5)], ["chess"] * 5, pred, gt, np.zeros(5, dtype=np.int64))
    rows = list(csv.DictReader(io.StringIO(predictions_csv(EvalResult("hyperpose", "c.pth", [], {}, {"t": p})))))
    cols = [f"{c}_pred" for c in ("t1", "t2", "t3", "q1", "q2", "q3", "q4")]
    back = np.array([[float(r[c]) for c in cols] for r in rows], dtype=np.float32)
    assert np.array_equal(back, pred)
