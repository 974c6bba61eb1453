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
    Output ``landmarks`` are the observed 68 points the fit used; ``fit_error`` is the landmark RMSE in pixels.

    Args:
        model, config, mtcnn_fallback, assets: those of :class:`reenact.faces.landmark_fit.LandmarkFitEstimator`.
        landmark_source: ``auto`` (the ``landmarks`` column when present and not null, else dlib on ``image``),
            ``column`` or ``dlib``.
        default_size: frame side assumed for column landmarks without ``width`` / ``height`` / ``image``.
    """

    name = NAME

    def __init__(self, model: str = "procedural-full", config: FitConfig = FitConfig(), *,
                 landmark_source: str = "auto", mtcnn_fallback: bool = True, default_size: int = 256,
                 assets: str | None = None):
        if landmark_source not in LANDMARK_SOURCES:
            raise ValueError(f"landmark_source must be auto, column or dlib, got {landmark_source!r}")
        self.estimator = LandmarkFitEstimator(model, config, mtcnn_fallback=mtcnn_fallback, assets=assets)
        self.landmark_source = landmark_source
        self.default_size = int(default_size)

    def __call__(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, list]:
        rows = empty_rows(batch, NAME)
        found = {i: self._landmarks(batch, i, row) for i, row in enumerate(rows) if row["status"] == Status.OK.value}
        found = {i: item for i, item in found.items() if item is not None}
        chunks: dict[str, list[int]] = {}
        for i in found:
            chunks.setdefault(rows[i]["chunk_id"], []).append(i)
        for members in chunks.values():
            points = torch.stack([found[i][0] for i in members])
            estimate = self.estimator.fit_points(points, [found[i][1] for i in members])
            for k, i in enumerate(members):
                fill_estimate(rows[i], estimate, k)
        return to_batch(rows)

    def _landmarks(self, batch, i: int, row: dict) -> tuple[torch.Tensor, tuple[int, int]] | None:
        """(68 x 2 landmarks, (width, height)) of row i, or None after marking the row failed."""
        given = batch["landmarks"][i] if "landmarks" in batch and self.landmark_source != "dlib" else None
        if given is not None:
            points = np.asarray(given, dtype=np.float64)
            if points.size != 2 * NUM_LANDMARKS or not np.isfinite(points).all():
                return fail(row, Status.FIT_ERROR, f"landmarks column must hold 136 finite values, got {points.size}")
            return torch.from_numpy(points.reshape(NUM_LANDMARKS, 2)), self._size(batch, i)
        if self.landmark_source == "column":
            return fail(row, Status.NO_FACE, "no landmarks in the frame row (landmark_source=column)")
        image = decode_row(batch["image"][i] if "image" in batch else None, row)
        if image is None:
            return None
        points = self.estimator.landmarks([image])[0]
        if not torch.isfinite(points).all():
            return fail(row, Status.NO_FACE, f"dlib found no face in the {image.shape[2]}x{image.shape[1]} frame")
        return points, (int(image.shape[2]), int(image.shape[1]))

    def _size(self, batch, i: int) -> tuple[int, int]:
        if "width" in batch and "height" in batch and batch["width"][i] and batch["height"][i]:
            return int(batch["width"][i]), int(batch["height"][i])
        if "image" in batch and batch["image"][i] is not None:
            image = decode_row(batch["image"][i], {})
            if image is not None:        # an undecodable image with given landmarks: fall back to the default size
                return int(image.shape[2]), int(image.shape[1])
        return self.default_size, self.default_size
