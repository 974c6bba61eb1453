"""Deep3DFaceRecon's perspective camera, scaled to any image size.

Conventions (pinned by ``tests/test_camera.py::test_convention_*``):

* Model space: x right, y up, z towards the camera, decimetres. The camera sits at ``(0, 0, distance)`` looking down
  -z, so camera depth is ``distance - z`` (positive; smaller is nearer).
* At the reference size 224 the intrinsics are focal 1015 and principal point (112, 112); at size S both scale by
  S / 224.
* Image coordinates are continuous pixels with x to the right and y DOWN; pixel (row i, col j) has its centre at
  ``(j + 0.5, i + 0.5)`` and the image spans ``[0, S] x [0, S]``. Deep3D's image plane has y up: ``y_down = S - y_up``.
* Screen vertices ``(..., V, 3)`` are ``(x, y_down, depth)``, the layout :mod:`reenact.face3d.raster` consumes.
* ``pixel_to_grid`` converts pixel coordinates to ``grid_sample`` coordinates with ``align_corners=False``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

REFERENCE_SIZE = 224
REFERENCE_FOCAL = 1015.0
REFERENCE_CENTER = 112.0
CAMERA_DISTANCE = 10.0


@dataclass(frozen=True)
class PerspectiveCamera:
    """Pinhole camera on the +z axis looking at the origin, square images of ``size`` pixels."""

    size: int = REFERENCE_SIZE
    focal: float = REFERENCE_FOCAL
    center: float = REFERENCE_CENTER
    distance: float = CAMERA_DISTANCE

    @classmethod
    def deep3d(cls, size: int = REFERENCE_SIZE) -> "PerspectiveCamera":
        """Deep3DFaceRecon's camera (focal 1015, centre 112 at 224^2, distance 10), scaled to ``size``."""
        scale = size / REFERENCE_SIZE
        return cls(size=size, focal=REFERENCE_FOCAL * scale, center=REFERENCE_CENTER * scale)

    def scaled(self, size: int) -> "PerspectiveCamera":
        scale = size / self.size
        return PerspectiveCamera(size=size, focal=self.focal * scale, center=self.center * scale,
                                 distance=self.distance)

    def depth(self, verts: torch.Tensor) -> torch.Tensor:
        """Camera depth ``distance - z`` of model-space vertices ``(..., 3)`` -> ``(...)``."""
        return self.distance - verts[..., 2]

    def project(self, verts: torch.Tensor) -> torch.Tensor:
        """Model-space vertices ``(..., 3)`` to screen ``(..., 3)`` = (x, y_down, depth)."""
        depth = self.depth(verts)
        x = self.focal * verts[..., 0] / depth + self.center
        y_up = self.focal * verts[..., 1] / depth + self.center
        return torch.stack([x, self.size - y_up, depth], dim=-1)

    def unproject(self, screen: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`project`: screen ``(..., 3)`` = (x, y_down, depth) to model space ``(..., 3)``."""
        x, y_down, depth = screen.unbind(-1)
        mx = (x - self.center) * depth / self.focal
        my = (self.size - y_down - self.center) * depth / self.focal
        return torch.stack([mx, my, self.distance - depth], dim=-1)


def pixel_grid(height: int, width: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """G(h, w): pixel-centre coordinates ``(H, W, 2)`` with ``[..., 0] = j + 0.5`` (x) and ``[..., 1] = i + 0.5`` (y)."""
    ys = torch.arange(height, device=device, dtype=dtype) + 0.5
    xs = torch.arange(width, device=device, dtype=dtype) + 0.5
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1)


def pixel_to_grid(points: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel coordinates ``(..., 2)`` (x, y) to ``grid_sample`` coordinates in [-1, 1] (``align_corners=False``)."""
    scale = points.new_tensor([2.0 / width, 2.0 / height])
    return points * scale - 1.0
