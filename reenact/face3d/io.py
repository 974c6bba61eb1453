"""Morphable-model files: Deep3DFaceRecon's ``BFM_model_front.mat``, the BFM09 conversion that makes it, and
:func:`load_morphable_model`, which names every model the suite can use (the procedural ones built by code, or a
BFM file found through :mod:`reenact.assets`).

Layout of the .mat files: see :mod:`reenact.face3d.morphable` (indices are 1-based in the files, 0-based here).
"""
from __future__ import annotations

import os
from array import array
from pathlib import Path

import numpy as np
import torch

from reenact.assets import asset_path
from reenact.face3d.morphable import NUM_EXP, NUM_ID, NUM_TEX, MorphableModel, recenter
from reenact.face3d.procedural import procedural_model


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
    if spec.startswith("procedural"):
        return procedural_model(spec.partition("-")[2] or "full")
    if spec == "bfm":
        return load_deep3d_mat(asset_path("bfm_front", assets))
    return load_deep3d_mat(asset_path("bfm_front", path=spec))
