"""Torch datasets over prepared shards, read through the data layer only.

A *prepared* folder holds finished ``frames-*.parquet`` shards (:data:`~reenact.data.schema.FRAMES`) and
``coeffs-*.parquet`` shards (:data:`~reenact.data.schema.COEFFS`); a guidance folder holds ``guidance-*.parquet``
shards (:data:`~reenact.data.schema.GUIDANCE`). Rows join on the frame key ``<chunk_id>/<frame_index:07d>``; only
frames whose frame row *and* coefficient row have status ``ok`` are used. Images are decoded per item (memory:
the frame index, the coefficients and a few cached row groups), so the datasets work with DataLoader workers.

Item contracts (the model, the training loop and the benchmark runner code against these):

:class:`FrameDataset` item::

    image        float32 (3, H, W) in [0, 1], RGB
    coeffs       float32 (257,)  (reenact.face3d.coeffs layout)
    key          str   "<chunk_id>/<frame_index:07d>"

:class:`PairDataset` and :class:`SelfPairDataset` item::

    source, driving                  float32 (3, H, W) in [0, 1], RGB
    source_coeffs, driving_coeffs    float32 (257,)
    pair_id                          str   "<protocol>/<pair_id:06d>" (:func:`reenact.data.schema.pair_key`)
    source_key, driving_key          str   frame keys
    # only when guidance shards are given (PairDataset(guidance=...)), at the guidance size:
    flow        float32 (2, H, W)  F_c, backward flow in pixels (x, y), float16-rounded
    occlusion   float32 (1, H, W)  O_c in {0, 1}
    rendered    float32 (3, H, W)  I_r in [0, 1]
    mask        float32 (1, H, W)  inner-face mask in {0, 1}

The default collate of ``torch.utils.data.DataLoader`` batches these into ``(B, ...)`` tensors and lists of str.
"""
from __future__ import annotations

import os
import random
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset

from reenact.data.codec import bytes_to_tensor, unpack_flow, unpack_mask
from reenact.data.manifests import Manifest
from reenact.data.schema import Status, frame_key, pair_key
from reenact.data.shards import done_shards, from_storage, read_stage, shard_paths

OK = Status.OK.value


@dataclass(frozen=True)
class RowRef:
    """Where one row lives: shard file, row group, row within the group."""

    path: str
    group: int
    row: int


class ShardIndex:
    """Random access to the rows of a stage's finished shards by a key built from index columns.

    Only the ``key_columns`` (and ``status``) are read up front; a row's other columns are read with its row group,
    of which the last ``cache_groups`` stay cached (the shards' writers keep row groups small)."""

    def __init__(self, root: str | os.PathLike, stage: str, key_fn, key_columns: list[str], cache_groups: int = 4):
        self.root, self.stage, self.cache_groups = Path(root), stage, cache_groups
        self.refs: dict = {}
        self._cache: OrderedDict = OrderedDict()
        shards = done_shards(root, stage)
        if not shards:
            raise FileNotFoundError(f"no finished '{stage}' shards under {root}")
        for shard in shards:
            path = shard_paths(root, stage, shard)[0]
            pf = pq.ParquetFile(path)
            for group in range(pf.num_row_groups):
                cols = pf.read_row_group(group, columns=[*key_columns, "status"]).to_pydict()
                for row, values in enumerate(zip(*(cols[c] for c in key_columns), cols["status"])):
                    if values[-1] == OK:
                        self.refs[key_fn(*values[:-1])] = RowRef(str(path), group, row)

    def row(self, key, columns: list[str]) -> dict:
        ref = self.refs[key]
        cache_key = (ref.path, ref.group, tuple(columns))
        if cache_key not in self._cache:
            table = pq.ParquetFile(ref.path).read_row_group(ref.group, columns=columns)
            self._cache[cache_key] = from_storage(table).to_pydict()
            while len(self._cache) > self.cache_groups:
                self._cache.popitem(last=False)
        self._cache.move_to_end(cache_key)
        group = self._cache[cache_key]
        return {c: group[c][ref.row] for c in columns}

    def __getstate__(self):                 # DataLoader workers start with an empty cache
        return {**self.__dict__, "_cache": OrderedDict()}


def frame_images(root: str | os.PathLike, stage: str = "frames") -> ShardIndex:
    """Index of the ok frames of finished frame shards, keyed by frame key."""
    return ShardIndex(root, stage, frame_key, ["chunk_id", "frame_index"])


def read_coeffs(root: str | os.PathLike, stage: str = "coeffs") -> tuple[dict[str, np.ndarray], list[str]]:
    """The ok coefficient rows of finished shards: ``{frame key: float32 (257,)}`` and the extractors seen."""
    table = read_stage(root, stage, ["chunk_id", "frame_index", "coeffs", "extractor", "status"])
    table = table.filter(pc.equal(table.column("status"), OK))
    keys = [frame_key(c, i) for c, i in zip(table.column("chunk_id").to_pylist(),
                                            table.column("frame_index").to_pylist())]
    values = table.column("coeffs").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    values = values.astype(np.float32).reshape(len(keys), 257)
    return dict(zip(keys, values)), sorted(set(table.column("extractor").to_pylist()))


