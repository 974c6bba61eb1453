"""``reenact prepare guidance``: the paper's guidance maps for every pair of a manifest, as GUIDANCE shards.

Work items are blocks of ``pairs_per_item`` consecutive pairs of the manifest (``block-<first pair_id:06d>``), in
``pair_id`` order, ``items_per_shard`` blocks per shard, run by :mod:`pipelines.engine` (local or Ray). The stage
is a class, so the morphable model and the coefficient table are loaded once per worker (a Ray actor), with an
:class:`reenact.face3d.morphable.IdentityCache` of the model (calls group pairs by source identity, so a video's
pairs read the identity and albedo bases once). For each pair it calls
:func:`reenact.face3d.guidance.compute_guidance` on the pair's coefficients and writes one
:data:`reenact.data.schema.GUIDANCE` row: F_c as float16, O_c and the inner-face mask as uint8
(:mod:`reenact.data.codec`), I_r as PNG. A pair whose coefficients are missing is a row with status
``unavailable``, never a crash.

Resume: a rerun skips finished shards and, inside unfinished ones, blocks whose part was made from the same
input (the block's pairs, the coefficient shards' stats and the settings); a killed run loses at most the blocks
in flight. Read the result with :class:`reenact.data.datasets.PairDataset` (``guidance=<out>``).
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.engine import Plan, RunConfig, RunResult, Stage, WorkItem, ensure_part, log, run_plan, shard_items
from reenact.data.manifests import read_manifest_dir
from reenact.data.schema import GUIDANCE, Status
from reenact.data.shards import read_stats, write_part

STAGE = "guidance"


@dataclass
class GuidanceConfig(RunConfig):
    """Options of ``reenact prepare guidance``."""

    pairs: str | None = field(default=None, metadata={
        "help": "manifest folder (<protocol>/v<N>, with pairs.parquet and manifest.json)", "required": True})
    prepared: str | None = field(default=None, metadata={
        "help": "prepared folder with the pairs' coefficient shards (coeffs-*.parquet)", "required": True})
    size: int = field(default=256, metadata={"help": "guidance map size (pixels, square)"})
    morphable_model: str = field(default="procedural-full", metadata={
        "help": "morphable model: procedural-full, procedural-small, bfm or a BFM_model_front.mat path"})
    pairs_per_item: int = field(default=64, metadata={"help": "pairs per work item (one part)"})
    items_per_shard: int = field(default=16, metadata={"help": "work items per output shard"})
    batch: int = field(default=8, metadata={"help": "pairs per compute_guidance call"})
    guidance_cpus: float = field(default=1.0, metadata={"help": "Ray CPUs per guidance actor"})
    guidance_actors: int = field(default=1, metadata={"help": "guidance actors running at once"})

    def __post_init__(self):
        if self.pairs is None or self.prepared is None:
            raise ValueError("prepare guidance needs --pairs MANIFEST_DIR and --prepared DIR")
        if min(self.size, self.pairs_per_item, self.items_per_shard, self.batch) < 1:
            raise ValueError(f"size, pairs_per_item, items_per_shard and batch must be >= 1: {self}")


def coeffs_token(prepared: str | Path) -> str:
    """What the coefficients are: a digest of the coefficient shards' stats (rows, statuses, finish times)."""
    stats = read_stats(prepared, "coeffs")
    return hashlib.sha256(json.dumps(stats, sort_keys=True, default=str).encode()).hexdigest()[:16]


def guidance_plan(cfg: GuidanceConfig) -> Plan:
    """Blocks of the manifest's pairs, in pair_id order."""
    m = read_manifest_dir(cfg.pairs)
    rows = m.pairs.select(["pair_id", "source", "driving"]).to_pylist()
    blocks = [rows[i:i + cfg.pairs_per_item] for i in range(0, len(rows), cfg.pairs_per_item)]
    items = [WorkItem(f"block-{b[0]['pair_id']:06d}", json.dumps([[r["pair_id"], r["source"], r["driving"]]
                                                                   for r in b])) for b in blocks]
    fingerprint = {"pairs_sha256": m.info["sha256"], "protocol": m.protocol, "version": m.version,
                   "pairs_per_item": cfg.pairs_per_item, "items_per_shard": cfg.items_per_shard}
    return Plan(f"guidance {m.protocol}/v{m.version}", shard_items(items, cfg.items_per_shard), fingerprint)


