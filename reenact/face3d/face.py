"""From coefficients to a posed, projected, coloured face mesh (paper Eqs. 1-2 up to rasterization)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from reenact.face3d.camera import PerspectiveCamera
from reenact.face3d.coeffs import Coeffs
from reenact.face3d.morphable import MorphableModel
from reenact.face3d.shading import shade
from reenact.face3d.transforms import euler_to_matrix, rigid_transform


@dataclass(frozen=True)
class FaceMesh:
    """A posed face. Shapes for batch ``B`` and ``V`` vertices.

    verts: ``(B, V, 3)`` model space after pose (Eq. 1).
    screen: ``(B, V, 3)`` (x, y_down, depth) in pixels of ``camera.size`` (see :mod:`reenact.face3d.camera`).
    colors: ``(B, V, 3)`` lit albedo in [0, 1] (unclamped), or None when not requested.
    """

    verts: torch.Tensor
    screen: torch.Tensor
    colors: torch.Tensor | None


def posed_vertices(model: MorphableModel, coeffs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 1: (vertices ``(B, V, 3)``, rotation ``(B, 3, 3)``) from coefficients ``(B, 257)``."""
    c = Coeffs.from_vector(coeffs)
    rotation = euler_to_matrix(c.angle)
    return rigid_transform(model.shape(c.id, c.exp), rotation, c.trans), rotation


def face_colors(model: MorphableModel, coeffs: torch.Tensor, rest_verts: torch.Tensor,
                rotation: torch.Tensor) -> torch.Tensor:
    """Lit per-vertex colour: albedo from ``tex``, normals of the unposed shape rotated into camera space."""
    c = Coeffs.from_vector(coeffs)
    normals = model.vertex_normals(rest_verts) @ rotation.transpose(-1, -2)
    return shade(model.albedo(c.tex), normals, c.gamma)


def build_face(model: MorphableModel, coeffs: torch.Tensor, camera: PerspectiveCamera,
               with_colors: bool = True) -> FaceMesh:
    """Pose, project and (optionally) shade the face of ``coeffs (B, 257)``."""
    if coeffs.ndim != 2 or coeffs.shape[-1] != 257:
        raise ValueError(f"expected coefficients of shape (B, 257), got {tuple(coeffs.shape)}")
    c = Coeffs.from_vector(coeffs)
    rotation = euler_to_matrix(c.angle)
    rest = model.shape(c.id, c.exp)
    verts = rigid_transform(rest, rotation, c.trans)
    colors = face_colors(model, coeffs, rest, rotation) if with_colors else None
    return FaceMesh(verts=verts, screen=camera.project(verts), colors=colors)


def project_landmarks(model: MorphableModel, coeffs: torch.Tensor, camera: PerspectiveCamera) -> torch.Tensor:
    """The 68 landmarks of ``coeffs (B, 257)`` in image pixels ``(B, 68, 2)`` (x, y_down)."""
    verts, _ = posed_vertices(model, coeffs)
    return camera.project(model.landmarks(verts))[..., :2]
