"""The one face renderer: coefficients -> posed mesh (Eq. 1) -> projection -> lit vertex colours -> rasterize ->
image. Guidance (:mod:`reenact.face3d.guidance`), the synthetic scene (:mod:`reenact.synth.scene`) and the ``render``
reference model all go through :func:`build_face` (and :func:`render_face` when a plain render is all they need).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from reenact.face3d.camera import PerspectiveCamera
from reenact.face3d.coeffs import Coeffs, check_coeffs
from reenact.face3d.morphable import MorphableModel
from reenact.face3d.raster import Fragments, RasterSettings, interpolate, rasterize
from reenact.face3d.raster import cpu_kernels as raster_cpu_kernels
from reenact.face3d.shading import shade
from reenact.face3d.transforms import euler_to_matrix, rigid_transform


@dataclass(frozen=True)
class FaceMesh:
    """A posed face of B meshes with V vertices.

    Fields:
        rest: ``(B, V, 3)`` the shape of Eq. 1 before pose (model space).
        rotation: ``(B, 3, 3)`` R of the pose; ``verts = rest @ R^T + t``.
        verts: ``(B, V, 3)`` posed vertices, model space.
        screen: ``(B, V, 3)`` = (x, y_down, depth) in pixels of the camera.
        colors: ``(B, V, 3)`` lit albedo (unclamped), or None when not requested.
    """

    rest: torch.Tensor
    rotation: torch.Tensor
    verts: torch.Tensor
    screen: torch.Tensor
    colors: torch.Tensor | None


def _shape(model: MorphableModel, c: Coeffs, identity: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 1 before pose: rest shapes ``(N, V, 3)``. With ``identity`` ``(B, V, 3)`` (:meth:`MorphableModel.
    identity_shape`), the N = k B meshes are k groups of B that share it: each adds its expression to it."""
    if identity is None:
        return model.shape(c.id, c.exp)
    n, b = c.exp.shape[0], identity.shape[0]
    if b <= 0 or n % b:
        raise ValueError(f"the identity's {b} rows must divide the {n} meshes")
    return model.add_expression(identity, c.exp.view(n // b, b, -1)).flatten(0, 1)


def _pose(model: MorphableModel, c: Coeffs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 1 and the pose: (rest ``(N, V, 3)``, rotation ``(N, 3, 3)``, posed vertices ``(N, V, 3)``)."""
    rest, rotation = _shape(model, c), euler_to_matrix(c.angle)
    return rest, rotation, rigid_transform(rest, rotation, c.trans)


def posed_vertices(model: MorphableModel, coeffs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 1: (vertices ``(B, V, 3)``, rotation ``(B, 3, 3)``) from coefficients ``(B, 257)``."""
    _, rotation, verts = _pose(model, Coeffs.from_vector(coeffs))
    return verts, rotation


def lit_colors(model: MorphableModel, rest: torch.Tensor, rotation: torch.Tensor, tex: torch.Tensor,
               gamma: torch.Tensor, vertices: torch.Tensor | None = None, *,
               albedo: torch.Tensor | None = None) -> torch.Tensor:
    """Lit vertex colours ``(N, V, 3)``: albedo from ``tex``, normals of the unposed shape ``rest (N, V, 3)``
    rotated into camera space, SH light ``gamma (N, 27)``. ``tex`` is ``(B, 80)`` with N = k B (meshes that share
    one albedo, e.g. a source and its target, are stacked k at a time).

    ``vertices`` ``(n,)`` int64 (e.g. :func:`shown_vertices`) shades only those vertices, with the same values;
    the others are 0. ``albedo`` ``(B, V, 3)`` is ``model.albedo(tex)`` when already known (e.g. from a
    :class:`reenact.face3d.morphable.IdentityCache`). On CPU without autograd the normals and shading run in numba
    (:mod:`reenact.face3d.face_numba`; the same values to float32 rounding).
    """
    albedo = model.albedo(tex) if albedo is None else albedo                 # B x V x 3
    kernels = cpu_kernels(rest, rotation, tex, gamma)
    if kernels is not None:
        shaded = vertices if vertices is not None else torch.arange(rest.shape[1])
        return kernels.lit_colors_numba(rest, rotation, albedo, gamma, model.triangles, model.adjacent, shaded)
    normals = model.vertex_normals(rest, vertices)                           # N x (V or n) x 3
    if vertices is not None:
        albedo = albedo.index_select(1, vertices)
    # row vectors: n @ R^T = (R n)^T, the rotation the vertices get
    colors = shade(albedo.repeat(rest.shape[0] // tex.shape[0], 1, 1), normals @ rotation.transpose(-1, -2), gamma)
    if vertices is None:
        return colors
    return colors.new_zeros(rest.shape).index_copy_(1, vertices, colors)


def cpu_kernels(*tensors: torch.Tensor):
    """:mod:`reenact.face3d.face_numba` where :func:`reenact.face3d.raster.cpu_kernels` allows numba for
    ``tensors``, else None (the torch code runs)."""
    return raster_cpu_kernels(*tensors, module="face_numba")


def shown_vertices(fragments: Fragments, faces: torch.Tensor, num_vertices: int) -> torch.Tensor:
    """``(n,)`` int64 sorted ids of the vertices of the triangles that some pixel of ``fragments`` shows (the union
    over the batch): the only vertices whose attributes :func:`interpolate` reads."""
    kernels = cpu_kernels(fragments.triangle_id)
    if kernels is not None:
        return kernels.shown_vertices_numba(fragments.triangle_id, faces, num_vertices)
    ids = fragments.triangle_id.reshape(-1).clamp(min=0)        # empty pixels add triangle 0: harmless
    shown = faces.index_select(0, ids).reshape(-1)
    mask = torch.zeros(num_vertices, dtype=torch.bool, device=faces.device)
    return mask.index_fill_(0, shown, True).nonzero().squeeze(1)


def build_face(model: MorphableModel, coeffs: torch.Tensor, camera: PerspectiveCamera,
               with_colors: bool = True, identity: torch.Tensor | None = None) -> FaceMesh:
    """Pose, project and (optionally) shade the face of ``coeffs (N, 257)``.

    ``identity`` ``(B, V, 3)``, Eq. 1's identity part ``V_mean + alpha V_id`` of B identities
    (:meth:`MorphableModel.identity_shape`), says that the N = k B meshes are k groups of B with those identities,
    e.g. guidance's [source; target]: each mesh adds its expression to it (its own alpha is not read).
    """
    check_coeffs(coeffs)
    c = Coeffs.from_vector(coeffs)
    rest, rotation = _shape(model, c, identity), euler_to_matrix(c.angle)
    kernels = cpu_kernels(rest, rotation, c.trans)
    if kernels is not None:          # pose and projection in one pass (the same values to float32 rounding)
        verts, screen = kernels.pose_and_project(rest, rotation, c.trans, camera)
    else:
        verts = rigid_transform(rest, rotation, c.trans)
        screen = camera.project(verts)
    colors = lit_colors(model, rest, rotation, c.tex, c.gamma) if with_colors else None
    return FaceMesh(rest=rest, rotation=rotation, verts=verts, screen=screen, colors=colors)


@dataclass(frozen=True)
class FaceRender:
    """A rendered face: ``image (B, 3, H, W)`` lit colours (unclamped, 0 outside), ``mask (B, 1, H, W)`` float in
    {0, 1} where the mesh covers the pixel, the raster's ``fragments`` and the ``mesh`` it came from."""

    image: torch.Tensor
    mask: torch.Tensor
    fragments: Fragments
    mesh: FaceMesh


def render_face(model: MorphableModel, coeffs: torch.Tensor, camera: PerspectiveCamera,
                backend: str = "auto") -> FaceRender:
    """Render the faces of ``coeffs (B, 257)`` seen by ``camera``: pose and project (:func:`build_face`),
    rasterize, shade the vertices the raster shows, interpolate. ``mesh.colors`` are 0 at the other vertices."""
    c = Coeffs.from_vector(coeffs)
    mesh = build_face(model, coeffs, camera, with_colors=False)
    frags = rasterize(mesh.screen, model.triangles, RasterSettings((camera.height, camera.width), backend=backend))
    shown = shown_vertices(frags, model.triangles, model.num_vertices)
    mesh = replace(mesh, colors=lit_colors(model, mesh.rest, mesh.rotation, c.tex, c.gamma, shown))
    image = interpolate(frags, model.triangles, mesh.colors).permute(0, 3, 1, 2)   # B x 3 x H x W
    return FaceRender(image=image, mask=frags.mask.unsqueeze(1).float(), fragments=frags, mesh=mesh)


def project_landmarks(model: MorphableModel, coeffs: torch.Tensor, camera: PerspectiveCamera) -> torch.Tensor:
    """The 68 landmarks of ``coeffs (B, 257)`` in image pixels ``(B, 68, 2)`` (x, y_down)."""
    verts, _ = posed_vertices(model, coeffs)
    return camera.project(model.landmarks(verts))[..., :2]
