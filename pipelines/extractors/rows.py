"""Coefficient rows, written once for every extractor: one ``reenact.data.schema.COEFFS`` row per input frame row."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from reenact.data.codec import bytes_to_tensor
from reenact.data.schema import COEFFS, Status

#: The COEFFS columns, in schema order.
COLUMNS = tuple(COEFFS.names)


def empty_rows(batch: Mapping[str, Sequence[Any]], extractor: str) -> list[dict]:
    """One row per frame of ``batch`` with nothing extracted yet; upstream ``status`` / ``error`` carry over."""
    n = len(batch["chunk_id"])
    statuses = list(batch["status"]) if "status" in batch else [Status.OK.value] * n
    errors = list(batch["error"]) if "error" in batch else [""] * n
    return [empty_row(batch["chunk_id"][i], batch["frame_index"][i], statuses[i], errors[i], extractor)
            for i in range(n)]


def empty_row(chunk_id, frame_index, status, error, extractor: str) -> dict:
    status = str(status)
    return {"chunk_id": str(chunk_id), "frame_index": int(frame_index), "coeffs": None, "landmarks": None,
            "extractor": extractor, "fit_error": None, "status": status,
            "error": str(error or "") if status != Status.OK.value else "", "align": None}


def fail(row: dict, status: Status, error: str) -> None:
    """Mark ``row`` failed with ``status`` and a human-readable ``error``."""
    row["status"], row["error"] = status.value, error


def to_batch(rows: list[dict]) -> dict[str, list]:
    """Rows to a column batch dict in COEFFS order."""
    return {key: [row[key] for row in rows] for key in COLUMNS}


def decode_row(data, row: dict) -> torch.Tensor | None:
    """A row's encoded image -> RGB float ``(3, H, W)`` (:mod:`reenact.data.codec`), or None after failing the row."""
    if data is None:
        return fail(row, Status.DECODE_ERROR, "no image bytes in the frame row")
    try:
        return bytes_to_tensor(bytes(data))
    except Exception as exc:  # a corrupt frame is a row, not a crash
        return fail(row, Status.DECODE_ERROR, f"cannot decode frame image: {exc}")


def decode_rows(batch: Mapping[str, Sequence[Any]], rows: list[dict]) -> dict[int, torch.Tensor]:
    """The decoded images of the rows still ``ok``, by row index; undecodable rows become ``decode_error`` rows."""
    column = batch["image"] if "image" in batch else [None] * len(rows)
    decoded = {i: decode_row(column[i], row) for i, row in enumerate(rows) if row["status"] == Status.OK.value}
    return {i: image for i, image in decoded.items() if image is not None}


def _finite_list(values: torch.Tensor | None) -> list | None:
    if values is None or not bool(torch.isfinite(values).all()):
        return None
    return values.reshape(-1).tolist()


def fill_estimate(row: dict, estimate, k: int, *, landmarks: bool = True) -> None:
    """Copy item ``k`` of a :class:`reenact.faces.estimate.CoeffEstimate` into ``row`` (status, error, coeffs,
    and the landmarks, fit error and alignment it carries)."""
    row["status"], row["error"] = estimate.status[k].value, estimate.error[k]
    row["coeffs"] = _finite_list(estimate.coeffs[k])
    if landmarks and estimate.landmarks is not None:
        row["landmarks"] = _finite_list(estimate.landmarks[k].float())
    if estimate.fit_error is not None and np.isfinite(float(estimate.fit_error[k])):
        row["fit_error"] = float(estimate.fit_error[k])
    if estimate.align is not None:
        row["align"] = _finite_list(estimate.align[k])
