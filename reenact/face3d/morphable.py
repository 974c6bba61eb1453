"""The morphable model (paper Eq. 1) in Deep3DFaceRecon's ``BFM_model_front.mat`` layout.

Layout (as Deep3DFaceRecon stores it): bases are flat ``(3V, k)`` with x, y, z interleaved per vertex; the mean
shape is re-centred to zero mean; shapes are in decimetres, texture in [0, 255]. Triangles, per-vertex adjacent
triangles (``point_buf``, padded with -1) and the 68 landmark vertices are 0-based here (1-based in the .mat files).

``MorphableModel.shape(id, exp)`` is ``V_mean + alpha V_id + beta V_exp`` (before pose); posing, projection, normals
and SH shading live in :mod:`reenact.face3d.face`; reading and converting model files in :mod:`reenact.face3d.io`.
"""
from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
import torch.nn.functional as F

from reenact.face3d.coeffs import EXP, ID, TEX

NUM_ID, NUM_EXP, NUM_TEX = ID.stop - ID.start, EXP.stop - EXP.start, TEX.stop - TEX.start
NUM_LANDMARKS = 68
#: Products with the bases of at least this many coefficient rows go through oneDNN (:meth:`MorphableModel.
#: _rows_product`); fewer rows are memory-bound, and plain sgemm reads the bases faster there (batch 1 of guidance).
ONEDNN_MIN_ROWS = 4


