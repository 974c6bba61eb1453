"""Image helpers for writing results a person can look at (RGB float NCHW in [0, 1] in, PNG out)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` or ``(1, H, W)`` float in [0, 1] -> ``(H, W, 3)`` uint8."""
    x = image.detach().float().clamp(0, 1).cpu()
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return (x.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def flow_to_rgb(flow: torch.Tensor, max_magnitude: float | None = None) -> torch.Tensor:
    """Colour-code a pixel flow ``(2, H, W)``: hue = direction, saturation = magnitude -> ``(3, H, W)`` in [0, 1]."""
    from matplotlib.colors import hsv_to_rgb

    u, v = flow[0].cpu().numpy(), flow[1].cpu().numpy()
    mag = np.hypot(u, v)
    scale = max_magnitude or max(float(mag.max()), 1e-6)
    hsv = np.stack([(np.arctan2(v, u) / (2 * np.pi)) % 1.0, np.clip(mag / scale, 0, 1), np.ones_like(mag)], -1)
    return torch.from_numpy(hsv_to_rgb(hsv)).permute(2, 0, 1).float()


def grid_image(rows: list[list[torch.Tensor]], pad: int = 2) -> np.ndarray:
    """Tile equally sized ``(C, H, W)`` images into one ``uint8`` picture, one list per row."""
    tiles = [[to_uint8(t) for t in row] for row in rows]
    h, w = tiles[0][0].shape[:2]
    cols = max(len(r) for r in tiles)
    out = np.full((len(tiles) * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(tiles):
        for j, tile in enumerate(row):
            out[pad + i * (h + pad):pad + i * (h + pad) + h, pad + j * (w + pad):pad + j * (w + pad) + w] = tile
    return out


def encode_png(image: np.ndarray, compress_level: int = 1) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def save_png(image: np.ndarray, path: str | Path) -> Path:
    from reenact.files import atomic_write_bytes

    atomic_write_bytes(path, encode_png(image, compress_level=6))
    return Path(path)
