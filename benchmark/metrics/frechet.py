"""Frechet distances between the feature distributions of generated and real images (Heusel et al. 2017).

``FID`` is pytorch-fid's InceptionV3 (pool3, 2048-d) with its standard weights file
``pt_inception-2015-12-05-6726825d.pth`` (asset ``inception_fid``, :mod:`reenact.assets`). Without that file the
metric is *unavailable* (``FID.unavailable`` gives the reason) and yields no number: a distance computed with any
other weights is not FID. ``FrechetDistance`` on another backbone (e.g. the dlib identity embedding) is offered
under its own name, ``FD[<backbone>]``.

The real set is the source images for cross-reenactment and the driving frames (ground truth) for
self-reenactment; option ``real`` overrides it. Features are kept (float32), so the aggregate is exact whatever the
batching and can be recomputed on a bootstrap resample (:meth:`compute_subset`).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmark.metrics.base import Kind, Metric, MetricBatch

Backbone = Callable[[torch.Tensor], torch.Tensor]
FID_FILE_PREFIX = "6726825d"   # torch.hub convention: the file name carries the first hex digits of its sha256


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(N, D)`` -> mean ``(D,)`` and unbiased covariance ``(D, D)``, float64 (as pytorch-fid)."""
    features = np.asarray(features, dtype=np.float64)
    return features.mean(0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))`` (pytorch-fid's implementation, scipy's sqrtm), clamped at
    0 (equal distributions give round-off of either sign)."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    return max(0.0, float(calculate_frechet_distance(mu1, np.atleast_2d(sigma1), mu2, np.atleast_2d(sigma2))))


def features_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between two feature sets ``(N, D)`` and ``(M, D)``."""
    return frechet_distance(*feature_statistics(a), *feature_statistics(b))


def backbone_name(backbone: Backbone) -> str:
    return str(getattr(backbone, "name", type(backbone).__name__))


class FrechetDistance(Metric):
    """Frechet distance of ``backbone`` features, generated vs real (module docstring)."""

    key, higher_is_better, per_pair = "fd", False, False

    def __init__(self, backbone: Backbone, kind: Kind, real: str | None = None):
        if kind not in ("self", "cross"):
            raise ValueError(f"kind must be self or cross, got {kind!r}")
        self.backbone, self.kind = backbone, kind
        self.real = real or ("source" if kind == "cross" else "driving")
        self.reset()

    @property
    def recorded_name(self) -> str:
        return f"FD[{backbone_name(self.backbone)}]"

    def options(self) -> dict:
        return {"backbone": backbone_name(self.backbone), "real": self.real}

    def reset(self) -> None:
        self._generated: list[np.ndarray] = []
        self._real: list[np.ndarray] = []

    def measure(self, batch: MetricBatch) -> dict[str, np.ndarray]:
        name = backbone_name(self.backbone)
        return {key: np.asarray(torch.as_tensor(batch.derived(self.backbone, name, role)).float().cpu())
                for key, role in (("generated", "generated"), ("real", self.real))}

    def absorb(self, contribution: dict[str, np.ndarray], size: int) -> np.ndarray:
        self._generated.append(np.asarray(contribution["generated"], dtype=np.float32))
        self._real.append(np.asarray(contribution["real"], dtype=np.float32))
        return np.full(size, np.nan)

    def features(self) -> tuple[np.ndarray, np.ndarray]:
        """(generated, real) features, rows with NaN (no face) dropped per pair."""
        generated, real = np.concatenate(self._generated), np.concatenate(self._real)
        ok = np.isfinite(generated).all(1) & np.isfinite(real).all(1)
        return generated[ok], real[ok]

    def compute_subset(self, indices: np.ndarray | None = None) -> float | None:
        if not self._generated:
            return None
        generated, real = np.concatenate(self._generated), np.concatenate(self._real)
        if indices is not None:
            generated, real = generated[indices], real[indices]
        ok = np.isfinite(generated).all(1) & np.isfinite(real).all(1)
        if ok.sum() < 2:
            return None
        return features_frechet(generated[ok], real[ok])

    def compute(self) -> float | None:
        return self.compute_subset(None)


class InceptionFeatures:
    """pytorch-fid's InceptionV3 pool3 features ``(B, 2048)`` from images in [0, 1], weights from a local file."""

    name = "inception-pt_inception-2015-12-05"

    def __init__(self, weights: str | Path, device: str = "cpu"):
        from pytorch_fid import inception

        state = torch.load(weights, map_location="cpu", weights_only=True)
        original = inception.load_state_dict_from_url
        inception.load_state_dict_from_url = lambda *args, **kwargs: state   # pytorch-fid only knows its URL
        try:
            self.model = inception.InceptionV3([inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval().to(device)
        finally:
            inception.load_state_dict_from_url = original
        self.device = device

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.to(self.device).float())[0].flatten(1).cpu()


def locate_fid_weights(assets: str | None = None) -> tuple[Path | None, str | None]:
    """(path, None) of the standard FID weights, or (None, reason) when they are missing or not the right file."""
    from reenact.assets import MissingAssetError, asset_path, sha256sum

    try:
        path = asset_path("inception_fid", assets)
    except MissingAssetError as err:
        return None, str(err)
    if not sha256sum(path).startswith(FID_FILE_PREFIX):
        return None, f"{path} is not pytorch-fid's pt_inception-2015-12-05 (sha256 does not start with {FID_FILE_PREFIX})"
    return path, None


class FID(FrechetDistance):
    """FID with pytorch-fid's standard Inception weights, or unavailable with the reason (module docstring)."""

    key = "fid"

    def __init__(self, kind: Kind, real: str | None = None, assets: str | None = None, device: str = "cpu"):
        path, self.unavailable = locate_fid_weights(assets)
        super().__init__(InceptionFeatures(path, device) if path else _no_backbone, kind, real)

    @property
    def recorded_name(self) -> str:
        return "FID"

    def options(self) -> dict:
        return {**super().options(), "weights": "pt_inception-2015-12-05-6726825d.pth (pytorch-fid)",
                **({"unavailable": self.unavailable} if self.unavailable else {})}

    def measure(self, batch: MetricBatch) -> dict[str, np.ndarray]:
        return {} if self.unavailable else super().measure(batch)

    def absorb(self, contribution: dict[str, np.ndarray], size: int) -> np.ndarray:
        return np.full(size, np.nan) if self.unavailable else super().absorb(contribution, size)

    def compute_subset(self, indices: np.ndarray | None = None) -> float | None:
        return None if self.unavailable else super().compute_subset(indices)


def _no_backbone(images: torch.Tensor) -> torch.Tensor:
    raise RuntimeError("FID is unavailable: no standard Inception weights")
