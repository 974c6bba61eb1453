"""Shard files: ``<stage>-<shard:05d>.parquet`` plus ``<stage>-<shard:05d>.stats.json`` written last as the
done-marker. Every file is written to a temporary name and renamed into place, so a crash never leaves a
half-written shard that looks done. A rerun skips shards whose stats file exists.
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq


def shard_name(stage: str, shard: int) -> str:
    return f"{stage}-{shard:05d}"


def shard_paths(root: str | os.PathLike, stage: str, shard: int) -> tuple[Path, Path]:
    """(parquet path, stats path) of one shard."""
    base = Path(root) / shard_name(stage, shard)
    return base.with_suffix(".parquet"), base.with_suffix(".stats.json")


def is_done(root: str | os.PathLike, stage: str, shard: int) -> bool:
    return shard_paths(root, stage, shard)[1].is_file()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def write_shard(root: str | os.PathLike, stage: str, shard: int, table: pa.Table,
                extra_stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write one shard atomically, then its stats (status histogram, row count) as the done-marker."""
    parquet_path, stats_path = shard_paths(root, stage, shard)
    parquet_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = parquet_path.with_name(f".{parquet_path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, parquet_path)
    statuses = Counter(table.column("status").to_pylist()) if "status" in table.column_names else {}
    stats = {"stage": stage, "shard": shard, "rows": table.num_rows, "status": dict(statuses),
             "finished_at": time.time(), **(extra_stats or {})}
    atomic_write_json(stats_path, stats)
    return stats


def done_shards(root: str | os.PathLike, stage: str) -> list[int]:
    """Shard numbers of ``stage`` under ``root`` that have their done-marker."""
    return sorted(int(p.name[len(stage) + 1:len(stage) + 6]) for p in Path(root).glob(f"{stage}-*.stats.json"))


def read_stage(root: str | os.PathLike, stage: str, columns: Iterable[str] | None = None) -> pa.Table:
    """Concatenate every *done* shard of ``stage`` (a shard without its stats file is ignored)."""
    tables = [pq.read_table(shard_paths(root, stage, s)[0], columns=list(columns) if columns else None)
              for s in done_shards(root, stage)]
    if not tables:
        raise FileNotFoundError(f"no finished '{stage}' shards under {root}")
    return pa.concat_tables(tables)


def read_stats(root: str | os.PathLike, stage: str) -> list[dict[str, Any]]:
    return [json.loads(shard_paths(root, stage, s)[1].read_text()) for s in done_shards(root, stage)]
