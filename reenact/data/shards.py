"""Shard files: ``<stage>-<shard:05d>.parquet`` plus ``<stage>-<shard:05d>.stats.json`` written last as the
done-marker. Every file is written to a temporary name and renamed into place, so a crash never leaves a
half-written shard that looks done. A rerun skips shards whose stats file exists.

Image columns (fields marked by :func:`reenact.data.schema.image_field`) are binary in code and in per-item parts;
finished shards store them in the Hugging Face ``datasets.Image`` layout (:func:`to_storage`), so a shard opens in
``datasets`` with its pictures decoded. Read shards through :func:`read_stage`, :func:`read_table` or
:func:`iter_batches`: they give image columns back as bytes (:func:`from_storage`), whichever layout is on disk.
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from reenact.data.schema import IMAGE_STORAGE, image_columns, image_field, storage_schema
from reenact.files import atomic_write_bytes, atomic_write_json  # noqa: F401  (the shard writers' own)

#: Rows per Parquet row group in shards: the unit a random-access reader (reenact.data.datasets) reads.
ROW_GROUP_ROWS = 256


def shard_name(stage: str, shard: int) -> str:
    return f"{stage}-{shard:05d}"


def shard_paths(root: str | os.PathLike, stage: str, shard: int) -> tuple[Path, Path]:
    """(parquet path, stats path) of one shard."""
    base = Path(root) / shard_name(stage, shard)
    return base.with_suffix(".parquet"), base.with_suffix(".stats.json")


def is_done(root: str | os.PathLike, stage: str, shard: int) -> bool:
    return shard_paths(root, stage, shard)[1].is_file()


# ---------------------------------------------------------------- image columns: code layout <-> stored layout

def to_storage(table: pa.Table) -> pa.Table:
    """Image columns (binary, marked) -> the ``datasets.Image`` struct ``{bytes, path: null}``; schema metadata
    from :func:`reenact.data.schema.storage_schema`. Tables without marked image columns pass unchanged."""
    names = image_columns(table.schema)
    if not names:
        return table
    columns = []
    for field, column in zip(table.schema, table.columns):
        if field.name in names and column.type == pa.binary():
            column = pa.chunked_array([_image_struct(chunk) for chunk in column.chunks], IMAGE_STORAGE)
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=storage_schema(table.schema))


def _image_struct(binary: pa.Array) -> pa.StructArray:
    paths = pa.nulls(len(binary), pa.string())
    return pa.StructArray.from_arrays([binary, paths], fields=list(IMAGE_STORAGE), mask=binary.is_null())


def from_storage(table: pa.Table) -> pa.Table:
    """Inverse of :func:`to_storage`: ``datasets.Image`` struct columns back to binary image columns."""
    stored = [f.name for f in table.schema if f.type == IMAGE_STORAGE]
    if not stored:
        return table
    columns, fields = [], []
    for field, column in zip(table.schema, table.columns):
        if field.name in stored:
            column = pc.struct_field(column, "bytes")          # a null struct gives a null
            field = image_field(field.name).with_nullable(field.nullable)
        columns.append(column)
        fields.append(field)
    meta = {k: v for k, v in (table.schema.metadata or {}).items() if k != b"huggingface"}
    return pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=meta or None))


def read_table(path: str | os.PathLike, columns: Iterable[str] | None = None) -> pa.Table:
    """One Parquet file (shard or part), image columns as bytes."""
    return from_storage(pq.read_table(path, columns=list(columns) if columns else None))


def iter_batches(path: str | os.PathLike, batch_size: int = 256,
                 columns: Iterable[str] | None = None) -> Iterator[pa.Table]:
    """One Parquet file in tables of ``batch_size`` rows, image columns as bytes (memory: one batch)."""
    for batch in pq.ParquetFile(path).iter_batches(batch_size, columns=list(columns) if columns else None):
        yield from_storage(pa.Table.from_batches([batch]))


def write_shard(root: str | os.PathLike, stage: str, shard: int, table: pa.Table,
                extra_stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write one shard atomically, then its stats (status histogram, row count) as the done-marker."""
    parquet_path, stats_path = shard_paths(root, stage, shard)
    parquet_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = parquet_path.with_name(f".{parquet_path.name}.{os.getpid()}.tmp")
    pq.write_table(to_storage(table), tmp, row_group_size=ROW_GROUP_ROWS)
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
    tables = [read_table(shard_paths(root, stage, s)[0], columns) for s in done_shards(root, stage)]
    if not tables:
        raise FileNotFoundError(f"no finished '{stage}' shards under {root}")
    return pa.concat_tables(tables)


