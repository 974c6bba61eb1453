"""CelebV identity stage: one identity's images -> 256^2 face crops as the item's part (MTCNN, then the crop
policy of :mod:`pipelines.celebv_crop`); listing and reading are :mod:`pipelines.celebv_listing`, running is the
engine's (:mod:`pipelines.engine`, ``reenact prepare celebv``).

Rows (:data:`reenact.data.schema.CELEBV_FRAMES`: the FRAMES schema plus ``crop_box``). One chunk per identity,
``<Name>#<Name>#000000#<N:06d>`` with N images (``end`` exclusive, as a VoxCeleb chunk's ``start <= i < end`` and
as the synthetic world's CelebV truth), ``person_id = video_id = Name``, partition ``test``. Every image is a row:

* ``ok``: PNG (default) or JPEG bytes of the 256^2 crop, ``crop_box`` = (l, t, r, b) of the square that was
  resized, in source pixels (integers; it may leave the image);
* ``decode_error``: unreadable, truncated or corrupt file; ``no_face``: MTCNN found no face, or a face whose size
  is more than ``max_scale_ratio`` times off the identity's median (a false detection);
* ``rejected``: an image that is a symlink leaving the root, or a symlink / unsafe member of a zip.

A rejected identity (unsafe name, symlinked folder, unsafe zip member) is one ``rejected`` row (frame_index -1, the
name as written); an identity without images is one ``decode_error`` row (frame_index -1).

Work. :func:`ingest_identity` writes the identity's rows as the part ``<out>/parts/frames/<key>`` (stats as done
marker, with the identity's crop and an input token); :func:`celebv_stage` does that for a batch (one identity per
row) unless a part made from the same input with the same settings is done; :func:`identity_items` puts the
identities into shards (``identities_per_shard`` each, in name order; rejected items share one last shard). Each
identity is decoded twice (detect, then crop) so memory stays one batch of images.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from pipelines.celebv_crop import SCALE, CropPlan, crop_square, plan_crops
from pipelines.celebv_listing import IdentityJob, ImageSource, printable, read_image
from pipelines.engine import WorkItem, ensure_part, shard_items
from reenact.data.codec import encode_image
from reenact.data.schema import CELEBV_FRAMES, Status
from reenact.data.shards import ParquetStream, finish_part, part_paths

STAGE = "frames"
OK = Status.OK.value


@dataclass(frozen=True)
class CelebVSettings:
    """How CelebV identities are detected, cropped and stored (see the module docstring for the policy)."""

    size: int = 256                         # output side, pixels
    scale: float = SCALE                    # crop side / median face size sqrt(w h)
    smooth: int = 1                         # centre moving-average window, images (1 = off)
    max_scale_ratio: float = 2.0            # a face this many times off the median size is a false detection
    pad: Literal["black", "edge"] = "black"
    partition: str = "test"
    image_format: Literal["png", "jpeg"] = "png"
    png_level: int = 1
    jpeg_quality: int = 95
    detect_batch: int = 16                  # images per MTCNN call
    device: str = "cpu"

    def __post_init__(self):
        if self.size < 1 or self.scale <= 0 or self.smooth < 1 or self.max_scale_ratio < 1 or self.detect_batch < 1:
            raise ValueError(f"invalid CelebV settings: {self}")
        if self.pad not in ("black", "edge"):
            raise ValueError(f"pad must be 'black' or 'edge', got {self.pad!r}")

    def outputs(self) -> dict[str, Any]:
        """The settings the crops depend on (not batch size or device)."""
        keys = ("size", "scale", "smooth", "max_scale_ratio", "pad", "partition", "image_format", "png_level",
                "jpeg_quality")
        return {k: getattr(self, k) for k in keys}

    def digest(self) -> str:
        """:meth:`outputs` hashed, for the part's input token."""
        return hashlib.sha256(json.dumps(self.outputs()).encode()).hexdigest()[:16]



# ---------------------------------------------------------------- one identity

@lru_cache(maxsize=2)
def detector(device: str = "cpu"):
    """One MTCNN per process and device (Ray tasks reuse their worker process)."""
    from reenact.faces.landmarks5 import Landmarks5

    return Landmarks5(device=device)


def _batches(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(start + size, n))


def detect_identity(job: IdentityJob, reader: ImageSource, settings: CelebVSettings
                    ) -> tuple[list[np.ndarray | None], list[str]]:
    """Pass 1: MTCNN box (l-t-r-b) per image, or None with the image's status error (decode / rejected)."""
    boxes: list[np.ndarray | None] = [None] * len(job.images)
    errors = [ref.error if ref.status != OK else "" for ref in job.images]
    for batch in _batches(len(job.images), settings.detect_batch):
        todo, arrays = [], []
        for i in batch:
            if job.images[i].status != OK:
                continue
            rgb, errors[i] = read_image(reader, job.images[i])
            if rgb is not None:
                todo.append(i)
                arrays.append(rgb)
        for i, found in zip(todo, detector(settings.device)(arrays) if arrays else []):
            boxes[i] = None if found is None else found.box
    return boxes, errors