@dataclass(frozen=True, eq=False)
class MorphableModel:
    """Linear shape/expression/albedo bases on one triangle mesh.

    Fields (V vertices, F triangles):
        mean_shape: ``(V, 3)`` float, re-centred, decimetres.
        id_base: ``(3V, 80)``; exp_base: ``(3V, 64)``; tex_base: ``(3V, 80)`` (x, y, z / r, g, b interleaved).
        mean_tex: ``(V, 3)`` in [0, 255].
        triangles: ``(F, 3)`` int64, 0-based, counter-clockwise seen from the front (normals point outwards).
        vertex_triangles: ``(V, K)`` int64 adjacent triangles per vertex, -1 padded (Deep3D's ``point_buf``).
        landmark_indices: ``(68,)`` int64 vertex ids of the iBUG 68 landmarks.
        name: where the model came from (``procedural-full``, ``BFM09``, a file path).
        landmark_offsets: ``(68, 3)`` float, decimetres in the model frame: where a 2D landmark detector (dlib)
            puts its points relative to the landmark vertices, e.g. deeper than the nose's surface. Only the
            landmark fit uses them (:class:`reenact.faces.landmark_fit.FitConfig` ``landmark_offsets``); the
            model's landmarks (:meth:`landmarks`, ``project_landmarks``) stay the vertices. None: zeros.
    """

    mean_shape: torch.Tensor
    id_base: torch.Tensor
    exp_base: torch.Tensor
    mean_tex: torch.Tensor
    tex_base: torch.Tensor
    triangles: torch.Tensor
    vertex_triangles: torch.Tensor
    landmark_indices: torch.Tensor
    name: str = "unnamed"
    landmark_offsets: torch.Tensor | None = None

    def __post_init__(self) -> None:
        # Keep the bases in one (k, 3V) row-major buffer [id; exp] and (80, 3V) for texture: Eq. 1 is then one
        # GEMM over contiguous rows, about twice as fast as reading the (3V, k) layout. The public fields stay
        # (3V, k) views of those buffers, in Deep3D's layout.
        shape_rows = torch.cat([self.id_base.T, self.exp_base.T]).contiguous()        # 144 x 3V
        tex_rows = self.tex_base.T.contiguous()                                       # 80 x 3V
        object.__setattr__(self, "id_base", shape_rows[:NUM_ID].T)
        object.__setattr__(self, "exp_base", shape_rows[NUM_ID:].T)
        object.__setattr__(self, "tex_base", tex_rows.T)
        object.__setattr__(self, "_shape_rows", shape_rows)
        object.__setattr__(self, "_tex_rows", tex_rows)
        object.__setattr__(self, "_mean_flat", self.mean_shape.reshape(1, -1).contiguous())
        object.__setattr__(self, "_mean_tex_flat", self.mean_tex.reshape(1, -1).contiguous())
        # point_buf with its -1 padding pointing at one zero normal after the last triangle (index_select needs it)
        padding = torch.full_like(self.vertex_triangles, self.triangles.shape[0])
        object.__setattr__(self, "_adjacent", torch.where(self.vertex_triangles < 0, padding, self.vertex_triangles))

    @property
    def adjacent(self) -> torch.Tensor:
        """``(V, K)`` int64 adjacent triangles per vertex with the -1 padding replaced by ``F`` (one past the last
        triangle, where a zero normal goes)."""
        return self._adjacent

    @property
    def num_vertices(self) -> int:
        return self.mean_shape.shape[0]

    @property
    def num_triangles(self) -> int:
        return self.triangles.shape[0]

    @property
    def device(self) -> torch.device:
        return self.mean_shape.device

    def to(self, device: torch.device | str) -> "MorphableModel":
        if torch.device(device) == self.device:
            return self
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)
                                if isinstance(getattr(self, f.name), torch.Tensor)})

    def _rows_product(self, coeffs: torch.Tensor, name: str, start: int = 0, stop: int | None = None,
                      bias: torch.Tensor | None = None) -> torch.Tensor:
        """``coeffs (n, k) @ rows[start:stop]`` (+ ``bias (1, 3V)``) of the basis buffer ``name`` ("_shape_rows" or
        "_tex_rows"). Float32 CPU products of at least ``ONEDNN_MIN_ROWS`` rows without autograd go through oneDNN,
        with the basis reordered once into its blocked layout (:func:`_packed_rows`): 1.2-1.6x faster than MKL's
        small-row sgemm, which reads the ``(k, 3V)`` rows at ~24 GFLOP/s; the same values to float32 rounding.
        Elsewhere ``torch.addmm``."""
        rows = getattr(self, name)[start:stop]
        packed = _packed_rows(self, name, start, stop) if _packable(coeffs, rows) else None
        if packed is not None:
            try:
                return torch.ops.mkldnn._linear_pointwise(coeffs.contiguous(), packed,
                                                          None if bias is None else bias[0], "none", [], "")
            except RuntimeError:  # a private op whose call oneDNN refuses on this CPU or build: never again here
                self.__dict__["_packed"][(name, start, stop)] = None
        return coeffs @ rows if bias is None else torch.addmm(bias, coeffs, rows)

    def shape(self, id_coeffs: torch.Tensor, exp_coeffs: torch.Tensor) -> torch.Tensor:
        """Eq. 1 before pose: ``(..., 80)``, ``(..., 64)`` (broadcastable) -> vertices ``(..., V, 3)``.

        An identity broadcast over several expressions (e.g. ``(1, B, 80)`` with ``(2, B, 64)``: a source and its
        target) has ``V_mean + alpha V_id`` computed once per identity row (:meth:`identity_shape`), then each
        expression part added to it (:meth:`add_expression`; the same values to float32 rounding). On one CPU
        thread that is also faster than one product over all 144 basis rows at every batch size (a source and its
        target at batch 8: 4.7 ms instead of 8.4).
        """
        batch = torch.broadcast_shapes(id_coeffs.shape[:-1], exp_coeffs.shape[:-1])
        if id_coeffs.shape[:-1].numel() < batch.numel():
            return self.add_expression(self.identity_shape(id_coeffs), exp_coeffs)
        coeffs = torch.cat([id_coeffs.expand(*batch, -1), exp_coeffs.expand(*batch, -1)], -1)   # ... x 144
        flat = self._rows_product(coeffs.reshape(-1, coeffs.shape[-1]), "_shape_rows", bias=self._mean_flat)  # N x 3V
        return flat.reshape(*batch, -1, 3)                                                       # ... x V x 3

    def identity_shape(self, id_coeffs: torch.Tensor) -> torch.Tensor:
        """The identity part of Eq. 1, ``V_mean + alpha V_id``: ``(..., 80)`` -> ``(..., V, 3)``."""
        identity = self._rows_product(id_coeffs.reshape(-1, NUM_ID), "_shape_rows", 0, NUM_ID, self._mean_flat)
        return identity.view(*id_coeffs.shape[:-1], -1, 3)

    def add_expression(self, identity: torch.Tensor, exp_coeffs: torch.Tensor) -> torch.Tensor:
        """Eq. 1 from its identity part ``identity (..., V, 3)`` (:meth:`identity_shape`) and ``(..., 64)``
        expressions (broadcastable): ``identity + beta V_exp`` ``(..., V, 3)`` (``identity`` is not modified)."""
        batch = torch.broadcast_shapes(identity.shape[:-2], exp_coeffs.shape[:-1])
        expression = self._rows_product(exp_coeffs.expand(*batch, -1).reshape(-1, NUM_EXP), "_shape_rows", NUM_ID)
        flat_identity = identity.reshape(*identity.shape[:-2], -1)                               # ... x 3V
        return expression.view(*batch, -1).add_(flat_identity).view(*batch, -1, 3)              # ... x V x 3

    def albedo(self, tex_coeffs: torch.Tensor) -> torch.Tensor:
        """Per-vertex albedo ``(..., V, 3)`` in [0, 1] (Deep3D divides by 255) from ``(..., 80)``."""
        flat = self._rows_product(tex_coeffs.reshape(-1, NUM_TEX), "_tex_rows", bias=self._mean_tex_flat)
        return flat.div_(255.0).view(*tex_coeffs.shape[:-1], -1, 3)

    def vertex_normals(self, verts: torch.Tensor, vertices: torch.Tensor | None = None) -> torch.Tensor:
        """Unit vertex normals ``(..., V, 3)``: the normalised sum of adjacent unit face normals (as Deep3D).

        ``vertices`` ``(n,)`` int64 picks the vertices to compute (``(..., n, 3)``, the same values as the full
        result's rows): each vertex gathers its adjacent triangles (``vertex_triangles``), no scatter-adds.
        """
        corners = verts.index_select(-2, self.triangles.reshape(-1)).unflatten(-2, (-1, 3))   # ... x F x 3 x 3
        v0, v1, v2 = corners.unbind(-2)
        face_normals = F.normalize(torch.linalg.cross(v0 - v1, v1 - v2, dim=-1), dim=-1)
        padded = torch.cat([face_normals, torch.zeros_like(face_normals[..., :1, :])], dim=-2)  # index -1 -> zero
        adjacent = self._adjacent if vertices is None else self._adjacent.index_select(0, vertices)
        picked = padded.index_select(-2, adjacent.reshape(-1)).unflatten(-2, adjacent.shape)   # ... x n x K x 3
        return F.normalize(picked.sum(-2), dim=-1)

    def landmarks(self, verts: torch.Tensor) -> torch.Tensor:
        """The 68 landmark points of ``verts (..., V, D)`` -> ``(..., 68, D)``."""
        return verts[..., self.landmark_indices, :]


