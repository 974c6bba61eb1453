"""Face detection on RGB float images: MTCNN (facenet-pytorch; box + probability) and dlib's HOG detector (box +
detector score), one face per image (the largest).

Boxes are ``(B, 4)`` l, t, r, b in continuous pixels (:mod:`reenact.faces.images`); an image without a face gives a
NaN box and score.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from reenact.faces.images import ImageBatch, nan_rows, to_uint8_list

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
