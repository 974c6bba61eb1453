"""The 3DMM guidance of the paper for a (source, driving) coefficient pair: F_c (Eq. 3), O_c (Eq. 4) and I_r.

Given v_s and v_d, the target is v_t = (alpha_s, beta_d, delta_s, gamma_s, p_d). Both meshes share the source
identity, so the vertex maths is done once for the stacked batch [source; target]; without the source render only the
source's z-buffer is rasterized (:func:`reenact.face3d.raster.rasterize_depth`).

* ``flow`` F_c ``(B, 2, H, W)``: at each target pixel, the screen-space interpolation of the *source* mesh's
  projected vertex positions, minus the pixel-centre grid G(h, w): a backward flow in pixels, channel 0 = x,
  channel 1 = y. Sampling the source image at ``G + F_c`` (see :func:`warp_with_flow`) moves it to the target.
  Zero outside the inner face.
* ``occlusion`` O_c ``(B, 1, H, W)``: 1 where the target pixel's triangle is visible in the source, else 0; 0 outside
  the inner face. Eq. 4 reads "visible" as "the nearest triangle of some source pixel" (``occlusion_rule=
  "triangle_set"``). With BFM-density meshes at 256^2 most triangles are smaller than a pixel, so that literal set
  misses most visible triangles and O_c turns to salt-and-pepper noise. The default rule, ``"depth_test"``, asks the
  same question of the source depth buffer instead: a triangle is visible when its centroid, projected into the
  source, lies in the image and is not behind the source z-buffer at that pixel (tolerance ``DEPTH_TOLERANCE``).
* ``render`` I_r ``(B, 3, H, W)``: the target mesh shaded with the source albedo and illumination, 0 outside.
* ``face_mask`` ``(B, 1, H, W)``: the target's inner-face region (where the mesh covers the pixel).
* ``source_render`` / ``source_mask``: the source mesh rendered the same way (optional).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from reenact.face3d.camera import PerspectiveCamera, pixel_grid, pixel_to_grid
from reenact.face3d.coeffs import Coeffs, check_coeffs, target_coeffs
from reenact.face3d.face import build_face, cpu_kernels, lit_colors, shown_vertices
from reenact.face3d.morphable import IdentityCache, MorphableModel
from reenact.face3d.raster import Fragments, RasterSettings, exact_backend, interpolate, rasterize, rasterize_depth

#: Depth slack (decimetres, i.e. 1 mm) for the depth-tested occlusion rule: far below the depth gap of any real
#: self-occlusion (nose over cheek, the far cheek at large yaw), above the sub-pixel depth variation of a surface.
DEPTH_TOLERANCE = 0.01
#: Largest slope allowance (decimetres) for a triangle seen edge-on.
SLOPE_CAP = 0.05
OcclusionRule = Literal["depth_test", "triangle_set"]


@dataclass(frozen=True)
class Guidance:
    """Guidance maps for a batch of B pairs at H x W (see module docstring for each field)."""

    flow: torch.Tensor                  # B x 2 x H x W, pixels
    occlusion: torch.Tensor             # B x 1 x H x W in {0, 1}
    render: torch.Tensor                # B x 3 x H x W
    face_mask: torch.Tensor             # B x 1 x H x W in {0, 1}
    source_render: torch.Tensor | None = None   # B x 3 x H x W
    source_mask: torch.Tensor | None = None     # B x 1 x H x W


def visible_triangles(fragments: Fragments, num_triangles: int) -> torch.Tensor:
    """``(B, F)`` bool: which triangles are the nearest one at some pixel."""
    b = fragments.triangle_id.shape[0]
    ids = fragments.triangle_id.reshape(b, -1) + 1             # B x HW, 0 = empty
    seen = torch.zeros(b, num_triangles + 1, dtype=torch.bool, device=ids.device)
    seen.scatter_(1, ids, True)
    return seen[:, 1:]


def _screen_depth_gradient(corners: torch.Tensor) -> torch.Tensor:
    """Screen-space depth gradient ``(..., 2)`` of triangles given as corners ``(..., 3, 3)`` (x, y, depth)."""
    e1, e2 = corners[..., 1, :] - corners[..., 0, :], corners[..., 2, :] - corners[..., 0, :]
    det = e1[..., 0] * e2[..., 1] - e1[..., 1] * e2[..., 0]
    det = torch.where(det.abs() < 1e-12, torch.full_like(det, 1e-12), det)
    gx = (e1[..., 2] * e2[..., 1] - e2[..., 2] * e1[..., 1]) / det
    gy = (e2[..., 2] * e1[..., 0] - e1[..., 2] * e2[..., 0]) / det
    return torch.stack([gx, gy], -1)


def _centroids_visible(corners: torch.Tensor, batch: torch.Tensor, source_depth: torch.Tensor,
                       tolerance: float) -> torch.Tensor:
    """The depth test of triangles given by their source-screen corners ``(..., 3, 3)`` against the z-buffer of
    source ``batch`` ``(...)``: ``(...)`` bool (see :func:`depth_tested_triangles`)."""
    b, h, w = source_depth.shape
    centroid = corners.mean(-2)                                              # ... x 3
    col, row = centroid[..., 0].floor(), centroid[..., 1].floor()
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    offset = torch.stack([col + 0.5, row + 0.5], -1) - centroid[..., :2]     # centroid -> pixel centre
    slack = (_screen_depth_gradient(corners) * offset).sum(-1).abs().clamp(max=SLOPE_CAP)
    pixel = batch * (h * w) + row.long().clamp(0, h - 1) * w + col.long().clamp(0, w - 1)
    zbuf = source_depth.reshape(-1).take(pixel)
    return inside & (centroid[..., 2] <= zbuf + tolerance + slack)


def depth_tested_triangles(source: Fragments, faces: torch.Tensor, source_screen: torch.Tensor,
                           tolerance: float | None = None) -> torch.Tensor:
    """``(B, F)`` bool: triangles whose source centroid is inside the image and not behind the source z-buffer.

    The centroid is compared with the z-buffer at the pixel containing it, allowing ``tolerance`` plus the
    triangle's own depth change between the centroid and that pixel's centre (capped at ``SLOPE_CAP``).
    """
    b = source.depth.shape[0]
    corners = source_screen[:, faces]                                        # B x F x 3 x 3
    batch = torch.arange(b, device=faces.device).view(b, 1).expand(b, faces.shape[0])
    return _centroids_visible(corners, batch, source.depth, DEPTH_TOLERANCE if tolerance is None else tolerance)


def depth_tested_occlusion(target: Fragments, source: Fragments, faces: torch.Tensor, source_screen: torch.Tensor,
                           tolerance: float | None = None) -> torch.Tensor:
    """Eq. 4 with the depth-test rule: ``(B, H, W)`` float, :func:`depth_tested_triangles` of each covered target
    pixel's triangle (the same test, run only for the triangles the target shows, once per pixel)."""
    return _depth_tested_occlusion(target, source.depth, faces, source_screen, tolerance)