class _Rows:
    """Accumulates CELEBV_FRAMES rows of one identity and writes them to a stream in batches."""

    COLUMNS = CELEBV_FRAMES.names

    def __init__(self, job: IdentityJob, settings: CelebVSettings, stream: ParquetStream):
        self.job, self.settings, self.stream = job, settings, stream
        self.rows: list[dict[str, Any]] = []
        self.status: dict[str, int] = {}

    def add(self, frame_index: int, status: str, error: str = "", image: bytes | None = None,
            box: tuple[int, int, int] | None = None) -> None:
        ok, s, job = status == OK, self.settings, self.job
        name = printable(job.name)
        self.rows.append({
            "chunk_id": job.chunk_id, "video_id": name, "person_id": name, "partition": s.partition,
            "frame_index": frame_index, "source_frame": frame_index if frame_index >= 0 else None,
            "image": image, "image_format": s.image_format if ok else None, "height": s.size if ok else None,
            "width": s.size if ok else None, "status": status, "error": "" if ok else error,
            "crop_box": [box[0], box[1], box[0] + box[2], box[1] + box[2]] if box is not None else None})
        self.status[status] = self.status.get(status, 0) + 1
        if len(self.rows) >= 64:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.stream.write(pa.Table.from_pylist(self.rows, schema=CELEBV_FRAMES))
            self.rows = []


def _write_crops(job: IdentityJob, reader: ImageSource, plan: CropPlan, errors: list[str],
                 settings: CelebVSettings, rows: _Rows) -> None:
    """Pass 2: decode again, crop, encode; one row per image in frame order."""
    for i, ref in enumerate(job.images):
        if ref.status != OK:
            rows.add(i, ref.status, ref.error)
        elif errors[i]:
            rows.add(i, Status.DECODE_ERROR.value, errors[i])
        elif plan.boxes[i] is None:
            rows.add(i, Status.NO_FACE.value, f"{printable(ref.path)}: {plan.reasons[i]}")
        else:
            rgb, error = read_image(reader, ref)
            if rgb is None:
                rows.add(i, Status.DECODE_ERROR.value, error)
                continue
            crop = crop_square(rgb, plan.boxes[i], settings.size, settings.pad)
            rows.add(i, OK, image=encode_image(crop, settings.image_format, png_level=settings.png_level,
                                               jpeg_quality=settings.jpeg_quality), box=plan.boxes[i])


def input_token(job: IdentityJob, settings: CelebVSettings) -> str:
    """What a part was made from: the listing digest, the status and the settings that shape the crops."""
    return f"{job.token}|{job.status}|{settings.digest()}"


def ingest_identity(job: IdentityJob, out: str | os.PathLike,
                    settings: CelebVSettings = CelebVSettings()) -> dict[str, Any]:
    """Detect, crop and write every image of ``job`` as the part ``<out>/parts/frames/<job.key>``; returns the
    part's stats (rows, status histogram, frames, the identity's crop, input token)."""
    t0 = time.perf_counter()
    stream = ParquetStream(part_paths(out, STAGE, job.key)[0], CELEBV_FRAMES)
    rows = _Rows(job, settings, stream)
    plan = CropPlan(None, None, (), ())
    try:
        if job.status != OK:
            rows.add(-1, job.status, job.error)
        else:
            with ImageSource(job.source) as reader:
                boxes, errors = detect_identity(job, reader, settings)
                plan = plan_crops(boxes, settings.scale, settings.smooth, settings.max_scale_ratio)
                _write_crops(job, reader, plan, errors, settings, rows)
        rows.flush()
    except BaseException:
        stream.abort()
        raise
    stream.close()
    return finish_part(out, STAGE, job.key, extra_stats={
        "identities": 1, "images": len(job.images), "frames": rows.status.get(OK, 0),
        "seconds": time.perf_counter() - t0,
        "crop": {"name": printable(job.name), "face_size": plan.face_size, "side": plan.side,
                 "scale": settings.scale, "pad": settings.pad},
        "input": input_token(job, settings)})


# ---------------------------------------------------------------- the stage and the shard plan

def celebv_stage(batch: dict[str, np.ndarray], *, out: str, settings: CelebVSettings) -> dict[str, np.ndarray]:
    """Engine stage: ingest each identity of the batch (column ``job``: :meth:`IdentityJob.to_json`).

    Writes ``<out>/parts/frames/<key>`` unless a part made from the same input and settings is done; adds the
    column ``frames`` (ok rows per identity). Items: ``{"key": job.key, "shard": s, "job": job.to_json()}``.
    """
    frames = []
    for job_json in batch["job"]:
        job = IdentityJob.from_json(str(job_json))
        stats = ensure_part(out, STAGE, job.key, input_token(job, settings),
                            lambda job=job: ingest_identity(job, out, settings))
        frames.append(stats.get("frames", 0))
    return batch | {"frames": np.array(frames, dtype=np.int64)}


def identity_items(jobs: Sequence[IdentityJob], identities_per_shard: int = 1) -> tuple[tuple[WorkItem, ...], ...]:
    """Work items in shards: identities in name order, ``identities_per_shard`` per shard; rejected items together
    in one last shard."""
    kept = [WorkItem(j.key, j.to_json()) for j in jobs if j.status != Status.REJECTED.value]
    rejected = tuple(WorkItem(j.key, j.to_json()) for j in jobs if j.status == Status.REJECTED.value)
    return shard_items(kept, identities_per_shard) + ((rejected,) if rejected else ())
