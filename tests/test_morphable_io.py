"""BFM09 conversion and the BFM_model_front.mat loader, on small files written in the official formats."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy.io import savemat

from reenact.assets import MissingAssetError
from reenact.face3d.io import convert_bfm09, load_deep3d_mat, load_morphable_model, read_exp_pca
from reenact.face3d.morphable import adjacent_triangles

N_FULL, N_EXP, N_FRONT = 30, 25, 20


@pytest.fixture(scope="module")
def fake_bfm(tmp_path_factory):
    """A miniature BFM09 folder: 01_MorphableModel.mat, Exp_Pca.bin and Deep3D's helper files."""
    d = tmp_path_factory.mktemp("BFM")
    rng = np.random.default_rng(0)
    bfm = {"shapePC": rng.normal(size=(3 * N_FULL, 199)), "shapeEV": rng.uniform(1, 2, (199, 1)),
           "shapeMU": rng.normal(size=(3 * N_FULL, 1)) * 1e4, "texPC": rng.normal(size=(3 * N_FULL, 199)),
           "texEV": rng.uniform(1, 2, (199, 1)), "texMU": rng.uniform(0, 255, (3 * N_FULL, 1))}
    savemat(d / "01_MorphableModel.mat", bfm)
    exp_mu, exp_pc = rng.normal(size=3 * N_EXP).astype("<f4"), rng.normal(size=(79, 3 * N_EXP)).astype("<f4")
    with open(d / "Exp_Pca.bin", "wb") as f:
        np.array([79], "<i4").tofile(f)
        exp_mu.tofile(f)
        exp_pc.tofile(f)
    std = rng.uniform(0.5, 1.5, 79)
    np.savetxt(d / "std_exp.txt", std)
    trim = rng.choice(N_FULL, N_EXP, replace=False)          # exp-basis vertices within the full BFM
    front = rng.choice(N_EXP, N_FRONT, replace=False)        # front-face vertices within the exp basis
    savemat(d / "BFM_exp_idx.mat", {"trimIndex": (trim + 1)[:, None].astype(np.int32)})
    savemat(d / "BFM_front_idx.mat", {"idx": (front + 1)[:, None].astype(np.int32)})
    tri = np.array([[i, i + 1, i + 2] for i in range(N_FRONT - 2)])
    info = {"tri": tri + 1, "keypoints": (np.arange(68) % N_FRONT + 1)[None],
            "point_buf": adjacent_triangles(tri, N_FRONT) + 1, "tri_mask2": tri[:3] + 1,
            "frontmask2_idx": np.arange(1, 6)[:, None], "skinmask": np.ones((1, N_FRONT))}
    savemat(d / "facemodel_info.mat", info)
    return d, bfm, exp_pc, std, trim, front, tri


def test_read_exp_pca_infers_vertex_count(fake_bfm):
    d, _, exp_pc, *_ = fake_bfm
    mean, basis = read_exp_pca(d / "Exp_Pca.bin")
    assert mean.shape == (3 * N_EXP,) and basis.shape == (3 * N_EXP, 79)
    assert np.array_equal(basis, exp_pc.T)


def test_convert_bfm09_matches_vertex_by_vertex_reference(fake_bfm, tmp_path):
    d, bfm, exp_pc, std, trim, front, tri = fake_bfm
    out = tmp_path / "BFM_model_front.mat"
    convert_bfm09(d, out)
    model = load_deep3d_mat(out, recentre=False)
    for j in range(N_FRONT):                       # brute force, one vertex and coordinate at a time
        full = trim[front[j]]
        for c in range(3):
            assert np.isclose(model.mean_shape[j, c], bfm["shapeMU"][3 * full + c, 0] / 1e5, rtol=1e-6)
            assert np.allclose(model.id_base[3 * j + c], bfm["shapePC"][3 * full + c, :80] * bfm["shapeEV"][:80, 0] / 1e5,
                               rtol=1e-5)
            assert np.allclose(model.tex_base[3 * j + c], bfm["texPC"][3 * full + c, :80] * bfm["texEV"][:80, 0], rtol=1e-5)
            assert np.allclose(model.exp_base[3 * j + c], exp_pc[:64, 3 * front[j] + c] * std[:64] / 1e5, rtol=1e-5,
                               atol=1e-12)
            assert np.isclose(model.mean_tex[j, c], bfm["texMU"][3 * full + c, 0], rtol=1e-6)
    assert torch.equal(model.triangles, torch.from_numpy(tri))
    assert torch.equal(model.vertex_triangles, torch.from_numpy(adjacent_triangles(tri, N_FRONT)))
    assert torch.equal(model.landmark_indices, torch.arange(68) % N_FRONT)