def _depth_tested_occlusion(target: Fragments, source_depth: torch.Tensor, faces: torch.Tensor,
                            source_screen: torch.Tensor, tolerance: float | None = None) -> torch.Tensor:
    """:func:`depth_tested_occlusion` from the source z-buffer ``(B, H, W)`` alone."""
    tolerance = DEPTH_TOLERANCE if tolerance is None else tolerance
    kernels = cpu_kernels(target.triangle_id, source_depth, source_screen)
    if kernels is not None:
        return kernels.depth_tested_occlusion_numba(target.triangle_id, source_depth, faces, source_screen, tolerance,
                                                    SLOPE_CAP)
    b, h, w = target.triangle_id.shape
    ids = target.triangle_id.reshape(-1)
    covered = _nonzero(ids >= 0)                                             # n flat pixels
    triangle = ids.index_select(0, covered)
    batch = covered // (h * w)
    corner_ids = faces.index_select(0, triangle) + (batch * source_screen.shape[1]).unsqueeze(1)    # n x 3
    corners = source_screen.reshape(-1, 3).index_select(0, corner_ids.reshape(-1)).view(-1, 3, 3)
    visible = _centroids_visible(corners, batch, source_depth, tolerance)
    occlusion = torch.zeros(b * h * w, dtype=source_screen.dtype, device=ids.device)
    return occlusion.index_copy_(0, covered, visible.to(occlusion.dtype)).view(b, h, w)