def vertex_rows(basis: torch.Tensor, vertices: torch.Tensor) -> torch.Tensor:
    """The rows of ``vertices`` (int64, any shape, flattened) of a Deep3D-layout ``(3V, k)`` basis: ``(3n, k)``,
    x, y, z of each vertex in turn."""
    return basis[(3 * vertices.reshape(-1, 1) + torch.arange(3, device=vertices.device)).reshape(-1)]


# ---------------------------------------------------------------- the identity parts, cached
class IdentityCache:
    """Eq. 1's identity parts of ``model`` for a worker that meets the same identities again: the identity shape
    ``V_mean + alpha V_id`` (:meth:`MorphableModel.identity_shape`) and the albedo (:meth:`MorphableModel.albedo`),
    kept in a least-recently-used table keyed by the exact bytes of the coefficient rows, at most ``max_bytes`` of
    tensors (``max_bytes=0`` keeps nothing: every call computes).

    Each call first reduces its ``(B, 80)`` rows to the distinct ones (by bytes, in order of first appearance), then
    finds or computes the parts of exactly that block of rows, and spreads them back to the B rows. A cached block
    was computed by the same product of the same rows, so results are bit-identical with or without the cache.
    What it is for: guidance in protocol order, 20 pairs per source video whose shared-identity fit gives every
    frame one alpha and one delta; the identity and albedo bases (68 of the 96 MB read per pair) are then read once
    per video. The returned tensors may be the cached ones: read them, do not modify them.
    """

    def __init__(self, model: MorphableModel, max_bytes: int = 64 << 20):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.model, self.max_bytes = model, max_bytes
        self.hits = self.misses = 0
        self._table: OrderedDict[tuple[str, bytes], torch.Tensor] = OrderedDict()
        self._bytes = 0

    def identity_shape(self, id_coeffs: torch.Tensor) -> torch.Tensor:
        """``V_mean + alpha V_id`` ``(B, V, 3)`` of ``(B, 80)`` identity coefficients."""
        return self._parts("identity", id_coeffs, self.model.identity_shape)

    def albedo(self, tex_coeffs: torch.Tensor) -> torch.Tensor:
        """The albedo ``(B, V, 3)`` of ``(B, 80)`` texture coefficients."""
        return self._parts("albedo", tex_coeffs, self.model.albedo)

    def _parts(self, kind: str, coeffs: torch.Tensor, compute) -> torch.Tensor:
        if coeffs.dim() != 2:
            raise ValueError(f"{kind} coefficients must be (B, k), got {tuple(coeffs.shape)}")
        distinct, spread = _distinct_rows(coeffs)
        if coeffs.requires_grad and torch.is_grad_enabled():     # a graph is never cached
            parts = compute(distinct)
        else:
            parts = self._find_or_compute((kind, distinct.detach().cpu().numpy().tobytes()), distinct, compute)
        return parts if spread is None else parts.index_select(0, spread.to(parts.device))

    def _find_or_compute(self, key: tuple[str, bytes], distinct: torch.Tensor, compute) -> torch.Tensor:
        if key in self._table:
            self.hits += 1
            self._table.move_to_end(key)
            return self._table[key]
        self.misses += 1
        parts = compute(distinct)
        size = parts.numel() * parts.element_size()
        if size <= self.max_bytes:
            self._table[key] = parts
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, dropped = self._table.popitem(last=False)
                self._bytes -= dropped.numel() * dropped.element_size()
        return parts


