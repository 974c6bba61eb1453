"""Face detection on RGB float images: MTCNN (facenet-pytorch; box + probability) and dlib's HOG detector (box +
detector score), one face per image (the largest).

Boxes are ``(B, 4)`` l, t, r, b in continuous pixels (:mod:`reenact.faces.images`); an image without a face gives a
NaN box and score.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from reenact.faces.images import ImageBatch, image_list, nan_rows, to_uint8_list

DETECTORS = ("mtcnn", "dlib")


@dataclass(frozen=True)
class FaceBoxes:
    """One detector's result on B images.

    boxes: ``(B, 4)`` float64 l, t, r, b continuous pixels, NaN where no face.
    score: ``(B,)`` float64: MTCNN's face probability in [0, 1], or dlib's HOG score (an SVM margin, ~0 at its
        threshold, > 1 for clear faces); NaN where no face.
    detector: ``mtcnn`` or ``dlib``.
    """

    boxes: torch.Tensor
    score: torch.Tensor
    detector: str

    @property
    def found(self) -> torch.Tensor:
        """``(B,)`` bool: a face was found."""
        return torch.isfinite(self.boxes).all(-1)


def detect(images: ImageBatch, detector: str = "mtcnn", *, device: str = "cpu") -> FaceBoxes:
    """The largest face of every image with ``detector`` (``mtcnn`` or ``dlib``).

    Args:
        images: RGB float ``(B, 3, H, W)`` in [0, 1] or a list of ``(3, H, W)``.
        detector: ``mtcnn`` (P/R/O-Net weights ship in facenet-pytorch) or ``dlib`` (frontal HOG detector).
        device: torch device for MTCNN.
    """
    if detector == "mtcnn":
        return _mtcnn_boxes(images, device)
    if detector == "dlib":
        return _dlib_boxes(images)
    raise ValueError(f"detector must be one of {DETECTORS}, got {detector!r}")


def _mtcnn_boxes(images: ImageBatch, device: str) -> FaceBoxes:
    from reenact.faces.landmarks5 import PIXEL_CENTRE, detect_mtcnn

    found = detect_mtcnn(images, device)
    boxes, score = nan_rows(len(found), 4), nan_rows(len(found))
    for i, detection in enumerate(found):
        if detection is not None:
            boxes[i] = torch.from_numpy(detection.box + PIXEL_CENTRE)
            score[i] = detection.prob
    return FaceBoxes(boxes, score, "mtcnn")


def _dlib_boxes(images: ImageBatch) -> FaceBoxes:
    from reenact.faces.landmarks68 import dlib68

    arrays = to_uint8_list(images)
    boxes, score = nan_rows(len(arrays), 4), nan_rows(len(arrays))
    for i, rgb in enumerate(arrays):
        found = dlib68().detect_scored(rgb)
        if found is not None:
            boxes[i], score[i] = torch.from_numpy(found[0]), found[1]
    return FaceBoxes(boxes, score, "dlib")


# ---------------------------------------------------------------- cross-checked detection
@dataclass(frozen=True)
class DetectionChecks:
    """Named thresholds of :func:`cross_check`. Sizes are ``sqrt(w h)`` of a box; offsets are relative to it.

    Measured on the real clips of ``../shared/fixtures/real`` at 256^2 (see ``perf/real_faces.py``): where both
    detectors find the face, dlib's box centre sits ~0.1-0.2 sizes from MTCNN's (dlib's box is tighter and higher)
    and dlib's size is 0.75-0.9 of MTCNN's; MTCNN gives real faces probability > 0.99.
    """

    min_mtcnn_prob: float = 0.90      # below this an MTCNN box does not count as a face
    max_centre_offset: float = 0.35   # detectors agree when their centres are this close (in box sizes) ...
    max_size_ratio: float = 1.6       # ... and their sizes within this ratio
    min_dlib_score_alone: float = 0.5  # a dlib box that MTCNN does not confirm needs this HOG score
    max_track_jump: float = 0.5       # a box whose centre is this far (in sizes) from its neighbours' median ...
    max_track_size_ratio: float = 1.5  # ... or whose size is this far off it leaves the face track
    track_window: int = 5             # neighbours on each side that define the track


@dataclass(frozen=True)
class CheckedFaces:
    """:func:`cross_check` of B frames.

    boxes: ``(B, 4)`` the face box to use (dlib's where the detectors agree, since its 68-point predictor was
        trained on its boxes; MTCNN's where only it is trusted), NaN where no face is trusted.
    source: per frame ``both``, ``mtcnn``, ``dlib`` or ``none``.
    status: per frame ``Status.OK``; ``NO_FACE`` (no detector found a face it trusts);
        ``DETECTOR_DISAGREEMENT`` (both are confident, their boxes disagree and no face track settles it);
        ``IMPLAUSIBLE`` (the chosen box jumps off the face track and the other detector's box is not on it either).
        reason: why (also set, for information, on ``ok`` frames where one detector was overruled).
    mtcnn, dlib: each detector's own result.
    """

    boxes: torch.Tensor
    source: tuple[str, ...]
    status: tuple
    reason: tuple[str, ...]
    mtcnn: FaceBoxes
    dlib: FaceBoxes


def box_size(boxes: torch.Tensor) -> torch.Tensor:
    """``sqrt(w h)`` of ``(..., 4)`` l, t, r, b boxes."""
    return ((boxes[..., 2] - boxes[..., 0]).clamp_min(0) * (boxes[..., 3] - boxes[..., 1]).clamp_min(0)).sqrt()


def box_centre(boxes: torch.Tensor) -> torch.Tensor:
    return torch.stack([boxes[..., 0] + boxes[..., 2], boxes[..., 1] + boxes[..., 3]], -1) / 2


def boxes_agree(a: torch.Tensor, b: torch.Tensor, max_offset: float, max_ratio: float) -> torch.Tensor:
    """``(...,)`` bool: centres within ``max_offset`` mean sizes and sizes within ``max_ratio`` (False for NaN)."""
    size_a, size_b = box_size(a), box_size(b)
    offset = (box_centre(a) - box_centre(b)).norm(dim=-1) / ((size_a + size_b) / 2)
    ratio = torch.maximum(size_a, size_b) / torch.minimum(size_a, size_b)
    return (offset <= max_offset) & (ratio <= max_ratio)


def cross_check(images: ImageBatch, checks: DetectionChecks = DetectionChecks(), *, track: bool = True,
                device: str = "cpu") -> CheckedFaces:
    """Both detectors on every frame, cross-checked; with ``track`` (frames of one video, in order) the face is
    followed through the frames so a one-frame false box is caught.

    Per frame: MTCNN's box counts when its probability is at least ``min_mtcnn_prob``. Both found and agreeing:
    dlib's box (``both``). They disagree: MTCNN's box when dlib's HOG score is below ``min_dlib_score_alone`` (dlib's
    weak boxes are where its false positives are), else the one that agrees with the track, else
    ``detector_disagreement`` with both boxes in the reason. Only dlib: its box when its score is at least
    ``min_dlib_score_alone``. Only MTCNN: its box. Neither: ``no_face``. Then the track: a chosen box far from the
    median of its neighbours (``max_track_jump``, ``max_track_size_ratio``) is swapped for the other detector's box
    when that one is on the track, else the frame becomes ``implausible``.
    """
    images = image_list(images)
    return resolve(detect(images, "mtcnn", device=device), detect(images, "dlib"), checks, track=track)


def resolve(m: FaceBoxes, d: FaceBoxes, checks: DetectionChecks = DetectionChecks(), *,
            track: bool = True) -> CheckedFaces:
    """The decision of :func:`cross_check` from the two detectors' results (pure; tested with injected boxes)."""
    from reenact.data.schema import Status

    m_ok = m.found & (m.score >= checks.min_mtcnn_prob)
    d_ok = d.found
    agree = boxes_agree(m.boxes, d.boxes, checks.max_centre_offset, checks.max_size_ratio)
    strong_dlib = d.score >= checks.min_dlib_score_alone
    n = len(m.boxes)
    boxes, source, reason = nan_rows(n, 4), ["none"] * n, [""] * n
    conflict = []
    for i in range(n):
        if m_ok[i] and d_ok[i] and agree[i]:
            boxes[i], source[i] = d.boxes[i], "both"
        elif m_ok[i] and d_ok[i] and not strong_dlib[i]:
            boxes[i], source[i] = m.boxes[i], "mtcnn"
            reason[i] = f"dlib's weak box (score {float(d.score[i]):.2f}) disagrees with MTCNN's: MTCNN's kept"
        elif m_ok[i] and d_ok[i]:
            conflict.append(i)
        elif d_ok[i] and strong_dlib[i]:
            boxes[i], source[i] = d.boxes[i], "dlib"
        elif m_ok[i]:
            boxes[i], source[i] = m.boxes[i], "mtcnn"
        else:
            reason[i] = _no_face_reason(m, d, i, checks)
    off_track = _follow_track(boxes, source, reason, conflict, m, d, checks) if track and n > 2 else set()
    for i in conflict:
        if source[i] == "none":
            reason[i] = (f"detectors disagree: MTCNN box {_fmt(m.boxes[i])} (p {float(m.score[i]):.2f}) vs dlib box "
                         f"{_fmt(d.boxes[i])} (score {float(d.score[i]):.2f}), and no face track decides")
    status = tuple(Status.OK if s != "none" else Status.DETECTOR_DISAGREEMENT if i in conflict
                   else Status.IMPLAUSIBLE if i in off_track else Status.NO_FACE for i, s in enumerate(source))
    return CheckedFaces(boxes, tuple(source), status, tuple(reason), m, d)


def _fmt(box: torch.Tensor) -> str:
    return "(" + ", ".join(f"{float(v):.0f}" for v in box) + ")"


def _no_face_reason(m: FaceBoxes, d: FaceBoxes, i: int, checks: DetectionChecks) -> str:
    if not m.found[i] and not d.found[i]:
        return "neither MTCNN nor dlib found a face"
    parts = []
    if m.found[i]:
        parts.append(f"MTCNN's face probability {float(m.score[i]):.2f} < {checks.min_mtcnn_prob}")
    else:
        parts.append("MTCNN found no face")
    if d.found[i]:
        parts.append(f"dlib's box score {float(d.score[i]):.2f} < {checks.min_dlib_score_alone} unconfirmed")
    return "; ".join(parts)


def track_median(boxes: torch.Tensor, window: int) -> torch.Tensor:
    """Per frame, the median box of its up-to-``window`` neighbours on each side (itself excluded, NaN ignored)."""
    n = len(boxes)
    out = nan_rows(n, 4)
    for i in range(n):
        near = torch.cat([boxes[max(0, i - window):i], boxes[i + 1:i + 1 + window]])
        near = near[torch.isfinite(near).all(-1)]
        if len(near):
            out[i] = near.median(0).values
    return out


def _follow_track(boxes, source, reason, conflict, m: FaceBoxes, d: FaceBoxes, checks: DetectionChecks) -> set[int]:
    """Check every chosen box against the track of its neighbours; resolve conflicts and one-frame jumps. Returns
    the frames whose box left the track with no detector's box on it."""
    reference = track_median(boxes, checks.track_window)
    on_track = lambda b, i: bool(boxes_agree(b, reference[i], checks.max_track_jump,  # noqa: E731
                                             checks.max_track_size_ratio))
    off_track = set()
    for i in range(len(boxes)):
        if not torch.isfinite(reference[i]).all():
            continue
        if i in conflict:
            for name, found in (("dlib", d), ("mtcnn", m)):
                if on_track(found.boxes[i], i):
                    boxes[i], source[i] = found.boxes[i], name
                    reason[i] = f"detectors disagree; {name}'s box follows the face track"
                    break
        elif source[i] != "none" and not on_track(boxes[i], i):
            other = m if source[i] == "dlib" else d
            if source[i] == "both":
                other = m
            if other.found[i] and on_track(other.boxes[i], i):
                reason[i] = f"{source[i]}'s box leaves the face track; {other.detector}'s box follows it"
                boxes[i], source[i] = other.boxes[i], other.detector
            else:
                reason[i] = (f"the face box {_fmt(boxes[i])} jumps off the face track (neighbours' median "
                             f"{_fmt(reference[i])})")
                boxes[i], source[i] = float("nan"), "none"
                off_track.add(i)
    return off_track
