"""Image inputs of the face-analysis APIs and the frame camera every coefficient estimator uses.

Conventions (stated once for :mod:`reenact.faces`):

* Images in: RGB float ``(B, 3, H, W)`` tensors in [0, 1] (the suite's image contract), or a sequence of
  ``(3, H, W)`` tensors when the sizes differ. Detectors and dlib work on uint8, so images are rounded to uint8 with
  :func:`reenact.data.codec.tensor_to_uint8` (exact for images that came from uint8 through the codec).
* Points and boxes out: continuous pixels, x right, y down, pixel ``(row i, col j)`` centred at ``(j + 0.5, i + 0.5)``
  (:mod:`reenact.face3d.camera`). A face that is not found gives a row of NaN.
* Coefficients out: ``(B, 257)`` float32 in the layout of :mod:`reenact.face3d.coeffs`, expressed in the frame's
  Deep3D camera (:func:`frame_camera`).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from reenact.data.codec import tensor_to_uint8, uint8_to_tensor
from reenact.face3d.camera import PerspectiveCamera

ImageBatch = torch.Tensor | Sequence[torch.Tensor]


def check_image(image: torch.Tensor, where: str = "image") -> torch.Tensor:
    """One RGB float image ``(3, H, W)`` in [0, 1]; ValueError naming what was received otherwise."""
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"{where}: expected a float tensor (3, H, W) in [0, 1], got {type(image).__name__}")
    if image.ndim != 3 or image.shape[0] != 3 or not image.is_floating_point():
        raise ValueError(f"{where}: expected an RGB float tensor (3, H, W) in [0, 1], got {image.dtype} "
                         f"{tuple(image.shape)}")
    if image.numel() and (float(image.min()) < -1e-6 or float(image.max()) > 1 + 1e-6):
        raise ValueError(f"{where}: values must lie in [0, 1], got [{float(image.min()):.3g}, {float(image.max()):.3g}]")
    return image


def image_list(images: ImageBatch) -> list[torch.Tensor]:
    """``(B, 3, H, W)`` or a sequence of ``(3, H, W)`` -> a list of checked ``(3, H, W)`` tensors."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(f"expected images (B, 3, H, W) or a list of (3, H, W), got shape {tuple(images.shape)}")
        images = list(images)
    return [check_image(im, f"image {i}") for i, im in enumerate(images)]


def to_uint8_list(images: ImageBatch) -> list[np.ndarray]:
    """Images -> RGB uint8 ``(H, W, 3)`` arrays (what MTCNN and dlib take)."""
    return [np.ascontiguousarray(tensor_to_uint8(im)) for im in image_list(images)]


def from_uint8(images: Sequence[np.ndarray]) -> list[torch.Tensor]:
    """RGB uint8 ``(H, W, 3)`` arrays -> float ``(3, H, W)`` tensors (the adapters' way in)."""
    return [uint8_to_tensor(np.asarray(im)) for im in images]


def frame_camera(width: int, height: int) -> PerspectiveCamera:
    """Deep3D's camera of a ``width`` x ``height`` frame: ``PerspectiveCamera.deep3d(S)`` for square S x S frames,
    else focal ``1015 min(W, H) / 224`` at the frame centre. Every estimator expresses coefficients in it."""
    if width == height:
        return PerspectiveCamera.deep3d(int(width))
    reference = PerspectiveCamera.deep3d(min(width, height))
    return PerspectiveCamera(width=width, height=height, focal=reference.focal, cx=width / 2, cy=height / 2)


def nan_rows(count: int, *shape: int) -> torch.Tensor:
    """A float64 tensor ``(count, *shape)`` of NaN (faces not found)."""
    return torch.full((count, *shape), float("nan"), dtype=torch.float64)
