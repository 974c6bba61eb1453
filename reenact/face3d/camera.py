"""Deep3DFaceRecon's perspective camera, scaled to any image size, and re-framing into crops.

Conventions (pinned by ``tests/test_face3d_core.py::test_convention_*``):

* Model space: x right, y up, z towards the camera, decimetres. The camera sits at ``(0, 0, distance)`` looking down
  -z, so camera depth is ``distance - z`` (positive; smaller is nearer).
* Image coordinates are continuous pixels with x to the right and y DOWN; pixel (row i, col j) has its centre at
  ``(j + 0.5, i + 0.5)`` and the image spans ``[0, W] x [0, H]``. A point projects to
  ``x = cx + f X / depth``, ``y = cy - f Y / depth``.
* Deep3D's camera at the reference size 224: focal 1015, principal point 112 (its image plane has y up, so
  ``y_down = 224 - y_up``, which puts the principal point at (112, 112) in our y-down frame too). At size S the
  focal and principal point scale by S / 224. Coefficients in the suite are expressed for the image they were
  extracted from (a 256^2 crop for VoxCeleb) with ``PerspectiveCamera.deep3d(size)``.
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
    """Pinhole camera on the +z axis looking down -z; images of ``width`` x ``height`` pixels."""

    width: int = REFERENCE_SIZE
    height: int = REFERENCE_SIZE
    focal: float = REFERENCE_FOCAL
    cx: float = REFERENCE_CENTER
    cy: float = REFERENCE_CENTER
    distance: float = CAMERA_DISTANCE

    @classmethod
    def deep3d(cls, size: int = REFERENCE_SIZE) -> "PerspectiveCamera":
        """Deep3DFaceRecon's camera (focal 1015, centre 112 at 224^2, distance 10), scaled to ``size`` x ``size``."""
        scale = size / REFERENCE_SIZE
        return cls(width=size, height=size, focal=REFERENCE_FOCAL * scale, cx=REFERENCE_CENTER * scale,
                   cy=REFERENCE_CENTER * scale)

    @property
    def size(self) -> int:
        """Side of a square image (raises for non-square cameras)."""
        if self.width != self.height:
            raise ValueError(f"camera is {self.width}x{self.height}, not square")
        return self.width

    def crop(self, left: float, top: float, side: float, size: int) -> "PerspectiveCamera":
        """The camera of the square crop ``[left, left+side] x [top, top+side]`` resized to ``size``^2."""
        s = size / side
        return PerspectiveCamera(width=size, height=size, focal=self.focal * s, cx=(self.cx - left) * s,
                                 cy=(self.cy - top) * s, distance=self.distance)

    def depth(self, verts: torch.Tensor) -> torch.Tensor:
        """Camera depth ``distance - z`` of model-space points ``(..., 3)`` -> ``(...)``."""
        return self.distance - verts[..., 2]

    def project(self, verts: torch.Tensor) -> torch.Tensor:
        """Model-space points ``(..., 3)`` to screen ``(..., 3)`` = (x, y_down, depth)."""
        depth = self.depth(verts)
        x = self.cx + self.focal * verts[..., 0] / depth
        y = self.cy - self.focal * verts[..., 1] / depth
        return torch.stack([x, y, depth], dim=-1)

    def unproject(self, screen: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`project`: screen ``(..., 3)`` = (x, y_down, depth) to model space ``(..., 3)``."""
        x, y, depth = screen.unbind(-1)
        return torch.stack([(x - self.cx) * depth / self.focal, (self.cy - y) * depth / self.focal,
                            self.distance - depth], dim=-1)


def reframe_translation(trans: torch.Tensor, src: PerspectiveCamera, dst: PerspectiveCamera) -> torch.Tensor:
    """Move a head seen by ``src`` so that ``dst`` sees its origin at the same pixel with the same scale.

    ``trans (..., 3)`` is the head translation (its model origin) under ``src``. The returned translation makes
    ``dst.project`` of the head origin land where ``src.project`` put it, at a depth scaled by
    ``dst.focal / src.focal`` so that the projected size matches. Exact for the origin; for other points it is
    the weak-perspective approximation (error ~ head depth extent / depth, well under a pixel at depth ~ 10).
    Used to express coefficients of a full frame in a crop's Deep3D camera (``src = frame_cam.crop(...)``).
    """
    screen = src.project(trans)                                     # ... x 3: where the head origin lands
    depth = screen[..., 2] * dst.focal / src.focal
    return dst.unproject(torch.stack([screen[..., 0], screen[..., 1], depth], -1))


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
