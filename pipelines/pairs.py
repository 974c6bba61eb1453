"""Pair protocols from the suite's inputs: test chunks from ``vox-metadata.csv``, CelebV frame lists from prepared
shards, DaGAN's CSVs, and the pose discrepancy of each pair from its coefficients.

The sampling rules themselves are pure and live in :mod:`reenact.data.pairs`; this module reads the inputs and
computes the pose discrepancy with the 3D core's rotation conventions (:mod:`reenact.face3d.transforms`).

Pose discrepancy of a pair (source, driving), from the ``angle`` coefficients (pitch, yaw, roll; radians):

* ``geodesic``: the angle of the relative rotation ``R_s^T R_d`` (``R = euler_to_matrix(angle)``), in [0, pi];
* ``yaw`` / ``pitch`` / ``roll``: driving minus source, wrapped to (-pi, pi].

Stored in degrees in the PAIRS columns ``geodesic_deg``, ``yaw_diff_deg``, ``pitch_diff_deg``, ``roll_diff_deg``,
binned by the geodesic angle into ``pose_bin`` (default bins 0-10, 10-20, 20-30, 30+ degrees), with the
``extractor`` whose coefficients were used.
"""
from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from pipelines.metadata import read_metadata
from reenact.data.pairs import POSE_BIN_EDGES, Chunk, pose_bin
from reenact.data.schema import ChunkId, Status
from reenact.data.shards import read_stage
from reenact.face3d.coeffs import ANGLE
from reenact.face3d.transforms import euler_to_matrix, rotation_angle_between


def vox_test_chunks(metadata: str | os.PathLike) -> list[Chunk]:
    """The test chunks of a ``vox-metadata.csv``: every valid row whose own ``partition`` is ``test``, as
    ``<person_id>#<video_id>#<start>#<end>`` with length ``end - start`` (frames at the reference fps)."""
    rows = read_metadata(metadata)
    return sorted({Chunk(str(ChunkId(r.person_id, r.video_id, r.start, r.end)), r.end - r.start)
                   for r in rows if r.ok and r.partition == "test"}, key=lambda c: c.chunk_id)


def prepared_frames(prepared: str | os.PathLike, stage: str = "frames") -> dict[str, list[int]]:
    """``{chunk id: ok frame indices}`` of a prepared folder's finished frame shards."""
    table = read_stage(prepared, stage, ["chunk_id", "frame_index", "status"]).to_pydict()
    frames: dict[str, list[int]] = {}
    for chunk, index, status in zip(table["chunk_id"], table["frame_index"], table["status"]):
        if status == Status.OK.value:
            frames.setdefault(chunk, []).append(index)
    return {c: sorted(v) for c, v in sorted(frames.items())}


def read_dagan_csv(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(source, driving) paths of a DaGAN pair CSV (header ``source,driving,frame``)."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["source", "driving"]:
            raise ValueError(f"{path}: expected a DaGAN pair CSV with header source,driving,..., got {header!r}")
        return [(row[0], row[1]) for row in reader if row]


# ---------------------------------------------------------------- pose discrepancy

@dataclass(frozen=True)
class PoseDiscrepancy:
    """Per pair, radians, float64 ``(...)``: geodesic angle in [0, pi] and driving-minus-source Euler differences."""

    geodesic: torch.Tensor
    yaw: torch.Tensor
    pitch: torch.Tensor
    roll: torch.Tensor


def _wrap(angle: torch.Tensor) -> torch.Tensor:
    """Angles to (-pi, pi]."""
    return math.pi - torch.remainder(math.pi - angle, 2 * math.pi)


def pose_discrepancy(source_angles: torch.Tensor, driving_angles: torch.Tensor) -> PoseDiscrepancy:
    """Pose discrepancy of pairs from their ``angle`` coefficients ``(..., 3)`` (pitch, yaw, roll; radians)."""
    if source_angles.shape[-1:] != (3,) or source_angles.shape != driving_angles.shape:
        raise ValueError(f"expected two (..., 3) angle tensors of one shape, got {tuple(source_angles.shape)} and "
                         f"{tuple(driving_angles.shape)}")
    src, drv = source_angles.double(), driving_angles.double()
    geodesic = rotation_angle_between(euler_to_matrix(src), euler_to_matrix(drv))
    diff = _wrap(drv - src)
    return PoseDiscrepancy(geodesic, diff[..., 1], diff[..., 0], diff[..., 2])


def annotate_pose(pairs: pa.Table, coeffs: dict[str, np.ndarray], extractor: str,
                  edges: Sequence[float] = POSE_BIN_EDGES) -> pa.Table:
    """``pairs`` with the pose-discrepancy columns filled from ``coeffs`` (frame key -> 257 values) made by
    ``extractor``; pairs with a frame lacking coefficients keep nulls there."""
    src, drv = pairs.column("source").to_pylist(), pairs.column("driving").to_pylist()
    have = [s in coeffs and d in coeffs for s, d in zip(src, drv)]
    idx = [i for i, h in enumerate(have) if h]
    cols: dict[str, list] = {name: [None] * len(src) for name in
                             ("geodesic_deg", "yaw_diff_deg", "pitch_diff_deg", "roll_diff_deg", "pose_bin",
                              "extractor")}
    if idx:
        a_s = torch.from_numpy(np.stack([coeffs[src[i]][ANGLE] for i in idx]).astype(np.float64))
        a_d = torch.from_numpy(np.stack([coeffs[drv[i]][ANGLE] for i in idx]).astype(np.float64))
        pose = pose_discrepancy(a_s, a_d)
        for name, value in (("geodesic_deg", pose.geodesic), ("yaw_diff_deg", pose.yaw),
                            ("pitch_diff_deg", pose.pitch), ("roll_diff_deg", pose.roll)):
            for i, v in zip(idx, torch.rad2deg(value).tolist()):
                cols[name][i] = v
        for i in idx:
            cols["pose_bin"][i] = pose_bin(cols["geodesic_deg"][i], edges)
            cols["extractor"][i] = extractor
    for name, values in cols.items():
        field = pairs.schema.field(name)
        pairs = pairs.set_column(pairs.schema.get_field_index(name), field, pa.array(values, field.type))
    return pairs


def read_coeff_table(root: str | os.PathLike, stage: str = "coeffs") -> tuple[dict[str, np.ndarray], str]:
    """Coefficients of a prepared folder by frame key, and the extractor name (several joined by '+')."""
    from reenact.data.datasets import read_coeffs

    coeffs, extractors = read_coeffs(Path(root), stage)
    return coeffs, "+".join(extractors)
