"""The ``deep3d`` row adapter: frame rows -> :class:`reenact.faces.deep3d.Deep3DEstimator` -> coefficient rows.

Coefficients are in the frame's Deep3D camera; each row's ``align`` column holds Deep3D's ``trans_params``
``(w0, h0, s, tx, ty)`` (see :mod:`reenact.faces.deep3d` for the cameras).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from pipelines.extractors.rows import decode_rows, empty_rows, fill_estimate, to_batch
from reenact.data.schema import Status
from reenact.faces.deep3d import NAME, Deep3DEstimator


class Deep3DExtractor:
    """Frame rows -> coefficient rows (``reenact.data.schema.COEFFS``), one per input row, never raising for a bad row.

    A class with ``__init__`` (loads weights once) and ``__call__(batch) -> batch``, so Ray Data can run it as an
    actor with ``map_batches``. Input columns: ``chunk_id``, ``frame_index``, ``image`` (encoded bytes) and optionally
    ``status`` / ``error`` (rows that are not ``ok`` upstream keep their status). Output columns: those of ``COEFFS``.
    Arguments are those of :class:`reenact.faces.deep3d.Deep3DEstimator`.
    """

    name = NAME

    def __init__(self, checkpoint: str | Path | None = None, *, assets: str | Path | None = None,
                 weights: Mapping[str, torch.Tensor] | None = None, lm3d: str | Path | None = None,
                 device: str | None = None, batch_size: int = 16):
        self.estimator = Deep3DEstimator(checkpoint, assets=assets, weights=weights, lm3d=lm3d, device=device,
                                         batch_size=batch_size)
        self.net = self.estimator.net

    def __call__(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, list]:
        rows = empty_rows(batch, NAME)
        images = decode_rows(batch, rows)
        if images:
            estimate = self.estimator.estimate(list(images.values()))
            for k, i in enumerate(images):
                fill_estimate(rows[i], estimate, k, landmarks=False)
        for row in rows:
            if row["status"] != Status.OK.value:
                row["coeffs"] = row["align"] = None
        return to_batch(rows)
