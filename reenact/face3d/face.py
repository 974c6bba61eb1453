"""From coefficients to posed vertices, lit vertex colours and projected landmarks (paper Eqs. 1-2 before
rasterization)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from reenact.face3d.camera import PerspectiveCamera
from reenact.face3d.coeffs import Coeffs
from reenact.face3d.morphable import MorphableModel
from reenact.face3d.shading import shade
from reenact.face3d.transforms import euler_to_matrix, rigid_transform


def posed_vertices(model: MorphableModel, coeffs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 1: (vertices ``(B, V, 3)``, rotation ``(B, 3, 3)``) from coefficients ``(B, 257)``."""
    c = Coeffs.from_vector(coeffs)
    rotation = euler_to_matrix(c.angle)
    return rigid_transform(model.shape(c.id, c.exp), rotation, c.trans), rotation


def lit_colors(model: MorphableModel, rest: torch.Tensor, rotation: torch.Tensor, tex: torch.Tensor,
               gamma: torch.Tensor) -> torch.Tensor:
    """Lit vertex colours ``(N, V, 3)``: albedo from ``tex``, normals of the unposed shape ``rest (N, V, 3)``
    rotated into camera space, SH light ``gamma (N, 27)``. ``tex`` is ``(B, 80)`` with N = k B (meshes that share
    one albedo, e.g. a source and its target, are stacked k at a time)."""
    normals = model.vertex_normals(rest) @ rotation.transpose(-1, -2)       # camera space, N x V x 3
    albedo = model.albedo(tex)                                               # B x V x 3
    return shade(albedo.repeat(rest.shape[0] // tex.shape[0], 1, 1), normals, gamma)


@dataclass(frozen=True)
class FaceMesh:
    """A posed face: ``verts (B, V, 3)`` model space after Eq. 1, ``screen (B, V, 3)`` = (x, y_down, depth) in pixels
    of the camera, ``colors (B, V, 3)`` lit albedo (unclamped) or None when not requested."""

    verts: torch.Tensor
    screen: torch.Tensor
    colors: torch.Tensor | None


def build_face(model: MorphableModel, coeffs: torch.Tensor, camera: PerspectiveCamera,
               with_colors: bool = True) -> FaceMesh:
    """Pose, project and (optionally) shade the face of ``coeffs (B, 257)``."""
    if coeffs.ndim != 2 or coeffs.shape[-1] != 257:
        raise ValueError(f"expected coefficients of shape (B, 257), got {tuple(coeffs.shape)}")
    c = Coeffs.from_vector(coeffs)
    rotation = euler_to_matrix(c.angle)
    rest = model.shape(c.id, c.exp)
    verts = rigid_transform(rest, rotation, c.trans)
    colors = lit_colors(model, rest, rotation, c.tex, c.gamma) if with_colors else None
    return FaceMesh(verts=verts, screen=camera.project(verts), colors=colors)


def project_landmarks(model: MorphableModel, coeffs: torch.Tensor, camera: PerspectiveCamera) -> torch.Tensor:
    """The 68 landmarks of ``coeffs (B, 257)`` in image pixels ``(B, 68, 2)`` (x, y_down)."""
    verts, _ = posed_vertices(model, coeffs)
    return camera.project(model.landmarks(verts))[..., :2]
