"""numba CPU kernels behind :mod:`reenact.face3d.face` and :mod:`reenact.face3d.guidance` (one thread, no fastmath):
the vertices a raster shows, vertex normals + SH shading of those vertices, the depth-tested occlusion (Eq. 4) and
guidance's per-pixel target maps (flow, render, mask).
The public functions there pick these for CPU tensors (and keep their torch code for CUDA and where numba does not
import); the maths and conventions are theirs, stated once there. Each kernel makes one pass, with no intermediate
tensors: the torch code's gathers and temporaries over every triangle or pixel cost several times the arithmetic.

Numbers: occlusion and the target maps are the torch code's, bit for bit (the same float32 operations in the same
order); shown vertices are exact; normals and colours agree with the torch code to float32 rounding (~1e-7: sums in
another order).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit

from reenact.face3d.raster_numba import floor, torch_fuses_multiply_add, weighted
from reenact.face3d.shading import INIT_LIGHT, SH_A, SH_C

# The SH basis constants of :func:`reenact.face3d.shading.sh_basis`, rounded to float32 as torch multiplies a float32
# tensor by a Python float.
_K0 = np.float32(SH_A[0] * SH_C[0])
_K1 = np.float32(SH_A[1] * SH_C[1])
_K2 = np.float32(SH_A[2] * SH_C[2])
_K6 = np.float32(0.5 * SH_A[2] * SH_C[2] / math.sqrt(3.0))
_K8 = np.float32(0.5 * SH_A[2] * SH_C[2])
_NORMAL_EPS = np.float32(1e-12)                        # F.normalize's eps
_DET_EPS = np.float32(1e-12)                           # guidance._screen_depth_gradient's


def pose_and_project(rest: torch.Tensor, rotation: torch.Tensor, trans: torch.Tensor,
                     camera) -> tuple[torch.Tensor, torch.Tensor]:
    """Posed vertices ``rest @ R^T + t`` and their screen positions (``camera.project``) in one pass:
    ``(N, V, 3)`` float32 rest shapes, ``(N, 3, 3)`` rotations, ``(N, 3)`` translations -> ``(N, V, 3)`` twice."""
    verts = np.empty(tuple(rest.shape), np.float32)
    screen = np.empty(tuple(rest.shape), np.float32)
    lens = np.array([camera.focal, camera.cx, camera.cy, camera.distance], np.float32)  # torch rounds them so too
    _pose_and_project(rest.contiguous().numpy(), rotation.contiguous().numpy(), trans.contiguous().numpy(), lens,
                      verts, screen)
    return torch.from_numpy(verts), torch.from_numpy(screen)


@njit(cache=True)
def _pose_and_project(rest, rotation, trans, lens, verts, screen):
    focal, cx, cy, distance = lens[0], lens[1], lens[2], lens[3]
    for n in range(rest.shape[0]):
        r, t = rotation[n], trans[n]
        for v in range(rest.shape[1]):
            x, y, z = rest[n, v, 0], rest[n, v, 1], rest[n, v, 2]
            px = ((x * r[0, 0] + y * r[0, 1]) + z * r[0, 2]) + t[0]
            py = ((x * r[1, 0] + y * r[1, 1]) + z * r[1, 2]) + t[1]
            pz = ((x * r[2, 0] + y * r[2, 1]) + z * r[2, 2]) + t[2]
            verts[n, v, 0], verts[n, v, 1], verts[n, v, 2] = px, py, pz
            depth = distance - pz
            screen[n, v, 0] = cx + focal * px / depth
            screen[n, v, 1] = cy - focal * py / depth
            screen[n, v, 2] = depth


def shown_vertices_numba(triangle_id: torch.Tensor, faces: torch.Tensor, num_vertices: int) -> torch.Tensor:
    """``(n,)`` int64 sorted ids of the vertices of the triangles some pixel of ``triangle_id (B, H, W)`` shows."""
    shown = np.zeros(num_vertices, np.bool_)
    _mark_shown(triangle_id.reshape(-1).numpy(), faces.to(torch.int64).contiguous().numpy(), shown)
    return torch.from_numpy(np.flatnonzero(shown))


@njit(cache=True)
def _mark_shown(triangle_id, faces, shown):
    for t in triangle_id:
        if t >= 0:
            shown[faces[t, 0]] = shown[faces[t, 1]] = shown[faces[t, 2]] = True


def lit_colors_numba(rest: torch.Tensor, rotation: torch.Tensor, albedo: torch.Tensor, gamma: torch.Tensor,
                     triangles: torch.Tensor, adjacent: torch.Tensor, vertices: torch.Tensor) -> torch.Tensor:
    """Lit colours ``(N, V, 3)`` of ``vertices (n,)`` (0 elsewhere) of meshes ``rest (N, V, 3)`` posed by
    ``rotation (N, 3, 3)``, lit by ``gamma (N, 27)``, with ``albedo (N // k, V, 3)`` shared k meshes at a time.
    ``adjacent (V, K)`` are the vertices' triangles, padded with ``F`` (:class:`MorphableModel`'s ``_adjacent``)."""
    N, V, _ = rest.shape
    light = (gamma.reshape(N, 3, 9) + gamma.new_tensor([INIT_LIGHT] + [0.0] * 8)).contiguous()
    out = np.zeros((N, V, 3), np.float32)
    face_normals = np.zeros((triangles.shape[0] + 1, 3), np.float32)        # + the zero normal of the padding
    _lit_colors(rest.contiguous().numpy(), rotation.contiguous().numpy(), albedo.contiguous().numpy(),
                light.numpy(), triangles.to(torch.int64).contiguous().numpy(), adjacent.contiguous().numpy(),
                vertices.contiguous().numpy(), face_normals, out)
    return torch.from_numpy(out)


@njit(cache=True)
def _lit_colors(rest, rotation, albedo, light, triangles, adjacent, vertices, face_normals, out):
    N, B, n = rest.shape[0], albedo.shape[0], vertices.shape[0]
    normal = np.empty((3, n), np.float32)                   # camera-space unit normals of the vertices, then
    irradiance = np.empty((3, n), np.float32)               # their SH irradiance per channel: flat rows, so that
    for m in range(N):                                      # LLVM vectorises the SH loop (~0.3 ms of 1.1 per mesh)
        _unit_face_normals(rest[m], triangles, face_normals)
        r, g, a, o = rotation[m], light[m], albedo[m % B], out[m]
        for i in range(n):
            x, y, z = _unit_vertex_normal(face_normals, adjacent, vertices[i])
            normal[0, i] = (r[0, 0] * x + r[0, 1] * y) + r[0, 2] * z        # camera-space normal: R n
            normal[1, i] = (r[1, 0] * x + r[1, 1] * y) + r[1, 2] * z
            normal[2, i] = (r[2, 0] * x + r[2, 1] * y) + r[2, 2] * z
        for ch in range(3):
            _sh_irradiance(normal[0], normal[1], normal[2], g[ch], irradiance[ch])
        for i in range(n):
            v = vertices[i]
            for ch in range(3):
                o[v, ch] = irradiance[ch, i] * a[v, ch]


@njit(cache=True, inline="always")
def _sh_irradiance(x, y, z, light, out):
    """``out[i]`` = the 9 SH basis values at the unit normal ``(x[i], y[i], z[i])`` dotted with one channel's
    ``light (9,)``, summed in order."""
    g0, g1, g2, g3, g4, g5, g6, g7, g8 = (light[0], light[1], light[2], light[3], light[4], light[5], light[6],
                                          light[7], light[8])
    for i in range(out.shape[0]):
        s0, s1, s2, s3, s4, s5, s6, s7, s8 = _sh_basis(x[i], y[i], z[i])
        out[i] = ((((((((s0 * g0 + s1 * g1) + s2 * g2) + s3 * g3) + s4 * g4) + s5 * g5) + s6 * g6) + s7 * g7)
                  + s8 * g8)


@njit(cache=True)
def _unit_face_normals(verts, triangles, normals):
    """``normalize(cross(v0 - v1, v1 - v2))`` of every triangle into ``normals[:F]`` (row F stays 0); one division
    per triangle (times the reciprocal: within an ulp of F.normalize's division)."""
    for f in range(triangles.shape[0]):
        i0, i1, i2 = triangles[f, 0], triangles[f, 1], triangles[f, 2]
        ux, uy, uz = verts[i0, 0] - verts[i1, 0], verts[i0, 1] - verts[i1, 1], verts[i0, 2] - verts[i1, 2]
        wx, wy, wz = verts[i1, 0] - verts[i2, 0], verts[i1, 1] - verts[i2, 1], verts[i1, 2] - verts[i2, 2]
        nx, ny, nz = uy * wz - uz * wy, uz * wx - ux * wz, ux * wy - uy * wx
        inverse = np.float32(1.0) / max(np.sqrt(nx * nx + ny * ny + nz * nz), _NORMAL_EPS)
        normals[f, 0], normals[f, 1], normals[f, 2] = nx * inverse, ny * inverse, nz * inverse


@njit(cache=True, inline="always")
def _unit_vertex_normal(face_normals, adjacent, v):
    """The normalised sum of vertex ``v``'s adjacent unit face normals."""
    x = y = z = np.float32(0.0)
    for k in range(adjacent.shape[1]):
        f = adjacent[v, k]
        x += face_normals[f, 0]
        y += face_normals[f, 1]
        z += face_normals[f, 2]
    inverse = np.float32(1.0) / max(np.sqrt(x * x + y * y + z * z), _NORMAL_EPS)
    return x * inverse, y * inverse, z * inverse


@njit(cache=True, inline="always")
def _sh_basis(x, y, z):
    """Deep3D's 9 SH basis values (:func:`reenact.face3d.shading.sh_basis`) at the unit normal (x, y, z)."""
    return (_K0, -_K1 * y, _K1 * z, -_K1 * x, _K2 * x * y, -_K2 * y * z,
            _K6 * (np.float32(3.0) * (z * z) - np.float32(1.0)), -_K2 * x * z, _K8 * (x * x - y * y))


def depth_tested_occlusion_numba(target_id: torch.Tensor, source_depth: torch.Tensor, faces: torch.Tensor,
                                 source_screen: torch.Tensor, tolerance: float, slope_cap: float) -> torch.Tensor:
    """Eq. 4 with the depth test (:func:`reenact.face3d.guidance.depth_tested_occlusion`): ``(B, H, W)`` float32
    from the target's triangle ids, the source z-buffer ``(B, H, W)`` and source screen vertices ``(B, V, 3)``."""
    out = np.empty(target_id.shape, np.float32)
    _occlusion(target_id.numpy(), source_depth.contiguous().numpy(), faces.to(torch.int64).contiguous().numpy(),
               source_screen.to(torch.float32).contiguous().numpy(), np.float32(tolerance), np.float32(slope_cap),
               out)
    return torch.from_numpy(out)


@njit(cache=True)
def _occlusion(target_id, source_depth, faces, screen, tolerance, slope_cap, out):
    B, H, W = target_id.shape
    for b in range(B):
        for i in range(H):
            for j in range(W):
                t = target_id[b, i, j]
                out[b, i, j] = 0.0 if t < 0 else _centroid_visible(screen[b], faces[t], source_depth[b], tolerance,
                                                                   slope_cap)


@njit(cache=True, inline="always")
def _centroid_visible(screen, corners, depth, tolerance, slope_cap):
    """1.0 when the triangle's source centroid lies in the image, not behind the z-buffer ``depth (H, W)`` there by
    more than ``tolerance`` plus its own depth change to the pixel centre (capped); else 0.0."""
    H, W = depth.shape
    p0, p1, p2 = screen[corners[0]], screen[corners[1]], screen[corners[2]]
    third = np.float32(3.0)
    cx = ((p0[0] + p1[0]) + p2[0]) / third
    cy = ((p0[1] + p1[1]) + p2[1]) / third
    cz = ((p0[2] + p1[2]) + p2[2]) / third
    col, row = floor(cx), floor(cy)
    inside = col >= 0 and col < W and row >= 0 and row < H
    e1x, e1y, e1z = p1[0] - p0[0], p1[1] - p0[1], p1[2] - p0[2]
    e2x, e2y, e2z = p2[0] - p0[0], p2[1] - p0[1], p2[2] - p0[2]
    det = e1x * e2y - e1y * e2x
    if abs(det) < _DET_EPS:
        det = _DET_EPS
    gx = (e1z * e2y - e2z * e1y) / det
    gy = (e2z * e1x - e1z * e2x) / det
    half = np.float32(0.5)
    slack = min(abs(gx * ((col + half) - cx) + gy * ((row + half) - cy)), slope_cap)
    zbuf = depth[min(max(np.int64(row), 0), H - 1), min(max(np.int64(col), 0), W - 1)]
    return np.float32(1.0) if inside and cz <= (zbuf + tolerance) + slack else np.float32(0.0)


def target_maps_numba(triangle_id: torch.Tensor, bary: torch.Tensor, faces: torch.Tensor, source_screen: torch.Tensor,
                      colors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Guidance's per-pixel target outputs in one pass (:func:`reenact.face3d.guidance.target_maps`): from the target
    raster's ids ``(B, H, W)`` and barycentrics ``(B, H, W, 3)``, the source screen vertices ``(B, V, 3)`` and the
    target's vertex colours ``(B, V, 3)``: flow ``(B, 2, H, W)``, render ``(B, 3, H, W)``, face mask ``(B, 1, H, W)``.
    The interpolation is :func:`reenact.face3d.raster_numba.weighted`, bit for bit; the flow subtracts the pixel
    centre as guidance's ``computed_flow``."""
    B, H, W = triangle_id.shape
    flow = np.empty((B, 2, H, W), np.float32)
    render = np.empty((B, 3, H, W), np.float32)
    mask = np.empty((B, 1, H, W), np.float32)
    _target_maps(triangle_id.numpy(), bary.permute(3, 0, 1, 2).contiguous().numpy(),
                 faces.to(torch.int64).contiguous().numpy(), source_screen.contiguous().numpy(),
                 colors.contiguous().numpy(), torch_fuses_multiply_add(), flow, render, mask)
    return torch.from_numpy(flow), torch.from_numpy(render), torch.from_numpy(mask)


@njit(cache=True)
def _target_maps(triangle_id, bary, faces, screen, colors, fused, flow, render, mask):
    B, H, W = triangle_id.shape
    half = np.float32(0.5)
    for b in range(B):
        for i in range(H):
            gy = np.float32(i) + half
            for j in range(W):
                t = triangle_id[b, i, j]
                if t < 0:
                    flow[b, 0, i, j] = flow[b, 1, i, j] = 0.0
                    render[b, 0, i, j] = render[b, 1, i, j] = render[b, 2, i, j] = 0.0
                    mask[b, 0, i, j] = 0.0
                    continue
                v0, v1, v2 = faces[t, 0], faces[t, 1], faces[t, 2]
                w0, w1, w2 = bary[0, b, i, j], bary[1, b, i, j], bary[2, b, i, j]
                x = weighted(screen[b, v0, 0], screen[b, v1, 0], screen[b, v2, 0], w0, w1, w2, fused)
                y = weighted(screen[b, v0, 1], screen[b, v1, 1], screen[b, v2, 1], w0, w1, w2, fused)
                flow[b, 0, i, j] = x - (np.float32(j) + half)
                flow[b, 1, i, j] = y - gy
                for c in range(3):
                    render[b, c, i, j] = weighted(colors[b, v0, c], colors[b, v1, c], colors[b, v2, c], w0, w1, w2,
                                                  fused)
                mask[b, 0, i, j] = 1.0
