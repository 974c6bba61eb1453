"""CSIM: cosine similarity of identity embeddings (Zakharov et al. 2019; the seed's Tables 1-3).

The reference image is the source for cross-reenactment (is the source's identity kept?) and the driving frame for
self-reenactment (source and driving are one person). The embedding network is the metric's *backend*; it is part
of the recorded name (``CSIM[dlib-resnet]``, ``CSIM[arcface]``): numbers from different backends are not comparable.

An embedder is any callable ``images (B, 3, H, W) in [0, 1] -> (B, D)`` with a ``name`` attribute; rows of NaN
mean "no face found" and give a NaN value for the pair (counted as missing).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from benchmark.metrics.base import Kind, MetricBatch, PairMetric

Embedder = Callable[[torch.Tensor], torch.Tensor]


def cosine_similarity(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of ``(B, D)`` embeddings, float64 ``(B,)`` (NaN where a row is NaN or zero)."""
    a, b = (np.asarray(torch.as_tensor(x).double().cpu(), dtype=np.float64) for x in (a, b))
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two (B, D) embeddings of one shape, got {a.shape} and {b.shape}")
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 0, (a * b).sum(1) / norms, np.nan)


def backend_name(embedder: Embedder) -> str:
    return str(getattr(embedder, "name", type(embedder).__name__))


class CSIM(PairMetric):
    """CSIM between generated and reference (source for ``cross``, driving for ``self``) embeddings."""

    key, higher_is_better = "csim", True

    def __init__(self, embedder: Embedder, kind: Kind):
        super().__init__()
        if kind not in ("self", "cross"):
            raise ValueError(f"kind must be self or cross, got {kind!r}")
        self.embedder, self.kind = embedder, kind
        self.reference = "source" if kind == "cross" else "driving"

    @property
    def recorded_name(self) -> str:
        return f"CSIM[{backend_name(self.embedder)}]"

    def options(self) -> dict:
        return {"backend": backend_name(self.embedder), "reference": self.reference}

    def pair_values(self, batch: MetricBatch) -> np.ndarray:
        name = backend_name(self.embedder)
        return cosine_similarity(batch.derived(self.embedder, name, "generated"),
                                 batch.derived(self.embedder, name, self.reference))