class FrameDataset(Dataset):
    """Frames with their coefficients (see the module docstring for the item), in frame-key order.

    Args:
        prepared: folder with finished ``frames`` shards (and ``coeffs`` shards unless ``coeffs_root`` is given).
        coeffs_root: folder with the coefficient shards, when elsewhere.
    """

    def __init__(self, prepared: str | os.PathLike, coeffs_root: str | os.PathLike | None = None,
                 frames_stage: str = "frames", coeffs_stage: str = "coeffs"):
        self.frames = frame_images(prepared, frames_stage)
        self.coeffs, self.extractors = read_coeffs(coeffs_root or prepared, coeffs_stage)
        self.keys = sorted(k for k in self.frames.refs if k in self.coeffs)

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: str) -> bool:
        return key in self.frames.refs and key in self.coeffs

    def image(self, key: str) -> torch.Tensor:
        """float32 ``(3, H, W)`` in [0, 1] of frame ``key``."""
        return bytes_to_tensor(self.frames.row(key, ["image"])["image"])

    def coefficients(self, key: str) -> torch.Tensor:
        return torch.from_numpy(self.coeffs[key].copy())

    def item(self, key: str) -> dict:
        return {"image": self.image(key), "coeffs": self.coefficients(key), "key": key}

    def __getitem__(self, index: int) -> dict:
        return self.item(self.keys[index])

    def pair_item(self, pair_id: str, source: str, driving: str) -> dict:
        """The pair contract's frame part for two frame keys."""
        return {"source": self.image(source), "driving": self.image(driving),
                "source_coeffs": self.coefficients(source), "driving_coeffs": self.coefficients(driving),
                "pair_id": pair_id, "source_key": source, "driving_key": driving}


def guidance_index(root: str | os.PathLike, stage: str = "guidance") -> ShardIndex:
    """Index of the ok guidance rows of finished shards, keyed by ``(pair_id, source, driving)``."""
    return ShardIndex(root, stage, lambda i, s, d: (i, s, d), ["pair_id", "source", "driving"])


def guidance_item(row: dict) -> dict:
    """A GUIDANCE row (``size``, packed maps, I_r PNG) -> the pair contract's guidance tensors."""
    size = row["size"]
    return {"flow": unpack_flow(row["flow"], size), "occlusion": unpack_mask(row["occlusion"], size),
            "rendered": bytes_to_tensor(row["render"]), "mask": unpack_mask(row["face_mask"], size)}


GUIDANCE_COLUMNS = ["size", "flow", "occlusion", "face_mask", "render"]


class PairDataset(Dataset):
    """The pairs of a manifest joined with frames, coefficients and (when given) guidance shards.

    Pairs marked with a status other than ok, or whose frames or coefficients are not prepared, are left out and
    listed in ``missing`` (pair ids); with guidance, a pair without an ok guidance row is left out too.

    Args:
        pairs: a :class:`~reenact.data.manifests.Manifest` or a PAIRS table.
        frames: a :class:`FrameDataset` (or a prepared folder to build one from).
        guidance: folder with finished ``guidance`` shards for these pairs, or None.
    """

    def __init__(self, pairs: Manifest | pa.Table, frames: FrameDataset | str | os.PathLike,
                 guidance: str | os.PathLike | None = None):
        table = pairs.pairs if isinstance(pairs, Manifest) else pairs
        self.frames = frames if isinstance(frames, FrameDataset) else FrameDataset(frames)
        self.guidance = guidance_index(guidance) if guidance is not None else None
        rows = table.select(["pair_id", "protocol", "source", "driving", "status"]).to_pylist()
        self.rows = [r for r in rows if self._usable(r)]
        kept = {r["pair_id"] for r in self.rows}
        self.missing = [r["pair_id"] for r in rows if r["pair_id"] not in kept]

    def _usable(self, r: dict) -> bool:
        if r["status"] not in (None, OK) or r["source"] not in self.frames or r["driving"] not in self.frames:
            return False
        return self.guidance is None or (r["pair_id"], r["source"], r["driving"]) in self.guidance.refs

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        r = self.rows[index]
        item = self.frames.pair_item(pair_key(r["protocol"], r["pair_id"]), r["source"], r["driving"])
        if self.guidance is not None:
            item |= guidance_item(self.guidance.row((r["pair_id"], r["source"], r["driving"]), GUIDANCE_COLUMNS))
        return item


class SelfPairDataset(Dataset):
    """Training pairs within a video: item ``i`` is two different random frames of one random chunk.

    Deterministic: item ``i`` depends only on ``(seed, i)`` (``random.Random(f"{seed}:{i}")``), whatever the
    worker or order. Chunks with fewer than two usable frames are skipped. ``pair_id`` is ``self/<seed>/<i>``.
    """

    def __init__(self, frames: FrameDataset, length: int, seed: int = 0):
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        by_chunk: dict[str, list[str]] = defaultdict(list)
        for key in frames.keys:
            by_chunk[key.rsplit("/", 1)[0]].append(key)
        self.chunks = [keys for _, keys in sorted(by_chunk.items()) if len(keys) >= 2]
        if not self.chunks:
            raise ValueError("no chunk has two usable frames")
        self.frames, self.length, self.seed = frames, length, seed

    def __len__(self) -> int:
        return self.length

    def keys(self, index: int) -> tuple[str, str]:
        rng = random.Random(f"{self.seed}:{index}")
        source, driving = rng.sample(rng.choice(self.chunks), 2)
        return source, driving

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(index)
        source, driving = self.keys(index)
        return self.frames.pair_item(f"self/{self.seed}/{index}", source, driving)
