"""Which VoxCeleb videos and chunks could be downloaded: counts per split and failure class, and the list of
available test chunks (the input of the pair-protocol filter), from a prepare folder's ledger and metadata.

A video is *available* when its ledger row says ok; a chunk when its video is (whether its frames cropped well is
the frames shards' business). Videos of the metadata without a ledger row yet (``--limit``, a run still going) are
*pending*. Failures are split by :class:`reenact.data.schema.Failure`: transient ones may still succeed on a rerun
with ``--retry-failed``, permanent ones are gone (``--retry-failed=all`` tries them anyway).

The list is written to ``<out>/available-<split>-chunks.txt``: a ``#`` header line saying how many of how many
chunks were available at the time of the newest ledger shard, then one chunk id per line, sorted.
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.download import STAGE as LEDGER_STAGE
from pipelines.download import failure_class
from reenact.data.schema import Failure, Status
from reenact.data.shards import done_shards, read_stage, read_stats

CLASSES = ("ok", Failure.TRANSIENT.value, Failure.PERMANENT.value, "pending")


@dataclass(frozen=True)
class SplitCounts:
    """One split (train / test): videos and chunks per class (:data:`CLASSES`), failed videos per status."""

    videos: dict[str, int]
    chunks: dict[str, int]
    failures: dict[str, int] = field(default_factory=dict)

    @property
    def available(self) -> int:
        return self.chunks.get("ok", 0)

    @property
    def total(self) -> int:
        return sum(self.chunks.values())


@dataclass(frozen=True)
class Availability:
    """Per split counts, the available chunk ids per split (sorted), and when the ledger was last written."""

    splits: dict[str, SplitCounts]
    available: dict[str, list[str]]
    ledger_time: float | None           # finished_at of the newest ledger shard (epoch seconds), None if none done


def read_ledger(out: str | os.PathLike) -> dict[str, str]:
    """video id -> ledger status, over done shards and the parts of shards still in flight."""
    statuses: dict[str, str] = {}
    if done_shards(out, LEDGER_STAGE):
        table = read_stage(out, LEDGER_STAGE, columns=["video_id", "status"])
        statuses.update(zip(table.column("video_id").to_pylist(), table.column("status").to_pylist()))
    for stats in sorted((Path(out) / "parts" / LEDGER_STAGE).glob("*.stats.json")):
        part = pq.read_table(stats.with_name(stats.name.removesuffix(".stats.json") + ".parquet"),
                             columns=["video_id", "status"])
        statuses.update(zip(part.column("video_id").to_pylist(), part.column("status").to_pylist()))
    return statuses


def video_class(status: str | None) -> str:
    """ok / transient / permanent / pending of a video's ledger status (None: no row yet)."""
    if status is None:
        return "pending"
    return failure_class(status) or "ok"


def count_availability(metadata: pa.Table, ledger: dict[str, str], ledger_time: float | None = None) -> Availability:
    """Counts from the METADATA rows (valid, not superseded) and the ledger statuses (pure: tested directly)."""
    rows = [r for r in metadata.select(["video_id", "chunk_id", "out_partition", "status", "duplicate"]).to_pylist()
            if r["status"] == Status.OK.value and not r["duplicate"] and r["chunk_id"]]
    videos: dict[str, Counter] = {}
    chunks: dict[str, Counter] = {}
    failures: dict[str, Counter] = {}
    available: dict[str, set[str]] = {}
    seen: set[str] = set()
    for r in rows:
        split, status = r["out_partition"], ledger.get(r["video_id"])
        kind = video_class(status)
        chunks.setdefault(split, Counter())[kind] += 1
        if kind == "ok":
            available.setdefault(split, set()).add(r["chunk_id"])
        if r["video_id"] not in seen:
            seen.add(r["video_id"])
            videos.setdefault(split, Counter())[kind] += 1
            if kind in (Failure.TRANSIENT.value, Failure.PERMANENT.value):
                failures.setdefault(split, Counter())[status] += 1
    splits = {s: SplitCounts({k: videos[s][k] for k in CLASSES}, {k: chunks[s][k] for k in CLASSES},
                             dict(failures.get(s, Counter()).most_common())) for s in sorted(videos)}
    return Availability(splits, {s: sorted(available.get(s, ())) for s in splits}, ledger_time)


def availability(out: str | os.PathLike) -> Availability | None:
    """The availability of the prepare folder ``out``; None when it has no metadata shard (not a vox run)."""
    try:
        metadata = read_stage(out, "metadata")
    except FileNotFoundError:
        return None
    times = [s.get("finished_at") for s in read_stats(out, LEDGER_STAGE) if s.get("finished_at")]
    return count_availability(metadata, read_ledger(out), max(times) if times else None)


def _date(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t)) if t else "no finished ledger shard yet"


def write_available_chunks(out: str | os.PathLike, report: Availability, split: str = "test") -> Path:
    """Write ``<out>/available-<split>-chunks.txt`` (header line, then the chunk ids); return its path."""
    from reenact.files import atomic_write_bytes

    counts = report.splits.get(split, SplitCounts({}, {}))
    header = (f"# {counts.available} of {counts.total} {split} chunks available (download ok) on "
              f"{_date(report.ledger_time)}; {counts.chunks.get('pending', 0)} pending")
    path = Path(out) / f"available-{split}-chunks.txt"
    atomic_write_bytes(path, "\n".join([header, *report.available.get(split, [])]).encode() + b"\n")
    return path


def read_chunk_list(path: str | os.PathLike) -> list[str]:
    """The chunk ids of a list written by :func:`write_available_chunks` (``#`` lines skipped)."""
    return [line for line in Path(path).read_text().splitlines() if line and not line.startswith("#")]


def render(report: Availability) -> str:
    """Plain-text table: videos and chunks per split and class, failed videos per status."""
    head = f"{'split':<8} {'':<7} " + " ".join(f"{k:>9}" for k in CLASSES)
    lines = [f"availability (ledger of {_date(report.ledger_time)}):", head]
    for split, counts in report.splits.items():
        for what, hist in (("videos", counts.videos), ("chunks", counts.chunks)):
            lines.append(f"{split:<8} {what:<7} " + " ".join(f"{hist.get(k, 0):>9}" for k in CLASSES))
        if counts.failures:
            lines.append(f"{'':<8} failed videos: " + ", ".join(f"{k} {v}" for k, v in counts.failures.items()))
    return "\n".join(lines)


def report(out: str | os.PathLike, as_json: bool = False) -> str:
    """What ``reenact inspect`` shows: the table (or JSON) ending in a newline, after writing the available test
    chunks; "" when ``out`` is not a vox prepare folder."""
    found = availability(out)
    if found is None:
        return ""
    path = write_available_chunks(out, found, "test")
    if as_json:
        return json.dumps({"ledger_time": found.ledger_time, "available_test_chunks": str(path),
                           "splits": {s: {"videos": c.videos, "chunks": c.chunks, "failures": c.failures}
                                      for s, c in found.splits.items()}}, indent=2, sort_keys=True) + "\n"
    test = found.splits.get("test")
    tail = f"test chunks available: {test.available} of {test.total} -> {path}" if test else f"list: {path}"
    return render(found) + "\n" + tail + "\n"
