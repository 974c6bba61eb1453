"""AED and APD in PIRenderer's sense (Ren et al. 2021): L1 distances between the 3DMM coefficients of the generated
image I_g and of the driving frame I_d, both extracted by the same configured extractor.

* AED (average expression distance): the 64 expression coefficients beta (``reenact.face3d.coeffs.EXP``).
* APD (average pose distance): the pose p, either the three Euler angles (radians) or angles plus translation
  (``pose="angles+trans"``, the 6 values of ``POSE_INDICES``).

The literature disagrees on the reduction over coefficients; both are options and every result records them:
``reduce="sum"`` sums the absolute differences over the coefficients, ``"mean"`` averages them. Per pair, then
averaged over pairs. Defaults: AED ``sum`` (64 expression values; the magnitude of the seed's AED, 1.2-4.1) and
APD ``mean`` over ``angles+trans`` (the magnitude of the seed's APD, 0.04-0.29).

The extractor is any callable ``images (B, 3, H, W) in [0, 1] -> (B, 257)`` with a ``name`` attribute; a NaN row
means it failed on that image, and the pair's value is NaN (counted as missing). ``driving="extracted"`` (default)
runs it on the driving frame too, so that extractor bias cancels (copy-driving scores exactly 0);
``driving="dataset"`` uses the pair's stored driving coefficients instead.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch

from benchmark.metrics.base import MetricBatch, PairMetric
from reenact.face3d.coeffs import ANGLE, EXP, NUM_COEFFS, POSE_INDICES

Extractor = Callable[[torch.Tensor], torch.Tensor]
Reduce = Literal["mean", "sum"]
Pose = Literal["angles", "angles+trans"]
ANGLE_INDICES = list(range(ANGLE.start, ANGLE.stop))
EXP_INDICES = list(range(EXP.start, EXP.stop))


def coefficient_l1(generated: torch.Tensor, driving: torch.Tensor, indices: list[int], reduce: Reduce) -> np.ndarray:
    """``(B, 257)`` x2 -> ``(B,)`` float64: |generated - driving| over ``indices``, summed or averaged."""
    for name, c in (("generated", generated), ("driving", driving)):
        if c.ndim != 2 or c.shape[1] != NUM_COEFFS:
            raise ValueError(f"{name} coefficients must be (B, {NUM_COEFFS}), got {tuple(c.shape)}")
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be mean or sum, got {reduce!r}")
    diff = (torch.as_tensor(generated).double() - torch.as_tensor(driving).double())[:, indices].abs()
    return (diff.sum(1) if reduce == "sum" else diff.mean(1)).cpu().numpy()


def expression_distance(generated: torch.Tensor, driving: torch.Tensor, reduce: Reduce = "sum") -> np.ndarray:
    """Per-pair AED (module docstring)."""
    return coefficient_l1(generated, driving, EXP_INDICES, reduce)


def pose_distance(generated: torch.Tensor, driving: torch.Tensor, reduce: Reduce = "mean",
                  pose: Pose = "angles+trans") -> np.ndarray:
    """Per-pair APD (module docstring)."""
    if pose not in ("angles", "angles+trans"):
        raise ValueError(f"pose must be angles or angles+trans, got {pose!r}")
    return coefficient_l1(generated, driving, ANGLE_INDICES if pose == "angles" else POSE_INDICES, reduce)


def extractor_name(extractor: Extractor) -> str:
    return str(getattr(extractor, "name", type(extractor).__name__))


class _MotionMetric(PairMetric):
    higher_is_better = False

    def __init__(self, extractor: Extractor, reduce: Reduce, driving: Literal["extracted", "dataset"] = "extracted"):
        super().__init__()
        if driving not in ("extracted", "dataset"):
            raise ValueError(f"driving must be extracted or dataset, got {driving!r}")
        self.extractor, self.reduce, self.driving = extractor, reduce, driving

    @property
    def recorded_name(self) -> str:
        return f"{self.key.upper()}[{extractor_name(self.extractor)}]"

    def options(self) -> dict:
        return {"extractor": extractor_name(self.extractor), "reduce": self.reduce, "driving": self.driving}

    def coefficients(self, batch: MetricBatch) -> tuple[torch.Tensor, torch.Tensor]:
        name = extractor_name(self.extractor)
        generated = batch.derived(self.extractor, name, "generated")
        if self.driving == "extracted":
            return generated, batch.derived(self.extractor, name, "driving")
        if batch.driving_coeffs is None:
            raise ValueError(f"{self.recorded_name} with driving='dataset' needs the pairs' driving coefficients")
        return generated, batch.driving_coeffs


class AED(_MotionMetric):
    key = "aed"

    def __init__(self, extractor: Extractor, reduce: Reduce = "sum", driving: Literal["extracted", "dataset"] = "extracted"):
        super().__init__(extractor, reduce, driving)

    def pair_values(self, batch: MetricBatch) -> np.ndarray:
        return expression_distance(*self.coefficients(batch), reduce=self.reduce)


class APD(_MotionMetric):
    key = "apd"

    def __init__(self, extractor: Extractor, reduce: Reduce = "mean", pose: Pose = "angles+trans",
                 driving: Literal["extracted", "dataset"] = "extracted"):
        super().__init__(extractor, reduce, driving)
        if pose not in ("angles", "angles+trans"):
            raise ValueError(f"pose must be angles or angles+trans, got {pose!r}")
        self.pose = pose

    def options(self) -> dict:
        return {**super().options(), "pose": self.pose}

    def pair_values(self, batch: MetricBatch) -> np.ndarray:
        return pose_distance(*self.coefficients(batch), reduce=self.reduce, pose=self.pose)
