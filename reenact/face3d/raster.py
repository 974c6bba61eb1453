"""Triangle rasterizer: settings, :class:`Fragments`, :func:`rasterize` and :func:`interpolate` (CPU or CUDA; the
device follows the inputs).

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

Computation is in float32 (float64 for boxes larger than 4x4 pixels). Outputs carry no gradient with respect to
the vertices; :func:`interpolate` is differentiable in ``attrs``.

Backends: "torch" (:mod:`reenact.face3d.raster_kernel`, vectorised PyTorch, CPU or CUDA; the reference),
"numba" (:mod:`reenact.face3d.raster_numba`, a compiled CPU scan-converter, the same raster bit for bit and several
times faster on one thread), the optional "pytorch3d", and "auto": numba for CPU tensors, else pytorch3d when it
imports, else torch (and torch wherever numba cannot be imported).
"""
from __future__ import annotations

import functools
import importlib
import math
from dataclasses import dataclass
from typing import Literal

import torch

from reenact.face3d.raster_kernel import pixel_corners, rasterize_torch

Backend = Literal["auto", "torch", "numba", "pytorch3d"]
BACKENDS = ("auto", "torch", "numba", "pytorch3d")


@dataclass(frozen=True)
class RasterSettings:
    """What to rasterize into: ``image_size`` is ``(H, W)``; ``backend`` is "torch", "numba", "pytorch3d" or
    "auto" (see the module docstring)."""

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
        bary: ``(B, H, W, 3)`` float32, screen-space barycentrics of the pixel centre (0 where empty); from the
            torch backend a channels-last view of a ``(3, B, H, W)`` tensor, so use ``reshape``, not ``view``.
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
    backend = resolve_backend(settings.backend, verts.device)
    if backend == "pytorch3d":
        return _rasterize_pytorch3d(verts, faces, settings)
    if backend == "numba":
        kernels = numba_kernels()
        triangle_id, bary, depth = kernels.rasterize_numba(verts, faces, settings.image_size, settings.cull_backfaces)
        return Fragments(triangle_id=triangle_id, bary=bary, depth=depth)
    with torch.no_grad():
        triangle_id, bary, depth = rasterize_torch(verts.detach(), faces.long(), settings.image_size,
                                                   settings.cull_backfaces)
    return Fragments(triangle_id=triangle_id, bary=bary, depth=depth)


def rasterize_depth(verts: torch.Tensor, faces: torch.Tensor, settings: RasterSettings) -> torch.Tensor:
    """Only the z-buffer of :func:`rasterize`: ``(B, H, W)`` depth, +inf where empty (the same values). The numba
    backend then skips the triangle ids and barycentrics (about a seventh of its time); the others rasterize fully."""
    _check_inputs(verts, faces)
    if resolve_backend(settings.backend, verts.device) == "numba":
        return numba_kernels().rasterize_numba(verts, faces, settings.image_size, settings.cull_backfaces,
                                               depth_only=True)[2]
    return rasterize(verts, faces, settings).depth


