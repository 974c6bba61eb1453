"""The torch backend of :func:`reenact.face3d.raster.rasterize`: pure, vectorised PyTorch (CPU or CUDA; the device
follows the inputs). Conventions are the API's (:mod:`reenact.face3d.raster`).

How it is fast (a 70k-triangle face at 256^2 in a few ms on one CPU thread; ``perf/bench_raster.py``): no Python
loop over triangles or pixels, few passes over memory, no boolean masks (``where`` and mask ops are several times
slower than arithmetic on CPU).

1. A table with one column per triangle: its corners (three 1-D gathers), the box of pixel centres it can contain,
   and its edge functions and depth as affine functions of the pixel offset from the box's first pixel, in
   coordinates local to that pixel: float32 then stays accurate to 5e-7 pixel.
2. Every triangle is tested at the first pixel of its box. For a face at 256^2 most triangles are smaller than a
   pixel, so this one vectorised pass does nearly all the work.
3. Boxes of up to 2x2 or 4x4 pixels test their other pixels by broadcasting over the window; rare larger boxes go
   to float64 power-of-two windows, chunked.
4. Each (triangle, pixel) candidate becomes one int64 key, ``order(depth) << 32 | triangle``, where ``order`` maps
   float32 bits to int32 monotonically and uncovered candidates get the largest order; ``scatter_reduce(amin)``
   then resolves the z-buffer with the tie rule exactly.
5. Barycentrics are recomputed once per pixel from the winning triangle's corner 0 and edges.
"""
from __future__ import annotations

import functools
import math
import weakref
from dataclasses import dataclass

import numpy as np
import torch

#: Boxes of at most this many pixels a side are rasterized in float32 (the first pixel in one pass, the rest in 2x2
#: or 4x4 windows); larger ones in float64, in power-of-two windows. Float32 edge functions in box-local
#: coordinates are then accurate to 5e-7 pixel (the worst case seen over 200,000 random boxes of 4 pixels).
FLOAT32_BOX = 4
#: At most this many (triangle, pixel) candidates per float64 window chunk.
CHUNK_CANDIDATES = 1 << 18
#: At most this many triangles are rasterized together; larger batches go a few meshes at a time, which keeps the
#: per-triangle table small (big fresh allocations cost page faults on CPU).
GROUP_TRIANGLES = 1 << 17

_EMPTY_KEY = torch.iinfo(torch.int64).max
_INT32_MAX = 0x7FFFFFFF
_INT32_MIN = -0x80000000
_LOW_31 = 0x7FFFFFFF
_LOW_32 = 0xFFFFFFFF
_FLOAT32_INF_BITS = 0x7F800000


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
        """Z-buffer slots: every pixel, plus room for float32-window candidates that run past the last one (never
        covered; float64 windows clamp their indices)."""
        return self.pixels + FLOAT32_BOX * (self.W + 1)


