"""``vox-metadata.csv`` (AliaksandrSiarohin/video-preprocessing) parsed into typed rows and per-video jobs.

Columns: ``video_id,start,end,bbox,fps,width,height,partition,person_id``. ``start``/``end`` are frame indices at
the reference ``fps``; ``bbox`` is ``left-top-right-bottom`` in pixels of the reference ``width`` x ``height``.

A bad row is a row, never an exception: a malformed row gets status ``bad_metadata`` and a reason, a row whose
``video_id`` or ``person_id`` is unsafe as a file name (path traversal, separators) gets status ``rejected``. Only a
file without the expected header raises (a broken config, not a bad item).

The official ``load_videos.py`` semantics, applied by :func:`video_jobs`:

* partition, person_id and the reference fps / width / height of a video come from the **first row** of its
  ``video_id`` (here: the first valid row) and hold for all its clips;
* one clip per distinct ``(video_id, start, end)``: duplicate rows write the same file there, so the last row's
  bbox wins (in the published file duplicates are exact copies);
* each clip is named by :class:`reenact.data.schema.ChunkId`, ``<person_id>#<video_id>#<start:06d>#<end:06d>``.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import pyarrow as pa

from reenact.config import UserError
from reenact.data.schema import METADATA, ChunkId, Status, is_safe_id

COLUMNS = ("video_id", "start", "end", "bbox", "fps", "width", "height", "partition", "person_id")
INT32_MAX = 2**31 - 1               # start, end, bbox, width, height are int32 columns (reenact.data.schema.METADATA)
MIN_FPS, MAX_FPS = 1.0, 1000.0      # a sane frame rate; outside it a row is bad_metadata
MAX_FIELD = 1024                    # characters; a longer field makes the row bad_metadata


@dataclass(frozen=True)
class MetadataRow:
    """One CSV row, typed. Fields that did not parse are None; ``status``/``error`` say why."""

    line: int                      # 1-based line number in the file (the header is line 1)
    video_id: str
    start: int | None = None
    end: int | None = None
    bbox: tuple[int, int, int, int] | None = None   # l, t, r, b at the reference resolution
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    partition: str = ""
    person_id: str = ""
    status: str = Status.OK.value
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == Status.OK.value


@dataclass(frozen=True)
class Clip:
    """One output chunk of a video: frames ``[start, end)`` at the reference fps, cropped with ``bbox``."""

    start: int
    end: int
    bbox: tuple[int, int, int, int]
    line: int                      # the CSV line whose bbox is used


@dataclass(frozen=True)
class VideoJob:
    """All clips of one source video, with the reference geometry of its first row."""

    video_id: str
    person_id: str
    partition: str
    ref_fps: float
    ref_width: int
    ref_height: int
    clips: tuple[Clip, ...] = field(default_factory=tuple)

    def chunk_id(self, clip: Clip) -> ChunkId:
        return ChunkId(self.person_id, self.video_id, clip.start, clip.end)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "VideoJob":
        d = json.loads(text)
        clips = tuple(Clip(c["start"], c["end"], tuple(c["bbox"]), c["line"]) for c in d.pop("clips"))
        return cls(**d, clips=clips)


# ---------------------------------------------------------------- parsing one row

def _bad(line: int, video_id: str, reason: str, status: Status = Status.BAD_METADATA) -> MetadataRow:
    return MetadataRow(line=line, video_id=video_id, status=status.value, error=reason)


def _int32(text: str, name: str, low: int = 0) -> int:
    """A decimal integer in ``[low, INT32_MAX]`` (the column type), else ValueError naming it."""
    text = text.strip()
    if re.fullmatch(r"-?[0-9]{1,12}", text) is None:
        raise ValueError(f"{name} must be an integer, got {_short(text)!r}")
    value = int(text)
    if not low <= value <= INT32_MAX:
        raise ValueError(f"{name} must be within [{low}, {INT32_MAX}], got {_short(text)!r}")
    return value


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def parse_fps(text: str) -> float:
    """A frame rate within ``[MIN_FPS, MAX_FPS]`` (so frame arithmetic stays exact in float64), else ValueError."""
    try:
        fps = float(text)
    except ValueError:
        raise ValueError(f"fps must be a number, got {_short(text)!r}") from None
    if not MIN_FPS <= fps <= MAX_FPS:                  # also refuses nan and inf
        raise ValueError(f"fps must be within [{MIN_FPS:g}, {MAX_FPS:g}], got {_short(text)!r}")
    return fps


def parse_bbox(text: str) -> tuple[int, int, int, int]:
    """``"l-t-r-b"`` -> (l, t, r, b); ValueError unless four ints in [0, INT32_MAX] with r > l and b > t."""
    parts = text.strip().split("-")
    if len(parts) != 4 or not all(p.isascii() and p.isdigit() for p in parts):
        raise ValueError(f"bbox must be four non-negative integers 'l-t-r-b', got {_short(text)!r}")
    left, top, right, bottom = (_int32(p, "bbox") for p in parts)
    if right <= left or bottom <= top:
        raise ValueError(f"bbox {text!r} is empty (needs right > left and bottom > top)")
    return left, top, right, bottom




def parse_row(fields: list[str], line: int) -> MetadataRow:
    """One CSV record (already split) -> :class:`MetadataRow`, with status ``bad_metadata``/``rejected`` on error."""
    video_id = fields[0].strip() if fields else ""
    if len(fields) != len(COLUMNS):
        return _bad(line, _short(video_id), f"expected {len(COLUMNS)} fields, got {len(fields)}")
    if any(len(f) > MAX_FIELD for f in fields):
        return _bad(line, _short(video_id), f"a field longer than {MAX_FIELD} characters")
    video_id, start, end, bbox, fps, width, height, partition, person_id = (f.strip() for f in fields)
    for name, value in (("video_id", video_id), ("person_id", person_id), ("partition", partition)):
        if not is_safe_id(value):
            return _bad(line, video_id, f"unsafe {name} {value!r} (allowed: [A-Za-z0-9_-], 1-64 chars)",
                        Status.REJECTED)
    try:
        start_i, end_i = _int32(start, "start"), _int32(end, "end")
        if end_i <= start_i:
            raise ValueError(f"need 0 <= start < end, got start={start!r} end={end!r}")
        return MetadataRow(line, video_id, start_i, end_i, parse_bbox(bbox), parse_fps(fps),
                           _int32(width, "width", 1), _int32(height, "height", 1), partition, person_id)
    except ValueError as e:
        return _bad(line, video_id, str(e))


# ---------------------------------------------------------------- the whole file

def parse_csv_text(text: str) -> list[MetadataRow]:
    """All data rows of a metadata CSV (header required) as :class:`MetadataRow`, one per record, in order."""
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, len(text) + 1))  # an over-long field is a bad row (parse_row), not an error
    try:
        reader = csv.reader(io.StringIO(text))
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != COLUMNS:
            shown = _short(",".join(header)) if header else "an empty file"
            raise UserError(f"not a vox-metadata.csv: expected header {','.join(COLUMNS)}, got {shown!r}")
        return [parse_row(fields, reader.line_num) for fields in reader if fields]   # blank lines: no record
    finally:
        csv.field_size_limit(limit)


def read_metadata(path: str | os.PathLike) -> list[MetadataRow]:
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        return parse_csv_text(f.read())


def video_jobs(rows: Iterable[MetadataRow]) -> list[VideoJob]:
    """Group valid rows into one :class:`VideoJob` per video, in order of first appearance (load_videos.py rules).

    Clips are deduplicated on ``(start, end)`` (the last row's bbox wins) and sorted by ``(start, end)``.
    """
    first: dict[str, MetadataRow] = {}
    clips: dict[str, dict[tuple[int, int], Clip]] = {}
    for row in rows:
        if not row.ok:
            continue
        first.setdefault(row.video_id, row)
        clips.setdefault(row.video_id, {})[(row.start, row.end)] = Clip(row.start, row.end, row.bbox, row.line)
    return [VideoJob(vid, r.person_id, r.partition, r.fps, r.width, r.height,
                     tuple(clips[vid][k] for k in sorted(clips[vid])))
            for vid, r in first.items()]


def superseded_lines(rows: Iterable[MetadataRow]) -> set[int]:
    """Lines of valid rows whose clip is produced from another (later) row: the duplicates dropped."""
    kept: dict[tuple[str, int, int], int] = {}
    lines = []
    for row in rows:
        if row.ok:
            key = (row.video_id, row.start, row.end)
            if key in kept:
                lines.append(kept[key])
            kept[key] = row.line
    return set(lines)


def metadata_table(rows: list[MetadataRow], jobs: list[VideoJob]) -> pa.Table:
    """The parsed manifest as a table (one row per CSV record) with the chunk id and partition each row maps to.

    ``duplicate`` marks valid rows superseded by a later row for the same clip.
    """
    by_video = {j.video_id: j for j in jobs}
    dropped = superseded_lines(rows)
    jobs_of = [by_video.get(r.video_id) if r.ok else None for r in rows]
    cols = {name: [getattr(r, name) for r in rows]
            for name in ("line", "video_id", "start", "end", "fps", "width", "height", "partition", "person_id",
                         "status", "error")}
    cols["bbox"] = [list(r.bbox) if r.bbox else None for r in rows]
    cols["chunk_id"] = [str(ChunkId(j.person_id, r.video_id, r.start, r.end)) if j else None
                        for r, j in zip(rows, jobs_of)]
    cols["out_partition"] = [j.partition if j else None for j in jobs_of]
    cols["duplicate"] = [r.line in dropped for r in rows]
    return pa.table({f.name: cols[f.name] for f in METADATA}, schema=METADATA)
