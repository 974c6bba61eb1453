"""Triangle rasterizer in pure, vectorised PyTorch (CPU or CUDA; the device follows the inputs).

Conventions (pinned by ``tests/test_raster.py::test_convention_*``):

* Screen vertices ``verts`` are ``(B, V, 3)``. ``verts[..., 0:2]`` are continuous image coordinates in pixels, x to the
  right and y DOWN; pixel (row i, col j) has its centre at ``(x, y) = (j + 0.5, i + 0.5)``, so an ``(H, W)`` image
  spans ``[0, W] x [0, H]``. ``verts[..., 2]`` is depth: smaller is nearer, any sign. This is the layout
  :meth:`reenact.face3d.camera.PerspectiveCamera.project` returns.
* ``faces`` ``(F, 3)`` int64 index the vertices and are shared by every mesh of the batch.
* Coverage: a pixel is covered by a triangle when its centre is inside or ON the triangle: after orienting the
  triangle, all three edge functions at the centre are ``>= 0``. Zero-area (degenerate) triangles cover nothing.
* Visibility: among the triangles covering a pixel the smallest depth wins; on exactly equal depth the smallest
  triangle id wins. Depth is the float32 value interpolated at the pixel centre.
* Orientation: a triangle is FRONT-facing when its vertices run counter-clockwise as the image is displayed (y down),
  i.e. when ``(x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0) < 0`` in these coordinates. That is OpenGL's default and
  what a counter-clockwise-from-the-front mesh (the morphable model) gives after projection. ``cull_backfaces`` drops
  the others.
* Barycentrics are screen-space (affine in image coordinates), so :func:`interpolate` interpolates attributes
  affinely in screen space, with no perspective correction.

Outputs carry no gradient with respect to the vertices; :func:`interpolate` is differentiable in ``attrs``.

How it is fast (about 3 ms for a 70k-triangle face at 256^2 on one CPU thread, see ``perf/bench_raster.py``):
each triangle's bounding box is snapped to the pixel centres it can contain. Every triangle is tested at the first
pixel of its box (for a face mesh at 256^2 that is nearly all the work: most triangles are smaller than a pixel);
triangles whose box is at most 4x4 then test the rest of a 2x2 or 4x4 window by broadcasting, all in float32 in
coordinates local to the box, which keeps the edge functions accurate. Rare larger boxes enumerate their pixels
exactly in float64. Each covered (triangle, pixel) pair becomes one int64 key, ``order(depth) << 32 | triangle``,
where ``order`` maps float32 bits to integers monotonically, and one ``scatter_reduce(amin)`` resolves the z-buffer
with the tie rule above, exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

Backend = Literal["auto", "torch", "pytorch3d"]
BACKENDS = ("auto", "torch", "pytorch3d")

#: Triangles whose pixel box is at most this many pixels wide and tall take the float32 window path.
MAX_WINDOW = 4
#: At most this many (triangle, pixel) candidates per chunk on the exact float64 path.
CHUNK_CANDIDATES = 1 << 20

_EMPTY_KEY = torch.iinfo(torch.int64).max
_INT32_MAX = 0x7FFFFFFF
_INT32_MIN = -0x80000000
_LOW_31 = 0x7FFFFFFF
_LOW_32 = 0xFFFFFFFF
_FLOAT32_INF_BITS = 0x7F800000


@dataclass(frozen=True)
class RasterSettings:
    """What to rasterize into: ``image_size`` is ``(H, W)``; ``backend`` is "torch", "pytorch3d" or "auto"."""

    image_size: tuple[int, int]
    cull_backfaces: bool = False
    backend: Backend = "auto"

    def __post_init__(self) -> None:
        size = tuple(self.image_size) if isinstance(self.image_size, (tuple, list)) else ()
        if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
            raise ValueError(f"image_size must be (H, W) with positive ints, got {self.image_size!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        object.__setattr__(self, "image_size", size)


@dataclass(frozen=True)
class Fragments:
    """Per-pixel result of :func:`rasterize`.

    Fields:
        triangle_id: ``(B, H, W)`` int64, the visible triangle per pixel, -1 where empty.
        bary: ``(B, H, W, 3)`` float32, screen-space barycentrics of the pixel centre (0 where empty).
        depth: ``(B, H, W)`` float32, interpolated depth (smaller is nearer), +inf where empty.
    """

    triangle_id: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        """``(B, H, W)`` bool, True where some triangle covers the pixel."""
        return self.triangle_id >= 0


# ----------------------------------------------------------------------------------------------------------------
# public entry points


def rasterize(verts: torch.Tensor, faces: torch.Tensor, settings: RasterSettings) -> Fragments:
    """Nearest triangle, barycentrics and depth at every pixel centre (conventions in the module docstring).

    Args:
        verts: ``(B, V, 3)`` screen vertices (x right, y down, in pixels; depth), floating point.
        faces: ``(F, 3)`` integer vertex indices, shared across the batch, on the same device.
        settings: image size, back-face culling and backend.
    Returns:
        :class:`Fragments` with ``(B, H, W)`` fields.
    """
    _check_inputs(verts, faces)
    if resolve_backend(settings.backend) == "pytorch3d":
        return _rasterize_pytorch3d(verts, faces, settings)
    with torch.no_grad():
        return _rasterize_torch(verts.detach(), faces.long(), settings)


def interpolate(fragments: Fragments, faces: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
    """Interpolate per-vertex attributes at every pixel, affinely in screen space.

    Args:
        fragments: output of :func:`rasterize` for these ``faces``.
        faces: ``(F, 3)`` vertex indices used to rasterize.
        attrs: ``(B, V, D)`` per-vertex attributes.
    Returns:
        ``(B, H, W, D)``: ``sum_k bary_k * attrs[faces[triangle_id, k]]``, zeros where empty.
    """
    B, H, W = fragments.triangle_id.shape
    if attrs.dim() != 3 or attrs.shape[0] != B:
        raise ValueError(f"attrs must be (B={B}, V, D), got {tuple(attrs.shape)}")
    if faces.dim() != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces must be (F, 3), got {tuple(faces.shape)}")
    V, D = attrs.shape[1], attrs.shape[2]
    P = B * H * W
    corners = _pixel_corners(fragments.triangle_id, faces.long(), V)  # 3 x P, rows of the (B * V) table
    table = attrs.permute(2, 0, 1).reshape(D, B * V)  # D x BV
    values = table.index_select(1, corners.view(-1)).view(D, 3, P)  # D x 3 x P
    weights = fragments.bary.permute(3, 0, 1, 2).reshape(3, P).to(values.dtype)  # 3 x P (a view for our bary)
    out = values[:, 0] * weights[0]
    out.addcmul_(values[:, 1], weights[1]).addcmul_(values[:, 2], weights[2])  # D x P
    out = out.where(fragments.mask.view(1, P), 0.0)
    # channels-last view of a channels-first tensor: .permute(0, 3, 1, 2) gives contiguous (B, D, H, W) for free
    return out.view(D, B, H, W).permute(1, 2, 3, 0)


def resolve_backend(backend: str) -> str:
    """The backend that will run: "auto" is "pytorch3d" when it can be imported, else "torch"."""
    if backend == "torch":
        return "torch"
    available = _pytorch3d_available()
    if backend == "pytorch3d" and not available:
        raise ImportError("backend='pytorch3d' was requested but pytorch3d cannot be imported; use 'torch' or 'auto'")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return "pytorch3d" if available else "torch"


def _check_inputs(verts: torch.Tensor, faces: torch.Tensor) -> None:
    if verts.dim() != 3 or verts.shape[-1] != 3 or not verts.is_floating_point():
        raise ValueError(f"verts must be a floating (B, V, 3) tensor, got {verts.dtype} {tuple(verts.shape)}")
    if faces.dim() != 2 or faces.shape[-1] != 3 or faces.is_floating_point() or faces.dtype == torch.bool:
        raise ValueError(f"faces must be an integer (F, 3) tensor, got {faces.dtype} {tuple(faces.shape)}")
    if faces.device != verts.device:
        raise ValueError(f"faces are on {faces.device} but verts on {verts.device}")
    if faces.shape[0] >= 2**31:
        raise ValueError(f"at most 2**31 - 1 triangles are supported, got {faces.shape[0]}")
    if not bool(torch.isfinite(verts.sum())):  # one cheap reduction; NaN or inf corners have no raster
        raise ValueError("verts must be finite, got NaN or infinite coordinates")


# ----------------------------------------------------------------------------------------------------------------
# the torch backend


@dataclass(frozen=True)
class _Frame:
    """Per-call constants: B meshes of F triangles into (H, W) images; triangle n = b * F + f."""

    B: int
    F: int
    H: int
    W: int

    @property
    def pixels(self) -> int:
        return self.B * self.H * self.W

    @property
    def buffer_size(self) -> int:
        """Z-buffer slots: every pixel, plus room for window candidates that run past the last one (never covered)."""
        return self.pixels + MAX_WINDOW * (self.W + 1)


def _rasterize_torch(verts: torch.Tensor, faces: torch.Tensor, settings: RasterSettings) -> Fragments:
    H, W = settings.image_size
    frame = _Frame(B=verts.shape[0], F=faces.shape[0], H=H, W=W)
    zbuf = torch.full((frame.buffer_size,), _EMPTY_KEY, dtype=torch.int64, device=verts.device)
    if frame.B * frame.F == 0:
        return _fragments_from_zbuf(zbuf[:frame.pixels], frame, None)
    table = _triangle_table(verts.float(), faces, frame)  # _ROWS x N
    span = _rasterize_box_origins(zbuf, frame, table, settings.cull_backfaces)
    more = _nonzero(table[_ORIENT].abs().mul_(span) > 0)  # kept triangles whose box holds more than one pixel
    if more.numel():
        _rasterize_rest_of_boxes(zbuf, frame, table.index_select(1, more), more, span.index_select(0, more))
    return _fragments_from_zbuf(zbuf[:frame.pixels], frame, table[_CORNERS_XY])


# Rows of the per-triangle table (columns n = b * F + f): corners x0 x1 x2 y0 y1 y2 z0 z1 z2, the pixel box
# (first col, first row, extent x, extent y; extent = last - first, negative when the box holds no pixel centre)
# and the orientation (+-1, 0 for degenerate or culled triangles).
_CORNERS, _CORNERS_XY, _LO, _EXTENT, _ORIENT, _ROWS = slice(0, 9), slice(0, 6), slice(9, 11), slice(11, 13), 13, 14


def _triangle_table(verts: torch.Tensor, faces: torch.Tensor, frame: _Frame) -> torch.Tensor:
    """``(B, V, 3)`` verts and ``(F, 3)`` faces -> the ``(_ROWS, B * F)`` table, orientation row left empty.

    Transposes go through ``stack(unbind)``: on CPU a plain transposed copy is several times slower. One 1-D gather
    per coordinate is the fastest gather.
    """
    B, V, N = frame.B, verts.shape[1], frame.B * frame.F
    table = torch.empty(_ROWS, N, device=verts.device)
    index = torch.stack(faces.unbind(1))  # 3 x F, corner-major
    if B > 1:
        index = index.unsqueeze(1) + torch.arange(0, B * V, V, device=verts.device).view(1, B, 1)  # 3 x B x F
    index = index.view(-1)
    coords = torch.stack(verts.unbind(-1)).view(3, B * V)  # 3 x BV
    for axis in range(3):
        torch.index_select(coords[axis], 0, index, out=table[3 * axis:3 * axis + 3].view(-1))
    _pixel_boxes(table, frame.H, frame.W)
    return table


def _pixel_boxes(table: torch.Tensor, H: int, W: int) -> None:
    """Fill the box rows: pixel (col, row) indices whose centres can lie in each triangle, clipped to the image."""
    xy = table[_CORNERS_XY].view(2, 3, -1)
    lo = torch.amin(xy, 1, out=table[_LO]).sub_(0.5).ceil_()
    hi = xy.amax(1).sub_(0.5).floor_()
    for axis, size in enumerate((W, H)):
        lo[axis].clamp_(0, size - 1)
        hi[axis].clamp_(max=size - 1)
    torch.sub(hi, lo, out=table[_EXTENT])


@dataclass(frozen=True)
class _EdgePlanes:
    """Edge functions and depth of triangles as affine functions of the pixel offset (dj, di) from their box origin.

    Edge k (opposite corner k, from corner k + 1 to corner k + 2) is ``E_k = c[k] - ey[k] * dj + ex[k] * di``; the
    three are >= 0 inside a triangle whose doubled signed area ``area2`` (their sum) is positive. Depth is
    ``depth + depth_dx * dj + depth_dy * di``. Slopes are None when not asked for.
    """

    c: torch.Tensor  # 3 x n
    area2: torch.Tensor  # n
    depth: torch.Tensor  # n, at the box origin
    ex: torch.Tensor | None = None  # 3 x n
    ey: torch.Tensor | None = None  # 3 x n
    depth_dx: torch.Tensor | None = None  # n
    depth_dy: torch.Tensor | None = None  # n


def _edge_planes(corners: torch.Tensor, lo: torch.Tensor, slopes: bool = True) -> _EdgePlanes:
    """Edge and depth planes of ``(9, n)`` corners in coordinates local to the box origin ``lo + 0.5``.

    Local coordinates keep float32 accurate: each edge function is written corner-relative, ``u1 * ey - v1 * ex``
    (not ``u1 * v2 - u2 * v1``), so its rounding error scales with the box size, not with the image size.
    """
    local = corners[:6].view(2, 3, -1) - (lo + 0.5).unsqueeze(1)  # 2 x 3 x n: (u, v) per corner
    edges = [local[:, 2] - local[:, 1], local[:, 0] - local[:, 2], local[:, 1] - local[:, 0]]  # (ex, ey) per edge
    c = torch.empty_like(local[0])  # 3 x n
    for k, edge in enumerate(edges):
        start = local[:, (k + 1) % 3]
        torch.mul(start[0], edge[1], out=c[k]).addcmul_(start[1], edge[0], value=-1.0)
    area2 = (edges[1][0] * edges[2][1]).addcmul_(edges[2][0], edges[1][1], value=-1.0)
    dz = corners[7:9] - corners[6:7]  # 2 x n: z1 - z0, z2 - z0
    depth = (c[1] * dz[0]).addcmul_(c[2], dz[1]).div_(area2).add_(corners[6])
    if not slopes:
        return _EdgePlanes(c=c, area2=area2, depth=depth)
    ex = torch.stack([e[0] for e in edges])
    ey = torch.stack([e[1] for e in edges])
    depth_dx = (ey[1] * dz[0]).addcmul_(ey[2], dz[1]).div_(area2).neg_()
    depth_dy = (ex[1] * dz[0]).addcmul_(ex[2], dz[1]).div_(area2)
    return _EdgePlanes(c=c, area2=area2, depth=depth, ex=ex, ey=ey, depth_dx=depth_dx, depth_dy=depth_dy)


def _candidate_keys(depth: torch.Tensor, margin: torch.Tensor, face_id: torch.Tensor) -> torch.Tensor:
    """int64 z-buffer keys of (triangle, pixel) candidates: ``order(depth) << 32 | face_id``.

    ``order`` maps float32 bits to int32 monotonically (bits read as int32 order positive floats correctly and
    negative ones in reverse, so the low 31 bits of negative ones are flipped), so ``amin`` over keys picks the
    smallest depth, then the smallest id. Adding 0.0 turns -0.0 into +0.0 so that the two tie. A candidate is
    covered when ``margin >= 0`` (the smallest oriented edge function); others get ``order = INT32_MAX``, which
    reads as empty. All of it is sign-bit arithmetic: masks and ``where`` are several times slower on CPU.
    """
    bits = (depth.float() + 0.0).view(torch.int32)
    order = bits ^ ((bits >> 31) & _LOW_31)
    outside = (margin.float() + 0.0).view(torch.int32) >> 31  # -1 where margin < 0, else 0
    order = torch.maximum(order, outside ^ _INT32_MIN)  # outside: INT32_MAX
    return (order.to(torch.int64) << 32) | face_id


def _rasterize_box_origins(zbuf, frame, table, cull_backfaces) -> torch.Tensor:
    """Test every triangle at the first pixel of its box, the only one for most face triangles at 256^2.

    Fills the orientation row and returns each box's span (largest side minus one). Large boxes are left to the
    exact path, origin included: they and dropped triangles get margin 1 - 1/0 = -inf.
    """
    lo, extent = table[_LO], table[_EXTENT]
    planes = _edge_planes(table[_CORNERS], lo, slopes=False)
    orient = torch.sign(planes.area2, out=table[_ORIENT])
    if cull_backfaces:
        orient.clamp_(max=0.0)  # front faces have a negative doubled signed area
    span = extent.amax(0)
    keep = orient.abs().mul_((MAX_WINDOW - span).clamp_(0.0, 1.0))  # 1 or 0
    margin = (planes.c * orient).amin(0).sub_(keep.reciprocal_()).add_(1.0)
    face_id = torch.arange(frame.F, device=lo.device)
    keys = _candidate_keys(planes.depth, margin, face_id.repeat(frame.B) if frame.B > 1 else face_id)
    pixel = torch.add(lo[0], lo[1], alpha=frame.W).to(torch.int32).to(torch.int64)  # row * W + col
    if frame.B > 1:
        pixel = pixel.view(frame.B, frame.F).add_(_batch_offsets(frame, lo.device).view(-1, 1)).view(-1)
    zbuf.scatter_reduce_(0, pixel, keys, "amin")
    return span


def _batch_offsets(frame: _Frame, device: torch.device) -> torch.Tensor:
    return torch.arange(frame.B, device=device) * (frame.H * frame.W)


def _nonzero(mask: torch.Tensor) -> torch.Tensor:
    """Indices of True in a 1-D mask (numpy's is several times faster than torch's on CPU)."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return mask.nonzero().squeeze(1)


