"""The morphable model (paper Eq. 1) in Deep3DFaceRecon's ``BFM_model_front.mat`` layout.

Layout (as Deep3DFaceRecon stores it): bases are flat ``(3V, k)`` with x, y, z interleaved per vertex; the mean
shape is re-centred to zero mean; shapes are in decimetres, texture in [0, 255]. Triangles, per-vertex adjacent
triangles (``point_buf``, padded with -1) and the 68 landmark vertices are 0-based here (1-based in the .mat files).

``MorphableModel.shape(id, exp)`` is ``V_mean + alpha V_id + beta V_exp`` (before pose); posing, projection, normals
and SH shading live in :mod:`reenact.face3d.face`.
"""
from __future__ import annotations

import os
from array import array
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from reenact.face3d.coeffs import EXP, ID, TEX

NUM_ID, NUM_EXP, NUM_TEX = ID.stop - ID.start, EXP.stop - EXP.start, TEX.stop - TEX.start
NUM_LANDMARKS = 68


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

    def shape(self, id_coeffs: torch.Tensor, exp_coeffs: torch.Tensor) -> torch.Tensor:
        """Eq. 1 before pose: ``(..., 80)``, ``(..., 64)`` -> vertices ``(..., V, 3)``."""
        batch = torch.broadcast_shapes(id_coeffs.shape[:-1], exp_coeffs.shape[:-1])
        coeffs = torch.cat([id_coeffs.expand(*batch, -1), exp_coeffs.expand(*batch, -1)], -1)   # ... x 144
        flat = torch.addmm(self._mean_flat, coeffs.reshape(-1, coeffs.shape[-1]), self._shape_rows)  # N x 3V
        return flat.reshape(*batch, -1, 3)                                                       # ... x V x 3

    def albedo(self, tex_coeffs: torch.Tensor) -> torch.Tensor:
        """Per-vertex albedo ``(..., V, 3)`` in [0, 1] (Deep3D divides by 255) from ``(..., 80)``."""
        return (self.mean_tex + (tex_coeffs @ self._tex_rows).unflatten(-1, (-1, 3))) / 255.0

    def vertex_normals(self, verts: torch.Tensor) -> torch.Tensor:
        """Unit vertex normals ``(..., V, 3)``: the normalised sum of adjacent unit face normals (as Deep3D)."""
        corners = verts[..., self.triangles.reshape(-1), :].unflatten(-2, (-1, 3))       # ... x F x 3 x 3
        v0, v1, v2 = corners.unbind(-2)
        face_normals = F.normalize(torch.linalg.cross(v0 - v1, v1 - v2, dim=-1), dim=-1)
        padded = torch.cat([face_normals, torch.zeros_like(face_normals[..., :1, :])], dim=-2)  # index -1 -> zero
        return F.normalize(padded[..., self.vertex_triangles, :].sum(-2), dim=-1)

    def landmarks(self, verts: torch.Tensor) -> torch.Tensor:
        """The 68 landmark points of ``verts (..., V, D)`` -> ``(..., 68, D)``."""
        return verts[..., self.landmark_indices, :]


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


# ---------------------------------------------------------------- Deep3DFaceRecon's .mat layout
def load_deep3d_mat(path: str | os.PathLike, recentre: bool = True) -> MorphableModel:
    """Load ``BFM_model_front.mat`` (Deep3DFaceRecon's converted BFM09)."""
    from scipy.io import loadmat

    m = loadmat(str(path))
    mean = recenter(m["meanshape"]) if recentre else np.asarray(m["meanshape"], np.float32).reshape(-1, 3)
    as_t = lambda a, dt=torch.float32: torch.as_tensor(np.ascontiguousarray(a), dtype=dt)  # noqa: E731
    return MorphableModel(
        mean_shape=as_t(mean), id_base=as_t(m["idBase"]), exp_base=as_t(m["exBase"]),
        mean_tex=as_t(np.asarray(m["meantex"]).reshape(-1, 3)), tex_base=as_t(m["texBase"]),
        triangles=as_t(m["tri"].astype(np.int64) - 1, torch.int64),
        vertex_triangles=as_t(m["point_buf"].astype(np.int64) - 1, torch.int64),
        landmark_indices=as_t(np.squeeze(m["keypoints"]).astype(np.int64) - 1, torch.int64),
        name=str(path))


