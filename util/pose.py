"""Pose math, written once. Pure functions over numpy arrays or torch tensors, batched over leading dims.

Conventions (the label CSVs, the models and the metrics all follow them):

- A pose is a 7-vector ``[t1, t2, t3, q1, q2, q3, q4]`` = ``[t_3, q_4]``.
- ``t`` is the camera centre in the world frame, in metres.
- ``q`` is a unit quaternion, scalar first: ``(w, x, y, z)``. ``q`` and ``-q`` are the same rotation;
  canonical quaternions returned here have ``w >= 0``.
- ``quat_to_rotmat(q)`` gives the rotation matrix ``R`` that ``q`` represents (active, right-handed):
  ``v' = R @ v``.
- 7Scenes labels store ``q`` of the camera-to-world rotation ``R_cw`` (camera axes expressed in world).
  Cambridge labels store the W P Q R of the raw files as given, which is the world-to-camera rotation.
  The metrics compare a prediction with its label in the label's own convention, so they need no frame.
- A 4x4 camera-to-world matrix ``T_cw = [[R_cw, c], [0, 1]]`` maps camera coordinates to world
  coordinates; its inverse ``T_wc = [[R_cw^T, -R_cw^T c], [0, 1]]`` is world-to-camera.
"""

from __future__ import annotations

from typing import Union

import numpy as np
import torch

Array = Union[np.ndarray, torch.Tensor]


def _is_torch(x: Array) -> bool:
    return isinstance(x, torch.Tensor)


def _stack(parts: list, axis: int, like: Array) -> Array:
    return torch.stack(parts, dim=axis) if _is_torch(like) else np.stack(parts, axis=axis)


def _norm(x: Array) -> Array:
    """Euclidean norm over the last axis."""
    return torch.linalg.vector_norm(x, dim=-1) if _is_torch(x) else np.linalg.norm(x, axis=-1)


def normalize_quat(q_N4: Array, eps: float = 1e-12) -> Array:
    """Scale quaternions to unit norm. A zero quaternion has no direction and becomes NaN."""
    norm = _norm(q_N4)[..., None]
    if _is_torch(q_N4):
        norm = torch.where(norm > eps, norm, torch.full_like(norm, float("nan")))
    else:
        norm = np.where(norm > eps, norm, np.nan)
    return q_N4 / norm


def canonical_quat(q_N4: Array) -> Array:
    """Unit quaternion with a non-negative scalar part (picks one of q and -q)."""
    q = normalize_quat(q_N4)
    sign = torch.where(q[..., :1] < 0, -1.0, 1.0).to(q.dtype) if _is_torch(q) else np.where(q[..., :1] < 0, -1.0, 1.0)
    return q * sign


def quat_to_rotmat(q_N4: Array) -> Array:
    """Rotation matrices (..., 3, 3) of quaternions (..., 4) in (w, x, y, z) order; q is normalised first."""
    q = normalize_quat(q_N4)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return _stack([_stack(r, -1, q) for r in rows], -2, q)


def rotmat_to_quat(R_N33: Array) -> Array:
    """Quaternions (..., 4), (w, x, y, z) with w >= 0, of rotation matrices (..., 3, 3).

    Uses the numerically stable branch per matrix (Shepperd's method): the largest of w, x, y, z is
    recovered from the diagonal, the others from the off-diagonal terms.
    """
    torch_in = _is_torch(R_N33)
    R = R_N33.detach().cpu().double().numpy() if torch_in else np.asarray(R_N33, dtype=np.float64)
    m = R.reshape(-1, 3, 3)
    tr = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    cands = np.stack([tr, m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]], axis=1)
    best = np.argmax(cands, axis=1)
    q = np.empty((m.shape[0], 4))
    for k in range(4):
        sel = best == k
        if not sel.any():
            continue
        s = m[sel]
        if k == 0:
            r = np.sqrt(np.maximum(1.0 + s[:, 0, 0] + s[:, 1, 1] + s[:, 2, 2], 0.0)) * 2  # r = 4w
            q[sel] = np.stack(
                [0.25 * r, (s[:, 2, 1] - s[:, 1, 2]) / r, (s[:, 0, 2] - s[:, 2, 0]) / r, (s[:, 1, 0] - s[:, 0, 1]) / r],
                axis=1,
            )
        elif k == 1:
            r = np.sqrt(np.maximum(1.0 + s[:, 0, 0] - s[:, 1, 1] - s[:, 2, 2], 0.0)) * 2  # r = 4x
            q[sel] = np.stack(
                [(s[:, 2, 1] - s[:, 1, 2]) / r, 0.25 * r, (s[:, 0, 1] + s[:, 1, 0]) / r, (s[:, 0, 2] + s[:, 2, 0]) / r],
                axis=1,
            )
        elif k == 2:
            r = np.sqrt(np.maximum(1.0 - s[:, 0, 0] + s[:, 1, 1] - s[:, 2, 2], 0.0)) * 2  # r = 4y
            q[sel] = np.stack(
                [(s[:, 0, 2] - s[:, 2, 0]) / r, (s[:, 0, 1] + s[:, 1, 0]) / r, 0.25 * r, (s[:, 1, 2] + s[:, 2, 1]) / r],
                axis=1,
            )
        else:
            r = np.sqrt(np.maximum(1.0 - s[:, 0, 0] - s[:, 1, 1] + s[:, 2, 2], 0.0)) * 2  # r = 4z
            q[sel] = np.stack(
                [(s[:, 1, 0] - s[:, 0, 1]) / r, (s[:, 0, 2] + s[:, 2, 0]) / r, (s[:, 1, 2] + s[:, 2, 1]) / r, 0.25 * r],
                axis=1,
            )
    q = canonical_quat(q).reshape(R.shape[:-2] + (4,))
    if torch_in:
        return torch.as_tensor(
            q, dtype=R_N33.dtype if R_N33.is_floating_point() else torch.float64, device=R_N33.device
        )
    return q