def rasterize_torch(verts: torch.Tensor, faces: torch.Tensor, image_size: tuple[int, int],
                    cull_backfaces: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The torch backend: ``(B, V, 3)`` float screen vertices, ``(F, 3)`` int64 faces -> triangle ids ``(B, H, W)``,
    barycentrics ``(B, H, W, 3)`` (a channels-last view of a channels-first tensor) and depth ``(B, H, W)``.
    The batch runs in groups of at most GROUP_TRIANGLES triangles (at least one mesh)."""
    per_group = max(1, GROUP_TRIANGLES // max(faces.shape[0], 1))
    groups = [_rasterize_group(part, faces, image_size, cull_backfaces) for part in verts.split(per_group)]
    if not groups:
        groups = [_rasterize_group(verts, faces, image_size, cull_backfaces)]
    triangle_id, bary, depth = (torch.cat(parts, dim) if len(groups) > 1 else parts[0]
                                for parts, dim in zip(zip(*groups), (0, 1, 0)))
    return triangle_id, bary.permute(1, 2, 3, 0), depth


def _rasterize_group(verts: torch.Tensor, faces: torch.Tensor, image_size: tuple[int, int], cull_backfaces: bool):
    """Rasterize ``(b, V, 3)`` verts: triangle ids ``(b, H, W)``, barycentrics ``(3, b, H, W)``, depth ``(b, H, W)``."""
    H, W = image_size
    frame = _Frame(B=verts.shape[0], F=faces.shape[0], H=H, W=W)
    zbuf = torch.full((frame.buffer_size,), _EMPTY_KEY, dtype=torch.int64, device=verts.device)
    if frame.B * frame.F == 0:
        return _fragments_from_zbuf(zbuf[:frame.pixels], frame, None)
    table = _triangle_table(verts.float(), faces, frame)  # NUM_ROWS x N
    more, span = _rasterize_box_origins(zbuf, frame, table, cull_backfaces)
    if more.numel():
        _rasterize_rest_of_boxes(zbuf, frame, table, more, span.index_select(0, more))
    return _fragments_from_zbuf(zbuf[:frame.pixels], frame, table[_BARY])


# Rows of the per-triangle table, one column per triangle n = b * F + f (pinned by
# tests/test_raster.py::test_kernel_table_rows_*):
#   corners x0 x1 x2 y0 y1 y2 z0 z1 z2, x and y in pixel-centre units (image coordinates - 0.5: the centre of
#   pixel (i, j) is (j, i), exactly; the shift is exact but for coordinates within 0.25 of 0, off by < 2e-8);
#   corner 0 again and the edges e1 = corner 1 - corner 0, e2 = corner 2 - corner 0: x0 y0 e1x e2x e1y e2y, the
#   block the per-pixel barycentrics gather;
#   orientation: +-1 that makes the edge functions >= 0 inside, 0 for degenerate or culled triangles (and, until the
#   float64 path recomputes it, for boxes larger than FLOAT32_BOX);
#   the pixel box: first col, first row, extent x, extent y (extent = last - first, < 0 when it holds no centre);
#   the edge functions E_0 E_1 E_2 at the box's first pixel centre q (relative to corner 0): edge k is opposite
#   corner k, E_1 = q x e2, E_2 = e1 x q, E_0 = area2 - E_1 - E_2 (a x b = ax by - ay bx);
#   area2 = e1 x e2, the doubled signed area (< 0: front-facing); depth at q; z1 - z0, z2 - z0.
# Relative to corner 0 and q, float32 stays accurate: errors scale with the box, not with the image.
# The windows read rows WINDOW_FIRST onwards.
X0, X1, X2, Y0, Y1, Y2, Z0, Z1, Z2 = range(9)             # corners
CORNER0_X, CORNER0_Y = 9, 10                               # corner 0 again (the barycentrics' block starts here)
E1X, E2X, E1Y, E2Y = 11, 12, 13, 14                        # edges e1, e2
ORIENT = 15                                                # +-1, or 0 for a dropped triangle
LO_COL, LO_ROW = 16, 17                                    # the box's first pixel
EXTENT_X, EXTENT_Y = 18, 19                                # last - first pixel of the box
EDGE_0, EDGE_1, EDGE_2 = 20, 21, 22                        # edge functions at the box's first pixel
AREA2 = 23                                                 # doubled signed area
DEPTH = 24                                                 # depth at the box's first pixel
DZ1, DZ2 = 25, 26                                          # z1 - z0, z2 - z0
NUM_ROWS = 27
#: The rows the windows read (the table from here on is copied per window).
WINDOW_FIRST = E1X


def _rows(first: int, last: int) -> slice:
    """Rows ``first`` to ``last``, both included."""
    return slice(first, last + 1)


_CORNERS, _CORNERS_XY, _CORNERS_Z = _rows(X0, Z2), _rows(X0, Y2), _rows(Z0, Z2)
_BARY, _CORNER0, _EDGES = _rows(CORNER0_X, E2Y), _rows(CORNER0_X, CORNER0_Y), _rows(E1X, E2Y)
_LO, _EXTENT, _EDGE_C, _DZ = _rows(LO_COL, LO_ROW), _rows(EXTENT_X, EXTENT_Y), _rows(EDGE_0, EDGE_2), _rows(DZ1, DZ2)


def _triangle_table(verts: torch.Tensor, faces: torch.Tensor, frame: _Frame) -> torch.Tensor:
    """``(B, V, 3)`` verts and ``(F, 3)`` faces -> the ``(NUM_ROWS, B * F)`` table with corners and boxes filled."""
    B, V, N = frame.B, verts.shape[1], frame.B * frame.F
    table = torch.empty(NUM_ROWS, N, device=verts.device)
    index = corner_index(faces)  # 3F, corner-major
    if B > 1:
        offsets = torch.arange(0, B * V, V, device=verts.device, dtype=torch.int32)
        index = (index.view(3, 1, -1) + offsets.view(1, B, 1)).view(-1)
    flat = verts.reshape(B * V, 3)
    shifted = flat - 0.5  # x and y in pixel-centre units: the centre of pixel (i, j) is (j, i)
    for first, coord in zip((X0, Y0, Z0), (shifted[:, 0], shifted[:, 1], flat[:, 2])):
        # one 1-D gather per coordinate is the fastest gather on CPU, and a strided source costs nothing extra
        torch.index_select(coord, 0, index, out=table[_rows(first, first + 2)].view(-1))
    _fill_pixel_boxes(table, frame.H, frame.W)
    return table


_CORNER_INDEX: dict[int, tuple[weakref.ref, int, torch.Tensor]] = {}


def corner_index(faces: torch.Tensor) -> torch.Tensor:
    """``faces`` transposed and flattened, corner-major ``(3F,)`` int32 (half the memory traffic of int64 when
    gathered); cached per faces tensor (and its version), since a mesh's faces are shared by every call."""
    entry = _CORNER_INDEX.get(id(faces))
    if entry is not None and entry[0]() is faces and entry[1] == faces._version:
        return entry[2]
    index = torch.stack(faces.unbind(1)).view(-1).to(torch.int32)
    if len(_CORNER_INDEX) >= 16:
        _CORNER_INDEX.clear()
    _CORNER_INDEX[id(faces)] = (weakref.ref(faces), faces._version, index)
    return index


def _fill_pixel_boxes(table: torch.Tensor, H: int, W: int) -> None:
    """Box rows: the pixel (col, row) indices whose centres can lie in each triangle, clipped to the image."""
    xy = table[_CORNERS_XY].view(2, 3, -1)
    lo = torch.minimum(xy[:, 0], xy[:, 1], out=table[_LO])
    torch.minimum(lo, xy[:, 2], out=lo).ceil_()  # corners are in pixel-centre units: centres are integers
    hi = torch.maximum(torch.maximum(xy[:, 0], xy[:, 1]), xy[:, 2]).floor_()
    for rows, size in ((slice(None), W),) if H == W else ((0, W), (1, H)):
        lo[rows].clamp_(0, size - 1)
        hi[rows].clamp_(max=size - 1)
    torch.sub(hi, lo, out=table[_EXTENT])


def _fill_edge_planes(table: torch.Tensor) -> None:
    """Edge-function, edge, area and depth rows from the corner and box rows (any float dtype, any width)."""
    n = table.shape[1]
    rows = table.unbind(0)
    xy = table[_CORNERS_XY].view(2, 3, n)
    corner0 = table[_CORNER0]
    corner0.copy_(xy[:, 0])
    (e1x, e2x), (e1y, e2y) = torch.sub(xy[:, 1:], xy[:, :1], out=table[_EDGES].view(2, 2, n))
    qx, qy = table[_LO] - corner0  # the box's first pixel centre relative to corner 0
    # two roundings, no fused multiply-add: a zero-area triangle gets exactly 0
    area2 = torch.mul(e1x, e2y, out=rows[AREA2]).sub_(e2x * e1y)
    c0, c1, c2 = table[_EDGE_C]
    torch.mul(qx, e2y, out=c1).addcmul_(e2x, qy, value=-1.0)
    torch.mul(e1x, qy, out=c2).addcmul_(qx, e1y, value=-1.0)
    torch.sub(area2, c1, out=c0).sub_(c2)
    dz1, dz2 = torch.sub(table[_rows(Z1, Z2)], rows[Z0], out=table[_DZ])
    torch.mul(c1, dz1, out=rows[DEPTH]).addcmul_(c2, dz2).div_(area2).add_(rows[Z0])


def _edge_vectors(edges: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ex, ey) ``(3, n)`` of edge k, from corner k + 1 to corner k + 2, from the e1x e2x e1y e2y rows: the edge
    functions are E_k(dj, di) = E_k - ey_k dj + ex_k di at pixel offset (dj, di) from the box's first pixel."""
    e1x, e2x, e1y, e2y = edges
    return torch.stack([e2x - e1x, -e2x, e1x]), torch.stack([e2y - e1y, -e2y, e1y])


def _depth_slopes(ex, ey, dz, area2) -> tuple[torch.Tensor, torch.Tensor]:
    """d depth / d dj and d depth / d di from the edge vectors ``(3, n)``, ``dz`` ``(2, n)`` and ``area2``."""
    return ((ey[1] * dz[0]).addcmul_(ey[2], dz[1]).div_(area2).neg_(),
            (ex[1] * dz[0]).addcmul_(ex[2], dz[1]).div_(area2))


def _candidate_keys(depth: torch.Tensor, margin: torch.Tensor, face_id: torch.Tensor) -> torch.Tensor:
    """int64 z-buffer keys of (triangle, pixel) candidates: ``order(depth) << 32 | face_id``.

    ``order`` maps float32 bits to int32 monotonically (bits read as int32 order positive floats correctly and
    negative ones in reverse, so the low 31 bits of negative ones are flipped), so ``amin`` over keys picks the
    smallest depth, then the smallest id. Adding 0.0 turns -0.0 into +0.0 so that the two tie. A candidate is
    covered when ``margin >= 0`` (the smallest oriented edge function, never -0.0: callers add 0.0); others get
    ``order = INT32_MAX``, which reads as empty. All of it is sign-bit arithmetic: masks and ``where`` are several
    times slower on CPU.
    """
    # in place where possible: fewer fresh buffers, fewer cache misses
    bits = (depth.float() + 0.0).view(torch.int32)
    order = (bits >> 31).bitwise_and_(_LOW_31).bitwise_xor_(bits)
    outside = (margin.float().view(torch.int32) >> 31).bitwise_xor_(_INT32_MIN)  # INT32_MAX where margin < 0
    torch.maximum(order, outside, out=order)
    return order.to(torch.int64).bitwise_left_shift_(32).bitwise_or_(face_id)


def _rasterize_box_origins(zbuf, frame, table, cull_backfaces) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill the edge-plane and orientation rows and test every triangle at the first pixel of its box (the only
    one, for most face triangles at 256^2). Returns the kept triangles whose box holds more pixels, and every box's
    span (largest side minus one).

    Boxes larger than FLOAT32_BOX get orientation 0 here: the float64 path tests all their pixels, origin included.
    """
    _fill_edge_planes(table)
    sign = torch.sign(table[AREA2])
    if cull_backfaces:
        sign.clamp_(max=0.0)  # front faces have a negative doubled signed area
    span = torch.maximum(table[_EXTENT][0], table[_EXTENT][1])
    more = _nonzero_positive(sign.abs().mul_(span))
    orient = torch.mul(sign, (FLOAT32_BOX - span).clamp_(0.0, 1.0), out=table[ORIENT])
    margin = (table[_EDGE_C] * orient).amin(0).add_(orient.abs().sub_(1.0))  # - 1 where orient is 0; no -0.0
    keys = _candidate_keys(table[DEPTH], margin, _face_ids(frame.F, frame.B, table.device))
    lo = table[_LO]
    pixel = _flat_pixels(lo, frame.H, frame.W)
    if frame.B > 1:
        pixel = pixel.view(frame.B, frame.F).add_(_batch_offsets(frame, lo.device).view(-1, 1)).view(-1)
    zbuf.scatter_reduce_(0, pixel, keys, "amin")
    return more, span


@functools.lru_cache(maxsize=8)
def _face_ids(F: int, B: int, device: torch.device) -> torch.Tensor:
    """f of every triangle n = b * F + f, ``(B * F,)`` int64. Cached: treat as read-only."""
    return torch.arange(F, device=device).repeat(B)


def _batch_offsets(frame: _Frame, device: torch.device) -> torch.Tensor:
    return torch.arange(frame.B, device=device) * (frame.H * frame.W)


def _nonzero(mask: torch.Tensor) -> torch.Tensor:
    """Indices of True in a 1-D mask (numpy's is several times faster than torch's on CPU)."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return mask.nonzero().squeeze(1)


def _nonzero_positive(values: torch.Tensor) -> torch.Tensor:
    """Indices of the positive entries of a 1-D tensor (numpy compares several times faster on CPU)."""
    if values.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(values.numpy() > 0))
    return (values > 0).nonzero().squeeze(1)


