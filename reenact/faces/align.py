"""5-point face alignment to Deep3DFaceRecon's 224 x 224 input (the semantics of its ``util/preprocess.py align_img``).

Conventions (stated once):

* **Our landmarks** are image pixels ``(x, y)``: x to the right, y **down**, integer values at pixel centres (the
  convention of MTCNN, dlib and Deep3D; ``reenact.face3d.camera``'s continuous coordinates are these + 0.5). The five points are, in order: left eye, right eye, nose tip,
  left mouth corner, right mouth corner, where "left" is the image left (the subject's right).
* **Deep3D's landmarks** have y **up**: its ``test.py`` flips them with ``lm[:, -1] = H - 1 - lm[:, -1]`` before
  ``align_img``. We flip internally (:func:`flip_y`), so callers always pass y-down points, and the recorded
  ``trans_params = (w0, h0, s, tx, ty)`` equal Deep3D's value for value: ``ty`` is in the y-up frame.
* **POS.** The mean 3D landmarks ``X`` (5 x 3, :func:`five_from_68` of ``similarity_Lm3D_all.mat``'s ``lm``) are fitted
  to the y-up 2D points ``x`` with an affine camera ``x ~ P X + t``, solved per image axis by least squares; the
  scale is the mean row norm of ``P``, and the image is rescaled by ``s = rescale_factor / scale``.
* **Warp.** The image is resized to ``(w, h) = (trunc(w0 s), trunc(h0 s))`` with PIL bicubic, and the box
  ``(left, up, left + T, up + T)`` is cut out (zeros outside the image), where
  ``left = trunc(w / 2 - T / 2 + (tx - w0 / 2) s)`` and ``up = trunc(h / 2 - T / 2 + (h0 / 2 - ty) s)``.
  PIL's resize maps pixel centres ``u + 1/2 = (x + 1/2) w / w0``, so the exact map from image pixels to aligned
  pixels is, per axis, ``u = k x + b`` with ``k = (w / w0, h / h0)`` and ``b = k / 2 - 1/2 - (left, up)``
  (:class:`AlignTransform`); in continuous coordinates it is simply ``u = k x - (left, up)``. Deep3D's own
  ``lm_new`` uses ``s`` and ignores the truncations (up to 2 px off); ours is the map the aligned image shows. ``trans_params`` alone determine it
  (:meth:`AlignTransform.from_trans_params`), so they are what the coefficient shards record.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

TARGET_SIZE = 224
RESCALE_FACTOR = 102.0
#: Refuse alignments whose rescaled frame would exceed this many pixels (a face of a few pixels in a large frame).
MAX_RESIZED_PIXELS = 1 << 26
#: 1-based indices in the 68-point scheme: nose tip, left eye corners, right eye corners, mouth corners.
_NOSE, _LEFT_EYE, _RIGHT_EYE, _MOUTH_LEFT, _MOUTH_RIGHT = 31, (37, 40), (43, 46), 49, 55


def five_from_68(lm68: np.ndarray) -> np.ndarray:
    """Deep3D's 5 points from 68: eye centres (mean of the two corners), nose tip, mouth corners.

    Args:
        lm68: ``(68, D)`` points (D = 2 or 3).
    Returns:
        ``(5, D)`` in the order left eye, right eye, nose, left mouth corner, right mouth corner.
    """
    lm68 = np.asarray(lm68, dtype=np.float64)
    if lm68.ndim != 2 or lm68.shape[0] != 68:
        raise ValueError(f"expected (68, D) landmarks, got {lm68.shape}")

    def at(i: int) -> np.ndarray:
        return lm68[i - 1]

    return np.stack([(at(_LEFT_EYE[0]) + at(_LEFT_EYE[1])) / 2, (at(_RIGHT_EYE[0]) + at(_RIGHT_EYE[1])) / 2,
                     at(_NOSE), at(_MOUTH_LEFT), at(_MOUTH_RIGHT)])


def load_lm3d(path: str | Path) -> np.ndarray:
    """The 5 mean 3D landmarks ``(5, 3)`` from Deep3D's ``similarity_Lm3D_all.mat`` (key ``lm``, 68 x 3)."""
    from scipy.io import loadmat

    return five_from_68(loadmat(str(path))["lm"])


