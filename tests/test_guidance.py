"""F_c (Eq. 3), O_c (Eq. 4) and I_r against geometry computed independently of the rasterizer's interpolation."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from reenact.face3d.camera import PerspectiveCamera, pixel_grid
from reenact.face3d.coeffs import ANGLE, EXP, GAMMA, ID, TEX, TRANS
from reenact.face3d.guidance import compute_guidance, warp_with_flow
from reenact.face3d.procedural import procedural_model
from reenact.face3d.raster import RasterSettings, interpolate, rasterize
from reenact.face3d.transforms import euler_to_matrix

SIZE = 128


@pytest.fixture(scope="module")
def model():
    return procedural_model("small")


def coeffs(yaw=0.0, pitch=0.0, exp_seed=None, seed=0, ambient_only=False, batch=1):
    g = torch.Generator().manual_seed(seed)
    v = torch.zeros(batch, 257)
    v[:, ID] = torch.randn(batch, 80, generator=g) * 0.5
    v[:, TEX] = torch.randn(batch, 80, generator=g) * 0.5
    v[:, GAMMA] = torch.randn(batch, 27, generator=g) * (0.0 if ambient_only else 0.1)
    v[:, GAMMA.start::9] = 0.3                                      # band 0 of R, G, B: ambient light
    if exp_seed is not None:
        v[:, EXP] = torch.randn(batch, 64, generator=torch.Generator().manual_seed(exp_seed)) * 0.8
    v[:, ANGLE] = torch.tensor([pitch, yaw, 0.0])
    v[:, TRANS] = torch.tensor([0.0, 0.0, -1.5])
    return v


def eroded(mask: torch.Tensor, r: int = 1) -> torch.Tensor:
    """Pixels whose (2r+1)^2 neighbourhood is inside ``mask (B, 1, H, W)``."""
    return -F.max_pool2d(-mask, 2 * r + 1, 1, r) > 0.5


def test_identical_source_and_driving_gives_zero_flow_and_full_visibility(model):
    v = coeffs(yaw=0.2, exp_seed=1)
    g = compute_guidance(model, v, v, SIZE)
    inside = g.face_mask.bool()
    assert inside.sum() > 0.3 * SIZE * SIZE
    assert g.flow.abs().max() < 1e-3                                       # pixels
    assert (g.occlusion <= g.face_mask).all() and g.occlusion[inside].mean() > 0.995
    assert torch.allclose(g.render, g.source_render, atol=1e-5)


def test_pure_yaw_flow_matches_analytic_reprojection(model):
    """Back-project each target pixel with its depth, undo the target pose, apply the source pose, project."""
    src, drv = coeffs(yaw=0.0), coeffs(yaw=0.35)
    g = compute_guidance(model, src, drv, SIZE)
    cam = PerspectiveCamera.deep3d(SIZE)
    # target depth per pixel from an independent raster of the target mesh
    verts_t = model.shape(src[:, ID], drv[:, EXP]) @ euler_to_matrix(drv[:, ANGLE]).transpose(-1, -2) + drv[:, TRANS]
    frag = rasterize(cam.project(verts_t), model.triangles, RasterSettings(image_size=(SIZE, SIZE)))
    pix = torch.cat([pixel_grid(SIZE, SIZE)[None], frag.depth[..., None]], -1)        # 1 x H x W x 3
    world = cam.unproject(pix)
    rel = torch.linalg.inv(euler_to_matrix(drv[:, ANGLE]))[:, None] @ (world - drv[:, TRANS][:, None, None])[..., None]
    src_pts = (euler_to_matrix(src[:, ANGLE])[:, None] @ rel)[..., 0] + src[:, TRANS][:, None, None]
    expected = cam.project(src_pts)[..., :2] - pixel_grid(SIZE, SIZE)
    inside = eroded(g.face_mask, 1)[:, 0]
    err = (g.flow.permute(0, 2, 3, 1) - expected).norm(dim=-1)[inside]
    assert err.median() < 0.05 and torch.quantile(err, 0.99) < 0.3, (err.median(), err.max())
    assert g.flow[:, 0][inside].abs().mean() > 1.0                        # the yaw really moves pixels


def test_sampling_source_render_with_flow_reproduces_target_render(model):
    """With ambient-only light the shading is pose-invariant, so I_s(G + F_c) = I_r where O_c = 1."""
    src = coeffs(yaw=-0.25, pitch=0.1, exp_seed=2, ambient_only=True)
    drv = coeffs(yaw=0.2, pitch=-0.05, exp_seed=3, seed=5)
    g = compute_guidance(model, src, drv, SIZE)
    warped = warp_with_flow(g.source_render, g.flow)
    valid = eroded(g.occlusion, 1) & eroded(g.face_mask, 1)
    valid = valid & eroded(warp_with_flow(g.source_mask, g.flow).gt(0.999).float(), 0)
    err = (warped - g.render).abs().amax(1, keepdim=True)[valid]
    assert valid.sum() > 0.2 * SIZE * SIZE
    assert err.mean() < 0.01 and torch.quantile(err, 0.99) < 0.05, (err.mean(), err.max())


def test_large_yaw_marks_the_self_occluded_cheek_occluded(model):
    """Source turned 60 degrees (its +x cheek faces away): in a frontal target that cheek is occluded."""
    src, drv = coeffs(yaw=math.radians(60)), coeffs(yaw=0.0)
    g = compute_guidance(model, src, drv, SIZE)
    xs = pixel_grid(SIZE, SIZE)[..., 0]
    face = g.face_mask[0, 0].bool()
    left, right = xs[face].min(), xs[face].max()
    far_cheek = face & (xs > right - 0.15 * (right - left))           # the outer +x side of the frontal target
    near_cheek = face & (xs < left + 0.15 * (right - left))
    assert far_cheek.sum() > 50 and near_cheek.sum() > 50
    assert g.occlusion[0, 0][far_cheek].mean() < 0.1
    assert g.occlusion[0, 0][near_cheek].mean() > 0.9


def test_guidance_is_batched_and_matches_single_pairs(model):
    src, drv = coeffs(yaw=0.1, batch=3, seed=1), coeffs(yaw=-0.3, batch=3, seed=2, exp_seed=4)
    src[1, ANGLE.start + 1] = 0.4
    batched = compute_guidance(model, src, drv, 64)
    for i in range(3):
        single = compute_guidance(model, src[i:i + 1], drv[i:i + 1], 64)
        for name in ("flow", "occlusion", "render", "face_mask"):
            assert torch.allclose(getattr(batched, name)[i:i + 1], getattr(single, name), atol=1e-4), name  # px, GEMM rounding


def test_guidance_rejects_bad_shapes(model):
    with pytest.raises(ValueError, match="257"):
        compute_guidance(model, torch.zeros(2, 257), torch.zeros(1, 257))


def test_depth_tested_occlusion_agrees_with_literal_eq4_on_a_coarse_mesh():
    """Where triangles span many pixels, 'nearest at some source pixel' and the depth test mean the same."""
    coarse = procedural_model("tiny")
    src, drv = coeffs(yaw=0.5, exp_seed=2), coeffs(yaw=-0.3, exp_seed=3)
    literal = compute_guidance(coarse, src, drv, 256, occlusion_rule="triangle_set")
    tested = compute_guidance(coarse, src, drv, 256)
    face = literal.face_mask.bool()
    agree = (literal.occlusion == tested.occlusion)[face].float().mean()
    assert agree > 0.99 and (1 - literal.occlusion[face]).mean() > 0.1


def test_literal_eq4_is_noisy_on_dense_meshes_which_is_why_depth_test_is_default():
    dense = procedural_model("full")
    src, drv = coeffs(yaw=0.1), coeffs(yaw=0.15)          # 3 degrees apart: almost nothing is really occluded
    literal = compute_guidance(dense, src, drv, 128, occlusion_rule="triangle_set")
    tested = compute_guidance(dense, src, drv, 128)
    face = tested.face_mask.bool()
    assert tested.occlusion[face].mean() > 0.98
    assert literal.occlusion[face].mean() < 0.8           # sub-pixel triangles are missing from the literal set
