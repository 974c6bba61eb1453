"""AKD (average keypoint distance, self-reenactment): the mean Euclidean distance in pixels between the 68
landmarks of the generated image and of the driving frame, both detected by the same detector (a callable
``images -> (B, 68, 2)`` with a ``name``; NaN rows where no face is found give a NaN pair value)."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from benchmark.metrics.base import MetricBatch, PairMetric

Detector = Callable[[torch.Tensor], torch.Tensor]


def keypoint_distance(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> np.ndarray:
    """``(B, K, 2)`` x2 -> ``(B,)`` float64 mean over K of the point-to-point distance."""
    a, b = (np.asarray(torch.as_tensor(x).double().cpu()) for x in (a, b))
    if a.shape != b.shape or a.ndim != 3 or a.shape[-1] != 2:
        raise ValueError(f"expected two (B, K, 2) keypoint sets of one shape, got {a.shape} and {b.shape}")
    return np.linalg.norm(a - b, axis=-1).mean(-1)


class AKD(PairMetric):
    key, higher_is_better, kinds = "akd", False, ("self",)

    def __init__(self, detector: Detector):
        super().__init__()
        self.detector = detector

    @property
    def recorded_name(self) -> str:
        return f"AKD[{getattr(self.detector, 'name', type(self.detector).__name__)}]"

    def options(self) -> dict:
        return {"detector": getattr(self.detector, "name", type(self.detector).__name__), "reference": "driving",
                "unit": "pixels"}

    def pair_values(self, batch: MetricBatch) -> np.ndarray:
        name = getattr(self.detector, "name", type(self.detector).__name__)
        return keypoint_distance(batch.derived(self.detector, name, "generated"),
                                 batch.derived(self.detector, name, "driving"))