def flip_y(points: np.ndarray, height: float) -> np.ndarray:
    """Switch between y-down and Deep3D's y-up pixel coordinates: ``y -> height - 1 - y`` (its own inverse)."""
    points = np.array(points, dtype=np.float64)
    points[..., 1] = height - 1 - points[..., 1]
    return points


def pos(xp: np.ndarray, x3d: np.ndarray) -> tuple[np.ndarray, float]:
    """POS: least-squares affine camera ``xp ~ P x3d + t``; returns ``t`` (2,) and the scale (mean row norm of P).

    Args:
        xp: ``(N, 2)`` image points; x3d: ``(N, 3)`` model points, N >= 4.
    """
    design = np.concatenate([x3d, np.ones((len(x3d), 1))], axis=1)  # N x 4: [X Y Z 1]
    solution, *_ = np.linalg.lstsq(design, xp, rcond=None)         # 4 x 2: columns = (P row | t) per image axis
    P, t = solution[:3].T, solution[3]                             # 2 x 3, (2,)
    return t, float(np.linalg.norm(P, axis=1).mean())


@dataclass(frozen=True)
class AlignTransform:
    """Deep3D's ``trans_params`` plus everything derived from them. ``ty`` is in the y-up frame (module docstring)."""

    w0: int
    h0: int
    s: float
    tx: float
    ty: float
    target_size: int = TARGET_SIZE

    @classmethod
    def from_trans_params(cls, params, target_size: int = TARGET_SIZE) -> "AlignTransform":
        """Rebuild from Deep3D's ``trans_params`` ``(w0, h0, s, tx, ty)``."""
        w0, h0, s, tx, ty = (float(v) for v in np.asarray(params, dtype=np.float64).reshape(5))
        return cls(int(round(w0)), int(round(h0)), s, tx, ty, int(target_size))

    @property
    def trans_params(self) -> np.ndarray:
        """``(w0, h0, s, tx, ty)`` float64, Deep3D's layout (PIRender's 3 crop values are ``[2:]``)."""
        return np.array([self.w0, self.h0, self.s, self.tx, self.ty], dtype=np.float64)

    @property
    def resized(self) -> tuple[int, int]:
        """Size ``(w, h)`` of the rescaled image, truncated like Deep3D's ``astype(np.int32)``."""
        return int(self.w0 * self.s), int(self.h0 * self.s)

    @property
    def box(self) -> tuple[int, int]:
        """Top-left corner ``(left, up)`` of the crop in the rescaled image (truncated toward zero, as Deep3D)."""
        w, h, half = *self.resized, self.target_size / 2
        left = w / 2 - half + (self.tx - self.w0 / 2) * self.s
        up = h / 2 - half + (self.h0 / 2 - self.ty) * self.s   # ty is y-up: the face centre is h0 / 2 - ty below centre
        return int(left), int(up)

    @property
    def scale(self) -> np.ndarray:
        """Per-axis scale ``k = (w / w0, h / h0)`` of the exact image map."""
        w, h = self.resized
        return np.array([w / self.w0, h / self.h0])

    @property
    def offset(self) -> np.ndarray:
        """Per-axis offset ``b = k / 2 - 1/2 - (left, up)`` of the exact image map."""
        return self.scale / 2 - 0.5 - np.array(self.box, dtype=np.float64)

    def to_aligned(self, points: np.ndarray) -> np.ndarray:
        """Image pixels ``(..., 2)`` (y down) to aligned-crop pixels (y down): ``u = k x + b``."""
        return np.asarray(points, dtype=np.float64) * self.scale + self.offset

    def to_original(self, points: np.ndarray) -> np.ndarray:
        """Aligned-crop pixels ``(..., 2)`` (y down) back to image pixels: ``x = (u - b) / k``."""
        return (np.asarray(points, dtype=np.float64) - self.offset) / self.scale

    @property
    def matrix_to_original(self) -> np.ndarray:
        """``(2, 3)`` affine ``[A | c]`` with ``x = A u + c`` (aligned pixels to image pixels)."""
        k, b = self.scale, self.offset
        return np.array([[1 / k[0], 0, -b[0] / k[0]], [0, 1 / k[1], -b[1] / k[1]]])