def quat_multiply(a_N4: Array, b_N4: Array) -> Array:
    """Hamilton product a * b (the rotation b followed by a)."""
    aw, ax, ay, az = a_N4[..., 0], a_N4[..., 1], a_N4[..., 2], a_N4[..., 3]
    bw, bx, by, bz = b_N4[..., 0], b_N4[..., 1], b_N4[..., 2], b_N4[..., 3]
    return _stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        -1,
        a_N4,
    )


def axis_angle_to_quat(axis_N3: Array, angle_rad: Array | float) -> Array:
    """Unit quaternion of a rotation by ``angle_rad`` about ``axis_N3`` (normalised first).

    The angle broadcasts against the axes' leading dims, so one angle may serve a batch of axes.
    """
    axis = axis_N3 / _norm(axis_N3)[..., None]
    if _is_torch(axis):
        half = torch.as_tensor(angle_rad, dtype=axis.dtype, device=axis.device)[..., None] * 0.5
        w, xyz = torch.broadcast_tensors(torch.cos(half), axis * torch.sin(half))
        return torch.cat([w[..., :1], xyz], dim=-1)
    half = np.asarray(angle_rad)[..., None] * 0.5
    w, xyz = np.broadcast_arrays(np.cos(half), axis * np.sin(half))
    return np.concatenate([w[..., :1], xyz], axis=-1)


def pose_to_matrix(t_N3: Array, q_N4: Array) -> Array:
    """4x4 rigid transforms [[R(q), t], [0, 1]] from translations and quaternions."""
    R = quat_to_rotmat(q_N4)
    if _is_torch(R):
        T = torch.zeros(R.shape[:-2] + (4, 4), dtype=R.dtype, device=R.device)
    else:
        T = np.zeros(R.shape[:-2] + (4, 4), dtype=R.dtype)
    T[..., :3, :3] = R
    T[..., :3, 3] = t_N3
    T[..., 3, 3] = 1.0
    return T


def invert_rigid(T_N44: Array) -> Array:
    """Inverse of rigid 4x4 transforms: camera-to-world <-> world-to-camera."""
    R = T_N44[..., :3, :3]
    t = T_N44[..., :3, 3]
    Rt = R.transpose(-1, -2) if _is_torch(R) else np.swapaxes(R, -1, -2)
    T_inv = T_N44.clone() if _is_torch(T_N44) else T_N44.copy()
    T_inv[..., :3, :3] = Rt
    T_inv[..., :3, 3] = -(Rt @ t[..., None])[..., 0]
    T_inv[..., 3, :3] = 0.0
    T_inv[..., 3, 3] = 1.0
    return T_inv


def position_error(t_pred_N3: Array, t_gt_N3: Array) -> Array:
    """Euclidean distance between predicted and ground-truth positions, in metres."""
    return _norm(t_pred_N3 - t_gt_N3)


