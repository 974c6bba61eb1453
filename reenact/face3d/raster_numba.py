"""The numba backend of :func:`reenact.face3d.raster.rasterize`: a compiled CPU scan-converter (one thread, no
fastmath), the same raster as the torch backend (:mod:`reenact.face3d.raster_kernel`) bit for bit. Conventions are
the API's (:mod:`reenact.face3d.raster`).

How it is fast (a 70k-triangle face at 256^2 in about 2.3 ms on one CPU thread, a third of the torch backend's;
``perf/bench_raster.py``): one pass over the triangles, each tested at the pixel centres of its own box only, against
a per-mesh z-buffer of ``H * W`` int64 keys that stays in cache; no intermediate tables. Most of the time goes to
the per-triangle set-up of sub-pixel triangles (scalar code: LLVM does not vectorise the gathers). Whether such a
triangle covers a pixel centre is unpredictable, so the z-buffer update is a select and a store, not a branch
(10-20% faster than branching).

How it matches the torch backend exactly: every number is computed with the same float32 operations in the same
order, and where torch's ``addcmul`` rounds once (its vectorised CPU kernels compile ``a + b * c`` to a fused
multiply-add on CPUs that have one; :func:`torch_fuses_multiply_add` asks torch) this kernel uses LLVM's ``fma``
there too (numba without fastmath contracts nothing by itself). Triangle ids, depth and barycentrics then come out
identical (``tests/test_raster.py::test_numba_backend_equals_torch_backend_*``).

1. Corners in pixel-centre units (image coordinates - 0.5 in float32: the centre of pixel (i, j) is (j, i)); the
   pixel box ``[ceil(min), floor(max)]`` clipped to the image; the edge functions E_0 E_1 E_2 and the depth at the
   box's first pixel centre, relative to corner 0 (edge k is opposite corner k).
2. Boxes of at most FLOAT32_BOX pixels a side: the first pixel with those values, the others by stepping the edge
   functions and the depth along the pixel offset (dj, di), in float32. Larger boxes: every pixel in float64 from
   the float32 corners, the depth rounded to float32.
3. A covered candidate (all oriented edge functions >= 0) becomes one int64 key ``order(depth) << 32 | triangle``,
   ``order`` mapping float32 bits to int32 monotonically (+0.0 and -0.0 tie); the smaller key wins the pixel: the
   smallest depth, then the smallest triangle id.
4. Barycentrics are recomputed once per pixel from the winning triangle's corner 0 and edges.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

#: Boxes of at most this many pixels a side are rasterized in float32 (as the torch backend's FLOAT32_BOX).
FLOAT32_BOX = 4
_EMPTY_KEY = np.iinfo(np.int64).max
_INT32_MAX = 0x7FFFFFFF
_LOW_31 = 0x7FFFFFFF
_LOW_32 = 0xFFFFFFFF
_FLOAT32_INF_BITS = 0x7F800000


def rasterize_numba(verts: torch.Tensor, faces: torch.Tensor, image_size: tuple[int, int],
                    cull_backfaces: bool, depth_only: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The numba backend: ``(B, V, 3)`` float CPU screen vertices, ``(F, 3)`` int faces -> triangle ids ``(B, H, W)``
    int64, barycentrics ``(B, H, W, 3)`` (a channels-last view of a ``(3, B, H, W)`` tensor) and depth ``(B, H, W)``.
    With ``depth_only`` only the depth is decoded (the same values); ids and barycentrics are then left unwritten."""
    H, W = image_size
    B = verts.shape[0]
    xyz = verts.detach().to(torch.float32).contiguous().numpy()
    tri = faces.detach().to(torch.int64).contiguous().numpy()
    triangle_id = np.empty((B, H, W), np.int64)
    bary = np.empty((3, B, H, W), np.float32)
    depth = np.empty((B, H, W), np.float32)
    _rasterize(xyz, tri, H, W, bool(cull_backfaces), torch_fuses_multiply_add(), triangle_id, bary, depth,
               bool(depth_only))
    return torch.from_numpy(triangle_id), torch.from_numpy(bary).permute(1, 2, 3, 0), torch.from_numpy(depth)


@functools.lru_cache(maxsize=None)
def torch_fuses_multiply_add() -> bool:
    """Whether torch's CPU ``addcmul`` rounds once (a fused multiply-add, as its AVX2/AVX-512 kernels compile on a CPU
    with FMA) or twice. The torch backend computes its edge functions with ``addcmul``; this kernel follows suit."""
    b = torch.full((64,), 1.0 + 2.0**-12)
    fused = torch.full((64,), -1.0).addcmul_(b, b)      # exactly 2^-11 + 2^-24 when fused, 2^-11 when rounded twice
    return bool((fused != 2.0**-11).all())