@dataclass(frozen=True)
class AlignedFace:
    """``image``: uint8 ``(T, T, 3)`` RGB aligned crop; ``transform``: its :class:`AlignTransform`."""

    image: np.ndarray
    transform: AlignTransform


def align_transform(landmarks5: np.ndarray, lm3d: np.ndarray, image_size: tuple[int, int], *,
                    target_size: int = TARGET_SIZE, rescale_factor: float = RESCALE_FACTOR) -> AlignTransform:
    """Solve Deep3D's alignment for one face.

    Args:
        landmarks5: ``(5, 2)`` y-down image pixels (module order); ``(68, 2)`` is reduced with :func:`five_from_68`.
        lm3d: ``(5, 3)`` mean 3D landmarks (:func:`load_lm3d`).
        image_size: ``(width, height)`` of the image.
    """
    lm = np.asarray(landmarks5, dtype=np.float64)
    if lm.shape == (68, 2):
        lm = five_from_68(lm)
    if lm.shape != (5, 2) or not np.isfinite(lm).all():
        raise ValueError(f"expected finite (5, 2) or (68, 2) landmarks, got shape {np.shape(landmarks5)}")
    if np.shape(lm3d) != (5, 3):
        raise ValueError(f"expected (5, 3) mean 3D landmarks, got {np.shape(lm3d)}")
    w0, h0 = (int(v) for v in image_size)
    t, scale = pos(flip_y(lm, h0), np.asarray(lm3d, dtype=np.float64))
    transform = AlignTransform(w0, h0, rescale_factor / scale if scale > 0 else np.inf, float(t[0]), float(t[1]),
                               int(target_size))
    if not np.isfinite(transform.s) or math.prod(transform.resized) > MAX_RESIZED_PIXELS:
        raise ValueError(f"degenerate landmarks or a face too small for its {w0}x{h0} frame (POS scale {scale:.3g} "
                         f"px per model unit): {lm.tolist()}")
    return transform


def warp_image(image: Image.Image | np.ndarray, transform: AlignTransform) -> np.ndarray:
    """Cut the aligned crop: uint8 ``(T, T, 3)``, bit-identical to Deep3D's resize-then-crop (zeros outside the image).

    PIL resizes in two separable passes, horizontal then vertical, each rounding to uint8. We run the same two
    passes but give the vertical one only the crop's columns, so the cost is ``w * h0 + T * h`` pixels instead of
    ``w * h0 + w * h``. (PIL's ``resize(box=...)`` is not used: it takes the box in float32 and can change the pass
    order, which moves pixels by several grey levels.)
    """
    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    pil = pil.convert("RGB")
    if pil.size != (transform.w0, transform.h0):
        raise ValueError(f"image size {pil.size} does not match the transform's {(transform.w0, transform.h0)}")
    T, (w, h), (left, up) = transform.target_size, transform.resized, transform.box
    out = np.zeros((T, T, 3), dtype=np.uint8)
    x0, y0, x1, y1 = max(left, 0), max(up, 0), min(left + T, w), min(up + T, h)  # visible part, rescaled pixels
    if x1 <= x0 or y1 <= y0:
        return out
    rows = pil.resize((w, transform.h0), Image.Resampling.BICUBIC).crop((x0, 0, x1, transform.h0))  # h0 x (x1-x0)
    strip = np.asarray(rows.resize((x1 - x0, h), Image.Resampling.BICUBIC))                         # h x (x1-x0) x 3
    out[y0 - up:y1 - up, x0 - left:x1 - left] = strip[y0:y1]
    return out