def orientation_error_deg(q_pred_N4: Array, q_gt_N4: Array) -> Array:
    """Angle of the relative rotation in degrees: 2 acos(|<q_pred, q_gt>|) of the normalised quaternions.

    Symmetric in q / -q, and the dot product is clamped to [0, 1] so rounding never yields NaN.
    A non-finite or zero prediction gives NaN, which the metrics count as a failure.
    The arithmetic runs in float64: acos is ill-conditioned near 1, and in float32 a quaternion compared
    with itself would read up to ~0.08 deg instead of 0. The result has the inputs' floating dtype.
    """
    if _is_torch(q_pred_N4) or _is_torch(q_gt_N4):
        q_pred, q_gt = torch.as_tensor(q_pred_N4), torch.as_tensor(q_gt_N4)
        out_dtype = torch.promote_types(q_pred.dtype, q_gt.dtype)
        out_dtype = out_dtype if out_dtype.is_floating_point else torch.float64
        dot = (normalize_quat(q_pred.double()) * normalize_quat(q_gt.double())).sum(-1)
        return torch.rad2deg(2.0 * torch.acos(torch.clamp(dot.abs(), max=1.0))).to(out_dtype)
    q_pred, q_gt = np.asarray(q_pred_N4), np.asarray(q_gt_N4)
    out_dtype = np.result_type(q_pred, q_gt)
    out_dtype = out_dtype if np.issubdtype(out_dtype, np.floating) else np.float64
    dot = (normalize_quat(q_pred.astype(np.float64)) * normalize_quat(q_gt.astype(np.float64))).sum(-1)
    return np.degrees(2.0 * np.arccos(np.minimum(np.abs(dot), 1.0))).astype(out_dtype)


def pose_errors(pose_pred_N7: Array, pose_gt_N7: Array) -> tuple[Array, Array]:
    """(position error in m, orientation error in deg) of 7-vector poses ``[t, q]``."""
    return (
        position_error(pose_pred_N7[..., :3], pose_gt_N7[..., :3]),
        orientation_error_deg(pose_pred_N7[..., 3:], pose_gt_N7[..., 3:]),
    )


def _as_float64(x: Array) -> np.ndarray:
    """``x`` as a float64 numpy array (a tensor is copied to the CPU)."""
    return x.detach().cpu().double().numpy() if _is_torch(x) else np.asarray(x, dtype=np.float64)


def _like(result: np.ndarray, x: Array) -> Array:
    """``result`` as the type of ``x``: its floating dtype (float64 for integers) and, for a tensor, its device."""
    if _is_torch(x):
        dtype = x.dtype if x.is_floating_point() else torch.float64
        return torch.as_tensor(result, device=x.device).to(dtype)
    dtype = np.asarray(x).dtype
    return result.astype(dtype if np.issubdtype(dtype, np.floating) else np.float64)


def _weights(weights_N: Array | None, shape: tuple) -> np.ndarray:
    """Float64 weights of shape ``(..., N)`` (ones by default); ValueError unless finite, >= 0 and not all zero."""
    if weights_N is None:
        return np.ones(shape)
    w = _as_float64(weights_N)
    if w.shape[-1:] != shape[-1:]:
        raise ValueError(f"weights_N has shape {w.shape}, expected one weight per pose ({shape[-1]})")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or np.any(w.sum(-1) <= 0):
        raise ValueError("weights must be finite, >= 0 and not all zero")
    return w


def average_quaternions(q_N4: Array, weights_N: Array | None = None) -> Array:
    """The (weighted) average rotation of quaternions ``(..., N, 4)``: a unit quaternion ``(..., 4)``, w >= 0.

    The eigenvector of the largest eigenvalue of ``sum_i w_i q_i q_i^T`` (Markley et al., "Averaging
    quaternions", J. Guidance, Control, and Dynamics 2007): the rotation closest to all of them in the chordal
    sense, blind to the q / -q sign, so q and -q average to the canonical one of them. Inputs are normalised
    first; weights default to 1. Computed in float64; the result has the input's floating dtype.
    """
    q = normalize_quat(_as_float64(q_N4))
    if q.shape[-2] == 0:
        raise ValueError("average_quaternions needs at least one quaternion")
    w = _weights(weights_N, q.shape[:-1])
    M_44 = np.einsum("...n,...ni,...nj->...ij", w, q, q)
    mean_4 = np.linalg.eigh(M_44)[1][..., -1]  # eigenvalues ascend: the last eigenvector is the largest's
    return _like(canonical_quat(mean_4), q_N4)


def mean_pose(poses_N7: Array, weights_N: Array | None = None) -> Array:
    """The (weighted) mean of poses ``(..., N, 7)``: ``(..., 7)``, the weighted mean position and the
    :func:`average_quaternions` orientation (w >= 0). Weights default to 1."""
    poses = _as_float64(poses_N7)
    if poses.shape[-2] == 0:
        raise ValueError("mean_pose needs at least one pose")
    w = _weights(weights_N, poses.shape[:-1])
    t_3 = (w[..., None] * poses[..., :3]).sum(-2) / w.sum(-1)[..., None]
    q_4 = _as_float64(average_quaternions(poses[..., 3:], w))
    return _like(np.concatenate([t_3, q_4], axis=-1), poses_N7)