def _rasterize_rest_of_boxes(zbuf, frame, table, n, span) -> None:
    """Triangles ``n`` whose box has more than one pixel: the rest of a 2x2 or 4x4 window in float32 for boxes of at
    most 4x4 pixels (all of a face at 256^2), larger boxes in float64 power-of-two windows, origin included."""
    levels = range(1, math.frexp(int(span.max()))[1] + 1)  # window 2**level: the smallest power of two > span
    level = torch.frexp(span).exponent if len(levels) > 1 else None
    for lv in levels:
        part = n if level is None else n.index_select(0, _nonzero(level == lv))
        if part.numel() == 0:
            continue
        if (1 << lv) <= FLOAT32_BOX:
            _rasterize_window(zbuf, frame, table[WINDOW_FIRST:].index_select(1, part), part, 1 << lv, False)
        else:
            _rasterize_float64(zbuf, frame, table.index_select(1, part), part, 1 << lv)


def _rasterize_float64(zbuf, frame, table, n, window) -> None:
    """Boxes of up to window x window pixels, every pixel, in float64 and in chunks of bounded size. Culled
    triangles never get here (:func:`_rasterize_box_origins` drops them), so there is nothing to cull."""
    table = table.double()
    _fill_edge_planes(table)
    torch.sign(table[AREA2], out=table[ORIENT])
    step = max(1, CHUNK_CANDIDATES // window**2)
    for start in range(0, n.numel(), step):
        _rasterize_window(zbuf, frame, table[WINDOW_FIRST:, start:start + step], n[start:start + step], window, True)


@functools.lru_cache(maxsize=None)
def _window_offsets(window: int, with_origin: bool, W: int,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixel offsets (dj, di) of a window x window block (with or without its origin) as ``(K, 1)`` float
    columns, and their flat z-buffer offsets ``di * W + dj`` (int64). Cached: treat as read-only."""
    steps = torch.arange(window, dtype=torch.float32)
    di, dj = (t.reshape(-1, 1)[0 if with_origin else 1:] for t in torch.meshgrid(steps, steps, indexing="ij"))
    return dj.to(device), di.to(device), (di * W + dj).to(torch.int64).to(device)


def _rasterize_window(zbuf, frame, rows, n, window, with_origin) -> None:
    """Triangles ``n`` with boxes of at most window x window pixels; ``rows`` are their table rows from WINDOW_FIRST on,
    float32 or float64."""
    orient, lo, extent, c = (_table_rows(rows, which) for which in (ORIENT, _LO, _EXTENT, _EDGE_C))
    ex, ey = _edge_vectors(_table_rows(rows, _EDGES))
    dj, di, flat = _window_offsets(window, with_origin, frame.W, n.device)  # K x 1 each
    edges = (c.unsqueeze(1) - ey.unsqueeze(1) * dj).addcmul_(ex.unsqueeze(1), di)  # 3 x K x n
    in_box = torch.minimum(extent[0] - dj, extent[1] - di)  # K x n, < 0 outside the box (and the image)
    valid = orient.abs() - 1.0  # 0, or -1 for a dropped triangle; adding it also turns -0.0 into +0.0
    margin = torch.minimum((edges * orient).amin(0), in_box).add_(valid)
    depth_dx, depth_dy = _depth_slopes(ex, ey, _table_rows(rows, _DZ), _table_rows(rows, AREA2))
    depth = (_table_rows(rows, DEPTH) + depth_dx * dj).addcmul_(depth_dy, di)  # K x n
    keys = _candidate_keys(depth, margin, n % frame.F if frame.B > 1 else n)
    pixel = _origin_pixels(lo, n, frame) + flat  # K x n
    if window > FLOAT32_BOX:  # candidates past the image are never covered, but their index must stay in range
        pixel.clamp_(max=zbuf.numel() - 1)
    zbuf.scatter_reduce_(0, pixel.view(-1), keys.view(-1), "amin")


def _table_rows(rows: torch.Tensor, which: int | slice) -> torch.Tensor:
    """Table row(s) ``which`` out of ``rows``, the table's rows from WINDOW_FIRST on."""
    if isinstance(which, int):
        return rows[which - WINDOW_FIRST]
    return rows[which.start - WINDOW_FIRST:which.stop - WINDOW_FIRST]


def _origin_pixels(lo: torch.Tensor, n: torch.Tensor, frame: _Frame) -> torch.Tensor:
    """Flat z-buffer index (b * H * W + row * W + col) of the box origins of triangles ``n``."""
    pixel = _flat_pixels(lo, frame.H, frame.W)
    return pixel + n // frame.F * (frame.H * frame.W) if frame.B > 1 else pixel


def _flat_pixels(lo: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """int64 ``row * W + col`` of ``(2, n)`` (col, row) box origins, in floating point while that is exact."""
    if lo.dtype == torch.float32 and H * W <= 2**24:
        return torch.add(lo[0], lo[1], alpha=W).to(torch.int32).to(torch.int64)
    return lo[1].to(torch.int64).mul_(W).add_(lo[0].to(torch.int64))


def _fragments_from_zbuf(keys: torch.Tensor, frame: _Frame, bary_rows: torch.Tensor | None):
    """Decode the winning keys into triangle ids ``(B, H, W)``, barycentrics ``(3, B, H, W)`` and depth
    ``(B, H, W)``; barycentrics are recomputed at the pixel centres from the winners' table rows ``bary_rows``
    (x0 y0 e1x e2x e1y e2y, None for an empty mesh).

    A key whose order is INT32_MAX is empty. Like the keys, the decoding is sign-bit arithmetic, not masks.
    """
    B, H, W = frame.B, frame.H, frame.W
    order = (keys >> 32).to(torch.int32)
    covered = (order.to(torch.int64) - _INT32_MAX).bitwise_right_shift_(63)  # -1 covered, 0 empty
    face = (keys & _LOW_32).bitwise_and_(covered)  # 0 where empty
    triangle_id = covered.bitwise_not().bitwise_or_(face)  # -1 where empty
    order.clamp_(max=_FLOAT32_INF_BITS)  # empty: +inf
    depth = (order >> 31).bitwise_and_(_LOW_31).bitwise_xor_(order).view(torch.float32)
    if bary_rows is None:
        bary = torch.zeros(3, B, H, W, device=keys.device)
    else:
        n = face if B == 1 else face.view(B, -1) + torch.arange(0, B * frame.F, frame.F, device=keys.device).view(B, 1)
        block = bary_rows.index_select(1, n.view(-1)).view(6, B, H, W)
        bary = _pixel_barycentrics(block, covered.to(torch.float32).neg_().view(B, H, W))
    return triangle_id.view(B, H, W), bary, depth.view(B, H, W)


def _pixel_barycentrics(block: torch.Tensor, covered: torch.Tensor) -> torch.Tensor:
    """Rows x0 y0 e1x e2x e1y e2y ``(6, B, H, W)`` of each pixel's triangle -> ``(3, B, H, W)`` barycentrics of its
    centre, times ``covered`` (1 or 0). Corner-0-relative, so errors scale with the triangle, not the image."""
    x0, y0, e1x, e2x, e1y, e2y = block
    px, py = _pixel_centres(*x0.shape[-2:], block.device)
    qx, qy = px - x0, py - y0  # pixel centre relative to corner 0
    area2 = (e1x * e2y).addcmul_(e2x, e1y, value=-1.0)
    out = torch.empty((3,) + x0.shape, device=block.device)
    w0, w1, w2 = out
    torch.mul(qx, e2y, out=w1).addcmul_(e2x, qy, value=-1.0)
    torch.mul(e1x, qy, out=w2).addcmul_(qx, e1y, value=-1.0)
    torch.sub(area2, w1, out=w0).sub_(w2)
    return out.mul_(area2.reciprocal_().mul_(covered))


@functools.lru_cache(maxsize=8)
def _pixel_centres(H: int, W: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """x ``(W,)`` and y ``(H, 1)`` of the pixel centres in pixel-centre units. Cached: treat as read-only."""
    return torch.arange(W, device=device, dtype=torch.float32), torch.arange(H, device=device,
                                                                             dtype=torch.float32).view(H, 1)


def pixel_corners(triangle_id: torch.Tensor, faces: torch.Tensor, V: int) -> torch.Tensor:
    """``(B, H, W)`` triangle ids -> ``(3, B*H*W)`` int32 vertex indices into a ``(B * V)`` table (triangle 0 where
    empty)."""
    B = triangle_id.shape[0]
    tid = triangle_id.clamp(min=0).view(-1)
    corners = torch.empty(3, tid.numel(), dtype=torch.int32, device=faces.device)
    for row, out in zip(corner_index(faces).view(3, -1), corners):  # three 1-D gathers: the fastest on CPU
        torch.index_select(row, 0, tid, out=out)
    if B > 1:
        offsets = torch.arange(0, B * V, V, device=faces.device, dtype=torch.int32)
        corners = corners.view(3, B, -1).add_(offsets.view(1, B, 1))
    return corners.view(3, -1)