def read_stats(root: str | os.PathLike, stage: str) -> list[dict[str, Any]]:
    return [json.loads(shard_paths(root, stage, s)[1].read_text()) for s in done_shards(root, stage)]


# ---------------------------------------------------------------- per-item parts, merged into shards
# A distributed stage writes one *part* per work item (e.g. a video) under ``<root>/parts/<stage>/<key>.parquet``,
# with ``<key>.stats.json`` as its done-marker, both written atomically. When every item of a shard is done, the
# parts are streamed, in the shard's item order, into ``<stage>-<shard:05d>.parquet`` (then its stats), and may be
# deleted. A rerun skips items whose part is done, so a killed run loses at most the items in flight.

class ParquetStream:
    """Write record batches to ``path`` through a temporary file in the same folder; ``close()`` renames it."""

    def __init__(self, path: str | os.PathLike, schema: pa.Schema):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self.writer = pq.ParquetWriter(self.tmp, schema)
        self.rows = 0

    def write(self, data: pa.Table | pa.RecordBatch) -> None:
        if data.num_rows:
            self.writer.write(data)
            self.rows += data.num_rows

    def close(self) -> Path:
        self.writer.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        self.writer.close()
        self.tmp.unlink(missing_ok=True)


def part_paths(root: str | os.PathLike, stage: str, key: str) -> tuple[Path, Path]:
    """(parquet path, stats path) of the part of item ``key`` (a safe id) in ``stage``."""
    base = Path(root) / "parts" / stage / key
    return base.with_name(key + ".parquet"), base.with_name(key + ".stats.json")


def part_done(root: str | os.PathLike, stage: str, key: str) -> bool:
    return part_paths(root, stage, key)[1].is_file()


def write_part(root: str | os.PathLike, stage: str, key: str, table: pa.Table,
               extra_stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write one item's rows atomically, then its stats (the done-marker)."""
    path, stats_path = part_paths(root, stage, key)
    stream = ParquetStream(path, table.schema)
    stream.write(table)
    stream.close()
    return finish_part(root, stage, key, table, extra_stats)


def finish_part(root: str | os.PathLike, stage: str, key: str, table: pa.Table | None = None,
                extra_stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the done-marker of a part already in place (status histogram read from it when not given)."""
    path, stats_path = part_paths(root, stage, key)
    table = table if table is not None else pq.read_table(path, columns=["status"])
    statuses = Counter(table.column("status").to_pylist()) if "status" in table.column_names else {}
    stats = {"stage": stage, "key": key, "rows": table.num_rows, "status": dict(statuses), **(extra_stats or {})}
    atomic_write_json(stats_path, stats)
    return stats


def merge_parts(root: str | os.PathLike, stage: str, shard: int, keys: list[str], schema: pa.Schema,
                extra_stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """Stream the done parts of ``keys`` (in that order) into shard ``shard`` of ``stage``, then its stats.

    Numeric stats of the parts (e.g. seconds) are summed into the shard's stats, status histograms added up.
    """
    parquet_path, stats_path = shard_paths(root, stage, shard)
    stream = ParquetStream(parquet_path, storage_schema(schema))
    statuses: Counter = Counter()
    sums: Counter = Counter()
    try:
        for key in keys:
            path, part_stats_path = part_paths(root, stage, key)
            for batch in iter_batches(path, ROW_GROUP_ROWS):
                stream.write(to_storage(batch.cast(schema)))
            part = json.loads(part_stats_path.read_text())
            statuses.update(part.get("status", {}))
            sums.update({k: v for k, v in part.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    except BaseException:
        stream.abort()
        raise
    stream.close()
    stats = {**dict(sums), "stage": stage, "shard": shard, "rows": stream.rows, "status": dict(statuses),
             "items": len(keys), "finished_at": time.time(), **(extra_stats or {})}
    atomic_write_json(stats_path, stats)
    return stats


def remove_parts(root: str | os.PathLike, stage: str, keys: Iterable[str]) -> None:
    for key in keys:
        for path in part_paths(root, stage, key):
            path.unlink(missing_ok=True)


def part_is_current(root: str | os.PathLike, stage: str, key: str, token: str) -> bool:
    """True when the part of ``key`` in ``stage`` is done and was made from the input identified by ``token``
    (the ``input`` its stats recorded)."""
    stats_path = part_paths(root, stage, key)[1]
    return stats_path.is_file() and json.loads(stats_path.read_text()).get("input") == token
