"""The real talking-head clips of ``../shared/fixtures/real`` as 256^2 frames (test data only; not copied).

Each clip is cut to its centred square (the clips are roughly face-centred) and resized to 256^2 with ffmpeg's
bicubic scaler, the size of the suite's VoxCeleb crops. The photo is a clip of one frame.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "real"
CLIPS = {"tpsmm_driving": "tpsmm_driving.mp4", "lp_d0": "lp_d0.mp4", "lp_d10": "lp_d10.mp4",
         "tpsmm_source": "tpsmm_source.png"}
SIZE = 256


@dataclass(frozen=True)
class Clip:
    """``frames``: uint8 ``(T, 256, 256, 3)``; ``name``: the clip's key in :data:`CLIPS`."""

    name: str
    frames: np.ndarray


def clip_path(name: str, root: Path = REAL) -> Path:
    return root / CLIPS[name]


def available(root: Path = REAL) -> bool:
    return all((root / f).is_file() for f in CLIPS.values())


def decode_command(path: Path, size: int = SIZE) -> list[str]:
    """ffmpeg arguments: centred square crop, bicubic resize to ``size``^2, raw RGB24 to stdout."""
    from reenact.ffmpeg import ffmpeg_exe

    crop = "crop='min(iw,ih)':'min(iw,ih)'"
    return [ffmpeg_exe(), "-v", "error", "-i", str(path), "-vf", f"{crop},scale={size}:{size}:flags=bicubic",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]


def load_clip(name: str, root: Path = REAL, size: int = SIZE, max_frames: int | None = None) -> Clip:
    """Decode one clip (or the photo) to ``(T, size, size, 3)`` uint8."""
    raw = subprocess.run(decode_command(clip_path(name, root), size), check=True, capture_output=True).stdout
    frames = np.frombuffer(raw, np.uint8).reshape(-1, size, size, 3)
    return Clip(name, frames[:max_frames].copy())
