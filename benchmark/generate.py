"""Generated images of one model over a protocol's pairs, on the pipeline engine, cached in Parquet shards.

Work items are blocks of ``batch_size`` consecutive pairs (``block-<first index:06d>``; the job is the index range),
``shard_size / batch_size`` blocks per shard, run by :mod:`pipelines.engine` (``local``, or Ray with the model
loaded once per actor, on a GPU when asked). Each block's rows (:data:`GENERATED`: the pair's index and id, the
PNG of I_g, seconds, status) are one part; a rerun skips finished shards and finished blocks made from the same
input (the block and the checkpoint's identity), so a killed run loses at most the blocks in flight. A model that
raises on a batch is retried pair by pair; a pair it still fails on is a ``model_error`` row with the error.
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

STAGE = "generated"
MODEL_ERROR = "model_error"          # a model raised on this pair (beside reenact.data.schema.Status)
#: models that need no weights file
WEIGHTLESS = ("copy-source", "copy-driving", "render")
GENERATED = pa.schema([
    pa.field("index", pa.int32(), nullable=False),   # position of the pair in the protocol's pair list
    pa.field("pair_id", pa.string(), nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("image", pa.binary()),                  # PNG bytes of I_g, None when status != ok
    pa.field("image_format", pa.string()),
    pa.field("seconds", pa.float32()),               # model time per pair (batch time / batch size)
    pa.field("status", pa.string(), nullable=False),
    pa.field("error", pa.string(), nullable=False),
])


def checkpoint_identity(name: str, checkpoints: dict[str, str], random_weights: bool, assets: str | None
                        ) -> tuple[str | None, str]:
    """(weights path or None, what results record: the file's sha256, "random weights" or "no weights")."""
    from reenact.assets import ASSETS, asset_path, sha256sum

    if name in checkpoints:
        return checkpoints[name], sha256sum(checkpoints[name])
    if name in WEIGHTLESS or name not in ASSETS:
        return None, "no weights"
    if random_weights:
        return None, "random weights"
    path = asset_path(name, assets)
    return str(path), sha256sum(path)


def build_model(name: str, path: str | None, random_weights: bool, assets: str | None, device: str):
    """The registered model ``name`` (``baselines.registry.create``), in eval mode on ``device``."""
    from baselines.registry import create

    random_weights = random_weights and path is None and name not in WEIGHTLESS
    kwargs = {"assets": assets} if path is None and not random_weights and name not in WEIGHTLESS else {}
    return create(name, path, random_weights=random_weights, **kwargs).to(device).eval()


def stack(items: list[dict], key: str) -> torch.Tensor | None:
    """``items[*][key]`` stacked into a float32 batch, or None when any item lacks it."""
    values = [item.get(key) for item in items]
    return None if any(v is None for v in values) else torch.stack([torch.as_tensor(v) for v in values]).float()


def reenact_rows(model, name: str, items: list[dict], indices: list[int], device: str) -> list[dict]:
    """:data:`GENERATED` rows for ``items`` (at ``indices``); a failing batch is retried pair by pair."""
    from reenact.contract import ReenactInputs
    from reenact.data.codec import encode_png, tensor_to_uint8

    start = time.perf_counter()
    try:
        inputs = ReenactInputs(**{k: (v.to(device) if v is not None else None) for k, v in (
            (k, stack(items, k)) for k in ("source", "driving", "source_coeffs", "driving_coeffs"))})
        with torch.no_grad():
            images = model.reenact(inputs).clamp(0, 1).cpu()
    except Exception as err:  # noqa: BLE001 - a model failure is a row, never a crash
        if len(items) > 1:
            return [row for item, i in zip(items, indices) for row in reenact_rows(model, name, [item], [i], device)]
        return [{"index": indices[0], "pair_id": str(items[0]["pair_id"]), "model": name, "image": None,
                 "image_format": None, "seconds": None, "status": MODEL_ERROR, "error": f"{type(err).__name__}: {err}"}]
    seconds = (time.perf_counter() - start) / len(items)
    return [{"index": i, "pair_id": str(item["pair_id"]), "model": name, "image": encode_png(rgb),
             "image_format": "png", "seconds": seconds, "status": "ok", "error": ""}
            for item, i, rgb in zip(items, indices, tensor_to_uint8(images))]


class GenerateStage:
    """Engine stage: the model (and, on Ray, the pairs) loaded once per worker; one part per block of pairs.

    ``pairs`` is given directly by the local executor; a Ray actor loads them from ``config`` (a ``BenchConfig``
    as a dict) with :func:`benchmark.runner.load_pairs`.
    """

    def __init__(self, out: str, name: str, path: str | None, identity: str, config: dict[str, Any],
                 pairs: Sequence[dict] | None = None):
        if pairs is None:
            from benchmark.runner import BenchConfig, load_pairs

            pairs, _ = load_pairs(BenchConfig(**config))
        self.out, self.name, self.identity, self.pairs = out, name, identity, pairs
        self.device = config["device"]
        self.model = build_model(name, path, config["random_weights"], config["assets"], self.device)

    def _write(self, key: str, job: str, token: str) -> None:
        from reenact.data.shards import write_part

        start, stop = json.loads(job)
        t0 = time.perf_counter()
        rows = reenact_rows(self.model, self.name, [self.pairs[i] for i in range(start, stop)],
                            list(range(start, stop)), self.device)
        write_part(self.out, STAGE, key, pa.Table.from_pylist(rows, schema=GENERATED),
                   {"input": token, "seconds": time.perf_counter() - t0, "pairs": len(rows)})

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from pipelines.engine import ensure_part

        for key, job in zip(batch["key"], batch["job"]):
            token = f"{self.identity}|{job}"
            ensure_part(self.out, STAGE, key, token, lambda k=key, j=job, t=token: self._write(k, j, t))
        return batch


def generation_plan(name: str, identity: str, count: int, batch_size: int, shard_size: int,
                    fingerprint: dict[str, Any]):
    """Blocks of ``batch_size`` pairs, ``max(1, shard_size // batch_size)`` blocks per shard."""
    from pipelines.engine import Plan, WorkItem, shard_items

    items = [WorkItem(f"block-{s:06d}", json.dumps([s, min(s + batch_size, count)]))
             for s in range(0, count, batch_size)]
    per_shard = max(1, shard_size // batch_size)
    return Plan(f"bench {name}", shard_items(items, per_shard),
                {**fingerprint, "model": name, "checkpoint": identity, "batch_size": batch_size,
                 "blocks_per_shard": per_shard})


def generate(cfg, name: str, pairs: Sequence[dict], fingerprint: dict[str, Any]) -> Path:
    """Run (or resume) model ``name`` over ``pairs`` into ``<cfg.out>/generated/<name>``; returns that folder.

    ``cfg`` is a ``benchmark.runner.BenchConfig`` (its engine options: executor, address, num_cpus, model_gpus).
    """
    import dataclasses

    from pipelines.engine import RunConfig, Stage, run_plan

    root = Path(cfg.out).resolve() / STAGE / name
    path, identity = checkpoint_identity(name, dict(c.split("=", 1) for c in cfg.checkpoints), cfg.random_weights,
                                         cfg.assets)
    plan = generation_plan(name, identity, len(pairs), cfg.batch_size, cfg.shard_size, fingerprint)
    config = dataclasses.asdict(cfg)
    kwargs: dict[str, Any] = {"name": name, "path": path, "identity": identity, "config": config}
    if cfg.executor == "local":
        kwargs["pairs"] = pairs
    stage = Stage(STAGE, GenerateStage, GENERATED, num_cpus=1.0, num_gpus=cfg.model_gpus, kwargs=kwargs)
    run = RunConfig(out=str(root), executor=cfg.executor, address=cfg.address, num_cpus=cfg.num_cpus,
                    progress=cfg.progress)
    run_plan(run, plan, [stage], report=STAGE)
    return root