def test_loader_recentres_and_computes_eq1(fake_bfm, tmp_path):
    d = fake_bfm[0]
    out = tmp_path / "front.mat"
    convert_bfm09(d, out)
    raw, model = load_deep3d_mat(out, recentre=False), load_morphable_model(str(out))
    assert torch.allclose(model.mean_shape.mean(0), torch.zeros(3), atol=1e-6)
    alpha, beta = torch.randn(80), torch.randn(64)
    expected = (model.mean_shape.reshape(-1) + model.id_base @ alpha + model.exp_base @ beta).reshape(-1, 3)
    assert torch.allclose(model.shape(alpha, beta), expected, atol=1e-5)
    assert torch.allclose(raw.mean_shape - raw.mean_shape.mean(0), model.mean_shape, atol=1e-6)


def test_missing_bfm_is_a_clear_error(tmp_path):
    with pytest.raises(MissingAssetError, match="BFM_model_front.mat"):
        load_morphable_model("bfm", assets=str(tmp_path))


def test_adjacent_triangles_matches_brute_force():
    rng = np.random.default_rng(3)
    tri = np.stack([rng.permutation(12)[:3] for _ in range(40)])
    got = adjacent_triangles(tri, 12, width=40)
    for v in range(12):
        assert sorted(t for t in got[v] if t >= 0) == [t for t in range(40) if v in tri[t]]
    capped = adjacent_triangles(tri, 12, width=2)               # extra neighbours are dropped, never wrong
    assert all(t in [u for u in range(40) if v in tri[u]] for v in range(12) for t in capped[v] if t >= 0)


def test_eq1_and_albedo_products_match_float64_on_every_path(monkeypatch):
    """Eq. 1 (one product, and the identity shared by a source and its target) and the albedo against float64, with
    the oneDNN-blocked bases (float32 CPU without autograd, where torch has oneDNN) and with the plain product."""
    from reenact.face3d import morphable
    from reenact.face3d.procedural import procedural_model

    model = procedural_model("small")
    monkeypatch.setattr(morphable, "ONEDNN_MIN_ROWS", 1)                  # these products have 3 and 6 rows
    g = torch.Generator().manual_seed(1)
    alpha, beta, tex = torch.randn(3, 80, generator=g), torch.randn(2, 3, 64, generator=g), torch.randn(3, 80, generator=g)
    mean, id_base, exp_base = model.mean_shape.double().reshape(-1), model.id_base.double(), model.exp_base.double()
    expected = (mean + alpha.double() @ id_base.T + beta.double() @ exp_base.T).reshape(2, 3, -1, 3)
    expected_albedo = (model.mean_tex.double() + (tex.double() @ model.tex_base.double().T).reshape(3, -1, 3)) / 255
    for packable in (True, False):
        if not packable:
            monkeypatch.setattr(morphable, "_packable", lambda *args: False)
        one_product = model.shape(alpha.expand(2, 3, 80).contiguous(), beta)
        assert torch.allclose(one_product.double(), expected, atol=2e-5)
        assert torch.allclose(model.shape(alpha[None], beta).double(), expected, atol=2e-5)       # shared identity
        assert torch.allclose(model.albedo(tex).double(), expected_albedo, atol=1e-5)
    if morphable._onednn_linear_available():
        assert any(p is not None for p in model._packed.values())                             # oneDNN really ran


def test_a_refused_onednn_product_falls_back_to_addmm(monkeypatch):
    """When the private oneDNN op raises at call time, the product is the plain one and oneDNN is not tried again."""
    from reenact.face3d import morphable
    from reenact.face3d.procedural import procedural_model

    if not morphable._onednn_linear_available():
        pytest.skip("this torch build has no oneDNN linear ops, so there is nothing to refuse")
    model = dataclasses.replace(procedural_model("small"))      # a copy: no oneDNN bases packed by other tests
    monkeypatch.setattr(morphable, "ONEDNN_MIN_ROWS", 1)
    tex = torch.randn(3, 80, generator=torch.Generator().manual_seed(2))
    plain = (model.mean_tex + (tex @ model._tex_rows).unflatten(-1, (-1, 3))) / 255.0
    calls = []

    def refuse(*args):
        calls.append(1)
        raise RuntimeError("oneDNN refused")

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", refuse)
    for _ in range(2):
        assert torch.allclose(model.albedo(tex), plain, atol=1e-6)
    assert len(calls) == 1 and all(p is None for p in model._packed.values())
