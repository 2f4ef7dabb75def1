"""Pose math: known answers, then hypothesis properties, for numpy and torch inputs alike."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from util.pose import (
    axis_angle_to_quat,
    canonical_quat,
    invert_rigid,
    normalize_quat,
    orientation_error_deg,
    pose_errors,
    pose_to_matrix,
    position_error,
    quat_multiply,
    quat_to_rotmat,
    rotmat_to_quat,
)

SQRT_HALF = math.sqrt(0.5)
# 90 deg about z, (w, x, y, z), and its matrix: x -> y, y -> -x.
Q_Z90 = np.array([SQRT_HALF, 0.0, 0.0, SQRT_HALF])
R_Z90 = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
# 120 deg about (1, 1, 1)/sqrt(3) permutes the axes cyclically: x -> y -> z -> x.
Q_XYZ120 = np.array([0.5, 0.5, 0.5, 0.5])
R_XYZ120 = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])

BACKENDS = ["numpy", "torch"]


def as_backend(x, backend):
    return torch.as_tensor(np.asarray(x, dtype=np.float64)) if backend == "torch" else np.asarray(x, np.float64)


def to_np(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


# ------------------------------------------------------------------ known answers


@pytest.mark.parametrize("backend", BACKENDS)
def test_identity_rotation_has_zero_error(backend):
    q = as_backend([1.0, 0.0, 0.0, 0.0], backend)
    assert float(orientation_error_deg(q, q)) == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_ninety_degrees_about_z(backend):
    identity = as_backend([1.0, 0.0, 0.0, 0.0], backend)
    assert float(orientation_error_deg(as_backend(Q_Z90, backend), identity)) == pytest.approx(90.0, abs=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_q_and_minus_q_are_the_same_rotation(backend):
    q = as_backend([0.3, -0.5, 0.1, 0.8], backend)
    assert float(orientation_error_deg(q, -q)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_error_ignores_quaternion_scale(backend):
    q = as_backend([0.3, -0.5, 0.1, 0.8], backend)
    assert float(orientation_error_deg(5.0 * q, q)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_self_error_is_tiny(backend):
    """acos near 1 is ill-conditioned; the error must not read tenths of a degree for equal inputs."""
    q_N4 = np.random.default_rng(0).normal(size=(500, 4)).astype(np.float32)
    q = torch.from_numpy(q_N4) if backend == "torch" else q_N4
    err = orientation_error_deg(q, q)
    assert err.dtype == (torch.float32 if backend == "torch" else np.float32)
    assert float(to_np(err).max()) < 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("q, R", [(Q_Z90, R_Z90), (Q_XYZ120, R_XYZ120), ([1.0, 0, 0, 0], np.eye(3))])
def test_known_quaternion_matrix_pairs(backend, q, R):
    np.testing.assert_allclose(to_np(quat_to_rotmat(as_backend(q, backend))), R, atol=1e-12)
    np.testing.assert_allclose(to_np(rotmat_to_quat(as_backend(R, backend))), q, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rotmat_to_quat_returns_non_negative_w(backend):
    # 270 deg about z is -90 deg about z; of its two quaternions the canonical one has w > 0.
    R_z270 = R_Z90.T
    q = to_np(rotmat_to_quat(as_backend(R_z270, backend)))
    assert q[0] >= 0
    np.testing.assert_allclose(q, [SQRT_HALF, 0, 0, -SQRT_HALF], atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cam_to_world_inverse_of_known_matrix(backend):
    # Camera centre c = (1, 2, 3), rotated 90 deg about z: T_wc = [[R^T, -R^T c], [0, 1]].
    T_cw = np.eye(4)
    T_cw[:3, :3] = R_Z90
    T_cw[:3, 3] = [1.0, 2.0, 3.0]
    expected_T_wc = np.array(
        [[0.0, 1.0, 0.0, -2.0], [-1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, -3.0], [0.0, 0.0, 0.0, 1.0]]
    )
    T_wc = invert_rigid(as_backend(T_cw, backend))
    np.testing.assert_allclose(to_np(T_wc), expected_T_wc, atol=1e-12)
    np.testing.assert_allclose(to_np(invert_rigid(T_wc)), T_cw, atol=1e-12)
    # The camera centre maps to the camera origin.
    np.testing.assert_allclose(expected_T_wc @ np.array([1.0, 2.0, 3.0, 1.0]), [0, 0, 0, 1], atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pose_to_matrix_layout(backend):
    T = to_np(pose_to_matrix(as_backend([1.0, 2.0, 3.0], backend), as_backend(Q_Z90, backend)))
    np.testing.assert_allclose(T[:3, :3], R_Z90, atol=1e-12)
    np.testing.assert_allclose(T[:3, 3], [1, 2, 3])
    np.testing.assert_allclose(T[3], [0, 0, 0, 1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_pose_errors_known_answer(backend):
    pose_gt_N7 = as_backend([[0, 0, 0, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0]], backend)
    pose_pred_N7 = as_backend([[3, 4, 0, *Q_Z90], [1, 1, 1, -2, 0, 0, 0]], backend)
    pos_N, ori_N = pose_errors(pose_pred_N7, pose_gt_N7)
    np.testing.assert_allclose(to_np(pos_N), [5.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(to_np(ori_N), [90.0, 0.0], atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_degenerate_prediction_gives_nan_not_a_number(backend):
    zero = as_backend([0.0, 0.0, 0.0, 0.0], backend)
    nan = as_backend([math.nan, 0.0, 0.0, 1.0], backend)
    identity = as_backend([1.0, 0.0, 0.0, 0.0], backend)
    assert math.isnan(float(orientation_error_deg(zero, identity)))
    assert math.isnan(float(orientation_error_deg(nan, identity)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_axis_angle_scalar_angle_broadcasts_over_axes(backend):
    axes = as_backend([[0, 0, 2.0], [0, 0, 1.0]], backend)
    q = to_np(axis_angle_to_quat(axes, math.pi / 2))
    np.testing.assert_allclose(q, np.stack([Q_Z90, Q_Z90]), atol=1e-12)


def test_quat_multiply_composes_rotations():
    # Two 90 deg turns about z make 180 deg about z.
    q = quat_multiply(Q_Z90, Q_Z90)
    np.testing.assert_allclose(q, [0, 0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(quat_to_rotmat(q), R_Z90 @ R_Z90, atol=1e-12)


def test_torch_keeps_dtype_and_gradients():
    q = torch.tensor([[0.9, 0.1, 0.2, 0.3]], dtype=torch.float32, requires_grad=True)
    gt = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    err = orientation_error_deg(q, gt)
    assert err.dtype == torch.float32 and err.shape == (1,)
    err.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    assert quat_to_rotmat(q).dtype == torch.float32
    assert position_error(torch.zeros(2, 3), torch.ones(2, 3)).shape == (2,)


# ------------------------------------------------------------------ properties

# 60 examples under the full hypothesis profile (tests/conftest.py), fewer under the fast one.
PROPERTY_SETTINGS = settings(max_examples=max(10, settings().max_examples * 2 // 5), deadline=None)


def quaternions(batch_shape=(5,)):
    """Batches of quaternions away from zero norm (unnormalised, either sign of w)."""
    return hnp.arrays(np.float64, batch_shape + (4,), elements=st.floats(-1.0, 1.0)).filter(
        lambda q: np.all(np.linalg.norm(q, axis=-1) > 0.1)
    )


batch_shapes = st.sampled_from([(), (1,), (6,), (2, 3)])
backends = st.sampled_from(BACKENDS)


@st.composite
def quats_of_any_batch(draw):
    return draw(quaternions(draw(batch_shapes)))


@PROPERTY_SETTINGS
@given(q=quats_of_any_batch(), backend=backends)
def test_quat_rotmat_round_trip_up_to_sign(q, backend):
    R = quat_to_rotmat(as_backend(q, backend))
    assert tuple(R.shape) == q.shape[:-1] + (3, 3)
    back = to_np(rotmat_to_quat(R))
    unit = q / np.linalg.norm(q, axis=-1, keepdims=True)
    # Equal up to sign: |<back, unit>| = 1.
    np.testing.assert_allclose(np.abs(np.sum(back * unit, axis=-1)), 1.0, atol=1e-9)
    assert np.all(back[..., 0] >= 0)


@PROPERTY_SETTINGS
@given(q=quats_of_any_batch(), backend=backends)
def test_rotmat_is_orthonormal_with_det_one(q, backend):
    R = to_np(quat_to_rotmat(as_backend(q, backend)))
    eye = np.broadcast_to(np.eye(3), R.shape)
    np.testing.assert_allclose(R @ np.swapaxes(R, -1, -2), eye, atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-9)


@PROPERTY_SETTINGS
@given(q=quats_of_any_batch(), backend=backends)
def test_error_of_q_against_minus_q_is_zero(q, backend):
    qb = as_backend(q, backend)
    err = to_np(orientation_error_deg(qb, -qb))
    assert err.shape == q.shape[:-1]
    np.testing.assert_allclose(err, 0.0, atol=1e-5)
    # canonical_quat picks the w >= 0 representative, which is unique unless w == 0 (a 180 deg turn).
    canon_neg, canon_pos = to_np(canonical_quat(-qb)), to_np(canonical_quat(qb))
    assert np.all(canon_pos[..., 0] >= 0)
    has_w = np.abs(q[..., 0]) > 1e-9
    np.testing.assert_allclose(canon_neg[has_w], canon_pos[has_w], atol=1e-12)


@PROPERTY_SETTINGS
@given(
    q=quaternions((4,)),
    axis=hnp.arrays(np.float64, (4, 3), elements=st.floats(-1.0, 1.0)).filter(
        lambda a: np.all(np.linalg.norm(a, axis=-1) > 0.1)
    ),
    angle_deg=hnp.arrays(np.float64, (4,), elements=st.floats(0.0, 180.0)),
    backend=backends,
)
def test_rotation_by_known_angle_about_random_axis(q, axis, angle_deg, backend):
    dq = axis_angle_to_quat(as_backend(axis, backend), as_backend(np.radians(angle_deg), backend))
    qb = normalize_quat(as_backend(q, backend))
    # Rotating either side of q by the same angle changes the orientation by exactly that angle.
    for rotated in (quat_multiply(dq, qb), quat_multiply(qb, dq)):
        np.testing.assert_allclose(to_np(orientation_error_deg(rotated, qb)), angle_deg, atol=1e-5)
        # ... and the error is symmetric.
        np.testing.assert_allclose(to_np(orientation_error_deg(qb, rotated)), angle_deg, atol=1e-5)


@PROPERTY_SETTINGS
@given(q=quats_of_any_batch(), t=hnp.arrays(np.float64, 3, elements=st.floats(-100.0, 100.0)), backend=backends)
def test_invert_rigid_twice_is_identity(q, t, backend):
    t_b3 = np.broadcast_to(t, q.shape[:-1] + (3,)).copy()
    T = pose_to_matrix(as_backend(t_b3, backend), as_backend(q, backend))
    T_inv = invert_rigid(T)
    np.testing.assert_allclose(to_np(invert_rigid(T_inv)), to_np(T), atol=1e-9)
    eye = np.broadcast_to(np.eye(4), to_np(T).shape)
    np.testing.assert_allclose(to_np(T_inv) @ to_np(T), eye, atol=1e-9)
    # The inverse maps the camera centre (world) to the camera origin.
    centre_h = np.concatenate([t_b3, np.ones(t_b3.shape[:-1] + (1,))], axis=-1)[..., None]
    np.testing.assert_allclose((to_np(T_inv) @ centre_h)[..., :3, 0], 0.0, atol=1e-9)


@PROPERTY_SETTINGS
@given(q=quaternions((6,)), backend=backends)
def test_numpy_and_torch_agree(q, backend):
    other = "torch" if backend == "numpy" else "numpy"
    gt = np.roll(q, 1, axis=0)
    a = to_np(orientation_error_deg(as_backend(q, backend), as_backend(gt, backend)))
    b = to_np(orientation_error_deg(as_backend(q, other), as_backend(gt, other)))
    np.testing.assert_allclose(a, b, atol=1e-9)
    np.testing.assert_allclose(
        to_np(quat_to_rotmat(as_backend(q, backend))), to_np(quat_to_rotmat(as_backend(q, other))), atol=1e-12
    )