@intrinsic
def _fma(typingctx, a, b, c):
    """``a * b + c`` rounded once (LLVM's fma: the instruction where the CPU has one)."""
    if not (a == b == c and isinstance(a, types.Float)):
        return None

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return a(a, b, c), codegen


def _unary_llvm_intrinsic(name: str):
    """A numba intrinsic calling LLVM's ``name`` on a float32 or float64 (a single instruction on x86-64 with
    SSE4.1; numba's ``np.ceil`` goes through libm)."""
    @intrinsic
    def call(typingctx, x):
        if not isinstance(x, types.Float):
            return None

        def codegen(context, builder, signature, args):
            fn = builder.module.declare_intrinsic(name, [args[0].type])
            return builder.call(fn, args)

        return x(x), codegen

    return call


ceil = _unary_llvm_intrinsic("llvm.ceil")
floor = _unary_llvm_intrinsic("llvm.floor")


@intrinsic
def _float32_bits(typingctx, x):
    """The bits of a float32 as an int32."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(x), codegen


@intrinsic
def _bits_float32(typingctx, x):
    """The float32 whose bits are the int32 ``x``."""
    if x != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(x), codegen


@njit(cache=True, inline="always")
def mad(a, b, c, fused):
    """``a * b + c`` as torch's ``addcmul`` computes it here (``fused = torch_fuses_multiply_add()``): rounded once
    when ``fused``, else twice."""
    return _fma(a, b, c) if fused else a * b + c


@njit(cache=True, inline="always")
def _min(a, b):
    return a if a < b else b


@njit(cache=True, inline="always")
def _max(a, b):
    return a if a > b else b


@njit(cache=True, inline="always")
def _key(d, f):
    """The z-buffer key ``order(d) << 32 | f`` of a float32 depth ``d`` (+ 0.0 makes -0.0 tie with +0.0)."""
    raw = _float32_bits(d + np.float32(0.0))
    order = ((raw >> 31) & _LOW_31) ^ raw
    return (np.int64(order) << 32) | np.int64(f)


@njit(cache=True, inline="always")
def _order_depth(order):
    """The float32 depth of a key's ``order`` (the inverse of :func:`_key`'s mapping); an order past +inf (a NaN's,
    or an empty key's) reads as +inf."""
    o = _min(order, _FLOAT32_INF_BITS)
    return _bits_float32(np.int32(((o >> 31) & _LOW_31) ^ o))


@njit(cache=True)
def _rasterize(xyz, faces, H, W, cull, fused, triangle_id, bary, depth, depth_only):
    """Every mesh of ``xyz (B, V, 3)`` float32 into the preallocated outputs."""
    keys = np.empty(H * W, np.int64)
    for b in range(xyz.shape[0]):
        keys[:] = _EMPTY_KEY
        for f in range(faces.shape[0]):
            _scan_triangle(xyz, b, faces[f, 0], faces[f, 1], faces[f, 2], f, H, W, cull, fused, keys)
        if depth_only:
            _decode_depth(keys, H, W, b, depth)
        else:
            _decode(xyz, faces, keys, H, W, b, fused, triangle_id, bary, depth)


@njit(cache=True, inline="always")   # inlined into the loop over triangles: ~10% faster than a call
def _scan_triangle(xyz, b, i0, i1, i2, f, H, W, cull, fused, keys):
    """Offer triangle ``f`` (corners ``i0 i1 i2`` of mesh ``b``) at the pixel centres of its box to ``keys``."""
    half = np.float32(0.5)
    x0, y0, z0 = xyz[b, i0, 0] - half, xyz[b, i0, 1] - half, xyz[b, i0, 2]
    x1, y1, z1 = xyz[b, i1, 0] - half, xyz[b, i1, 1] - half, xyz[b, i1, 2]
    x2, y2, z2 = xyz[b, i2, 0] - half, xyz[b, i2, 1] - half, xyz[b, i2, 2]
    e1x, e2x, e1y, e2y = x1 - x0, x2 - x0, y1 - y0, y2 - y0
    area2 = e1x * e2y - e2x * e1y               # two roundings: a zero-area triangle gets exactly 0
    if area2 == 0 or (cull and area2 > 0):      # degenerate, or culled (front faces have area2 < 0)
        return
    s = np.float32(1.0) if area2 > 0 else np.float32(-1.0)
    lo_x = _min(_max(ceil(_min(_min(x0, x1), x2)), np.float32(0.0)), np.float32(W - 1))
    lo_y = _min(_max(ceil(_min(_min(y0, y1), y2)), np.float32(0.0)), np.float32(H - 1))
    ext_x = _min(floor(_max(_max(x0, x1), x2)), np.float32(W - 1)) - lo_x   # < 0: no centre in the box
    ext_y = _min(floor(_max(_max(y0, y1), y2)), np.float32(H - 1)) - lo_y
    origin = np.int64(lo_y) * W + np.int64(lo_x)
    if _max(ext_x, ext_y) >= FLOAT32_BOX:
        _scan_box_float64(x0, y0, z0, x1, y1, z1, x2, y2, z2, lo_x, lo_y, ext_x, ext_y, origin, f, W, fused, keys)
        return
    c0, c1, c2 = _edge_functions(lo_x - x0, lo_y - y0, e1x, e2x, e1y, e2y, area2, fused)   # at the first centre
    dz1, dz2 = z1 - z0, z2 - z0
    d0 = mad(c2, dz2, c1 * dz1, fused) / area2 + z0
    covered = _min(_min(c0 * s, c1 * s), c2 * s) >= 0   # the first pixel is tested whatever the box (as torch)
    k, held = _key(d0, f), keys[origin]
    keys[origin] = k if covered & (k < held) else held     # a select, no branch: coverage is unpredictable
    if ext_x <= 0 and ext_y <= 0:
        return
    ex0, ex1, ex2, ey0, ey1, ey2, ddx, ddy = _edges_and_depth_slopes(e1x, e2x, e1y, e2y, dz1, dz2, area2, fused)
    for di in range(np.int64(ext_y) + 1):
        fi = np.float32(di)
        for dj in range(np.int64(ext_x) + 1):
            if di == 0 and dj == 0:
                continue
            fj = np.float32(dj)
            m0 = mad(ex0, fi, c0 - ey0 * fj, fused) * s
            m1 = mad(ex1, fi, c1 - ey1 * fj, fused) * s
            m2 = mad(ex2, fi, c2 - ey2 * fj, fused) * s
            k, p = _key(mad(ddy, fi, d0 + ddx * fj, fused), f), origin + di * W + dj
            held = keys[p]
            keys[p] = k if (_min(_min(m0, m1), m2) >= 0) & (k < held) else held


@njit(cache=True, inline="always")
def _edge_functions(qx, qy, e1x, e2x, e1y, e2y, area2, fused):
    """The edge functions (E_0, E_1, E_2) at the point ``(qx, qy)`` relative to corner 0 of a triangle with edges
    ``e1 = p1 - p0``, ``e2 = p2 - p0`` and twice its signed area ``area2``; E_0 as the rest of the area, so the three
    sum to ``area2`` (barycentrics times ``area2``)."""
    e1 = mad(-e2x, qy, qx * e2y, fused)
    e2 = mad(-qx, e1y, e1x * qy, fused)
    return (area2 - e1) - e2, e1, e2


@njit(cache=True, inline="always")
def _edges_and_depth_slopes(e1x, e2x, e1y, e2y, dz1, dz2, area2, fused):
    """Edge vectors (ex_k, ey_k) and depth slopes d depth / d dj, d depth / d di of a triangle, in the precision of
    its inputs: edge k runs from corner k + 1 to corner k + 2, E_k(dj, di) = E_k - ey_k dj + ex_k di."""
    ex0, ex1, ex2 = e2x - e1x, -e2x, e1x
    ey0, ey1, ey2 = e2y - e1y, -e2y, e1y
    ddx = -(mad(ey2, dz2, ey1 * dz1, fused) / area2)
    ddy = mad(ex2, dz2, ex1 * dz1, fused) / area2
    return ex0, ex1, ex2, ey0, ey1, ey2, ddx, ddy


@njit(cache=True)
def _scan_box_float64(x0, y0, z0, x1, y1, z1, x2, y2, z2, lo_x, lo_y, ext_x, ext_y, origin, f, W, fused, keys):
    """A box larger than FLOAT32_BOX: every pixel in float64 from the float32 corners, the orientation re-read there
    (culled triangles never get here), the depth rounded to float32."""
    X0, Y0, Z0 = np.float64(x0), np.float64(y0), np.float64(z0)
    e1x, e2x = np.float64(x1) - X0, np.float64(x2) - X0
    e1y, e2y = np.float64(y1) - Y0, np.float64(y2) - Y0
    area2 = e1x * e2y - e2x * e1y
    if area2 == 0:
        return
    s = 1.0 if area2 > 0 else -1.0
    c0, c1, c2 = _edge_functions(np.float64(lo_x) - X0, np.float64(lo_y) - Y0, e1x, e2x, e1y, e2y, area2, fused)
    dz1, dz2 = np.float64(z1) - Z0, np.float64(z2) - Z0
    d0 = mad(c2, dz2, c1 * dz1, fused) / area2 + Z0
    ex0, ex1, ex2, ey0, ey1, ey2, ddx, ddy = _edges_and_depth_slopes(e1x, e2x, e1y, e2y, dz1, dz2, area2, fused)
    for di in range(np.int64(ext_y) + 1):
        fi = np.float64(di)
        for dj in range(np.int64(ext_x) + 1):
            fj = np.float64(dj)
            m0 = mad(ex0, fi, c0 - ey0 * fj, fused) * s
            m1 = mad(ex1, fi, c1 - ey1 * fj, fused) * s
            m2 = mad(ex2, fi, c2 - ey2 * fj, fused) * s
            k, p = _key(np.float32(mad(ddy, fi, d0 + ddx * fj, fused)), f), origin + di * W + dj
            held = keys[p]
            keys[p] = k if (_min(_min(m0, m1), m2) >= 0) & (k < held) else held


@njit(cache=True)
def _decode(xyz, faces, keys, H, W, b, fused, triangle_id, bary, depth):
    """Mesh ``b``'s winning keys -> its triangle ids, depth and barycentrics (recomputed at the pixel centres from
    the winner's corner 0 and edges)."""
    half = np.float32(0.5)
    for i in range(H):
        for j in range(W):
            key = keys[i * W + j]
            order = key >> 32
            if order == _INT32_MAX:             # empty (uncovered candidates are never offered)
                triangle_id[b, i, j] = -1
                depth[b, i, j] = np.inf
                bary[0, b, i, j] = bary[1, b, i, j] = bary[2, b, i, j] = 0.0
                continue
            f = key & _LOW_32
            triangle_id[b, i, j] = f
            depth[b, i, j] = _order_depth(order)
            i0, i1, i2 = faces[f, 0], faces[f, 1], faces[f, 2]
            x0, y0 = xyz[b, i0, 0] - half, xyz[b, i0, 1] - half
            e1x, e2x = (xyz[b, i1, 0] - half) - x0, (xyz[b, i2, 0] - half) - x0
            e1y, e2y = (xyz[b, i1, 1] - half) - y0, (xyz[b, i2, 1] - half) - y0
            area2 = mad(-e2x, e1y, e1x * e2y, fused)
            w0, w1, w2 = _edge_functions(np.float32(j) - x0, np.float32(i) - y0, e1x, e2x, e1y, e2y, area2, fused)
            r = np.float32(1.0) / area2
            bary[0, b, i, j] = w0 * r
            bary[1, b, i, j] = w1 * r
            bary[2, b, i, j] = w2 * r


@njit(cache=True)
def _decode_depth(keys, H, W, b, depth):
    """Mesh ``b``'s winning keys -> its depth only (as :func:`_decode`)."""
    for p in range(H * W):
        depth[b, p // W, p % W] = _order_depth(keys[p] >> 32)   # empty keys read as +inf


def interpolate_numba(triangle_id: torch.Tensor, bary: torch.Tensor, faces: torch.Tensor,
                      attrs: torch.Tensor) -> torch.Tensor:
    """:func:`reenact.face3d.raster.interpolate` on CPU without autograd, the same numbers as its torch version:
    ``(B, H, W)`` ids, ``(B, H, W, 3)`` barycentrics, ``(F, 3)`` faces, ``(B, V, D)`` float32 attrs ->
    ``(B, H, W, D)``, a channels-last view of a contiguous ``(B, D, H, W)`` tensor."""
    B, H, W = triangle_id.shape
    out = np.empty((B, attrs.shape[2], H, W), np.float32)
    _interpolate(triangle_id.numpy(), bary.permute(3, 0, 1, 2).contiguous().numpy(),
                 faces.to(torch.int64).contiguous().numpy(), attrs.contiguous().numpy(), torch_fuses_multiply_add(),
                 out)
    return torch.from_numpy(out).permute(0, 2, 3, 1)


@njit(cache=True)
def _interpolate(triangle_id, bary, faces, attrs, fused, out):
    """``out[b, d, i, j] = sum_k bary[k, b, i, j] attrs[b, faces[t, k], d]``, 0 where empty, in the torch version's
    order: ``w0 v0``, then two multiply-adds."""
    B, H, W = triangle_id.shape
    for b in range(B):
        for i in range(H):
            for j in range(W):
                t = triangle_id[b, i, j]
                if t < 0:
                    out[b, :, i, j] = 0.0
                    continue
                v0, v1, v2 = faces[t, 0], faces[t, 1], faces[t, 2]
                w0, w1, w2 = bary[0, b, i, j], bary[1, b, i, j], bary[2, b, i, j]
                for d in range(attrs.shape[2]):
                    out[b, d, i, j] = weighted(attrs[b, v0, d], attrs[b, v1, d], attrs[b, v2, d], w0, w1, w2, fused)


@njit(cache=True, inline="always")
def weighted(a0, a1, a2, w0, w1, w2, fused):
    """``w0 a0 + w1 a1 + w2 a2`` as the torch ``interpolate`` computes it: ``w0 a0``, then two multiply-adds."""
    return mad(a2, w2, mad(a1, w1, a0 * w0, fused), fused)
