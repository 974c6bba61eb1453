"""The ``landmarks`` row adapter: frame rows -> :class:`reenact.faces.landmark_fit.LandmarkFitEstimator` -> rows.

Rows of one chunk in a batch are fitted together (one shared identity); give the extractor whole chunks per batch
(e.g. ``groupby("chunk_id").map_groups``). Landmarks come from the ``landmarks`` column when present (e.g. the
synthetic world's ``crop_landmarks``) or from dlib on the decoded ``image``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from pipelines.extractors.rows import decode_row, empty_rows, fail, fill_estimate, to_batch
from reenact.data.schema import Status
from reenact.face3d.morphable import NUM_LANDMARKS
from reenact.faces.landmark_fit import NAME, FitConfig, LandmarkFitEstimator

LANDMARK_SOURCES = ("auto", "column", "dlib")


class LandmarksExtractor:
    """Frame rows -> coefficient rows (``reenact.data.schema.COEFFS``, extractor ``landmarks``), one per input row.

    A class with ``__init__`` (loads the model) and ``__call__(batch) -> batch``, so Ray Data runs it as an actor with
    ``map_batches``; a bad row becomes a status row, never an exception.

    Input columns: ``chunk_id``, ``frame_index``; ``image`` (encoded bytes) when landmarks are detected;
    optionally ``landmarks`` (136 floats, x/y pairs in the frame's pixels), ``width`` / ``height`` (frame size; else
    read from the image, else ``default_size``), ``status`` / ``error`` (rows not ``ok`` upstream keep their status).
    Each chunk's frames are detected together (cross-checked detectors, a face track through the chunk) and fitted
    together (one identity, a temporal term between frames whose ``frame_index`` differ by one); with images, texture
    and light are fitted to the pixels (the estimator's ``photometric_frames``).
    Output ``landmarks`` are the observed 68 points the fit used; ``fit_error`` is the landmark RMSE in pixels.

    Args:
        model, config, checks, gates, photometric_frames, assets: those of :class:`reenact.faces.landmark_fit.LandmarkFitEstimator`.
        landmark_source: ``auto`` (the ``landmarks`` column when present and not null, else detection on
            ``image``), ``column`` or ``dlib``.
        default_size: frame side assumed for column landmarks without ``width`` / ``height`` / ``image``.
    """

    name = NAME

    def __init__(self, model: str = "procedural-full", config: FitConfig = FitConfig(), *,
                 landmark_source: str = "auto", default_size: int = 256, checks=None, gates=None,
                 photometric_frames: int = 4, assets: str | None = None):
        if landmark_source not in LANDMARK_SOURCES:
            raise ValueError(f"landmark_source must be auto, column or dlib, got {landmark_source!r}")
        self.estimator = LandmarkFitEstimator(model, config, checks=checks, gates=gates,
                                              photometric_frames=photometric_frames, assets=assets)
        self.landmark_source = landmark_source
        self.default_size = int(default_size)

    def __call__(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, list]:
        rows = empty_rows(batch, NAME)
        chunks: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            if row["status"] == Status.OK.value:
                chunks.setdefault(row["chunk_id"], []).append(i)
        for members in chunks.values():
            self._chunk(batch, rows, members)
        return to_batch(rows)

    def _chunk(self, batch, rows: list[dict], members: list[int]) -> None:
        """Landmarks of the chunk's rows (column or detected), then one fit."""
        given = {i: self._given(batch, i, rows[i]) for i in members}
        points = {i: p for i, p in given.items() if p is not None}
        boxes, reasons, statuses = {}, {}, {}
        wanted = [i for i in members if given[i] is None and rows[i]["status"] == Status.OK.value]
        images = {i: decode_row(batch["image"][i] if "image" in batch else None, rows[i]) for i in wanted}
        images = {i: im for i, im in images.items() if im is not None}
        if images:
            found = self.estimator.detect_landmarks(list(images.values()))
            for k, i in enumerate(images):
                points[i], boxes[i], reasons[i] = found.points[k], found.boxes[k], found.reason[k]
                statuses[i] = found.status[k]
        fit = [i for i in members if i in points]
        if not fit:
            return
        sizes = [self._size(batch, i, images.get(i)) for i in fit]
        nan_box = torch.full((4,), float("nan"), dtype=torch.float64)
        estimate = self.estimator.fit_points(
            torch.stack([points[i] for i in fit]), sizes, boxes=torch.stack([boxes.get(i, nan_box) for i in fit]),
            frame_index=[rows[i]["frame_index"] for i in fit], reasons=[reasons.get(i, "") for i in fit],
            statuses=[statuses.get(i, Status.OK) for i in fit])
        if self.estimator.photometric_frames > 0 and all(i in images for i in fit):
            estimate = self.estimator.fit_texture([images[i] for i in fit], estimate)
        for k, i in enumerate(fit):
            fill_estimate(rows[i], estimate, k)

    def _given(self, batch, i: int, row: dict) -> torch.Tensor | None:
        """The row's column landmarks ``(68, 2)``; None when they are to be detected (or after failing the row)."""
        given = batch["landmarks"][i] if "landmarks" in batch and self.landmark_source != "dlib" else None
        if given is not None:
            points = np.asarray(given, dtype=np.float64)
            if points.size != 2 * NUM_LANDMARKS or not np.isfinite(points).all():
                return fail(row, Status.FIT_ERROR, f"landmarks column must hold 136 finite values, got {points.size}")
            return torch.from_numpy(points.reshape(NUM_LANDMARKS, 2))
        if self.landmark_source == "column":
            return fail(row, Status.NO_FACE, "no landmarks in the frame row (landmark_source=column)")
        return None

    def _size(self, batch, i: int, image: torch.Tensor | None) -> tuple[int, int]:
        if image is not None:
            return int(image.shape[2]), int(image.shape[1])
        if "width" in batch and "height" in batch and batch["width"][i] and batch["height"][i]:
            return int(batch["width"][i]), int(batch["height"][i])
        if "image" in batch and batch["image"][i] is not None:
            decoded = decode_row(batch["image"][i], {})
            if decoded is not None:      # an undecodable image with given landmarks: fall back to the default size
                return int(decoded.shape[2]), int(decoded.shape[1])
        return self.default_size, self.default_size
