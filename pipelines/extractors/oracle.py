"""The ``oracle`` coefficient extractor: the synthetic world's ground truth, as ``reenact.data.schema.COEFFS`` rows.

The synthetic world writes ``reenact.data.schema.SYNTH_TRUTH`` rows beside its media. Their ``coeffs`` / ``landmarks`` are
exact for the *source* image's camera (``width``, ``height``, ``focal``, ``cx``, ``cy``, distance 10); VoxCeleb-style
rows also carry ``crop_coeffs`` / ``crop_landmarks``, already expressed for their chunk's 256^2 crop with
``PerspectiveCamera.deep3d(256)`` (the convention of every extractor: coefficients describe the image they come
with).

Join: a frame row (``chunk_id``, ``frame_index``) takes the truth row with the same pair; failing that, the truth row
of the chunk's video (``ChunkId.parse(chunk_id).video_id``) at ``source_frame = start + frame_index`` (the CelebV
layout, whose "chunk" spans the identity's images). Then:

* a frame row with a ``crop_box`` column (l, t, r, b: square, in source pixels; e.g. CelebV, whose crop is decided by
  the ingest) gets the source coefficients re-framed into that crop (:func:`crop_coefficients`);
* otherwise the truth's ``crop_coeffs`` when present, else the truth's own ``crop_box`` re-framed the same way.

Re-framing changes only ``trans``: :func:`reenact.face3d.camera.reframe_translation` from the source camera's crop
``camera.crop(l, t, side, 256)`` to ``PerspectiveCamera.deep3d(256)`` (exact when the crop camera's principal point
is the crop centre, as for VoxCeleb-style chunks; otherwise a weak-perspective approximation: re-projected landmarks
move by a fraction of a pixel, up to ~1 px for a face far off the source camera's axis).
Frames without a truth row or a crop become ``fit_error`` rows with the reason.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipelines.extractors.rows import empty_rows, fail, to_batch
from reenact.data.schema import ChunkId, Status
from reenact.face3d.camera import PerspectiveCamera, reframe_translation
from reenact.face3d.coeffs import TRANS

NAME = "oracle"
CROP_SIZE = 256
#: truth columns the oracle reads (those absent from a file are treated as null)
TRUTH_COLUMNS = ("video_id", "source_frame", "chunk_id", "frame_index", "coeffs", "landmarks", "width", "height",
                 "focal", "cx", "cy", "crop_box", "crop_coeffs", "crop_landmarks")


# ---------------------------------------------------------------- pure geometry
def source_camera(truth: Mapping[str, Any]) -> PerspectiveCamera:
    """The source image's camera of one truth row."""
    return PerspectiveCamera(width=int(truth["width"]), height=int(truth["height"]), focal=float(truth["focal"]),
                             cx=float(truth["cx"]), cy=float(truth["cy"]))


def square_box(box: Sequence[float]) -> tuple[float, float, float]:
    """(left, top, side) of a square box ``(l, t, r, b)``; ValueError for a box that is not square."""
    left, top, right, bottom = (float(v) for v in box)
    side = right - left
    if side <= 0 or abs((bottom - top) - side) > 1e-6:
        raise ValueError(f"crop box must be square (l, t, r, b), got {tuple(box)}")
    return left, top, side


def crop_coefficients(coeffs: np.ndarray, camera: PerspectiveCamera, box: Sequence[float],
                      size: int = CROP_SIZE) -> np.ndarray:
    """Coefficients ``(..., 257)`` of a source image seen by ``camera`` -> those of the square crop ``box``
    (l, t, r, b source pixels) resized to ``size``^2, in ``PerspectiveCamera.deep3d(size)``. Only ``trans`` changes."""
    left, top, side = square_box(box)
    out = np.array(coeffs, dtype=np.float32, copy=True)
    trans = torch.as_tensor(np.asarray(coeffs, dtype=np.float64)[..., TRANS])
    out[..., TRANS] = reframe_translation(trans, camera.crop(left, top, side, size),
                                          PerspectiveCamera.deep3d(size)).numpy()
    return out


def crop_points(points: np.ndarray, box: Sequence[float], size: int = CROP_SIZE) -> np.ndarray:
    """Source-pixel points ``(..., 2)`` (continuous, pixel centres at +0.5) -> crop pixels of the resized crop."""
    left, top, side = square_box(box)
    return (np.asarray(points, dtype=np.float64) - [left, top]) * (size / side)