def _nonzero(mask: torch.Tensor) -> torch.Tensor:
    """Indices of True in a 1-D mask (numpy's is several times faster than torch's on CPU)."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return mask.nonzero().squeeze(1)


def occlusion_map(target: Fragments, source: Fragments, num_triangles: int,
                  visible: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 4: ``(B, H, W)`` float, 1 where the target pixel's triangle is visible in the source.

    ``visible`` ``(B, F)`` says which triangles are visible; by default the literal set of nearest source triangles.
    """
    if visible is None:
        visible = visible_triangles(source, num_triangles)
    seen = F.pad(visible, (1, 0))                                            # index 0 = empty pixel -> False
    b = target.triangle_id.shape[0]
    ids = target.triangle_id.reshape(b, -1) + 1
    return seen.gather(1, ids).reshape(target.triangle_id.shape).float()


def computed_flow(target: Fragments, source_xy: torch.Tensor) -> torch.Tensor:
    """Eq. 3: ``(B, H, W, 2)`` R(V_t, P(V_s), C) - G(h, w) from the interpolated source positions ``source_xy``
    ``(B, H, W, 2)``; zero where the target raster is empty."""
    h, w = target.triangle_id.shape[-2:]
    grid = pixel_grid(h, w, device=source_xy.device, dtype=source_xy.dtype)
    return (source_xy - grid) * target.mask.unsqueeze(-1)


