"""Self-reenactment pixel metrics between the generated image I_g and the driving frame I_d (its ground truth).

Images are RGB float in [0, 1] ``(B, 3, H, W)``; values are per image, averaged over pairs:

* ``l1``: mean absolute difference over pixels and channels, on the [0, 1] scale;
* ``psnr``: ``10 log10(1 / MSE)`` with data range 1 (``inf`` for identical images is kept as a large finite
  value, :data:`PSNR_IDENTICAL`, so that means stay defined);
* ``ssim``: structural similarity with an 11-tap Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, data range 1,
  averaged over the valid region and the channels: the definition of Wang et al. 2004 and of scikit-image's
  ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)``,
  computed in torch by pytorch-msssim.
"""
from __future__ import annotations

import numpy as np
import torch

from benchmark.metrics.base import MetricBatch, PairMetric

PSNR_IDENTICAL = 100.0
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5


def l1_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` x2 -> ``(B,)`` mean absolute difference."""
    return (a.double() - b.double()).abs().flatten(1).mean(1)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """``(B, C, H, W)`` x2 -> ``(B,)`` peak signal-to-noise ratio in dB (capped at :data:`PSNR_IDENTICAL`)."""
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    value = 10.0 * torch.log10(data_range ** 2 / mse.clamp_min(1e-300))
    return value.clamp(max=PSNR_IDENTICAL)


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """``(B, C, H, W)`` x2 -> ``(B,)`` SSIM (module docstring); images must be at least 11 pixels on a side."""
    from pytorch_msssim import ssim as _ssim

    return _ssim(a.double(), b.double(), data_range=data_range, size_average=False, win_size=SSIM_WINDOW,
                 win_sigma=SSIM_SIGMA)


class _DrivingReference(PairMetric):
    kinds = ("self",)

    def pair_values(self, batch: MetricBatch) -> np.ndarray:
        return self.function(batch.generated, batch.driving).cpu().numpy()

    @staticmethod
    def function(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def options(self) -> dict:
        return {"reference": "driving", "data_range": 1.0}


class L1(_DrivingReference):
    key, higher_is_better = "l1", False
    function = staticmethod(l1_distance)


class PSNR(_DrivingReference):
    key, higher_is_better = "psnr", True
    function = staticmethod(psnr)

    def options(self) -> dict:
        return {**super().options(), "identical_cap_db": PSNR_IDENTICAL}


class SSIM(_DrivingReference):
    key, higher_is_better = "ssim", True
    function = staticmethod(ssim)

    def options(self) -> dict:
        return {**super().options(), "window": SSIM_WINDOW, "sigma": SSIM_SIGMA, "k1": 0.01, "k2": 0.03}
