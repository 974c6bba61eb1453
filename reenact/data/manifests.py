"""Versioned pair manifests: ``manifests/<protocol>/v<N>/pairs.parquet`` plus ``manifest.json`` beside it.

``pairs.parquet`` holds :data:`reenact.data.schema.PAIRS` rows in ``pair_id`` order. ``manifest.json`` says what the
pairs are: protocol, version, schema version, counts, the sha256 of ``pairs.parquet`` and what the pairs were
sampled from (source file name and its sha256, the sampler rule, the seed), plus the writer's pyarrow version.

Both files are deterministic: the same pairs give byte-identical files (fixed Parquet settings, no timestamps, no
absolute paths, sorted JSON keys) with the same pyarrow version. A version is immutable: writing different pairs
under an existing version is refused; bump the version. :func:`read_manifest` checks the sha256 before it returns.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from reenact.data.schema import PAIRS, SCHEMA_VERSION, ChunkId, parse_frame_key
from reenact.files import atomic_write_bytes

#: The committed manifests of a source checkout (``<repo>/manifests``).
MANIFEST_ROOT = Path(__file__).resolve().parents[2] / "manifests"
PAIRS_FILE = "pairs.parquet"
INFO_FILE = "manifest.json"
_PROTOCOL = re.compile(r"^[a-z0-9][a-z0-9\-]{0,63}$")
_PARQUET_OPTIONS = {"compression": "zstd", "compression_level": 9, "use_dictionary": True, "write_statistics": False}


@dataclass(frozen=True)
class SampledFrom:
    """Provenance of a manifest: the input file (name, sha256), the sampler rule and its seed."""

    source: str                 # file name (no folder), e.g. vox-metadata.csv
    sha256: str
    rule: str                   # one line, e.g. "vox-self: 20 per test chunk, seeded by sha256(protocol|chunk_id)"
    seed: str                   # the seed, or how it is derived

    def to_dict(self) -> dict[str, str]:
        return {"source": self.source, "sha256": self.sha256, "rule": self.rule, "seed": self.seed}


@dataclass(frozen=True)
class Manifest:
    """A manifest read back: its pairs (PAIRS schema), its ``manifest.json`` and the folder it came from."""

    protocol: str
    version: int
    pairs: pa.Table
    info: dict[str, Any]
    path: Path


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_dir(protocol: str, version: int, root: str | os.PathLike = MANIFEST_ROOT) -> Path:
    if not _PROTOCOL.match(protocol):
        raise ValueError(f"protocol must be lowercase letters, digits and '-', got {protocol!r}")
    if version < 1:
        raise ValueError(f"version must be >= 1, got {version}")
    return Path(root) / protocol / f"v{version}"


def versions(protocol: str, root: str | os.PathLike = MANIFEST_ROOT) -> list[int]:
    """The versions of ``protocol`` under ``root`` that hold a manifest, ascending."""
    folder = Path(root) / protocol
    found = [int(p.name[1:]) for p in folder.glob("v*") if p.name[1:].isdigit() and (p / INFO_FILE).is_file()]
    return sorted(found)


def pairs_table(columns: dict[str, list]) -> pa.Table:
    """A PAIRS table from columns (the optional ones may be left out: they become null), sorted by ``pair_id``."""
    missing = [f.name for f in PAIRS if not f.nullable and f.name not in columns]
    if missing:
        raise ValueError(f"pairs need the columns {missing}; got {sorted(columns)}")
    ids = list(columns["pair_id"])
    order = sorted(range(len(ids)), key=ids.__getitem__)        # (no Table.sort_by: it imports pyarrow's engine)
    return pa.table({f.name: [columns[f.name][i] for i in order] if f.name in columns else [None] * len(ids)
                     for f in PAIRS}, schema=PAIRS)


def frame_person(key: str) -> str:
    """The person id of a frame key ``<chunk_id>/<frame_index>``."""
    return ChunkId.parse(parse_frame_key(key)[0]).person_id


def pair_counts(pairs: pa.Table) -> dict[str, Any]:
    """Counts written into ``manifest.json``: pairs, source/driving chunks, identities, pose bins, statuses."""
    source, driving = pairs.column("source").to_pylist(), pairs.column("driving").to_pylist()
    chunks = [k.rsplit("/", 1)[0] for k in source], [k.rsplit("/", 1)[0] for k in driving]
    counts: dict[str, Any] = {
        "pairs": pairs.num_rows,
        "source_chunks": len(set(chunks[0])), "driving_chunks": len(set(chunks[1])),
        "identities": len({frame_person(k) for k in source + driving}),
    }
    for column in ("pose_bin", "status", "extractor"):
        values = [v for v in pairs.column(column).to_pylist() if v is not None]
        if values:
            counts[column] = dict(sorted(Counter(values).items()))
    return counts


def check_pairs(pairs: pa.Table, protocol: str, allow_repeats: bool = False) -> None:
    """ValueError unless ``pairs`` is a PAIRS table of ``protocol`` with unique ids and (unless ``allow_repeats``,
    for imported lists that repeat a pair) unique (source, driving)."""
    if not pairs.schema.equals(PAIRS):
        raise ValueError(f"pairs must have the PAIRS schema; got {pairs.schema}")
    protocols = set(pairs.column("protocol").to_pylist())
    if protocols - {protocol}:
        raise ValueError(f"pairs of protocol {protocol!r} hold rows of {sorted(protocols)}")
    ids = pairs.column("pair_id").to_pylist()
    if len(set(ids)) != len(ids):
        raise ValueError(f"pair_id repeats in {protocol!r}")
    keys = list(zip(pairs.column("source").to_pylist(), pairs.column("driving").to_pylist()))
    if not allow_repeats and len(set(keys)) != len(keys):
        raise ValueError(f"a (source, driving) pair repeats in {protocol!r}")


def pairs_bytes(pairs: pa.Table) -> bytes:
    """The deterministic Parquet bytes of a PAIRS table."""
    buf = io.BytesIO()
    pq.write_table(pairs, buf, **_PARQUET_OPTIONS)
    return buf.getvalue()


def manifest_info(pairs: pa.Table, protocol: str, version: int, data: bytes, sampled_from: SampledFrom,
                  notes: str = "") -> dict[str, Any]:
    return {"protocol": protocol, "version": version, "schema_version": SCHEMA_VERSION, "pairs_file": PAIRS_FILE,
            "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "counts": pair_counts(pairs),
            "sampled_from": sampled_from.to_dict(), "writer": {"pyarrow": pa.__version__}, "notes": notes}


def write_manifest(pairs: pa.Table, protocol: str, version: int, sampled_from: SampledFrom,
                   root: str | os.PathLike = MANIFEST_ROOT, notes: str = "", allow_repeats: bool = False) -> Path:
    """Write ``pairs`` as ``<root>/<protocol>/v<version>/`` (pairs.parquet, then manifest.json); the folder.

    Rewriting identical pairs is a no-op that leaves byte-identical files. Raises ValueError when the version
    already holds other pairs (a protocol's version is immutable: bump it)."""
    check_pairs(pairs, protocol, allow_repeats)
    folder = manifest_dir(protocol, version, root)
    data = pairs_bytes(pairs)
    info = manifest_info(pairs, protocol, version, data, sampled_from, notes)
    if (folder / INFO_FILE).is_file():
        earlier = json.loads((folder / INFO_FILE).read_text())
        if earlier.get("sha256") != info["sha256"]:
            raise ValueError(f"{folder} already holds other pairs (sha256 {earlier.get('sha256')}, now "
                             f"{info['sha256']}); write a new version (v{version + 1}) instead")
    atomic_write_bytes(folder / PAIRS_FILE, data)
    atomic_write_bytes(folder / INFO_FILE, (json.dumps(info, indent=2, sort_keys=True) + "\n").encode())
    return folder


def read_manifest(protocol: str, version: int | None = None, root: str | os.PathLike = MANIFEST_ROOT,
                  verify: bool = True) -> Manifest:
    """Read ``<root>/<protocol>/v<version>/`` (latest version when None), checking the pairs file's sha256."""
    if version is None:
        found = versions(protocol, root)
        if not found:
            raise FileNotFoundError(f"no manifest of protocol {protocol!r} under {root}")
        version = found[-1]
    folder = manifest_dir(protocol, version, root)
    return read_manifest_dir(folder, verify)


def read_manifest_dir(folder: str | os.PathLike, verify: bool = True) -> Manifest:
    """Read a manifest folder (``pairs.parquet`` + ``manifest.json``), checking the sha256 when ``verify``."""
    folder = Path(folder)
    if not (folder / INFO_FILE).is_file():
        raise FileNotFoundError(f"no {INFO_FILE} in {folder}")
    info = json.loads((folder / INFO_FILE).read_text())
    path = folder / info.get("pairs_file", PAIRS_FILE)
    if verify and sha256_file(path) != info["sha256"]:
        raise ValueError(f"{path} does not match the sha256 in {folder / INFO_FILE} ({info['sha256']}): the pairs "
                         "file was changed; regenerate it or write a new version")
    pairs = pq.read_table(path).cast(PAIRS)
    return Manifest(info["protocol"], int(info["version"]), pairs, info, folder)
