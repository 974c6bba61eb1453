"""Coefficient rows, written once for every extractor: one ``reenact.data.schema.COEFFS`` row per input frame row."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

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