def interpolate(fragments: Fragments, faces: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
    """Interpolate per-vertex attributes at every pixel, affinely in screen space.

    Args:
        fragments: output of :func:`rasterize` for these ``faces``.
        faces: ``(F, 3)`` vertex indices used to rasterize.
        attrs: ``(B, V, D)`` per-vertex attributes (differentiable).
    Returns:
        ``(B, H, W, D)``: ``sum_k bary_k * attrs[faces[triangle_id, k]]``; zero where empty (the barycentrics are 0
        there, so for finite ``attrs``). A channels-last view of a channels-first tensor: ``.permute(0, 3, 1, 2)``
        gives ``(B, D, H, W)`` without a copy (contiguous from the numba kernel, which serves float32 CPU attributes
        without autograd; the torch code's is ``(D, B, H, W)`` memory).
    """
    B, H, W = fragments.triangle_id.shape
    if attrs.dim() != 3 or attrs.shape[0] != B:
        raise ValueError(f"attrs must be (B={B}, V, D), got {tuple(attrs.shape)}")
    if faces.dim() != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces must be (F, 3), got {tuple(faces.shape)}")
    kernels = cpu_kernels(attrs, fragments.triangle_id) if attrs.dtype == torch.float32 else None
    if kernels is not None:
        return kernels.interpolate_numba(fragments.triangle_id, fragments.bary, faces, attrs)
    V, D, P = attrs.shape[1], attrs.shape[2], B * H * W
    corners = pixel_corners(fragments.triangle_id, faces.long(), V).view(-1)  # 3P rows of the (B * V) table
    weights = fragments.bary.permute(3, 0, 1, 2).reshape(3, P).to(attrs.dtype)  # a view for rasterize's bary
    channels = attrs.reshape(B * V, D).unbind(1)  # strided views: 1-D gathers from them cost no more
    if torch.is_grad_enabled() and attrs.requires_grad:
        out = torch.stack([_weighted_corners(c.index_select(0, corners).view(3, P), weights) for c in channels])
    else:  # the same into one buffer, without the stacking copy
        out = torch.empty(D, P, dtype=attrs.dtype, device=attrs.device)
        for channel, target in zip(channels, out):
            _weighted_corners(channel.index_select(0, corners).view(3, P), weights, out=target)
    return out.view(D, B, H, W).permute(1, 2, 3, 0)


def _weighted_corners(values: torch.Tensor, weights: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_k weights[k] * values[k]`` of ``(3, P)`` corner values and barycentrics."""
    total = torch.mul(values[0], weights[0], out=out) if out is not None else values[0] * weights[0]
    return total.addcmul_(values[1], weights[1]).addcmul_(values[2], weights[2])


def exact_backend(device: torch.device | str = "cpu") -> str:
    """The fastest backend with exactly this module's conventions on ``device``: "numba" on CPU when it imports,
    else "torch" (never pytorch3d, whose edge and tie rules differ)."""
    return "numba" if torch.device(device).type == "cpu" and numba_kernels() is not None else "torch"


def resolve_backend(backend: str, device: torch.device | str = "cpu") -> str:
    """The backend that will run for tensors on ``device``: "auto" is "numba" on CPU when numba imports, else
    "pytorch3d" when it imports, else "torch". An explicit "numba" needs CPU tensors and numba."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    on_cpu = torch.device(device).type == "cpu"
    if backend == "numba":
        if not on_cpu:
            raise ValueError(f"backend='numba' rasterizes CPU tensors only, got tensors on {device}; "
                             "use 'torch' or 'auto'")
        if numba_kernels() is None:
            raise ImportError("backend='numba' was requested but numba cannot be imported; use 'torch' or 'auto'")
        return "numba"
    if backend == "auto" and on_cpu and numba_kernels() is not None:
        return "numba"
    if backend == "torch":
        return "torch"
    available = _pytorch3d_available()
    if backend == "pytorch3d" and not available:
        raise ImportError("backend='pytorch3d' was requested but pytorch3d cannot be imported; use 'torch' or 'auto'")
    return "pytorch3d" if available else "torch"


def cpu_kernels(*tensors: torch.Tensor, module: str = "raster_numba"):
    """The numba kernels' ``module`` (:func:`numba_kernels`) when every tensor is on the CPU, floating ones float32
    and none needs a gradient (and numba imports), else None: the one rule by which the CPU dispatchers of this
    package (here, :mod:`reenact.face3d.face`, :mod:`reenact.face3d.guidance`) pick numba over their torch code."""
    if any(t.device.type != "cpu" or (t.is_floating_point() and t.dtype != torch.float32) for t in tensors):
        return None
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return None
    return numba_kernels(module)


@functools.lru_cache(maxsize=None)
def numba_kernels(module: str = "raster_numba"):
    """A numba kernels' module of this package (:mod:`reenact.face3d.raster_numba` by default), or None where
    numba cannot be imported (asked once; "auto" and the other CPU dispatchers then run torch)."""
    try:
        return importlib.import_module(f"reenact.face3d.{module}")
    except Exception:  # ImportError, or a numba/llvmlite that does not load here
        return None


def _check_inputs(verts: torch.Tensor, faces: torch.Tensor) -> None:
    if verts.dim() != 3 or verts.shape[-1] != 3 or not verts.is_floating_point():
        raise ValueError(f"verts must be a floating (B, V, 3) tensor, got {verts.dtype} {tuple(verts.shape)}")
    if faces.dim() != 2 or faces.shape[-1] != 3 or faces.is_floating_point() or faces.dtype == torch.bool:
        raise ValueError(f"faces must be an integer (F, 3) tensor, got {faces.dtype} {tuple(faces.shape)}")
    if faces.device != verts.device:
        raise ValueError(f"faces are on {faces.device} but verts on {verts.device}")
    if faces.shape[0] >= 2**31:
        raise ValueError(f"at most 2**31 - 1 triangles are supported, got {faces.shape[0]}")
    if not math.isfinite(verts.sum(dtype=torch.float64)):  # one cheap reduction; NaN or inf corners have no raster
        raise ValueError("verts must be finite, got NaN or infinite coordinates")


# ----------------------------------------------------------------------------------------------------------------
# the optional pytorch3d backend


@functools.lru_cache(maxsize=None)
def _pytorch3d_available() -> bool:
    """Whether pytorch3d's rasterizer imports (asked once: a failed import costs file-system lookups every time)."""
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
