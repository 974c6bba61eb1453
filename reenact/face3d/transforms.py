"""Rotations, written once.

Convention (Deep3DFaceRecon ``compute_rotation``): ``angles = (x, y, z)`` are pitch, yaw and roll in radians about
the model's x (right), y (up) and z (towards the camera) axes, and the rotation matrix is ``R = Rz @ Ry @ Rx``.
Vertices are row vectors, so posing is ``V @ R.T + t`` (paper Eq. 1). A positive yaw turns the face's +x side away
from the camera. All functions accept any leading batch dims.
"""
from __future__ import annotations

import torch


def _axis_rotations(angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y, z = angles.unbind(-1)
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    cx, sx, cy, sy, cz, sz = x.cos(), x.sin(), y.cos(), y.sin(), z.cos(), z.sin()
    rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], -1)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1)
    rz = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], -1)
    shape = angles.shape[:-1] + (3, 3)
    return rx.reshape(shape), ry.reshape(shape), rz.reshape(shape)


def euler_to_matrix(angles: torch.Tensor) -> torch.Tensor:
    """Euler angles ``(..., 3)`` (pitch, yaw, roll; radians) to rotation matrices ``(..., 3, 3)``, R = Rz Ry Rx."""
    if angles.shape[-1] != 3:
        raise ValueError(f"expected angles of shape (..., 3), got {tuple(angles.shape)}")
    rx, ry, rz = _axis_rotations(angles)
    return rz @ ry @ rx


def matrix_to_euler(matrix: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`euler_to_matrix` for yaw in (-pi/2, pi/2): ``(..., 3, 3)`` to ``(..., 3)``."""
    if matrix.shape[-2:] != (3, 3):
        raise ValueError(f"expected matrices of shape (..., 3, 3), got {tuple(matrix.shape)}")
    # R = Rz Ry Rx: R[2,0] = -sin y, R[2,1] = cos y sin x, R[2,2] = cos y cos x, R[1,0] = sin z cos y, R[0,0] = cos z cos y
    yaw = torch.asin((-matrix[..., 2, 0]).clamp(-1.0, 1.0))
    pitch = torch.atan2(matrix[..., 2, 1], matrix[..., 2, 2])
    roll = torch.atan2(matrix[..., 1, 0], matrix[..., 0, 0])
    return torch.stack([pitch, yaw, roll], -1)


def rigid_transform(verts: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """Pose row-vector vertices: ``verts (..., V, 3) @ R.T + t``, with R ``(..., 3, 3)`` and t ``(..., 3)``."""
    return verts @ rotation.transpose(-1, -2) + translation.unsqueeze(-2)


def rotation_angle_between(r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """Geodesic angle (radians) between rotation matrices ``(..., 3, 3)``."""
    rel = r1.transpose(-1, -2) @ r2
    cos = ((rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0) / 2.0).clamp(-1.0, 1.0)
    return torch.acos(cos)