def _distinct_rows(coeffs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The distinct rows of ``coeffs (B, k)`` by their bytes, in order of first appearance, as a new contiguous
    ``(n, k)`` tensor (so that every block of the same rows is the same product's input, whatever view the rows came
    in), and the index ``(B,)`` of each row among them (None when every row is distinct)."""
    first: dict[bytes, int] = {}
    firsts, index = [], []
    for i, row in enumerate(coeffs.detach().cpu().contiguous().numpy()):
        k = first.setdefault(row.tobytes(), len(first))
        if k == len(firsts):
            firsts.append(i)
        index.append(k)
    distinct = coeffs.index_select(0, torch.tensor(firsts, dtype=torch.int64, device=coeffs.device))
    return distinct, None if len(firsts) == len(index) else torch.tensor(index, dtype=torch.int64)


# ---------------------------------------------------------------- oneDNN products with the bases
def _packable(coeffs: torch.Tensor, rows: torch.Tensor) -> bool:
    """Whether :meth:`MorphableModel._rows_product` may use oneDNN: float32 CPU tensors, no autograd, and torch's
    mkldnn ops present (x86 builds)."""
    return (coeffs.device.type == "cpu" and rows.device.type == "cpu" and coeffs.dtype == rows.dtype == torch.float32
            and coeffs.dim() == 2 and coeffs.shape[0] >= ONEDNN_MIN_ROWS
            and not (torch.is_grad_enabled() and (coeffs.requires_grad or rows.requires_grad))
            and _onednn_linear_available())


@functools.lru_cache(maxsize=None)
def _onednn_linear_available() -> bool:
    try:
        ops = torch.ops.mkldnn
        return torch.backends.mkldnn.is_available() and all(
            hasattr(ops, op) for op in ("_reorder_linear_weight", "_linear_pointwise"))
    except Exception:  # a build without mkldnn
        return False


def _packed_rows(model: MorphableModel, name: str, start: int, stop: int | None) -> torch.Tensor | None:
    """``getattr(model, name)[start:stop]`` as a oneDNN-blocked linear weight, made once per model and kept on it
    (another copy of those bases: 62 MB + 34 MB for the full-size model); None where oneDNN refuses."""
    cache = model.__dict__.setdefault("_packed", {})
    key = (name, start, stop)
    if key not in cache:
        weight = getattr(model, name)[start:stop].T.contiguous()                        # 3V x k (out x in)
        try:
            cache[key] = torch.ops.mkldnn._reorder_linear_weight(weight, 16)
        except Exception:  # oneDNN refused (an unsupported CPU or build): the plain product is used
            cache[key] = None
    return cache[key]


# ---------------------------------------------------------------- derived topology
def adjacent_triangles(triangles: np.ndarray, num_vertices: int, width: int = 8) -> np.ndarray:
    """Per-vertex adjacent triangle ids ``(V, width)``, -1 padded (extra neighbours beyond ``width`` dropped)."""
    tri = np.asarray(triangles, dtype=np.int64)
    vert = tri.reshape(-1)
    tri_id = np.repeat(np.arange(len(tri)), 3)
    order = np.argsort(vert, kind="stable")
    vert, tri_id = vert[order], tri_id[order]
    first = np.searchsorted(vert, np.arange(num_vertices))
    rank = np.arange(len(vert)) - first[vert]
    out = np.full((num_vertices, width), -1, dtype=np.int64)
    keep = rank < width
    out[vert[keep], rank[keep]] = tri_id[keep]
    return out


def recenter(mean_shape: np.ndarray) -> np.ndarray:
    shape = np.asarray(mean_shape, dtype=np.float32).reshape(-1, 3)
    return shape - shape.mean(0, keepdims=True)
