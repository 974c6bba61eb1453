"""Texture and lighting from pixels: fit delta (texture, 80) and gamma (SH light, 27) to the frames inside the face
mask by differentiable rendering with the suite's rasterizer (issue 12 item 3).

The geometry (identity, expression, pose) comes from the landmark fit and stays fixed: the mesh is rasterized once
(:func:`reenact.face3d.raster.rasterize`), and the lit vertex colours (:func:`reenact.face3d.shading.shade` of the
albedo :meth:`MorphableModel.albedo` under the SH light) are interpolated with
:func:`reenact.face3d.raster.interpolate`, which is differentiable in the attributes. Energy, minimised with Adam::

    E = mean_{pixels in M} |I_r - I| (per channel) + w_tex |delta|^2 / 80 + w_gamma |gamma|^2 / 27

with one delta for all frames (one face) and one gamma per frame (light may change). The mask M is the rendered
face, cut at the brows: pixels above the line through dlib's brow points (17-26) are left out, since the model's mesh
reaches past the brows into the hairline where the frame shows hair or forehead the model does not describe.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from reenact.face3d.coeffs import GAMMA, TEX
from reenact.face3d.face import build_face
from reenact.face3d.raster import RasterSettings, interpolate, rasterize
from reenact.face3d.shading import shade
from reenact.faces.images import frame_camera

BROWS = slice(17, 27)


@dataclass(frozen=True)
class PhotometricConfig:
    """Settings of :func:`photometric_fit`."""

    steps: int = 150            # Adam steps
    lr: float = 0.05            # Adam learning rate
    tex_weight: float = 1e-3    # prior weight on delta (per coefficient)
    gamma_weight: float = 1e-3  # prior weight on gamma (per coefficient)


@dataclass(frozen=True)
class PhotometricResult:
    """coeffs: ``(B, 257)`` with the fitted tex (shared) and gamma (per frame); render: ``(B, 3, H, W)`` I_r;
    mask: ``(B, 1, H, W)`` the face mask used; error / flat_error: mean absolute RGB error inside the mask of the
    fitted render and of the flat one (tex and gamma zero)."""

    coeffs: torch.Tensor
    render: torch.Tensor
    mask: torch.Tensor
    error: float
    flat_error: float


def below_brows(landmarks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(B, H, W)`` bool: pixel centres below the polyline through the 10 brow points of ``(B, 68, 2)`` landmarks
    (flat beyond its ends); all True for a frame without finite landmarks."""
    out = torch.ones(len(landmarks), height, width, dtype=torch.bool)
    xs = np.arange(width) + 0.5
    ys = torch.arange(height, dtype=torch.float64)[:, None] + 0.5
    for b, points in enumerate(landmarks):
        brows = points[BROWS].double().numpy()
        if not np.isfinite(brows).all():
            continue
        order = np.argsort(brows[:, 0])
        line = np.interp(xs, brows[order, 0], brows[order, 1])
        out[b] = ys > torch.from_numpy(line)[None]
    return out


def photometric_fit(images: torch.Tensor, coeffs: torch.Tensor, landmarks: torch.Tensor | None = None,
                    model="procedural-full", config: PhotometricConfig = PhotometricConfig(), *,
                    assets: str | None = None) -> PhotometricResult:
    """Fit texture (shared) and light (per frame) of B frames of one face.

    Args:
        images: RGB float ``(B, 3, H, W)`` in [0, 1].
        coeffs: ``(B, 257)`` fitted geometry in the frame's Deep3D camera (:func:`reenact.faces.images.frame_camera`).
        landmarks: ``(B, 68, 2)`` the frames' 68 points (for the brow cut), or None (whole rendered face).
        model: a :class:`reenact.face3d.morphable.MorphableModel` or its spec.
    """
    if images.ndim != 4 or images.shape[1] != 3 or coeffs.shape != (len(images), 257):
        raise ValueError(f"expected images (B, 3, H, W) and coeffs (B, 257), got {tuple(images.shape)} and "
                         f"{tuple(coeffs.shape)}")
    if isinstance(model, str):
        from reenact.face3d.io import load_morphable_model

        model = load_morphable_model(model, assets)
    height, width = images.shape[2:]
    coeffs = coeffs.to(model.mean_shape.dtype)
    with torch.no_grad():
        mesh = build_face(model, coeffs, frame_camera(width, height), with_colors=False)
        frags = rasterize(mesh.screen, model.triangles, RasterSettings((height, width)))
        normals = model.vertex_normals(mesh.rest) @ mesh.rotation.transpose(-1, -2)      # B x V x 3, camera space
    mask = frags.mask
    if landmarks is not None:
        mask = mask & below_brows(landmarks, height, width)
    target = images.permute(0, 2, 3, 1).to(normals.dtype)                                # B x H x W x 3
    tex = torch.zeros(1, 80, dtype=normals.dtype, requires_grad=True)
    gamma = torch.zeros(len(images), 27, dtype=normals.dtype, requires_grad=True)

    def render(t: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        colors = shade(model.albedo(t).expand(len(images), -1, -1), normals, g)           # B x V x 3
        return interpolate(frags, model.triangles, colors)                                 # B x H x W x 3

    def error(image: torch.Tensor) -> torch.Tensor:
        return (image - target).abs()[mask].mean()

    optimiser = torch.optim.Adam([tex, gamma], lr=config.lr)
    for _ in range(config.steps):
        optimiser.zero_grad()
        loss = (error(render(tex, gamma)) + config.tex_weight * tex.square().mean()
                + config.gamma_weight * gamma.square().mean())
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        fitted = render(tex, gamma)
        flat = render(torch.zeros_like(tex), torch.zeros_like(gamma))
        out = coeffs.clone()
        out[:, TEX] = tex.expand(len(images), -1)
        out[:, GAMMA] = gamma
        return PhotometricResult(out.float(), fitted.permute(0, 3, 1, 2).float(), mask[:, None].float(),
                                 float(error(fitted)), float(error(flat)))