def read_exp_pca(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read Guo et al.'s ``Exp_Pca.bin``: int32 k, then float32 mean (3n) and basis (k x 3n).

    Returns (mean ``(3n,)``, basis ``(3n, k)``). The vertex count n follows from the file size (53,215 for the
    released file).
    """
    size = Path(path).stat().st_size
    with open(path, "rb") as f:
        dim = array("i")
        dim.fromfile(f, 1)
        k = dim[0]
        n3 = (size - 4) // 4 // (1 + k)
        if 4 + 4 * n3 * (1 + k) != size or n3 % 3:
            raise ValueError(f"{path}: size {size} is not int32 + float32 x 3n x (1 + {k})")
        data = np.fromfile(f, dtype="<f4", count=n3 * (1 + k))
    return data[:n3], data[n3:].reshape(k, n3).T


def convert_bfm09(bfm_dir: str | os.PathLike, out_path: str | os.PathLike | None = None,
                  morphable_mat: str | os.PathLike | None = None, exp_bin: str | os.PathLike | None = None) -> dict:
    """Convert the official BFM09 ``01_MorphableModel.mat`` + ``Exp_Pca.bin`` to ``BFM_model_front.mat``.

    ``bfm_dir`` must also hold Deep3DFaceRecon's helper files ``BFM_front_idx.mat``, ``BFM_exp_idx.mat``,
    ``facemodel_info.mat`` and ``std_exp.txt``. Follows Deep3DFaceRecon's conversion: bases scaled by their
    eigenvalues (standard deviations for the expression basis), shapes divided by 1e5 (to decimetres), the first
    80 / 64 / 80 components kept, vertices cropped to the 35,709-vertex front face.
    Returns the converted arrays and writes them to ``out_path`` when given.
    """
    from scipy.io import loadmat, savemat

    bfm_dir = Path(bfm_dir)
    bfm = loadmat(str(morphable_mat or bfm_dir / "01_MorphableModel.mat"))
    _, exp_pc = read_exp_pca(exp_bin or bfm_dir / "Exp_Pca.bin")
    exp_std = np.loadtxt(bfm_dir / "std_exp.txt")
    front_of_exp = loadmat(str(bfm_dir / "BFM_front_idx.mat"))["idx"].astype(np.int64).ravel() - 1
    exp_of_full = loadmat(str(bfm_dir / "BFM_exp_idx.mat"))["trimIndex"].astype(np.int64).ravel() - 1
    front_of_full = exp_of_full[front_of_exp]

    def per_vertex(basis: np.ndarray, keep: np.ndarray) -> np.ndarray:
        k = basis.shape[1]
        return basis.reshape(-1, 3, k)[keep].reshape(-1, k)   # (3V_all, k) -> V_all x 3 x k -> (3V, k)

    sd = lambda key: np.reshape(bfm[key], [1, -1])  # noqa: E731
    id_base = per_vertex((bfm["shapePC"] * sd("shapeEV"))[:, :NUM_ID] / 1e5, front_of_full)
    exp_base = per_vertex((exp_pc * exp_std.reshape(1, -1)[:, :exp_pc.shape[1]])[:, :NUM_EXP] / 1e5, front_of_exp)
    tex_base = per_vertex((bfm["texPC"] * sd("texEV"))[:, :NUM_TEX], front_of_full)
    mean_shape = (np.reshape(bfm["shapeMU"], [-1, 3]) / 1e5)[front_of_full].reshape(1, -1)
    mean_tex = np.reshape(bfm["texMU"], [-1, 3])[front_of_full].reshape(1, -1)
    info = loadmat(str(bfm_dir / "facemodel_info.mat"))
    out = {"meanshape": mean_shape, "meantex": mean_tex, "idBase": id_base, "exBase": exp_base, "texBase": tex_base,
           **{k: info[k] for k in ("tri", "point_buf", "tri_mask2", "keypoints", "frontmask2_idx", "skinmask")
              if k in info}}
    if out_path is not None:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        savemat(str(out_path), out)
    return out


def load_morphable_model(spec: str = "procedural-full", assets: str | None = None) -> MorphableModel:
    """The model named by ``spec``: ``procedural-full`` / ``procedural-small`` (built by code), ``bfm`` (the asset
    folder's ``BFM/BFM_model_front.mat``), or a path to such a .mat file."""
    from reenact.assets import asset_path
    from reenact.face3d.procedural import procedural_model

    if spec.startswith("procedural"):
        return procedural_model(spec.partition("-")[2] or "full")
    if spec == "bfm":
        return load_deep3d_mat(asset_path("bfm_front", assets))
    return load_deep3d_mat(asset_path("bfm_front", path=spec))
