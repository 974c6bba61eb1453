"""The one registry of benchmark metrics: name -> factory building the metric from the configured backends.

``create_metrics(names, kind, backends)`` builds them; ``METRICS`` lists what exists, ``DEFAULTS`` what a
protocol kind runs unless told otherwise (the seed's CSIM, AED, APD, FID; self-reenactment adds L1, PSNR, SSIM and
AKD; ``fd-dlib`` is a Frechet distance on the dlib identity embedding, reported under its own name).
Backends are loaded lazily, once, and shared by every metric that uses them.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmark.metrics.base import Kind, Metric, MetricBatch, PairMetric, finite_mean


@dataclass
class MetricOptions:
    """Every disputed choice, with its default (recorded in each result)."""

    embedder: str = "dlib"                   # CSIM / FD backend: dlib | facenet | arcface (reenact.faces.embed)
    extractor: str = "landmarks"             # AED / APD coefficients: landmarks | deep3d (reenact.faces.estimate)
    aed_reduce: str = "sum"                  # sum | mean over the 64 expression coefficients
    apd_reduce: str = "mean"                 # sum | mean over the pose values
    apd_pose: str = "angles+trans"           # angles | angles+trans
    motion_driving: str = "extracted"        # extracted | dataset: where the driving coefficients come from
    assets: str | None = None                # asset folder for FID weights
    extractor_kwargs: dict[str, Any] = field(default_factory=dict)


class Backends:
    """Lazily built, shared backends: ``embedder``, ``extractor``, ``landmarks`` (each built once on first use).

    Tests and callers may inject any callable with a ``name`` via the constructor.
    """

    def __init__(self, options: MetricOptions | None = None, **injected: Callable):
        self.options = options or MetricOptions()
        self._built: dict[str, Callable] = dict(injected)

    def get(self, what: str) -> Callable:
        if what not in self._built:
            self._built[what] = self._build(what)
        return self._built[what]

    def _build(self, what: str) -> Callable:
        from benchmark.metrics import backends

        if what == "embedder":
            return backends.FaceEmbedder(self.options.embedder, self.options.assets)
        if what == "extractor":
            return backends.CoefficientExtractor(self.options.extractor, **self.options.extractor_kwargs)
        if what == "landmarks":
            return backends.Landmarks68Batch()
        raise ValueError(f"unknown backend {what!r}")


def _csim(b: Backends, kind: Kind) -> Metric:
    from benchmark.metrics.identity import CSIM
    return CSIM(b.get("embedder"), kind)


def _aed(b: Backends, kind: Kind) -> Metric:
    from benchmark.metrics.motion import AED
    return AED(b.get("extractor"), reduce=b.options.aed_reduce, driving=b.options.motion_driving)


def _apd(b: Backends, kind: Kind) -> Metric:
    from benchmark.metrics.motion import APD
    return APD(b.get("extractor"), reduce=b.options.apd_reduce, pose=b.options.apd_pose,
               driving=b.options.motion_driving)


def _fid(b: Backends, kind: Kind) -> Metric:
    from benchmark.metrics.frechet import FID
    return FID(kind, assets=b.options.assets)


def _fd_dlib(b: Backends, kind: Kind) -> Metric:
    from benchmark.metrics.frechet import FrechetDistance
    return FrechetDistance(b.get("embedder"), kind)


def _image(name: str) -> Callable[[Backends, Kind], Metric]:
    def build(b: Backends, kind: Kind) -> Metric:
        from benchmark.metrics import image
        return getattr(image, name)()
    return build


def _akd(b: Backends, kind: Kind) -> Metric:
    from benchmark.metrics.landmarks import AKD
    return AKD(b.get("landmarks"))


METRICS: dict[str, Callable[[Backends, Kind], Metric]] = {
    "csim": _csim, "aed": _aed, "apd": _apd, "fid": _fid, "fd-dlib": _fd_dlib,
    "l1": _image("L1"), "psnr": _image("PSNR"), "ssim": _image("SSIM"), "akd": _akd,
}
DEFAULTS: dict[str, tuple[str, ...]] = {
    "cross": ("csim", "aed", "apd", "fid", "fd-dlib"),
    "self": ("csim", "aed", "apd", "fid", "fd-dlib", "l1", "psnr", "ssim", "akd"),
}
#: the seed's four metrics, in its column order
PAPER_METRICS = ("csim", "aed", "apd", "fid")


def create_metrics(names: list[str] | tuple[str, ...] | None, kind: Kind, backends: Backends | None = None
                   ) -> dict[str, Metric]:
    """Build the metrics ``names`` (default :data:`DEFAULTS` for ``kind``) for a protocol of ``kind``."""
    if kind not in DEFAULTS:
        raise ValueError(f"kind must be self or cross, got {kind!r}")
    names = tuple(names or DEFAULTS[kind])
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; registered: {sorted(METRICS)}")
    backends = backends or Backends()
    metrics = {name: METRICS[name](backends, kind) for name in names}
    wrong = [n for n, m in metrics.items() if kind not in m.kinds]
    if wrong:
        raise ValueError(f"metrics {wrong} apply only to {[metrics[n].kinds for n in wrong]} protocols, not {kind}")
    return metrics


__all__ = ["DEFAULTS", "METRICS", "PAPER_METRICS", "Backends", "Kind", "Metric", "MetricBatch", "MetricOptions",
           "PairMetric", "create_metrics", "finite_mean"]