def _rasterize_rest_of_boxes(zbuf, frame, table, n, span) -> None:
    """Triangles ``n`` (their ``table`` columns) whose box has more pixels: 2x2 or 4x4 windows in float32; larger
    boxes exactly, in float64."""
    largest = int(span.max())
    if largest < 2:  # the common case for a face at 256^2: no routing needed
        return _rasterize_window(zbuf, frame, table, n, 2)
    for window, pick in ((2, span < 2), (MAX_WINDOW, (span >= 2) & (span < MAX_WINDOW)), (0, span >= MAX_WINDOW)):
        part = _nonzero(pick)
        if part.numel():
            rasterize_part = _rasterize_window if window else _rasterize_exact
            rasterize_part(zbuf, frame, table.index_select(1, part), n.index_select(0, part), window)


def _window_offsets(window: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(dj, di) of a window x window block without its origin, as ``(window**2 - 1, 1)`` float columns."""
    steps = torch.arange(window, device=device, dtype=torch.float32)
    di, dj = torch.meshgrid(steps, steps, indexing="ij")
    return dj.reshape(-1, 1)[1:], di.reshape(-1, 1)[1:]


def _rasterize_window(zbuf, frame, table, n, window) -> None:
    lo, extent, orient = table[_LO], table[_EXTENT], table[_ORIENT]
    planes = _edge_planes(table[_CORNERS], lo)
    dj, di = _window_offsets(window, n.device)  # K x 1 each
    edges = planes.c.unsqueeze(1) - planes.ey.unsqueeze(1) * dj + planes.ex.unsqueeze(1) * di  # 3 x K x n
    in_box = torch.minimum(extent[0] - dj, extent[1] - di)  # K x n, < 0 outside the box (and the image)
    margin = torch.minimum((edges * orient).amin(0), in_box)
    depth = planes.depth + planes.depth_dx * dj + planes.depth_dy * di  # K x n
    keys = _candidate_keys(depth, margin, n % frame.F if frame.B > 1 else n)
    pixel = _origin_pixels(lo, n, frame) + (di * frame.W + dj).to(torch.int64)
    zbuf.scatter_reduce_(0, pixel.view(-1), keys.view(-1), "amin")


def _origin_pixels(lo: torch.Tensor, n: torch.Tensor, frame: _Frame) -> torch.Tensor:
    """Flat z-buffer index (b * H * W + row * W + col) of the box origins of triangles ``n``."""
    pixel = torch.add(lo[0], lo[1], alpha=frame.W).to(torch.int64)
    return pixel + n // frame.F * (frame.H * frame.W) if frame.B > 1 else pixel


def _rasterize_exact(zbuf, frame, table, n, _window=0) -> None:
    """Enumerate every pixel of large boxes in float64 (rare for face meshes), in chunks of bounded size."""
    table = table.double()
    planes = _edge_planes(table[_CORNERS], table[_LO])
    width, height = (table[_EXTENT].to(torch.int64) + 1).clamp(min=0)  # a negative extent holds no pixel centre
    counts = width * height
    ends = counts.cumsum(0)
    marks = torch.arange(CHUNK_CANDIDATES, max(int(ends[-1]), CHUNK_CANDIDATES), CHUNK_CANDIDATES, device=n.device)
    bounds = [0] + torch.searchsorted(ends, marks, right=True).tolist() + [n.numel()]
    for start, stop in zip(bounds[:-1], bounds[1:]):
        if stop > start:
            _rasterize_exact_chunk(zbuf, frame, slice(start, stop), n, planes, table, width, counts)


def _rasterize_exact_chunk(zbuf, frame, part, n, planes, table, width, counts) -> None:
    tri = torch.repeat_interleave(torch.arange(part.stop - part.start, device=n.device), counts[part])
    first = (counts[part].cumsum(0) - counts[part]).index_select(0, tri)
    offset = torch.arange(tri.numel(), device=n.device) - first
    tri = tri + part.start
    dj, di = offset % width[tri], offset // width[tri]
    djf, dif = dj.double(), di.double()
    edges = planes.c[:, tri] - planes.ey[:, tri] * djf + planes.ex[:, tri] * dif  # 3 x C
    margin = (edges * table[_ORIENT, tri]).amin(0)
    depth = planes.depth[tri] + planes.depth_dx[tri] * djf + planes.depth_dy[tri] * dif
    keys = _candidate_keys(depth, margin, n[tri] % frame.F if frame.B > 1 else n[tri])
    pixel = _origin_pixels(table[_LO][:, tri], n[tri], frame) + di * frame.W + dj
    zbuf.scatter_reduce_(0, pixel, keys, "amin")


def _fragments_from_zbuf(keys: torch.Tensor, frame: _Frame, corners: torch.Tensor | None) -> Fragments:
    """Decode the winning keys; barycentrics are recomputed at the pixel centres from the winners' corners.

    A key whose order is INT32_MAX is empty. Like the keys, the decoding is sign-bit arithmetic, not masks.
    """
    B, H, W = frame.B, frame.H, frame.W
    order = keys >> 32
    covered = (order - _INT32_MAX) >> 63  # -1 covered, 0 empty
    face = keys & _LOW_32 & covered  # 0 where empty
    triangle_id = face | ~covered  # -1 where empty
    order = order.to(torch.int32).clamp_(max=_FLOAT32_INF_BITS)  # empty: +inf
    depth = (order ^ ((order >> 31) & _LOW_31)).view(torch.float32)
    bary = torch.zeros(3, B, H, W, device=keys.device)
    if corners is not None:
        n = face.view(B, H * W) + (_batch_offsets(frame, keys.device) // (H * W) * frame.F).view(B, 1)
        xy = corners[:6].index_select(1, n.view(-1)).view(6, B, H, W)
        _pixel_barycentrics(xy, covered.to(torch.float32).neg_().view(B, H, W), bary)
    # Barycentrics are returned as a channels-last view of a channels-first tensor: no copy either way.
    return Fragments(triangle_id=triangle_id.view(B, H, W), bary=bary.permute(1, 2, 3, 0),
                     depth=depth.view(B, H, W))


def _pixel_barycentrics(xy: torch.Tensor, covered: torch.Tensor, out: torch.Tensor) -> None:
    """Rows x0, x1, x2, y0, y1, y2 ``(6, B, H, W)`` of each pixel's triangle -> barycentrics of its centre into
    ``out`` ``(3, B, H, W)``, times ``covered`` (1 or 0). Corner-0-relative, so errors scale with the triangle."""
    x0, x1, x2, y0, y1, y2 = xy
    H, W = x0.shape[-2:]
    px = torch.arange(W, device=xy.device, dtype=xy.dtype).add_(0.5)
    py = torch.arange(H, device=xy.device, dtype=xy.dtype).add_(0.5).view(H, 1)
    qx, qy = px - x0, py - y0  # pixel centre relative to corner 0
    e1x, e1y, e2x, e2y = x1 - x0, y1 - y0, x2 - x0, y2 - y0
    area2 = (e1x * e2y).addcmul_(e2x, e1y, value=-1.0)
    torch.mul(qx, e2y, out=out[1]).addcmul_(e2x, qy, value=-1.0)
    torch.mul(e1x, qy, out=out[2]).addcmul_(qx, e1y, value=-1.0)
    torch.sub(area2, out[1], out=out[0]).sub_(out[2])
    out.mul_(area2.reciprocal_().mul_(covered))


def _pixel_corners(triangle_id: torch.Tensor, faces: torch.Tensor, V: int) -> torch.Tensor:
    """``(B, H, W)`` triangle ids -> ``(3, B*H*W)`` vertex indices into a ``(B * V)`` table (0 where empty)."""
    B = triangle_id.shape[0]
    corners = faces.t().contiguous().index_select(1, triangle_id.clamp(min=0).view(-1))  # 3 x BHW
    if B > 1:
        corners = corners.view(3, B, -1) + torch.arange(B, device=faces.device).view(1, B, 1) * V
    return corners.reshape(3, -1)


# ----------------------------------------------------------------------------------------------------------------
# the optional pytorch3d backend


def _pytorch3d_available() -> bool:
    try:
        from pytorch3d.renderer.mesh.rasterize_meshes import rasterize_meshes  # noqa: F401
        from pytorch3d.structures import Meshes  # noqa: F401
    except Exception:  # ImportError, or a broken binary extension
        return False
    return True


def _rasterize_pytorch3d(verts: torch.Tensor, faces: torch.Tensor, settings: RasterSettings) -> Fragments:
    """pytorch3d's rasterizer behind the same conventions (untested here: pytorch3d is not installable on CI).

    Differences: pytorch3d treats a centre exactly on an edge as outside, breaks exact depth ties by its own order, and
    ignores pixels with negative depth.
    """
    from pytorch3d.renderer.mesh.rasterize_meshes import rasterize_meshes
    from pytorch3d.structures import Meshes

    H, W = settings.image_size
    B, F = verts.shape[0], faces.shape[0]
    short = float(min(H, W))
    # pytorch3d NDC: +x left, +y up, the short side spans [-1, 1]; pixel centres as ours (two flips keep winding).
    ndc = torch.stack([(W - 2.0 * verts[..., 0]) / short, (H - 2.0 * verts[..., 1]) / short, verts[..., 2]], -1)
    meshes = Meshes(verts=list(ndc.float()), faces=[faces.long()] * B)
    pix_to_face, zbuf, bary, _ = rasterize_meshes(meshes, image_size=(H, W), blur_radius=0.0, faces_per_pixel=1,
                                                  max_faces_per_bin=max(F, 1),
                                                  cull_backfaces=settings.cull_backfaces)
    empty = pix_to_face[..., 0] < 0
    offsets = torch.arange(B, device=verts.device).view(B, 1, 1) * F
    return Fragments(triangle_id=(pix_to_face[..., 0] - offsets).masked_fill(empty, -1),
                     bary=bary[..., 0, :].masked_fill(empty.unsqueeze(-1), 0.0),
                     depth=zbuf[..., 0].masked_fill(empty, float("inf")))
