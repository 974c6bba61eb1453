"""The CelebV crop policy, pure (no I/O): face boxes of one identity -> one crop square per image.

Stable per identity, like a VoxCeleb chunk's one bbox:

1. MTCNN's box per image (:mod:`pipelines.celebv`); face size ``s_i = sqrt(w_i * h_i)``; the identity's size
   ``S = median_i s_i`` (a face more than ``max_scale_ratio`` times off it is a false detection, ``no_face``);
2. crop side ``D = round(SCALE * S)`` pixels, one side for all the identity's images, with ``SCALE = 1.8``:
   in the synthetic world's VoxCeleb-style chunks the bbox side is 1.80 x sqrt(w h) of the true face box (median,
   1.61-2.09), and on its CelebV images MTCNN's box is 0.86-1.10 x the true face box per side (median ~0.98), so
   CelebV faces get the VoxCeleb scale (measured there: side / sqrt(w h) of the true box 1.71-1.84 per identity);
3. the square is centred on each image's box centre (``smooth`` > 1: a centred moving average of the centres
   over that many consecutive detected images; off by default, since CelebV images need not be consecutive
   frames), ``l = round(cx - D / 2)``, ``t = round(cy - D / 2)``;
4. where the square leaves the image it is padded with **black** (``pad="edge"`` repeats the border instead),
   then resized to 256^2 with PIL's bicubic filter, which widens its kernel by the scale factor when shrinking
   (anti-aliased; within a few grey levels of ``skimage.transform.resize(anti_aliasing=True)``).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

SCALE = 1.8


def face_size(box: Sequence[float]) -> float:
    """``sqrt(w h)`` of an l-t-r-b box."""
    left, top, right, bottom = box
    return float(np.sqrt(max(right - left, 0.0) * max(bottom - top, 0.0)))


def crop_side(sizes: Sequence[float], scale: float = SCALE) -> int:
    """The identity's crop side ``round(scale * median(sizes))`` (at least 1 pixel)."""
    if len(sizes) == 0:
        raise ValueError("crop_side needs at least one face size, got none")
    return max(1, int(round(scale * float(np.median(sizes)))))


def smooth_centres(centres: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average of ``(N, 2)`` centres over ``window`` images (shrunk at the ends)."""
    if window <= 1 or len(centres) <= 1:
        return np.asarray(centres, dtype=np.float64)
    half = window // 2
    cumsum = np.vstack([np.zeros((1, 2)), np.cumsum(centres, axis=0)])   # (N + 1) x 2
    lo = np.clip(np.arange(len(centres)) - half, 0, None)
    hi = np.clip(np.arange(len(centres)) + half + 1, None, len(centres))
    return (cumsum[hi] - cumsum[lo]) / (hi - lo)[:, None]


@dataclass(frozen=True)
class CropPlan:
    """The crop of every image of one identity.

    ``boxes[i]`` is (left, top, side) in source pixels, or None; ``reasons[i]`` says why not (no_face) or "".
    """

    face_size: float | None                 # median sqrt(w h) of the kept detections, pixels
    side: int | None                        # crop side D, pixels
    boxes: tuple[tuple[int, int, int] | None, ...]
    reasons: tuple[str, ...]


def plan_crops(boxes: Sequence[Sequence[float] | None], scale: float = SCALE, smooth: int = 1,
               max_scale_ratio: float = 2.0) -> CropPlan:
    """Crop squares from an identity's detected face boxes (l-t-r-b, or None where nothing was detected)."""
    sizes = {i: face_size(b) for i, b in enumerate(boxes) if b is not None}
    if not sizes:
        return CropPlan(None, None, (None,) * len(boxes), tuple("" for _ in boxes))
    median = float(np.median(list(sizes.values())))
    reasons = ["" if b is not None else "MTCNN found no face" for b in boxes]
    for i, s in sizes.items():
        if not median / max_scale_ratio <= s <= median * max_scale_ratio:
            reasons[i] = (f"MTCNN face of size {s:.1f} px is more than {max_scale_ratio:g}x off the identity's median "
                          f"{median:.1f} px (taken for a false detection)")
    kept = [i for i in sizes if not reasons[i]]
    side = crop_side([sizes[i] for i in kept], scale)
    centres = np.array([[(boxes[i][0] + boxes[i][2]) / 2, (boxes[i][1] + boxes[i][3]) / 2] for i in kept])
    out: list[tuple[int, int, int] | None] = [None] * len(boxes)
    for i, (cx, cy) in zip(kept, smooth_centres(centres, smooth)):
        out[i] = (int(round(cx - side / 2)), int(round(cy - side / 2)), side)
    return CropPlan(float(np.median([sizes[i] for i in kept])), side, tuple(out), tuple(reasons))


def crop_square(rgb: np.ndarray, box: tuple[int, int, int], size: int = 256,
                pad: Literal["black", "edge"] = "black") -> np.ndarray:
    """The square ``box`` = (left, top, side) of ``rgb (H, W, 3)``, padded where it leaves the image, resized to
    ``size x size`` (PIL bicubic, anti-aliased when shrinking). Returns uint8 ``(size, size, 3)``."""
    from PIL import Image

    left, top, side = box
    height, width = rgb.shape[:2]
    window = rgb[max(top, 0):min(top + side, height), max(left, 0):min(left + side, width)]
    widths = ((max(-top, 0), max(top + side - height, 0)), (max(-left, 0), max(left + side - width, 0)), (0, 0))
    if pad == "edge" and window.size:
        window = np.pad(window, widths, mode="edge")
    else:
        window = np.pad(window, widths, mode="constant")     # side x side x 3
    if side == size:
        return np.ascontiguousarray(window)
    return np.asarray(Image.fromarray(window).resize((size, size), Image.Resampling.BICUBIC))
