"""Five facial landmarks with MTCNN (facenet-pytorch 2.5.3, whose P/R/O-Net weights ship in the wheel).

Conventions:
* Points are image pixels ``(x, y)``, x right, y down, integer values at pixel centres (MTCNN's own output), in the
  order left eye, right eye, nose tip, left mouth corner, right mouth corner ("left" = image left), the order
  :mod:`reenact.faces.align` and Deep3DFaceRecon's ``detections/*.txt`` use.
* One face per image: the largest box (``select_largest=True``, ``keep_all=False``). An image without a detection
  gives ``None``, which callers turn into a ``no_face`` row.
* The tensor API :func:`landmarks5` takes RGB float images and returns continuous pixels (MTCNN's + 0.5), the
  convention of :mod:`reenact.faces.images`.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from PIL import Image

from reenact.faces.images import ImageBatch, nan_rows, to_uint8_list


@dataclass(frozen=True)
class Detection:
    """One face: ``landmarks`` ``(5, 2)`` float64 pixels, ``box`` ``(4,)`` l-t-r-b pixels, ``prob`` its score."""

    landmarks: np.ndarray
    box: np.ndarray
    prob: float


@dataclass(frozen=True)
class MTCNNSettings:
    """facenet-pytorch's MTCNN detection settings (its defaults)."""

    min_face_size: int = 20
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    factor: float = 0.709


class Landmarks5:
    """MTCNN 5-point detector: ``detector(images) -> [Detection | None, ...]``, one entry per image."""

    def __init__(self, device: str = "cpu", settings: MTCNNSettings = MTCNNSettings()):
        from facenet_pytorch import MTCNN

        self.settings = settings
        self.mtcnn = MTCNN(min_face_size=settings.min_face_size, thresholds=list(settings.thresholds),
                           factor=settings.factor, select_largest=True, keep_all=False, device=device)
        self.mtcnn.eval()

    def __call__(self, images: Sequence[Image.Image]) -> list[Detection | None]:
        """Detect the largest face of every image; images of equal size are run as one batch."""
        images = [_as_rgb(im) for im in images]
        by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, im in enumerate(images):
            by_size[im.size].append(i)
        found: list[Detection | None] = [None] * len(images)
        for indices in by_size.values():
            for i, detection in zip(indices, self._detect_same_size([images[i] for i in indices])):
                found[i] = detection
        return found

    def _detect_same_size(self, images: list[Image.Image]) -> list[Detection | None]:
        # per image: N x 4 boxes, N scores, N x 5 x 2 points (None without a face), largest box first
        # (select_largest=True sorts them), so element 0 is MTCNN's keep_all=False choice
        boxes, probs, points = self.mtcnn.detect(images, landmarks=True)
        return [_detection(b, p, pt) for b, p, pt in zip(boxes, probs, points)]


def _as_rgb(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected a PIL image or uint8 (H, W, 3) array, got {array.dtype} {array.shape}")
    return Image.fromarray(array)


def _detection(box, prob, points) -> Detection | None:
    if box is None or points is None:
        return None
    return Detection(landmarks=np.asarray(points[0], dtype=np.float64).reshape(5, 2),
                     box=np.asarray(box[0], dtype=np.float64).reshape(4), prob=float(np.asarray(prob).reshape(-1)[0]))


#: MTCNN's integer-at-pixel-centre coordinates -> the suite's continuous pixels.
PIXEL_CENTRE = 0.5


@cache
def mtcnn(device: str = "cpu") -> Landmarks5:
    """One :class:`Landmarks5` per device, built on first use."""
    return Landmarks5(device=device)


def detect_mtcnn(images: ImageBatch, device: str = "cpu") -> list[Detection | None]:
    """MTCNN on RGB float images: one :class:`Detection` (MTCNN's own pixel convention) or None per image."""
    return mtcnn(device)(to_uint8_list(images))


def landmarks5(images: ImageBatch, device: str = "cpu") -> torch.Tensor:
    """MTCNN's 5 points ``(B, 5, 2)`` float64 in continuous pixels (module order); NaN rows where no face."""
    out = nan_rows(len(images), 5, 2)
    for i, found in enumerate(detect_mtcnn(images, device)):
        if found is not None:
            out[i] = torch.from_numpy(found.landmarks + PIXEL_CENTRE)
    return out
