"""The results schema: typed dataclasses, saved as JSON, from which every table and report is rendered.

A :class:`BenchResult` holds, for one protocol:

* ``records``: one :class:`PairRecord` per (model, pair): status, error, the pair's pose discrepancy and the
  per-pair value of every per-pair metric (None where undefined);
* ``models``: per model a :class:`ModelResult` with the checkpoint's identity, status counts, the aggregates
  (:class:`Aggregate`: value, bootstrap interval, sample counts, or the reason it is unavailable) overall and per
  pose-discrepancy bin;
* ``metrics``: each metric's recorded name -> key, direction and options (backend, extractor, reduction, ...);
* ``provenance``: git commit, manifest sha256, package versions, config (``reenact.config.provenance``).

Every number is reproducible from the record: the bootstrap is seeded.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
#: provenance fields that legitimately differ between two runs of the same bench
VOLATILE = ("created_at",)


@dataclass(frozen=True)
class Interval:
    """A percentile bootstrap interval: ``level`` coverage from ``replicates`` resamples of the pairs."""

    low: float
    high: float
    level: float
    replicates: int


@dataclass(frozen=True)
class Aggregate:
    """One metric over a set of pairs. ``value`` is None when ``unavailable`` says why, or no pair was valid."""

    metric: str                       # recorded name, e.g. "CSIM[dlib-resnet]"
    key: str                          # registry key, e.g. "csim"
    higher_is_better: bool
    value: float | None
    interval: Interval | None
    n: int                            # pairs with a finite value (distribution metrics: pairs used)
    n_missing: int                    # pairs without one (no face, model failure)
    unavailable: str | None = None


@dataclass(frozen=True)
class BinResult:
    """Aggregates over the pairs whose pose discrepancy (degrees) is in ``[low, high)``."""

    label: str
    low: float
    high: float
    count: int
    aggregates: list[Aggregate]


@dataclass(frozen=True)
class ModelResult:
    model: str
    checkpoint: str                   # sha256 of the weights file, "random weights" or "no weights"
    pairs: int
    statuses: dict[str, int]
    aggregates: list[Aggregate]
    bins: list[BinResult] = field(default_factory=list)

    def aggregate(self, key: str) -> Aggregate | None:
        return next((a for a in self.aggregates if a.key == key), None)


@dataclass(frozen=True)
class PairRecord:
    model: str
    index: int                        # position in the protocol's pair list
    pair_id: str                      # the pair's id in its manifest
    source: str
    driving: str
    status: str
    error: str
    pose_discrepancy: float | None    # geodesic angle between source and driving head rotations, degrees
    values: dict[str, float | None]   # recorded metric name -> per-pair value


@dataclass(frozen=True)
class BenchResult:
    protocol: str
    kind: str                          # self | cross
    manifest_sha256: str
    models: list[ModelResult]
    metrics: dict[str, dict[str, Any]]
    records: list[PairRecord]
    provenance: dict[str, Any]
    bins: list[float]
    schema_version: int = SCHEMA_VERSION

    def model(self, name: str) -> ModelResult:
        return next(m for m in self.models if m.model == name)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True, allow_nan=False)

    def save(self, path: str | Path) -> Path:
        from reenact.data.shards import atomic_write_bytes

        atomic_write_bytes(path, self.to_json().encode())
        return Path(path)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchResult:
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"results schema version {data.get('schema_version')} is not {SCHEMA_VERSION}")
        models = [ModelResult(**{**m, "aggregates": [_aggregate(a) for a in m["aggregates"]],
                                 "bins": [BinResult(**{**b, "aggregates": [_aggregate(a) for a in b["aggregates"]]})
                                          for b in m["bins"]]}) for m in data["models"]]
        return cls(**{**data, "models": models, "records": [PairRecord(**r) for r in data["records"]]})

    @classmethod
    def load(cls, path: str | Path) -> BenchResult:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _aggregate(data: dict[str, Any]) -> Aggregate:
    interval = data.get("interval")
    return Aggregate(**{**data, "interval": Interval(**interval) if interval else None})


def comparable(data: dict[str, Any]) -> dict[str, Any]:
    """A results dict without the fields that differ between identical runs (timestamps)."""
    provenance = {k: v for k, v in data.get("provenance", {}).items() if k not in VOLATILE}
    return {**data, "provenance": provenance}


# ---------------------------------------------------------------------------------------------------- bootstrap
def bootstrap_indices(n: int, replicates: int, seed: int) -> np.ndarray:
    """``(replicates, n)`` resampling indices from a generator seeded by ``seed``."""
    return np.random.default_rng(seed).integers(0, n, size=(replicates, n))


def percentile_interval(estimates: np.ndarray, level: float, replicates: int) -> Interval | None:
    estimates = np.asarray([e for e in estimates if e is not None and np.isfinite(e)], dtype=np.float64)
    if estimates.size == 0:
        return None
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(estimates, [alpha, 1.0 - alpha])
    return Interval(float(low), float(high), level, replicates)


def mean_interval(values: np.ndarray, replicates: int = 1000, level: float = 0.95, seed: int = 0) -> Interval | None:
    """Percentile bootstrap interval of the mean of the finite ``values`` (None for fewer than 2)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size < 2 or replicates <= 0:
        return None
    means = values[bootstrap_indices(values.size, replicates, seed)].mean(1)
    return percentile_interval(means, level, replicates)
