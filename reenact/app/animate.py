"""``reenact animate``: animate a source face image with a driving video using the paper's model.

Steps: read the source image and decode the driving video (ffmpeg); detect the face (MTCNN) and cut square crops
around it (the CelebV ingest's crop rule, centres smoothed over frames), or take whole frames with ``--crop none``;
extract 3DMM coefficients with the configured estimator of ``reenact.faces`` (``landmarks``: a morphable-model fit to
dlib's 68 points; ``deep3d``: Deep3DFaceRecon, needs its weights); reenact every driving frame (``--mode expression`` or ``pose`` for the
disentangled edits of Fig. 8) and write an H.264 mp4 at the driving video's frame rate.

Driving frames whose face or coefficients cannot be found reuse the previous frame's coefficients (the count is
reported); a source image without a face is an error.

Examples:
  reenact animate --source face.jpg --driving talk.mp4 -o out.mp4 --checkpoint runs/paper/checkpoint.pt
  reenact animate --source face.png --driving talk.mp4 -o pose.mp4 --checkpoint ckpt.pt --mode pose --crop none
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class AnimateConfig:
    source: str = field(default="", metadata={"help": "source face image"})
    driving: str = field(default="", metadata={"help": "driving video"})
    out: str = field(default="", metadata={"help": "output mp4"})
    checkpoint: str | None = field(default=None, metadata={"help": "checkpoint.pt of `reenact train`"})
    model: str = field(default="paper", metadata={"help": "registered model: paper or paper-base"})
    random_weights: bool = field(default=False, metadata={"help": "untrained network (smoke tests only)"})
    mode: Literal["full", "expression", "pose"] = field(default="full", metadata={
        "help": "full reenactment, or only the driving expression / only the driving pose"})
    crop: Literal["detect", "none"] = field(default="detect", metadata={"help": "detect and crop faces, or use "
                                                                                "whole (square) frames"})
    extractor: str = field(default="landmarks", metadata={"help": "coefficient extractor: landmarks or deep3d"})
    morphable: str = field(default="procedural-full", metadata={"help": "morphable model of the extractor"})
    size: int = field(default=256, metadata={"help": "crop side in pixels (the output size)"})
    batch_size: int = field(default=8, metadata={"help": "frames per network call"})
    device: str = field(default="cpu", metadata={"help": "cpu or cuda"})
    assets: str | None = field(default=None, metadata={"help": "asset folder"})
    progress: bool = field(default=True, metadata={"help": "progress bar"})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from reenact.config import add_dataclass_arguments

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("-o", dest="out", default=argparse.SUPPRESS, help="output mp4 (same as --out)")
    add_dataclass_arguments(parser, AnimateConfig)


# ---------------------------------------------------------------------------------------------------- crops
def square_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """Centre square of each ``(T, H, W, 3)`` frame resized to ``size``: ``(T, size, size, 3)`` uint8."""
    from pipelines.celebv_crop import crop_square

    h, w = frames.shape[1:3]
    side = min(h, w)
    return np.stack([crop_square(f, ((w - side) // 2, (h - side) // 2, side), size) for f in frames])


def face_crops(frames: np.ndarray, size: int, smooth: int = 5) -> tuple[np.ndarray, int]:
    """Face crops ``(T, size, size, 3)`` of ``(T, H, W, 3)`` frames (MTCNN boxes, the CelebV crop rule) and the
    number of frames without a face (they take the nearest found box). ``ValueError`` when no frame has a face."""
    from pipelines.celebv_crop import crop_square, plan_crops
    from reenact.data.codec import uint8_to_tensor
    from reenact.faces.detect import detect

    boxes = detect(uint8_to_tensor(frames), "mtcnn").boxes.numpy()
    plan = plan_crops([None if not np.isfinite(b).all() else b.tolist() for b in boxes], smooth=smooth)
    kept = [i for i, b in enumerate(plan.boxes) if b is not None]
    if not kept:
        raise ValueError("no face found (MTCNN); pass --crop none for pre-cropped inputs")
    nearest = [plan.boxes[min(kept, key=lambda k: abs(k - i))] for i in range(len(frames))]
    return np.stack([crop_square(f, box, size) for f, box in zip(frames, nearest)]), len(frames) - len(kept)


# ---------------------------------------------------------------------------------------------------- coefficients
def extract_coeffs(crops: np.ndarray, estimator, what: str) -> tuple[np.ndarray, int]:
    """``(T, 257)`` float32 coefficients of the crops of one video (one identity, fitted together), and how many
    frames failed (they copy the previous good frame, the first good one at the start). ``ValueError`` when all
    fail."""
    from reenact.data.codec import uint8_to_tensor

    estimate = estimator.estimate(uint8_to_tensor(crops))
    good = [i for i, ok in enumerate(estimate.ok.tolist()) if ok]
    if not good:
        raise ValueError(f"{what}: no coefficients for any frame ({estimate.error[0]})")
    coeffs, last = np.zeros((len(crops), 257), np.float32), good[0]
    for i in range(len(crops)):
        last = i if i in good else last
        coeffs[i] = estimate.coeffs[last].numpy()
    return coeffs, len(crops) - len(good)


def build_estimator(cfg: AnimateConfig):
    """The configured coefficient estimator of :mod:`reenact.faces.estimate`."""
    from reenact.faces.estimate import get_estimator

    cls = get_estimator(cfg.extractor)
    if cfg.extractor == "landmarks":
        return cls(model=cfg.morphable, assets=cfg.assets)
    return cls(assets=cfg.assets, device=cfg.device)


# ---------------------------------------------------------------------------------------------------- model
def load_model(cfg: AnimateConfig):
    import baselines

    if cfg.random_weights:
        return baselines.create(cfg.model, random_weights=True, mode=cfg.mode)
    if cfg.checkpoint is None:
        raise ValueError("pass --checkpoint (a `reenact train` checkpoint.pt), or --random-weights for a smoke test")
    return baselines.create(cfg.model, cfg.checkpoint, mode=cfg.mode, assets=cfg.assets)


def reenact_frames(model, source: np.ndarray, source_coeffs: np.ndarray, crops: np.ndarray, coeffs: np.ndarray,
                   cfg: AnimateConfig):
    """Yield uint8 ``(b, S, S, 3)`` generated frames, ``cfg.batch_size`` at a time."""
    import torch
    from tqdm.auto import tqdm

    from reenact.contract import ReenactInputs
    from reenact.data.codec import tensor_to_uint8, uint8_to_tensor

    device = torch.device(cfg.device)
    model = model.to(device).eval()
    src = uint8_to_tensor(source).to(device)                                   # 1 x 3 x S x S
    src_c = torch.from_numpy(source_coeffs).to(device)[None]
    with torch.no_grad(), tqdm(total=len(crops), desc="animate", unit="frame", disable=not cfg.progress) as bar:
        for start in range(0, len(crops), cfg.batch_size):
            drv = uint8_to_tensor(crops[start:start + cfg.batch_size]).to(device)
            b = drv.shape[0]
            inputs = ReenactInputs(source=src.expand(b, -1, -1, -1), driving=drv, source_coeffs=src_c.expand(b, -1),
                                   driving_coeffs=torch.from_numpy(coeffs[start:start + b]).to(device))
            yield tensor_to_uint8(model.reenact(inputs).cpu())
            bar.update(b)


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from pipelines.media import probe
    from reenact.config import from_namespace
    from reenact.synth.writer import Mp4Writer, read_video

    cfg = from_namespace(AnimateConfig, args)
    if not (cfg.source and cfg.driving and cfg.out):
        raise ValueError("--source, --driving and -o/--out are required")
    model = load_model(cfg)
    info = probe(cfg.driving)
    frames = read_video(cfg.driving, info.width, info.height)
    source = np.asarray(Image.open(cfg.source).convert("RGB"))[None]
    missing_faces = 0
    if cfg.crop == "detect":
        source, _ = face_crops(source, cfg.size)
        crops, missing_faces = face_crops(frames, cfg.size)
    else:
        source, crops = square_frames(source, cfg.size), square_frames(frames, cfg.size)
    estimator = build_estimator(cfg)
    source_coeffs, _ = extract_coeffs(source, estimator, "source image")
    coeffs, missing_coeffs = extract_coeffs(crops, estimator, "driving video")
    with Mp4Writer(cfg.out, cfg.size, cfg.size, fps=max(1, round(info.fps))) as writer:
        for batch in reenact_frames(model, source[0], source_coeffs[0], crops, coeffs, cfg):
            writer.write(batch)
    print(json.dumps({"out": cfg.out, "frames": len(crops), "fps": info.fps, "mode": cfg.mode, "model": cfg.model,
                      "extractor": cfg.extractor, "frames_without_face": missing_faces,
                      "frames_without_coeffs": missing_coeffs}))
    return 0
