"""Backends the metrics call: thin adapters over the face analysis library (:mod:`reenact.faces`), as callables on
image batches ``(B, 3, H, W)`` RGB float in [0, 1], each with a ``name`` recorded with every number:

* identity embedders ``images -> (B, D)`` (CSIM, Frechet distances): :class:`FaceEmbedder` over
  :func:`reenact.faces.embed.embedder` (``dlib``: dlib's ResNet descriptor, offline; ``facenet`` / ``arcface`` when
  their weight files are in the asset folder). Where no detector finds a face the whole image is embedded (the
  images are face crops); :attr:`FaceEmbedder.whole_image` counts those fallbacks.
* coefficient extractors ``images -> (B, 257)`` (AED, APD): :class:`CoefficientExtractor` over a registered
  :mod:`reenact.faces.estimate` estimator, called image by image (every image its own identity); NaN rows where it
  found no face.
* a 68-point landmark detector ``images -> (B, 68, 2)`` (AKD): :class:`Landmarks68Batch` over
  :func:`reenact.faces.landmarks68.landmarks68`; NaN rows where no face.
"""
from __future__ import annotations

from typing import Any

import torch

#: recorded names of the embedding backends
EMBEDDER_NAMES = {"dlib": "dlib-resnet", "facenet": "facenet-vggface2", "arcface": "arcface"}


class FaceEmbedder:
    def __init__(self, backend: str = "dlib", assets: str | None = None):
        from reenact.faces.embed import BACKENDS, embedder

        if backend not in BACKENDS:
            raise ValueError(f"identity embedder must be one of {BACKENDS}, got {backend!r}")
        self.impl = embedder(backend, assets)          # a missing weights file raises MissingAssetError
        self.name = EMBEDDER_NAMES[backend]
        self.whole_image = 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        embeddings = self.impl(images)
        self.whole_image += int((~embeddings.found).sum())
        return embeddings.vectors.double()


class CoefficientExtractor:
    def __init__(self, estimator: str = "landmarks", **kwargs: Any):
        from reenact.faces.estimate import get_estimator

        self.impl = get_estimator(estimator)(**kwargs)
        self.name = estimator

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.impl.estimate_coeffs(images[i:i + 1]).double() for i in range(len(images))])


class Landmarks68Batch:
    name = "dlib-68"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from reenact.faces.landmarks68 import landmarks68

        return landmarks68(images)
