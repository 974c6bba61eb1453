"""CelebV ingest: ReenactGAN's ``CelebV/<Name>/Image/*.jpg`` -> 256^2 face crops in frame shards.

Layout. ``root`` is the CelebV folder (or a folder holding ``CelebV/``), or a ``.zip`` of it. Every folder that
holds an ``Image/`` folder is one identity (the paper's five are Donald_Trump, Emmanuel_Macron, Jack_Ma, Kathleen
and Theresa_May; any name is accepted). Its images are the ``*.jpg`` / ``*.jpeg`` files of ``Image/`` (dot files
skipped), sorted by file name; image ``i`` of that order is ``frame_index = source_frame = i``. In a zip the
identity is the folder above ``Image/`` of each member, whatever comes before it. Dot folders and ``__MACOSX``
are skipped; a folder without images is a ``decode_error`` row.

Rows (:data:`reenact.data.schema.CELEBV_FRAMES`: the FRAMES schema plus ``crop_box``). One chunk per identity,
``<Name>#<Name>#000000#<N:06d>`` with N images (``end`` exclusive, as a VoxCeleb chunk's ``start <= i < end`` and
as the synthetic world's CelebV truth), ``person_id = video_id = Name``, partition ``test``. Every image is a row:

* ``ok``: PNG (default) or JPEG bytes of the 256^2 crop, ``crop_box`` = (l, t, r, b) of the square that was
  resized, in source pixels (integers; it may leave the image);
* ``decode_error``: unreadable, truncated or corrupt file; ``no_face``: MTCNN found no face, or a face whose size
  is more than ``max_scale_ratio`` times off the identity's median (a false detection);
* ``rejected``: an image that is a symlink leaving the root, or a symlink / unsafe member of a zip.

An identity whose name fails :func:`reenact.data.schema.is_safe_id`, whose folder is a symlink leaving the root, or a
zip member whose path is absolute or traverses (``..``), is one ``rejected`` row (frame_index -1, the name as
written). An identity without images is one ``decode_error`` row (frame_index -1).

Crop policy (stable per identity, like a VoxCeleb chunk's one bbox):

1. MTCNN (:mod:`reenact.faces.landmarks5`, facenet-pytorch 2.5.3, largest face) on every image;
2. face size ``s_i = sqrt(w_i * h_i)`` of the detected box; the identity's size ``S = median_i s_i``;
3. crop side ``D = round(SCALE * S)`` pixels, one side for all the identity's images, with ``SCALE = 1.8``:
   in the synthetic world's VoxCeleb-style chunks the bbox side is 1.80 x sqrt(w h) of the true face box (median,
   1.61-2.09), and on its CelebV images MTCNN's box is 0.86-1.10 x the true face box per side (median ~0.98), so
   CelebV faces get the VoxCeleb scale (measured there: side / sqrt(w h) of the true box 1.71-1.84 per identity);
4. the square is centred on each image's box centre (``smooth`` > 1: a centred moving average of the centres
   over that many consecutive detected images; off by default, since CelebV images need not be consecutive
   frames), ``l = round(cx - D / 2)``, ``t = round(cy - D / 2)``;
5. where the square leaves the image it is padded with **black** (``pad="edge"`` repeats the border instead),
   then resized to 256^2 with PIL's bicubic filter, which widens its kernel by the scale factor when shrinking
   (anti-aliased; within a few grey levels of ``skimage.transform.resize(anti_aliasing=True)``).

Work and files. :func:`list_identities` plans (pure listing, no decoding): one :class:`IdentityJob` per identity.
:func:`ingest_identity` writes the identity's rows as the part ``<out>/parts/frames/<key>`` (atomic, stats as
done-marker, with the crop policy and an input token); :func:`celebv_stage` does that for a Ray Data batch (one
identity per row, the signature of ``pipelines.runner.crop_stage``); :func:`ingest_celebv` runs everything
locally and merges parts into ``frames-<shard:05d>.parquet`` shards (``identities_per_shard`` identities each, in
name order; rejected items share one last shard). A rerun skips done shards, and parts made from the same input
with the same settings. Each identity is decoded twice (detect, then crop) so memory stays one batch of images.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from reenact.data.codec import encode_image
from reenact.data.schema import CELEBV_FRAMES, ChunkId, Status, is_safe_id
from reenact.data.shards import (ParquetStream, check_plan, finish_part, is_done, merge_parts, part_is_current, part_paths,
                            read_stats, remove_parts)

STAGE = "frames"
OK = Status.OK.value
SCALE = 1.8
IMAGE_SUFFIXES = (".jpg", ".jpeg")
IMAGE_DIR = "Image"


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

    def digest(self) -> str:
        """What the crops depend on (not batch size or device), for the part's input token."""
        keys = ("size", "scale", "smooth", "max_scale_ratio", "pad", "partition", "image_format", "png_level",
                "jpeg_quality")
        return hashlib.sha256(json.dumps({k: getattr(self, k) for k in keys}).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- planning

@dataclass(frozen=True)
class ImageRef:
    """One image of an identity: ``path`` relative to the CelebV folder (or a zip member name)."""

    path: str
    status: str = OK
    error: str = ""


@dataclass(frozen=True)
class IdentityJob:
    """One identity (or one rejected item) to ingest: its images in frame order, read from ``source``."""

    name: str                               # folder name as written (may be unsafe when status = rejected)
    source: str                             # absolute path of the CelebV folder or the zip
    images: tuple[ImageRef, ...] = ()
    status: str = OK
    error: str = ""
    token: str = ""                         # digest of the listing (paths, sizes, times): changes with the input

    @property
    def key(self) -> str:
        """Part name: the identity name, or ``rejected.<digest>`` (never a safe id, so never a collision)."""
        if self.status == Status.REJECTED.value:
            return "rejected." + hashlib.sha256(self.name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
        return self.name

    @property
    def chunk_id(self) -> str:
        if self.status == Status.REJECTED.value:
            return printable(self.name)
        return str(ChunkId(self.name, self.name, 0, len(self.images)))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "IdentityJob":
        d = json.loads(text)
        return cls(**{**d, "images": tuple(ImageRef(**i) for i in d["images"])})


def printable(name: str) -> str:
    """A name as valid UTF-8 text (undecodable file-name bytes become ``\\udcXX`` escapes)."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def _rejected(name: str, source: Path, why: str) -> IdentityJob:
    return IdentityJob(name, str(source), (), Status.REJECTED.value, f"rejected {printable(name)!r}: {why}")


def _digest(entries: Sequence[Any]) -> str:
    return hashlib.sha256(json.dumps(entries, default=str).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def celebv_dir(root: Path) -> Path:
    """``root`` itself when it holds identity folders, else ``root/CelebV`` when that exists."""
    if not any((p / IMAGE_DIR).is_dir() for p in root.iterdir()) and (root / "CelebV").is_dir():
        return root / "CelebV"
    return root


def list_identities(root: str | os.PathLike) -> list[IdentityJob]:
    """Every identity under ``root`` (folder or zip), in name order, rejected items included.

    Reads the listing only (names, sizes, times); nothing is decoded. Raises ValueError when ``root`` is neither
    a folder nor a zip file.
    """
    root = Path(root)
    if root.is_dir():
        return _folder_identities(celebv_dir(root).resolve())
    if root.is_file() and zipfile.is_zipfile(root):
        return _zip_identities(root.resolve())
    raise ValueError(f"CelebV root must be a folder or a .zip file, got {os.fspath(root)!r}")


def _inside(path: Path, base: Path) -> bool:
    """True when ``path`` resolves (symlinks followed) to a place inside ``base`` (already resolved)."""
    try:
        return path.resolve().is_relative_to(base)
    except (OSError, RuntimeError):         # a symlink loop
        return False


def _folder_identities(base: Path) -> list[IdentityJob]:
    jobs = []
    for entry in sorted(base.iterdir(), key=lambda p: p.name):
        if not entry.is_dir() or entry.name.startswith(".") or entry.name == "__MACOSX":
            continue
        if not is_safe_id(entry.name):
            jobs.append(_rejected(entry.name, base, "unsafe identity name (allowed: [A-Za-z0-9_-], 1-64 chars)"))
        elif not _inside(entry, base):
            jobs.append(_rejected(entry.name, base, "the identity folder is a symlink leaving the CelebV root"))
        else:
            jobs.append(_folder_identity(entry.name, base))
    return jobs


def _folder_identity(name: str, base: Path) -> IdentityJob:
    folder = base / name / IMAGE_DIR
    files = sorted(p.name for p in folder.iterdir() if is_image_name(p.name)) if folder.is_dir() else []
    images, listing = [], []
    for file in files:
        path = folder / file
        rel = f"{name}/{IMAGE_DIR}/{file}"
        if not _inside(path, base):
            images.append(ImageRef(rel, Status.REJECTED.value, f"rejected {printable(rel)!r}: a symlink leaving "
                                                               "the CelebV root (not followed)"))
            listing.append([rel, "rejected"])
            continue
        try:
            st = path.stat()
            listing.append([rel, st.st_size, st.st_mtime_ns])
        except OSError as e:
            listing.append([rel, repr(e)])
        images.append(ImageRef(rel))
    return _identity_job(name, base, images, listing)


def _identity_job(name: str, source: Path, images: list[ImageRef], listing: list) -> IdentityJob:
    if not images:
        return IdentityJob(name, str(source), (), Status.DECODE_ERROR.value,
                           f"no {IMAGE_DIR}/*.jpg images for identity {name!r}", _digest([]))
    return IdentityJob(name, str(source), tuple(images), token=_digest(listing))


def member_problem(info: zipfile.ZipInfo) -> str | None:
    """Why a zip member is unsafe (absolute, drive, backslash or ``..`` / ``.`` / empty parts, symlink), or None."""
    name = info.filename
    parts = name.rstrip("/").split("/")
    if name.startswith("/") or "\\" in name or (parts and ":" in parts[0]):
        return "an absolute or non-portable member path"
    if any(p in ("", ".", "..") for p in parts):
        return "a member path that traverses (empty, '.' or '..' parts)"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "a symlink member (never followed)"
    return None


def _zip_identities(source: Path) -> list[IdentityJob]:
    by_name: dict[str, list[tuple[str, str, zipfile.ZipInfo]]] = {}
    rejected = []
    with zipfile.ZipFile(source) as zf:
        for info in zf.infolist():
            if info.filename.startswith("__MACOSX/"):
                continue
            problem = member_problem(info)
            if problem is not None:
                rejected.append(_rejected(info.filename, source, problem))
                continue
            parts = PurePosixPath(info.filename).parts
            if info.is_dir() or len(parts) < 3 or parts[-2] != IMAGE_DIR or not is_image_name(parts[-1]):
                continue
            by_name.setdefault(parts[-3], []).append((parts[-1], info.filename, info))
    jobs = []
    for name in sorted(by_name):
        if not is_safe_id(name):
            jobs.append(_rejected(name, source, "unsafe identity name (allowed: [A-Za-z0-9_-], 1-64 chars)"))
            continue
        members = sorted(by_name[name], key=lambda m: (m[0], m[1]))
        jobs.append(_identity_job(name, source, [ImageRef(m[1]) for m in members],
                                  [[m[1], m[2].file_size, m[2].CRC, m[2].date_time] for m in members]))
    return jobs + sorted(rejected, key=lambda j: j.name)


# ---------------------------------------------------------------- reading

class ImageSource:
    """Reads the raw bytes of an identity's images from its folder or zip (``with`` closes the zip)."""

    def __init__(self, source: str | os.PathLike):
        self.base = Path(source)
        self.zip = zipfile.ZipFile(self.base) if self.base.is_file() else None

    def read(self, path: str) -> bytes:
        if self.zip is not None:
            return self.zip.read(path)
        full = self.base / path
        if not _inside(full, self.base):    # checked again at read time: the tree may have changed
            raise PermissionError(f"{path!r} leaves the CelebV root")
        return full.read_bytes()

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()

    def __enter__(self) -> "ImageSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def decode_jpeg(data: bytes) -> np.ndarray:
    """Encoded bytes -> RGB uint8 ``(H, W, 3)``; raises (OSError, ValueError, ...) for corrupt or truncated data."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return np.asarray(im.convert("RGB"))


def read_image(reader: ImageSource, ref: ImageRef) -> tuple[np.ndarray | None, str]:
    """(RGB array, "") or (None, reason) for a file that cannot be read or decoded."""
    try:
        return decode_jpeg(reader.read(ref.path)), ""
    except Exception as e:                  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError
        reason = re.sub(r" ?<[^<>]* at 0x[0-9a-fA-F]+>", "", str(e))     # no object addresses: reruns match
        return None, f"cannot decode {printable(ref.path)!r}: {type(e).__name__}: {reason}"


# ---------------------------------------------------------------- the crop policy (pure)

def face_size(box: Sequence[float]) -> float:
    """``sqrt(w h)`` of an l-t-r-b box."""
    left, top, right, bottom = box
    return float(np.sqrt(max(right - left, 0.0) * max(bottom - top, 0.0)))


def crop_side(sizes: Sequence[float], scale: float = SCALE) -> int:
    """The identity's crop side ``round(scale * median(sizes))`` (at least 1 pixel)."""
    if len(sizes) == 0:
        raise ValueError("crop_side needs at least one face size, got none")
    return max(1, int(round(scale * float(np.median(sizes)))))


def smooth_centres(centres: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average of ``(N, 2)`` centres over ``window`` images (shrunk at the ends)."""
    if window <= 1 or len(centres) <= 1:
        return np.asarray(centres, dtype=np.float64)
    half = window // 2
    cumsum = np.vstack([np.zeros((1, 2)), np.cumsum(centres, axis=0)])   # (N + 1) x 2
    lo = np.clip(np.arange(len(centres)) - half, 0, None)
    hi = np.clip(np.arange(len(centres)) + half + 1, None, len(centres))
    return (cumsum[hi] - cumsum[lo]) / (hi - lo)[:, None]


@dataclass(frozen=True)
class CropPlan:
    """The crop of every image of one identity.

    ``boxes[i]`` is (left, top, side) in source pixels, or None; ``reasons[i]`` says why not (no_face) or "".
    """

    face_size: float | None                 # median sqrt(w h) of the kept detections, pixels
    side: int | None                        # crop side D, pixels
    boxes: tuple[tuple[int, int, int] | None, ...]
    reasons: tuple[str, ...]


def plan_crops(boxes: Sequence[Sequence[float] | None], scale: float = SCALE, smooth: int = 1,
               max_scale_ratio: float = 2.0) -> CropPlan:
    """Crop squares from an identity's detected face boxes (l-t-r-b, or None where nothing was detected)."""
    sizes = {i: face_size(b) for i, b in enumerate(boxes) if b is not None}
    if not sizes:
        return CropPlan(None, None, (None,) * len(boxes), tuple("" for _ in boxes))
    median = float(np.median(list(sizes.values())))
    reasons = ["" if b is not None else "MTCNN found no face" for b in boxes]
    for i, s in sizes.items():
        if not median / max_scale_ratio <= s <= median * max_scale_ratio:
            reasons[i] = (f"MTCNN face of size {s:.1f} px is more than {max_scale_ratio:g}x off the identity's median "
                          f"{median:.1f} px (taken for a false detection)")
    kept = [i for i in sizes if not reasons[i]]
    side = crop_side([sizes[i] for i in kept], scale)
    centres = np.array([[(boxes[i][0] + boxes[i][2]) / 2, (boxes[i][1] + boxes[i][3]) / 2] for i in kept])
    out: list[tuple[int, int, int] | None] = [None] * len(boxes)
    for i, (cx, cy) in zip(kept, smooth_centres(centres, smooth)):
        out[i] = (int(round(cx - side / 2)), int(round(cy - side / 2)), side)
    return CropPlan(float(np.median([sizes[i] for i in kept])), side, tuple(out), tuple(reasons))


def crop_square(rgb: np.ndarray, box: tuple[int, int, int], size: int = 256,
                pad: Literal["black", "edge"] = "black") -> np.ndarray:
    """The square ``box`` = (left, top, side) of ``rgb (H, W, 3)``, padded where it leaves the image, resized to
    ``size x size`` (PIL bicubic, anti-aliased when shrinking). Returns uint8 ``(size, size, 3)``."""
    from PIL import Image

    left, top, side = box
    height, width = rgb.shape[:2]
    window = rgb[max(top, 0):min(top + side, height), max(left, 0):min(left + side, width)]
    widths = ((max(-top, 0), max(top + side - height, 0)), (max(-left, 0), max(left + side - width, 0)), (0, 0))
    if pad == "edge" and window.size:
        window = np.pad(window, widths, mode="edge")
    else:
        window = np.pad(window, widths, mode="constant")     # side x side x 3
    if side == size:
        return np.ascontiguousarray(window)
    return np.asarray(Image.fromarray(window).resize((size, size), Image.Resampling.BICUBIC))


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


@dataclass(frozen=True)
class IdentityResult:
    """What ingesting one identity produced (also in the part's stats)."""

    key: str
    rows: int
    frames: int                             # ok rows
    status: dict[str, int]
    face_size: float | None
    side: int | None
    seconds: float


def ingest_identity(job: IdentityJob, out: str | os.PathLike,
                    settings: CelebVSettings = CelebVSettings()) -> IdentityResult:
    """Detect, crop and write every image of ``job`` as the part ``<out>/parts/frames/<job.key>``."""
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
    frames = rows.status.get(OK, 0)
    result = IdentityResult(job.key, stream.rows, frames, dict(rows.status), plan.face_size, plan.side,
                            time.perf_counter() - t0)
    finish_part(out, STAGE, job.key, extra_stats={
        "identities": 1, "images": len(job.images), "frames": frames, "seconds": result.seconds,
        "crop": {"name": printable(job.name), "face_size": plan.face_size, "side": plan.side,
                 "scale": settings.scale, "pad": settings.pad},
        "input": input_token(job, settings)})
    return result


# ---------------------------------------------------------------- Ray Data stage

def celebv_stage(batch: dict[str, np.ndarray], *, out: str, settings: CelebVSettings) -> dict[str, np.ndarray]:
    """Ray Data stage: ingest each identity of the batch (column ``job``: :meth:`IdentityJob.to_json`).

    Writes ``<out>/parts/frames/<key>`` unless a part made from the same input and settings is done; adds the
    column ``frames`` (ok rows per identity). Items: ``{"video_id": job.key, "shard": s, "job": job.to_json()}``.
    """
    frames = []
    for job_json in batch["job"]:
        job = IdentityJob.from_json(str(job_json))
        if not part_is_current(out, STAGE, job.key, input_token(job, settings)):
            ingest_identity(job, out, settings)
        frames.append(json.loads(part_paths(out, STAGE, job.key)[1].read_text()).get("frames", 0))
    return batch | {"frames": np.array(frames, dtype=np.int64)}


# ---------------------------------------------------------------- local runner

def shard_plan(jobs: Sequence[IdentityJob], identities_per_shard: int = 1) -> list[list[IdentityJob]]:
    """Identities in name order, ``identities_per_shard`` per shard; rejected items together in one last shard."""
    if identities_per_shard < 1:
        raise ValueError(f"identities_per_shard must be >= 1, got {identities_per_shard}")
    kept = [j for j in jobs if j.status != Status.REJECTED.value]
    rejected = [j for j in jobs if j.status == Status.REJECTED.value]
    shards = [list(kept[i:i + identities_per_shard]) for i in range(0, len(kept), identities_per_shard)]
    return shards + ([rejected] if rejected else [])


@dataclass(frozen=True)
class IngestResult:
    shards: int
    shards_skipped: int
    identities: int                         # identity jobs (rejected items included)
    frames: int                             # ok rows in all shards
    status: dict[str, int]                  # status histogram of all rows
    seconds: float


def ingest_celebv(root: str | os.PathLike, out: str | os.PathLike, settings: CelebVSettings = CelebVSettings(),
                  identities_per_shard: int = 1, keep_parts: bool = False) -> IngestResult:
    """Ingest the CelebV tree (or zip) at ``root`` into ``out``, locally and without Ray; rerun to resume."""
    from reenact.config import save_run_config

    t0, out = time.perf_counter(), Path(out)
    jobs = list_identities(root)
    shards = shard_plan(jobs, identities_per_shard)
    plan = {"root": str(Path(root).resolve()), "shards": [[j.key for j in s] for s in shards]}
    check_plan(out, plan)
    out.mkdir(parents=True, exist_ok=True)
    save_run_config(settings, out, plan=plan, dataset="celebv", identities_per_shard=identities_per_shard)
    pending = [s for s in range(len(shards)) if not is_done(out, STAGE, s)]
    for s in pending:
        keys = [job.key for job in shards[s]]
        batch = {"video_id": np.array(keys), "shard": np.full(len(keys), s), "job": [j.to_json() for j in shards[s]]}
        celebv_stage(batch, out=str(out), settings=settings)
        finalize_shard(out, s, keys, keep_parts)
    stats = read_stats(out, STAGE)
    status: dict[str, int] = {}
    for st in stats:
        for k, v in st["status"].items():
            status[k] = status.get(k, 0) + v
    return IngestResult(len(shards), len(shards) - len(pending), len(jobs), sum(st.get("frames", 0) for st in stats),
                        status, time.perf_counter() - t0)


def finalize_shard(out: str | os.PathLike, shard: int, keys: list[str], keep_parts: bool = False) -> dict[str, Any]:
    """Merge the done parts of ``keys`` into ``frames-<shard>`` (stats with each identity's crop policy last)."""
    crops = [json.loads(part_paths(out, STAGE, k)[1].read_text()).get("crop") for k in keys]
    stats = merge_parts(out, STAGE, shard, keys, CELEBV_FRAMES, extra_stats={"crop": crops})
    if not keep_parts:
        remove_parts(out, STAGE, keys)
    return stats


__all__ = ["CelebVSettings", "CropPlan", "IdentityJob", "ImageRef", "IngestResult", "celebv_stage", "crop_side",
           "crop_square", "face_size", "ingest_celebv", "ingest_identity", "list_identities", "plan_crops",
           "shard_plan", "smooth_centres"]