def target_maps(target: Fragments, faces: torch.Tensor, source_screen: torch.Tensor,
                colors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The target's per-pixel guidance: (flow F_c ``(B, 2, H, W)`` (:func:`computed_flow` of the source positions
    ``source_screen (B, V, 3)`` interpolated over the target raster), render ``(B, 3, H, W)`` (``colors (B, V, 3)``
    interpolated), face mask ``(B, 1, H, W)`` float). On CPU one numba pass writes all three
    (:func:`reenact.face3d.face_numba.target_maps_numba`, the same numbers)."""
    kernels = cpu_kernels(target.triangle_id, target.bary, source_screen, colors)
    if kernels is not None:
        return kernels.target_maps_numba(target.triangle_id, target.bary, faces, source_screen, colors)
    both = interpolate(target, faces, torch.cat([source_screen[..., :2], colors], -1))    # B x H x W x (2 + 3)
    return (_nchw(computed_flow(target, both[..., :2])), _nchw(both[..., 2:]),
            target.mask.unsqueeze(1).to(source_screen.dtype))


def split_fragments(fragments: Fragments, b: int) -> tuple[Fragments, Fragments]:
    """Split a stacked raster of ``2B`` meshes into its first ``b`` and the rest."""
    first = Fragments(fragments.triangle_id[:b], fragments.bary[:b], fragments.depth[:b])
    rest = Fragments(fragments.triangle_id[b:], fragments.bary[b:], fragments.depth[b:])
    return first, rest


def _nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2).contiguous()                 # B x H x W x C -> B x C x H x W


def compute_guidance(model: MorphableModel, source_coeffs: torch.Tensor, driving_coeffs: torch.Tensor,
                     size: int = 256, *, camera: PerspectiveCamera | None = None,
                     with_source_render: bool = True, backend: str | None = None,
                     occlusion_rule: OcclusionRule = "depth_test",
                     identity_cache: IdentityCache | None = None) -> Guidance:
    """F_c, O_c, I_r (and the source render) for ``B`` pairs of ``(B, 257)`` coefficients at ``size`` x ``size``.

    ``camera`` defaults to Deep3D's camera scaled to ``size`` (the contract for coefficients in the suite).
    Coefficients of any floating dtype are accepted and computed in the model's dtype (float32). ``backend`` is the
    rasterizer's (default: :func:`reenact.face3d.raster.exact_backend`, numba on CPU, torch on CUDA); on CPU the
    other per-vertex and per-pixel steps run in numba too (:mod:`reenact.face3d.face_numba`).

    Eq. 1's identity parts (the source's identity shape and albedo, which the target shares) come from
    ``identity_cache`` (an :class:`IdentityCache` of ``model``) when given: a worker that computes many pairs of
    one source identity reads those bases once; the outputs are bit-identical with or without it.
    """
    check_coeffs(source_coeffs, driving_coeffs, name="source and driving coefficients")
    if identity_cache is not None and identity_cache.model is not model:
        raise ValueError("identity_cache belongs to another morphable model than the one given")
    parts = identity_cache or IdentityCache(model, max_bytes=0)              # max_bytes=0: computes, keeps nothing
    camera = camera or PerspectiveCamera.deep3d(size)
    dtype = model.mean_shape.dtype
    source_coeffs, driving_coeffs = source_coeffs.to(dtype), driving_coeffs.to(dtype)
    b, faces = source_coeffs.shape[0], model.triangles
    both = torch.cat([source_coeffs, target_coeffs(source_coeffs, driving_coeffs)])   # 2B: [source; target]
    source = Coeffs.from_vector(source_coeffs)
    mesh = build_face(model, both, camera, with_colors=False,                # v_t has alpha_s: Eq. 1 shares it
                      identity=parts.identity_shape(source.id))
    rest, rotation, screen, both = mesh.rest, mesh.rotation, mesh.screen, Coeffs.from_vector(both)
    backend = backend or exact_backend(screen.device)                       # numba on CPU, else torch
    settings = RasterSettings(image_size=(camera.height, camera.width), backend=backend)
    if occlusion_rule == "depth_test" and not with_source_render:    # the source raster serves its z-buffer only
        frag_t = rasterize(screen[b:], faces, settings)
        occlusion = _depth_tested_occlusion(frag_t, rasterize_depth(screen[:b], faces, settings), faces, screen[:b])
    else:
        frags = rasterize(screen, faces, settings)
        frag_s, frag_t = split_fragments(frags, b)
        if occlusion_rule == "depth_test":
            occlusion = depth_tested_occlusion(frag_t, frag_s, faces, screen[:b])
        else:
            occlusion = occlusion_map(frag_t, frag_s, model.num_triangles)
    shaded = slice(0, 2 * b) if with_source_render else slice(b, 2 * b)     # meshes that need colours
    shown = shown_vertices(frags if with_source_render else frag_t, faces, model.num_vertices)
    colors = lit_colors(model, rest[shaded], rotation[shaded], both.tex[b:], both.gamma[shaded], shown,
                        albedo=parts.albedo(source.tex))                    # v_t has delta_s
    flow, render, face_mask = target_maps(frag_t, faces, screen[:b], colors[-b:])
    return Guidance(
        flow=flow,
        occlusion=occlusion.unsqueeze(1),
        render=render,
        face_mask=face_mask,
        source_render=_nchw(interpolate(frag_s, faces, colors[:b])) if with_source_render else None,
        source_mask=frag_s.mask.unsqueeze(1).float() if with_source_render else None)


def warp_with_flow(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward-warp ``image (B, C, H, W)`` by a pixel flow ``(B, 2, H, W)``: out(p) = image(p + flow(p)).

    Flow and image must share H x W. Bilinear, zeros outside (pixel-centre convention, ``align_corners=False``).
    """
    b, _, h, w = image.shape
    grid = pixel_grid(h, w, device=image.device, dtype=image.dtype) + flow.permute(0, 2, 3, 1)   # B x H x W x 2
    return F.grid_sample(image, pixel_to_grid(grid, h, w), mode="bilinear", padding_mode="zeros",
                         align_corners=False)
