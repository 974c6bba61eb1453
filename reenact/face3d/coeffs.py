"""The 257-value 3DMM coefficient layout, written once.

Deep3DFaceRecon (Deng et al. 2019) regresses, per image, one float32 vector

    id [0:80] | exp [80:144] | tex [144:224] | angle [224:227] | gamma [227:254] | trans [254:257]

In the paper's notation v = (alpha, beta, delta, gamma, p) with p = (angle, trans):

* ``id``    alpha, identity (shape) PCA weights, 80
* ``exp``   beta, expression PCA weights, 64
* ``tex``   delta, albedo PCA weights, 80
* ``angle`` Euler angles (pitch x, yaw y, roll z) in radians, 3
* ``gamma`` 9 spherical-harmonic bands for each of R, G, B (channel-major: 3 x 9), 27
* ``trans`` translation in the model's units (decimetres), 3

Every function accepts any leading batch dims: ``(..., 257)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

ID = slice(0, 80)
EXP = slice(80, 144)
TEX = slice(144, 224)
ANGLE = slice(224, 227)
GAMMA = slice(227, 254)
TRANS = slice(254, 257)

#: Named slices in layout order.
LAYOUT: dict[str, slice] = {"id": ID, "exp": EXP, "tex": TEX, "angle": ANGLE, "gamma": GAMMA, "trans": TRANS}
NUM_COEFFS = 257
#: Pose p = (angle, trans), 6 values.
POSE_INDICES = list(range(ANGLE.start, ANGLE.stop)) + list(range(TRANS.start, TRANS.stop))


@dataclass(frozen=True)
class Coeffs:
    """A 257-vector split into named parts; every field has shape ``(..., n)``."""

    id: torch.Tensor
    exp: torch.Tensor
    tex: torch.Tensor
    angle: torch.Tensor
    gamma: torch.Tensor
    trans: torch.Tensor

    @classmethod
    def from_vector(cls, v: torch.Tensor) -> "Coeffs":
        """Split ``(..., 257)`` into named parts (views, no copy)."""
        if v.shape[-1] != NUM_COEFFS:
            raise ValueError(f"expected coefficients of shape (..., {NUM_COEFFS}), got {tuple(v.shape)}")
        return cls(**{name: v[..., s] for name, s in LAYOUT.items()})

    def to_vector(self) -> torch.Tensor:
        """Concatenate back to ``(..., 257)``."""
        return torch.cat([getattr(self, name) for name in LAYOUT], dim=-1)

    @property
    def pose(self) -> torch.Tensor:
        """p = (angle, trans), ``(..., 6)``."""
        return torch.cat([self.angle, self.trans], dim=-1)


def check_coeffs(*batches: torch.Tensor, name: str = "coefficients") -> None:
    """Raise a ``ValueError`` naming what was received unless every batch is a floating ``(B, 257)`` tensor and
    all share one shape (the check at the public entry points of the 3D core)."""
    shapes = [tuple(v.shape) for v in batches]
    ok = all(v.ndim == 2 and v.shape[1] == NUM_COEFFS and v.is_floating_point() for v in batches)
    if not ok or len(set(shapes)) > 1:
        got = " and ".join(f"{v.dtype} {shape}" for v, shape in zip(batches, shapes))
        raise ValueError(f"expected {name} as {len(batches)} floating (B, {NUM_COEFFS}) tensor(s) of one shape, "
                         f"got {got}")


def target_coeffs(source: torch.Tensor, driving: torch.Tensor) -> torch.Tensor:
    """v_t = (alpha_s, beta_d, delta_s, gamma_s, p_d): source identity, texture and light; driving expression and pose.

    Args:
        source, driving: ``(..., 257)`` coefficient vectors (broadcastable).
    Returns:
        ``(..., 257)`` target coefficients.
    """
    source, driving = torch.broadcast_tensors(source, driving)
    target = source.clone()
    for part in (EXP, ANGLE, TRANS):
        target[..., part] = driving[..., part]
    return target


def motion_coeffs(v: torch.Tensor) -> torch.Tensor:
    """The driving subset v~_d = (beta_d, p_d) that the completion network reads: ``(..., 70)``."""
    return torch.cat([v[..., EXP], v[..., ANGLE], v[..., TRANS]], dim=-1)
