"""3DMM coefficient estimation from images: one result type and a lazy registry of estimators.

Every estimator is a class whose ``__init__`` loads what it needs once and whose ``estimate(images) ->``
:class:`CoeffEstimate` (and ``estimate_coeffs(images) -> (B, 257)``) works on RGB float images
(:mod:`reenact.faces.images`). The registry maps names to ``"module:Class"`` strings, so an estimator's dependencies
load only when it is picked. (The synthetic world's ground truth is not an estimator: it reads no image; see the
``oracle`` row adapter in ``pipelines.extractors``.)
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch

from reenact.data.schema import Status

ESTIMATORS: dict[str, str] = {
    "deep3d": "reenact.faces.deep3d:Deep3DEstimator",
    "landmarks": "reenact.faces.landmark_fit:LandmarkFitEstimator",
}


@dataclass(frozen=True)
class CoeffEstimate:
    """Coefficients of B images and, per image, whether and why not.

    coeffs: ``(B, 257)`` float32 in the frame's Deep3D camera (:func:`reenact.faces.images.frame_camera`); NaN rows
        where ``status`` is not ``ok`` and nothing was fitted.
    status: B :class:`reenact.data.schema.Status` values (``ok``, ``no_face``, ``detector_disagreement``,
        ``implausible`` (fitted, coefficients kept, but a plausibility gate failed), ``fit_error``, ...).
    error: B human-readable reasons (empty where ``ok``).
    landmarks: ``(B, K, 2)`` float64 continuous pixels the estimate used (K = 68 or 5), NaN where none.
    fit_error: ``(B,)`` float64 landmark RMSE in pixels where a fit ran, else NaN.
    align: ``(B, 5)`` float64 Deep3D ``trans_params`` where an alignment was used, else None.
    """

    coeffs: torch.Tensor
    status: tuple[Status, ...]
    error: tuple[str, ...]
    landmarks: torch.Tensor | None = None
    fit_error: torch.Tensor | None = None
    align: torch.Tensor | None = None

    @property
    def ok(self) -> torch.Tensor:
        """``(B,)`` bool."""
        return torch.tensor([s == Status.OK for s in self.status], dtype=torch.bool)


def get_estimator(name: str) -> type:
    """Import and return the estimator class registered as ``name``."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown coefficient estimator {name!r}; registered: {', '.join(sorted(ESTIMATORS))}")
    module_name, class_name = ESTIMATORS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def estimate_coeffs(images, estimator: str = "landmarks", **kwargs) -> torch.Tensor:
    """``(B, 257)`` coefficients of RGB float images with a freshly built estimator (``kwargs`` go to its
    constructor). Build the class once (:func:`get_estimator`) when calling repeatedly."""
    return get_estimator(estimator)(**kwargs).estimate_coeffs(images)
