"""The metric protocol: a functional core per metric plus a small stateful class that accumulates batch by batch.

Every metric class declares ``key`` (its registry name), ``higher_is_better`` and ``recorded_name`` (the name a
number is stored and shown under, with its backend, e.g. ``CSIM[dlib-resnet]``), and ``options()`` (every choice
that changes the number). ``update(batch)`` returns the batch's per-pair values (NaN where undefined, e.g. no face
found) and accumulates; ``compute()`` gives the aggregate over everything seen. Accumulating batch by batch equals
computing on everything at once.

``update`` is two steps: ``measure(batch)``, the costly part, gives the batch's contribution as named arrays whose
first axis is the pair (per-pair values, or a distribution metric's features); ``absorb(contribution, size)`` adds
it to the state. The runner keeps the contributions on disk, so a rerun absorbs them without measuring again.

Per-pair metrics (CSIM, AED, APD, L1, PSNR, SSIM, AKD) aggregate by the mean over the pairs with a finite value.
Distribution metrics (FID, Frechet distances) have no per-pair value: they keep the features of both image sets and
compute one number (``compute_subset`` recomputes it on a resample, for bootstrap intervals).

A :class:`MetricBatch` carries the images of one batch and a memo, so that metrics sharing a backend (CSIM and a
Frechet distance on the same embedding, AED and APD on the same extractor) compute it once per batch.
"""
from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch

Kind = Literal["self", "cross"]


@dataclass
class MetricBatch:
    """One batch of pairs: images ``(B, 3, H, W)`` RGB float32 in [0, 1]; coefficients ``(B, 257)`` when known."""

    generated: torch.Tensor
    source: torch.Tensor
    driving: torch.Tensor
    source_coeffs: torch.Tensor | None = None
    driving_coeffs: torch.Tensor | None = None
    memo: dict[tuple, Any] = field(default_factory=dict)

    def __post_init__(self):
        shapes = {name: tuple(getattr(self, name).shape) for name in ("generated", "source", "driving")}
        if len(set(shapes.values())) != 1 or len(shapes["generated"]) != 4 or shapes["generated"][1] != 3:
            raise ValueError(f"generated, source and driving must share one (B, 3, H, W) shape, got {shapes}")

    def __len__(self) -> int:
        return self.generated.shape[0]

    def image(self, role: str) -> torch.Tensor:
        if role not in ("generated", "source", "driving"):
            raise ValueError(f"image role must be generated, source or driving, got {role!r}")
        return getattr(self, role)

    def derived(self, backend: Callable, name: str, role: str) -> Any:
        """``backend(images of role)``, computed once per batch for a backend called ``name``."""
        key = (name, role)
        if key not in self.memo:
            self.memo[key] = backend(self.image(role))
        return self.memo[key]


class Metric(abc.ABC):
    """Base of every metric (see module docstring)."""

    key: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    per_pair: ClassVar[bool] = True
    #: which protocol kinds the metric applies to
    kinds: ClassVar[tuple[str, ...]] = ("self", "cross")

    #: why the metric cannot be computed here (a missing weights file, ...), or None
    unavailable: str | None = None

    @property
    def recorded_name(self) -> str:
        return self.key.upper()

    def options(self) -> dict[str, Any]:
        return {}

    @abc.abstractmethod
    def measure(self, batch: MetricBatch) -> dict[str, np.ndarray]:
        """The batch's contribution: named arrays, first axis the pair (``B``); the state is left as it was."""

    @abc.abstractmethod
    def absorb(self, contribution: dict[str, np.ndarray], size: int) -> np.ndarray:
        """Add a contribution of ``size`` pairs (from :meth:`measure`, or kept from an earlier run) to the state;
        return its per-pair values ``(size,)`` float64 (NaN where undefined)."""

    def update(self, batch: MetricBatch) -> np.ndarray:
        """Accumulate ``batch``; return its per-pair values ``(B,)`` float64 (NaN where undefined)."""
        return self.absorb(self.measure(batch), len(batch))

    @abc.abstractmethod
    def compute(self) -> float | None:
        """The aggregate over every batch seen (None when unavailable or nothing valid was seen)."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget every batch seen."""


class PairMetric(Metric):
    """A metric with one value per pair, aggregated by the mean over the finite values."""

    def __init__(self):
        self._values: list[np.ndarray] = []

    @abc.abstractmethod
    def pair_values(self, batch: MetricBatch) -> np.ndarray:
        """Per-pair values ``(B,)`` of ``batch``."""

    def measure(self, batch: MetricBatch) -> dict[str, np.ndarray]:
        return {"values": np.asarray(self.pair_values(batch), dtype=np.float64).reshape(len(batch))}

    def absorb(self, contribution: dict[str, np.ndarray], size: int) -> np.ndarray:
        values = np.asarray(contribution["values"], dtype=np.float64).reshape(size)
        self._values.append(values)
        return values

    def values(self) -> np.ndarray:
        return np.concatenate(self._values) if self._values else np.zeros(0)

    def compute(self) -> float | None:
        return finite_mean(self.values())

    def reset(self) -> None:
        self._values = []


def finite_mean(values: np.ndarray) -> float | None:
    """Mean of the finite entries, None when there are none."""
    values = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(values)
    return float(values[ok].mean()) if ok.any() else None