def align_image(image: Image.Image | np.ndarray, landmarks5: np.ndarray, lm3d: np.ndarray, *,
                target_size: int = TARGET_SIZE, rescale_factor: float = RESCALE_FACTOR) -> AlignedFace:
    """Align one face to Deep3D's input: the crop and the transform that maps it back to ``image``.

    Args:
        image: PIL image or uint8 ``(H, W, 3)`` RGB array.
        landmarks5: ``(5, 2)`` (or ``(68, 2)``) y-down pixel landmarks of ``image``.
        lm3d: ``(5, 3)`` mean 3D landmarks.
    """
    size = image.size if isinstance(image, Image.Image) else (np.shape(image)[1], np.shape(image)[0])
    transform = align_transform(landmarks5, lm3d, size, target_size=target_size, rescale_factor=rescale_factor)
    return AlignedFace(warp_image(image, transform), transform)


def image_to_tensor_input(aligned: np.ndarray):
    """uint8 ``(..., T, T, 3)`` to Deep3D's float32 input ``(..., 3, T, T)`` in [0, 1] (``np.array(im) / 255.``):
    the codec's :func:`reenact.data.codec.uint8_to_tensor` (float32 division by 255 is correctly rounded, so it equals
    Deep3D's float64 division cast to float32)."""
    from reenact.data.codec import uint8_to_tensor

    return uint8_to_tensor(np.asarray(aligned, dtype=np.uint8)).contiguous()  # ... x 3 x T x T


@dataclass(frozen=True)
class AlignedBatch:
    """:func:`align` of B images. ``images``: float32 ``(B, 3, T, T)`` in [0, 1] (zeros where ``ok`` is False);
    ``transforms``: one :class:`AlignTransform` per image, None where the landmarks were missing or degenerate;
    ``errors``: why (empty string where aligned)."""

    images: torch.Tensor
    transforms: tuple[AlignTransform | None, ...]
    errors: tuple[str, ...]

    @property
    def ok(self) -> torch.Tensor:
        import torch

        return torch.tensor([t is not None for t in self.transforms], dtype=torch.bool)


def align(images, landmarks, lm3d: np.ndarray, *, target_size: int = TARGET_SIZE,
          rescale_factor: float = RESCALE_FACTOR) -> AlignedBatch:
    """Deep3D's 5-point alignment on RGB float images (the tensor API of :func:`align_image`).

    Args:
        images: RGB float ``(B, 3, H, W)`` in [0, 1] or a list of ``(3, H, W)`` (:mod:`reenact.faces.images`).
        landmarks: ``(B, 5, 2)`` or ``(B, 68, 2)`` in continuous pixels (the suite's convention, e.g. from
            :func:`reenact.faces.landmarks5.landmarks5`); a row with NaN is "no face".
        lm3d: ``(5, 3)`` mean 3D landmarks (:func:`load_lm3d`).
    """
    import torch

    from reenact.faces.images import to_uint8_list

    arrays = to_uint8_list(images)
    points = np.asarray(landmarks, dtype=np.float64)
    if points.ndim != 3 or len(points) != len(arrays) or points.shape[1:] not in ((5, 2), (68, 2)):
        raise ValueError(f"expected landmarks (B, 5 or 68, 2) for {len(arrays)} images, got {points.shape}")
    out = np.zeros((len(arrays), target_size, target_size, 3), dtype=np.uint8)
    transforms, errors = [], []
    for i, (rgb, lm) in enumerate(zip(arrays, points)):
        try:
            face = align_image(rgb, lm - 0.5, lm3d, target_size=target_size, rescale_factor=rescale_factor)
        except ValueError as exc:                          # NaN (no face) or degenerate points
            transforms.append(None)
            errors.append(str(exc))
            continue
        out[i] = face.image
        transforms.append(face.transform)
        errors.append("")
    return AlignedBatch(image_to_tensor_input(out) if len(out) else torch.zeros(0, 3, target_size, target_size),
                        tuple(transforms), tuple(errors))