# ---------------------------------------------------------------- truth tables
def read_truth(source: str | os.PathLike | pa.Table) -> pa.Table:
    """The ground-truth table: a ``pa.Table``, a Parquet file, or a folder of them (``*.parquet``, recursively)."""
    if isinstance(source, pa.Table):
        return source
    path = Path(source)
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise FileNotFoundError(f"no ground-truth Parquet at {path} (the synthetic world writes it beside its media)")
    tables = []
    for f in files:
        names = pq.read_schema(f).names
        tables.append(pq.read_table(f, columns=[c for c in TRUTH_COLUMNS if c in names]))
    return pa.concat_tables(tables, promote_options="default")


class TruthIndex:
    """Truth rows by (chunk_id, frame_index) and by (video_id, source_frame); rows are plain dicts."""

    def __init__(self, table: pa.Table):
        rows = table.to_pylist()
        self.by_frame = {(r["chunk_id"], int(r["frame_index"])): r for r in rows
                         if r.get("chunk_id") is not None and r.get("frame_index") is not None}
        self.by_source = {(r["video_id"], int(r["source_frame"])): r for r in rows
                          if r.get("video_id") is not None and r.get("source_frame") is not None}

    def __len__(self) -> int:
        return len(self.by_source) or len(self.by_frame)

    def lookup(self, chunk_id: str, frame_index: int) -> dict | None:
        found = self.by_frame.get((chunk_id, frame_index))
        if found is not None:
            return found
        try:
            chunk = ChunkId.parse(chunk_id)
        except ValueError:
            return None
        return self.by_source.get((chunk.video_id, chunk.start + frame_index))


# ---------------------------------------------------------------- the extractor (a Ray actor)
class OracleExtractor:
    """Frame rows -> ground-truth coefficient rows (``extractor = oracle``), one per input row.

    Input columns: ``chunk_id``, ``frame_index``; optionally ``crop_box`` (l, t, r, b source pixels, square) and
    ``status`` / ``error`` (rows not ``ok`` upstream keep their status). ``fit_error`` is null (nothing is fitted).

    Args:
        truth: the synthetic world's ground truth (:func:`read_truth`: a table, a Parquet file or a folder).
        size: side of the crops the coefficients describe.
    """

    name = NAME

    def __init__(self, truth: str | os.PathLike | pa.Table, size: int = CROP_SIZE):
        self.index = TruthIndex(read_truth(truth))
        self.size = int(size)

    def __call__(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, list]:
        rows = empty_rows(batch, NAME)
        boxes = list(batch["crop_box"]) if "crop_box" in batch else [None] * len(rows)
        for row, box in zip(rows, boxes):
            if row["status"] == Status.OK.value:
                self._fill(row, box)
        return to_batch(rows)

    def _fill(self, row: dict, box) -> None:
        truth = self.index.lookup(row["chunk_id"], row["frame_index"])
        if truth is None:
            return fail(row, Status.FIT_ERROR, f"oracle: no ground-truth row for {row['chunk_id']} frame {row['frame_index']}")
        try:
            coeffs, points = self._crop_truth(truth, box)
        except (KeyError, TypeError, ValueError) as exc:
            return fail(row, Status.FIT_ERROR, f"oracle: cannot express the truth in the crop: {exc}")
        row["coeffs"] = np.asarray(coeffs, dtype=np.float32).tolist()
        row["landmarks"] = None if points is None else np.asarray(points, dtype=np.float32).reshape(-1).tolist()

    def _crop_truth(self, truth: dict, box) -> tuple[np.ndarray, np.ndarray | None]:
        if box is None and truth.get("crop_coeffs") is not None and self.size == CROP_SIZE:
            return np.asarray(truth["crop_coeffs"]), truth.get("crop_landmarks")
        box = box if box is not None else truth.get("crop_box")
        if box is None:
            raise ValueError("no crop box: the frame row has no crop_box and the truth row no crop_coeffs/crop_box")
        coeffs = crop_coefficients(np.asarray(truth["coeffs"]), source_camera(truth), box, self.size)
        points = truth.get("landmarks")
        if points is not None:
            points = crop_points(np.asarray(points).reshape(-1, 2), box, self.size)
        return coeffs, points