def identity_batches(pairs: list[list], coeffs: dict[str, np.ndarray], batch: int) -> list[list[list]]:
    """``pairs`` in calls of at most ``batch`` pairs that share one source identity (the source's alpha and delta,
    by their bytes), in order of first appearance: protocol manifests list a video's 20 pairs together, and its
    shared-identity fit gives them one identity, so an :class:`reenact.face3d.morphable.IdentityCache` finds the
    identity parts of every call but the first of each video."""
    from reenact.face3d.coeffs import ID, TEX

    groups: dict[bytes, list[list]] = {}
    for p in pairs:
        source = np.asarray(coeffs[p[1]], dtype=np.float32)
        groups.setdefault(source[ID].tobytes() + source[TEX].tobytes(), []).append(p)
    return [group[i:i + batch] for group in groups.values() for i in range(0, len(group), batch)]


def guidance_rows(model, pairs: list[list], coeffs: dict[str, np.ndarray], size: int, batch: int,
                  identity_cache=None) -> pa.Table:
    """GUIDANCE rows of ``pairs`` ([pair_id, source, driving]), computed ``batch`` pairs of one source identity per
    call (:func:`identity_batches`), with the worker's ``identity_cache`` when given."""
    import torch

    from reenact.data.codec import pack_flow, pack_mask, tensor_to_bytes
    from reenact.face3d.guidance import compute_guidance

    rows = []
    ready = [p for p in pairs if p[1] in coeffs and p[2] in coeffs]
    for p in pairs:
        if p[1] not in coeffs or p[2] not in coeffs:
            missing = p[1] if p[1] not in coeffs else p[2]
            rows.append({"pair_id": p[0], "source": p[1], "driving": p[2], "size": size,
                         "status": Status.UNAVAILABLE.value, "error": f"no ok coefficients for frame {missing}"})
    for chunk in identity_batches(ready, coeffs, batch):
        v_s = torch.from_numpy(np.stack([coeffs[p[1]] for p in chunk]))
        v_d = torch.from_numpy(np.stack([coeffs[p[2]] for p in chunk]))
        g = compute_guidance(model, v_s, v_d, size, with_source_render=False, identity_cache=identity_cache)
        for k, p in enumerate(chunk):
            rows.append({"pair_id": p[0], "source": p[1], "driving": p[2], "size": size,
                         "flow": pack_flow(g.flow[k]), "occlusion": pack_mask(g.occlusion[k]),
                         "face_mask": pack_mask(g.face_mask[k]), "render": tensor_to_bytes(g.render[k].clamp(0, 1)),
                         "status": Status.OK.value, "error": ""})
    rows.sort(key=lambda r: r["pair_id"])
    return pa.Table.from_pylist(rows, schema=GUIDANCE)


class GuidanceStage:
    """Engine stage: the morphable model and coefficients loaded once; one GUIDANCE part per block of pairs."""

    def __init__(self, out: str, prepared: str, morphable_model: str, size: int, batch: int):
        from reenact.data.datasets import read_coeffs
        from reenact.face3d.io import load_morphable_model
        from reenact.face3d.morphable import IdentityCache

        self.out, self.size, self.batch = out, size, batch
        self.model = load_morphable_model(morphable_model)
        self.identity_cache = IdentityCache(self.model)            # this worker's identity shapes and albedos
        self.coeffs, _ = read_coeffs(prepared)
        self.token = f"{coeffs_token(prepared)}|{morphable_model}|{size}"

    def _write(self, key: str, job: str, token: str) -> None:
        t0 = time.perf_counter()
        table = guidance_rows(self.model, json.loads(job), self.coeffs, self.size, self.batch, self.identity_cache)
        write_part(self.out, STAGE, key, table, {"seconds": time.perf_counter() - t0, "input": token,
                                                 "pairs": table.num_rows})

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for key, job in zip(batch["key"], batch["job"]):
            token = f"{self.token}|{hashlib.sha256(job.encode()).hexdigest()[:16]}"
            ensure_part(self.out, STAGE, key, token, lambda k=key, j=job, t=token: self._write(k, j, t))
        return batch


def prepare_guidance(cfg: GuidanceConfig) -> RunResult:
    """Run (or resume) the guidance stage over every pair of ``cfg.pairs`` into ``cfg.out``."""
    t0 = time.time()
    plan = guidance_plan(cfg)
    log(f"prepare {plan.name}: {plan.items} blocks of <= {cfg.pairs_per_item} pairs, {len(plan.shards)} shards")
    kwargs: dict[str, Any] = {"out": str(Path(cfg.out).resolve()), "prepared": str(Path(cfg.prepared).resolve()),
                              "morphable_model": cfg.morphable_model, "size": cfg.size, "batch": cfg.batch}
    stage = Stage(STAGE, GuidanceStage, GUIDANCE, num_cpus=cfg.guidance_cpus, concurrency=cfg.guidance_actors,
                  kwargs=kwargs)
    return run_plan(cfg, plan, [stage], report=STAGE, t0=t0)
