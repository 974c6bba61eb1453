"""Rasterizer tests: conventions, the tie rule, and agreement with a float64 brute force on random meshes.

Acceptance (issue #2): the same triangle id at every pixel whose centre is not within 1e-6 of a triangle edge, and
barycentrics within 1e-5 there.
"""
from __future__ import annotations

import sys

import pytest
import torch

from reenact.face3d import raster, raster_kernel
from reenact.face3d.raster import Fragments, RasterSettings, interpolate, rasterize

EDGE_EPS = 1e-6  # pixels this close to any triangle edge are not compared (the acceptance)
BARY_TOL = 1e-5
DEPTH_TOL = 1e-5
RASTERIZERS = ("torch", "numba")  # every CPU backend the suite ships; each must keep every convention


@pytest.fixture(params=RASTERIZERS)
def backend(request) -> str:
    return request.param


# ----------------------------------------------------------------------------------------------------------------
# brute-force reference: every pixel x every triangle, float64


def brute_force(verts: torch.Tensor, faces: torch.Tensor, size: tuple[int, int], cull_backfaces: bool = False):
    """Reference raster of ``(B, V, 3)`` verts: (triangle_id, bary, depth, near_edge), each ``(B, H, W, ...)``.

    Same rules as the module docstring, written the obvious way: a centre is covered when all three oriented edge
    functions are >= 0 and the triangle has non-zero area; the smallest depth wins, then the smallest id.
    ``near_edge`` marks centres within ``EDGE_EPS`` of any edge segment of any triangle.
    """
    H, W = size
    B, F = verts.shape[0], faces.shape[0]
    tri = verts.double()[:, faces]  # B x F x 3 corners x 3
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64) + 0.5, torch.arange(W, dtype=torch.float64) + 0.5,
                            indexing="ij")
    p = torch.stack([xs, ys], -1).view(1, H * W, 1, 2)  # 1 x P x 1 x 2
    a = tri[:, None, :, :, :2]  # B x 1 x F x 3 x 2
    nxt, nxt2 = a.roll(-1, dims=3), a.roll(-2, dims=3)  # corners k + 1, k + 2
    edge = nxt2 - nxt
    rel = p.unsqueeze(3) - nxt  # B x P x F x 3 x 2
    e = edge[..., 0] * rel[..., 1] - edge[..., 1] * rel[..., 0]  # B x P x F x 3, edge function opposite corner k
    area2 = e.sum(-1)
    sign = torch.sign(area2).unsqueeze(-1)
    covered = ((e * sign) >= 0).all(-1) & (area2 != 0)
    if cull_backfaces:
        covered &= area2 < 0
    bary = e / area2.unsqueeze(-1)
    depth = (bary * tri[:, None, :, :, 2]).sum(-1)
    depth = torch.where(covered, depth, torch.inf)
    best = depth.amin(-1, keepdim=True)
    ids = torch.where(covered & (depth == best), torch.arange(F), F).amin(-1)
    ids = torch.where(ids == F, -1, ids)
    chosen = bary.gather(2, ids.clamp(min=0)[..., None, None].expand(-1, -1, 1, 3)).squeeze(2)
    chosen = torch.where((ids >= 0).unsqueeze(-1), chosen, 0.0)
    t = ((rel * edge).sum(-1) / (edge * edge).sum(-1).clamp(min=1e-300)).clamp(0, 1)  # closest point on segment
    dist = (rel - t.unsqueeze(-1) * edge).norm(dim=-1)
    near = (dist < EDGE_EPS).flatten(2).any(-1)
    shape = (B, H, W)
    return ids.view(shape), chosen.view(*shape, 3), best.squeeze(-1).view(shape), near.view(shape)


def random_mesh(seed: int, batch: int = 2, size: tuple[int, int] = (28, 36)) -> tuple[torch.Tensor, torch.Tensor]:
    """Overlapping triangles of every scale (sub-pixel, a few pixels, larger than the image), both windings,
    partly outside the image, plus degenerate ones (a repeated corner and three collinear corners)."""
    g = torch.Generator().manual_seed(seed)
    H, W = size
    groups = []
    for count, scale in ((12, 40.0), (25, 4.0), (25, 1.5), (40, 0.6)):
        centre = torch.rand(batch, count, 1, 2, generator=g) * torch.tensor([W * 1.3, H * 1.3]) - torch.tensor(
            [W * 0.15, H * 0.15])
        xy = centre + (torch.rand(batch, count, 3, 2, generator=g) - 0.5) * scale
        z = torch.rand(batch, count, 3, 1, generator=g) * 2 - 1
        groups.append(torch.cat([xy, z], -1))
    corners = torch.cat(groups, 1)  # B x T x 3 x 3
    corners[:, 0, 2] = corners[:, 0, 1]  # repeated corner
    corners[:, 1, 2, :2] = 0.25 * corners[:, 1, 0, :2] + 0.75 * corners[:, 1, 1, :2]  # collinear (up to rounding)
    verts = corners.reshape(batch, -1, 3)
    faces = torch.arange(verts.shape[1]).view(-1, 3)
    faces = faces[torch.randperm(faces.shape[0], generator=g)]
    return verts.contiguous(), faces


def assert_matches_brute_force(verts, faces, size, cull_backfaces=False, backend="torch") -> Fragments:
    frags = rasterize(verts, faces, RasterSettings(size, cull_backfaces=cull_backfaces, backend=backend))
    ids, bary, depth, near = brute_force(verts, faces, size, cull_backfaces)
    compared = ~near
    mismatch = (frags.triangle_id != ids) & compared
    assert not mismatch.any(), f"{int(mismatch.sum())} pixels differ, e.g. at {mismatch.nonzero()[:5].tolist()}"
    hit = compared & (ids >= 0)
    assert hit.sum() > 0
    assert (frags.bary.double() - bary)[hit].abs().max() < BARY_TOL
    assert (frags.depth.double() - depth)[hit].abs().max() < DEPTH_TOL
    return frags


# ----------------------------------------------------------------------------------------------------------------
# agreement with the brute force


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("cull", [False, True])
def test_random_meshes_match_brute_force(seed, cull, backend):
    verts, faces = random_mesh(seed)
    frags = assert_matches_brute_force(verts, faces, (28, 36), cull_backfaces=cull, backend=backend)
    assert frags.mask.float().mean() > (0.1 if cull else 0.3)  # the comparison is not vacuous


def test_face_like_mesh_of_subpixel_triangles_matches_brute_force(backend):
    # a jittered grid like a face at 256^2: most triangles hold zero or one pixel centre, some two to four
    g = torch.Generator().manual_seed(7)
    rows, cols = 30, 34
    v, u = torch.meshgrid(torch.linspace(2.2, 21.7, rows), torch.linspace(1.3, 22.9, cols), indexing="ij")
    xy = torch.stack([u, v], -1) + (torch.rand(rows, cols, 2, generator=g) - 0.5) * 0.4
    depth = ((u - 12) ** 2 + (v - 12) ** 2).unsqueeze(-1) / 100
    verts = torch.cat([xy, depth], -1).view(1, -1, 3)
    idx = torch.arange(rows * cols).view(rows, cols)
    tl, tr, bl, br = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    faces = torch.cat([torch.stack([tl, bl, tr], -1), torch.stack([tr, bl, br], -1)]).view(-1, 3)
    frags = assert_matches_brute_force(verts, faces, (24, 24), backend=backend)
    assert frags.mask.sum() > 300


def test_every_box_size_path(backend):
    # boxes of 1..9 pixels a side, so the first-pixel test, the float32 window and float64 windows of 4, 8 and 16 run
    sizes = torch.arange(1, 10, dtype=torch.float32)
    x0 = torch.cumsum(sizes + 1.3, 0) - 8.0
    corners = torch.stack([torch.stack([x0, torch.full_like(x0, 1.2)], -1),
                           torch.stack([x0 + sizes * 0.2, 1.2 + sizes + 0.9], -1),
                           torch.stack([x0 + sizes + 0.7, torch.full_like(x0, 2.0)], -1)], 1)  # T x 3 x 2
    corners = torch.cat([corners, torch.rand(corners.shape[:2] + (1,), generator=torch.Generator().manual_seed(1))],
                        -1)
    verts, faces = corners.view(1, -1, 3), torch.arange(corners.shape[0] * 3).view(-1, 3)
    assert_matches_brute_force(verts, faces, (13, 60), backend=backend)


def test_float64_windows_in_chunks_give_the_same_raster(monkeypatch):
    verts, faces = random_mesh(3)
    settings = RasterSettings((28, 36), backend="torch")
    whole = rasterize(verts, faces, settings)
    monkeypatch.setattr(raster_kernel, "CHUNK_CANDIDATES", 64)
    chunked = rasterize(verts, faces, settings)
    assert torch.equal(whole.triangle_id, chunked.triangle_id)
    assert torch.equal(whole.bary, chunked.bary)
    assert torch.equal(whole.depth, chunked.depth)


def test_batch_equals_one_mesh_at_a_time(backend):
    verts, faces = random_mesh(4, batch=3)
    settings = RasterSettings((28, 36), backend=backend)
    batched = rasterize(verts, faces, settings)
    for b in range(3):
        single = rasterize(verts[b:b + 1], faces, settings)
        assert torch.equal(batched.triangle_id[b:b + 1], single.triangle_id)
        assert torch.equal(batched.depth[b:b + 1], single.depth)
        assert torch.equal(batched.bary[b:b + 1], single.bary)


def test_interpolate_matches_brute_force(backend):
    verts, faces = random_mesh(5)
    attrs = torch.randn(2, verts.shape[1], 4, generator=torch.Generator().manual_seed(0))
    frags = rasterize(verts, faces, RasterSettings((28, 36), backend=backend))
    ids, bary, _, near = brute_force(verts, faces, (28, 36))
    expected = (bary.unsqueeze(-1) * attrs.double()[torch.arange(2).view(2, 1, 1, 1),
                                                    faces[ids.clamp(min=0)]]).sum(-2)
    out = interpolate(frags, faces, attrs)
    assert out.shape == (2, 28, 36, 4)
    hit = ~near & (ids >= 0)
    assert (out.double() - expected)[hit].abs().max() < 1e-4
    assert (out[~frags.mask] == 0).all()
    # with and without autograd, the same numbers
    assert torch.equal(interpolate(frags, faces, attrs.clone().requires_grad_(True)).detach(), out)


def test_interpolate_is_differentiable_in_attrs():
    # interpolate is linear in attrs: the gradient of sum(out * G) sends bary_k * G(p) to corner k of p's triangle
    verts, faces = random_mesh(6, batch=1)
    frags = rasterize(verts, faces, RasterSettings((28, 36), backend="torch"))
    g = torch.Generator().manual_seed(1)
    attrs = torch.randn(1, verts.shape[1], 2, dtype=torch.float64, generator=g).requires_grad_(True)
    out = interpolate(frags, faces, attrs)
    weight = torch.randn(out.shape, dtype=torch.float64, generator=g)
    (out * weight).sum().backward()
    hit = frags.mask[0]
    ids, bary, w = frags.triangle_id[0][hit], frags.bary[0][hit].double(), weight[0][hit]
    expected = torch.zeros(verts.shape[1], 2, dtype=torch.float64)
    for k in range(3):
        expected.index_add_(0, faces[ids, k], bary[:, k:k + 1] * w)
    assert hit.sum() > 100
    assert torch.allclose(attrs.grad[0], expected, atol=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# conventions and the tie rule


def one_triangle(corners, depth=(0.5, 0.5, 0.5)) -> tuple[torch.Tensor, torch.Tensor]:
    xy = torch.tensor(corners, dtype=torch.float32)
    return torch.cat([xy, torch.tensor(depth).view(3, 1)], -1).view(1, 3, 3), torch.tensor([[0, 1, 2]])


def test_convention_pixel_centres_and_y_down(backend):
    # legs along the top and left image borders: pixel (i, j) has its centre at (j + 0.5, i + 0.5), y down, and a
    # centre exactly on the hypotenuse x + y = 4 is covered
    verts, faces = one_triangle([(0, 0), (0, 4), (4, 0)])
    frags = rasterize(verts, faces, RasterSettings((6, 5), backend=backend))
    i, j = torch.meshgrid(torch.arange(6), torch.arange(5), indexing="ij")
    assert torch.equal(frags.mask[0], (i + j) <= 3)
    assert frags.triangle_id[0, 0, 0] == 0 and frags.triangle_id[0, 5, 0] == -1


def test_convention_image_spans_zero_to_size(backend):
    # two triangles covering [0, W] x [0, H] exactly cover every pixel; shifted right by just over half a pixel they
    # leave the first column
    H, W = 4, 8
    verts = torch.tensor([[[0.0, 0, 0.5], [0, H, 0.5], [W, 0, 0.5], [W, H, 0.5]]])
    faces = torch.tensor([[0, 1, 2], [2, 1, 3]])
    assert rasterize(verts, faces, RasterSettings((H, W), backend=backend)).mask.all()
    mask = rasterize(verts + torch.tensor([0.501, 0.0, 0.0]), faces, RasterSettings((H, W), backend=backend)).mask[0]
    assert not mask[:, 0].any() and mask[:, 1:].all()


def test_convention_barycentrics_are_screen_space(backend):
    # interpolating the screen positions themselves gives back the pixel centres (affine in image coordinates)
    verts, faces = one_triangle([(0.3, 0.2), (2.1, 9.7), (11.6, 1.4)], depth=(1.0, 7.0, 3.0))
    frags = rasterize(verts, faces, RasterSettings((10, 12), backend=backend))
    xy = interpolate(frags, faces, verts[..., :2])[0]
    i, j = torch.meshgrid(torch.arange(10.0), torch.arange(12.0), indexing="ij")
    grid = torch.stack([j + 0.5, i + 0.5], -1)
    m = frags.mask[0]
    assert m.sum() > 20
    assert torch.allclose(xy[m], grid[m], atol=1e-5)
    assert torch.allclose(frags.bary[0][m].sum(-1), torch.ones(int(m.sum())), atol=1e-6)
    # depth is interpolated affinely too
    assert torch.allclose(frags.depth[0][m], (frags.bary[0][m] * verts[0, :, 2]).sum(-1), atol=1e-5)


def test_convention_empty_pixels(backend):
    verts, faces = one_triangle([(1, 1), (1, 3), (3, 1)])
    frags = rasterize(verts, faces, RasterSettings((5, 5), backend=backend))
    empty = ~frags.mask
    assert empty.any()
    assert (frags.triangle_id[empty] == -1).all()
    assert (frags.bary[empty] == 0).all()
    assert torch.isinf(frags.depth[empty]).all() and (frags.depth[empty] > 0).all()
    assert frags.triangle_id.dtype == torch.int64 and frags.bary.shape == (1, 5, 5, 3)


def test_convention_smaller_depth_is_nearer_whatever_the_id_or_sign(backend):
    square = [(0, 0), (0, 4), (4, 0)]
    for near, far in ((0.2, 0.7), (-3.0, -1.0), (-1.0, 2.0), (1e-30, 1e-29)):
        a, _ = one_triangle(square, depth=(far,) * 3)
        b, _ = one_triangle(square, depth=(near,) * 3)
        faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
        # the nearer one has id 1
        frags = rasterize(torch.cat([a, b], 1), faces, RasterSettings((4, 4), backend=backend))
        assert (frags.triangle_id[frags.mask] == 1).all()
        assert (frags.depth[frags.mask] == near).all()


def test_tie_rule_equal_depth_smallest_id_wins(backend):
    square = [(0, 0), (0, 4), (4, 0)]
    a, _ = one_triangle(square, depth=(0.5, 0.25, 0.75))
    verts = torch.cat([a, a, a], 1)
    faces = torch.tensor([[6, 7, 8], [3, 4, 5], [0, 1, 2]])  # the same triangle three times
    frags = rasterize(verts, faces, RasterSettings((4, 4), backend=backend))
    assert frags.mask.sum() == 10 and (frags.triangle_id[frags.mask] == 0).all()


def test_tie_rule_shared_edge_is_inclusive_and_goes_to_the_smaller_id(backend):
    # the square [0, 4]^2 split along its diagonal x = y, which passes through the 4 pixel centres i == j
    verts = torch.tensor([[[0, 0, 1.0], [4, 0, 1.0], [4, 4, 1.0], [0, 4, 1.0]]])
    lower_left, upper_right = [0, 3, 2], [0, 2, 1]  # i >= j and i <= j, both front-facing
    i, j = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    for order in ((lower_left, upper_right), (upper_right, lower_left)):
        frags = rasterize(verts, torch.tensor(order), RasterSettings((4, 4), backend=backend))
        ll_id = 0 if order[0] == lower_left else 1
        expected = torch.where(i > j, ll_id, 1 - ll_id)
        expected[i == j] = 0  # the shared edge: equal depth, smallest id
        assert torch.equal(frags.triangle_id[0], expected)
    # at different depths the nearer one takes the shared edge, whatever its id
    verts = torch.tensor([[[0, 0, 1.0], [4, 0, 1.0], [4, 4, 1.0], [0, 4, 1.0],
                           [0, 0, 0.5], [4, 4, 0.5], [4, 0, 0.5]]])
    frags = rasterize(verts, torch.tensor([lower_left, [4, 5, 6]]), RasterSettings((4, 4), backend=backend))
    assert (frags.triangle_id[0][i == j] == 1).all() and (frags.triangle_id[0][i > j] == 0).all()


def test_degenerate_triangles_cover_nothing(backend):
    # a zero-area triangle along the row of pixel centres y = 1.5, and one with a repeated corner
    verts = torch.tensor([[[0.0, 1.5, 0.1], [2.0, 1.5, 0.1], [4.0, 1.5, 0.1], [3.5, 3.5, 0.1]]])
    faces = torch.tensor([[0, 1, 2], [0, 3, 3], [3, 3, 3]])
    frags = rasterize(verts, faces, RasterSettings((4, 5), backend=backend))
    assert not frags.mask.any()
    # the same with corners that are not small dyadic numbers, in boxes of every size (origin, windows, exact path)
    for far in ((1.7, 2.9), (3.31, 4.77), (11.123457, 9.87654)):
        verts = torch.tensor([[[0.3141592, 0.2718281, 0.5], [*far, 0.25]]])
        frags = rasterize(verts, torch.tensor([[0, 1, 1], [1, 0, 0]]), RasterSettings((12, 12), backend=backend))
        assert not frags.mask.any()


def test_convention_front_facing_is_counter_clockwise_as_displayed_and_culling(backend):
    ccw = [(0, 0), (0, 4), (4, 0)]  # top-left -> bottom-left -> top-right: counter-clockwise on screen
    cw = [(0, 0), (4, 0), (0, 4)]
    for corners, front in ((ccw, True), (cw, False)):
        verts, faces = one_triangle(corners)
        shown = rasterize(verts, faces, RasterSettings((4, 4), cull_backfaces=True, backend=backend)).mask.any()
        assert bool(shown) == front
        assert rasterize(verts, faces, RasterSettings((4, 4), cull_backfaces=False, backend=backend)).mask.sum() == 10


def test_culling_matches_the_camera_front_faces(backend):
    # a model-space triangle counter-clockwise seen from +z (the camera side) is front-facing after projection
    from reenact.face3d.camera import PerspectiveCamera

    model = torch.tensor([[[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.0, 0.5, 0.0]]])  # CCW from the front
    screen = PerspectiveCamera.deep3d(64).project(model)
    faces = torch.tensor([[0, 1, 2]])
    assert rasterize(screen, faces, RasterSettings((64, 64), cull_backfaces=True, backend=backend)).mask.sum() > 50
    culled = RasterSettings((64, 64), cull_backfaces=True, backend=backend)
    assert not rasterize(screen, faces.flip(1), culled).mask.any()


def test_triangles_outside_the_image_and_empty_meshes(backend):
    verts, faces = one_triangle([(-9, -9), (-9, -1), (-1, -9)])
    assert not rasterize(verts, faces, RasterSettings((4, 4), backend=backend)).mask.any()
    verts, faces = one_triangle([(5, 5), (5, 90), (90, 5)])
    assert not rasterize(verts, faces, RasterSettings((4, 4), backend=backend)).mask.any()
    empty = rasterize(torch.zeros(2, 0, 3), torch.zeros(0, 3, dtype=torch.int64),
                      RasterSettings((3, 4), backend=backend))
    assert empty.triangle_id.shape == (2, 3, 4) and not empty.mask.any()


def test_other_input_dtypes_give_the_same_raster(backend):
    # float64 corners are rasterized in float32 (these are float32 values), int32 faces as int64
    verts, faces = random_mesh(2, batch=1)
    settings = RasterSettings((28, 36), backend=backend)
    reference = rasterize(verts, faces, settings)
    for other in (rasterize(verts.double(), faces, settings), rasterize(verts, faces.int(), settings)):
        assert torch.equal(other.triangle_id, reference.triangle_id)
        assert torch.equal(other.bary, reference.bary)


def test_flat_pixel_index_stays_exact_for_huge_images():
    lo = torch.tensor([[4999.0, 0.0, 1234.0], [4999.0, 4321.0, 0.0]])  # (col, row)
    expected = torch.tensor([4999 * 5000 + 4999, 4321 * 5000, 1234])
    assert torch.equal(raster_kernel._flat_pixels(lo, 5000, 5000), expected)
    assert torch.equal(raster_kernel._flat_pixels(lo.double(), 5000, 5000), expected)
    assert torch.equal(raster_kernel._flat_pixels(lo[:, 2:], 4, 4000), torch.tensor([1234]))


# ----------------------------------------------------------------------------------------------------------------
# settings, backends, validation, devices


def test_auto_backend_is_numba_on_cpu_and_torch_elsewhere_without_pytorch3d():
    if raster._pytorch3d_available():
        pytest.skip("pytorch3d is importable here")
    assert raster.resolve_backend("auto") == "numba"
    assert raster.resolve_backend("auto", torch.device("cuda")) == "torch"   # numba is CPU only
    assert raster.resolve_backend("torch") == "torch"
    with pytest.raises(ImportError, match="pytorch3d"):
        raster.resolve_backend("pytorch3d")
    with pytest.raises(ValueError, match="CPU"):
        raster.resolve_backend("numba", "cuda")
    assert raster.exact_backend("cpu") == "numba" and raster.exact_backend("cuda") == "torch"
    verts, faces = one_triangle([(0, 0), (0, 4), (4, 0)])
    auto = rasterize(verts, faces, RasterSettings((4, 4), backend="auto"))
    torch_ = rasterize(verts, faces, RasterSettings((4, 4), backend="torch"))
    assert torch.equal(auto.triangle_id, torch_.triangle_id)


def test_auto_backend_degrades_to_torch_when_numba_does_not_import(monkeypatch):
    monkeypatch.setitem(sys.modules, "numba", None)                       # import numba raises ImportError
    monkeypatch.setitem(sys.modules, "reenact.face3d.raster_numba", None)
    raster.numba_kernels.cache_clear()
    try:
        assert raster.resolve_backend("auto") in ("torch", "pytorch3d")
        assert raster.exact_backend("cpu") == "torch"
        with pytest.raises(ImportError, match="numba"):
            raster.resolve_backend("numba")
        verts, faces = random_mesh(1, batch=1)
        frags = rasterize(verts, faces, RasterSettings((28, 36), backend="auto"))
        assert frags.mask.any()
    finally:
        raster.numba_kernels.cache_clear()


def assert_same_raster(a: Fragments, b: Fragments) -> None:
    assert torch.equal(a.triangle_id, b.triangle_id)
    assert torch.equal(a.depth, b.depth)
    hit = a.mask
    assert (a.bary - b.bary)[hit].abs().max() <= 1e-6
    assert (a.bary[~hit] == 0).all() and (b.bary[~hit] == 0).all()


@pytest.mark.parametrize("seed", range(4))
def test_numba_backend_equals_torch_backend_on_random_meshes(seed):
    # many overlapping triangles of every scale, both windings, with and without culling
    verts, faces = random_mesh(100 + seed, batch=2, size=(40, 52))
    for cull in (False, True):
        frames = [rasterize(verts, faces, RasterSettings((40, 52), cull_backfaces=cull, backend=b))
                  for b in RASTERIZERS]
        assert_same_raster(*frames)


@pytest.mark.parametrize("seed", range(3))
def test_rasterize_depth_is_the_full_rasters_depth(seed):
    """The depth-only raster (numba skips the ids and barycentrics) against the full raster of each backend, bit for
    bit, including the +inf of empty pixels and with culling."""
    verts, faces = random_mesh(200 + seed, batch=2, size=(40, 52))
    for cull in (False, True):
        for backend in RASTERIZERS:
            settings = RasterSettings((40, 52), cull_backfaces=cull, backend=backend)
            full, depth = rasterize(verts, faces, settings), raster.rasterize_depth(verts, faces, settings)
            assert (~full.mask).any() and full.mask.any()
            assert torch.equal(depth, full.depth), backend


def test_numba_backend_equals_torch_backend_on_the_face_mesh():
    from reenact.face3d.camera import PerspectiveCamera
    from reenact.face3d.coeffs import ANGLE, ID
    from reenact.face3d.face import posed_vertices
    from reenact.face3d.procedural import procedural_model

    model = procedural_model("small")
    g = torch.Generator().manual_seed(3)
    coeffs = torch.zeros(3, 257)
    coeffs[:, ID] = torch.randn(3, 80, generator=g) * 0.5
    coeffs[:, ANGLE] = torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.6, 0.1], [-0.2, -1.0, 0.0]])  # frontal to profile
    for size in (64, 256):
        screen = PerspectiveCamera.deep3d(size).project(posed_vertices(model, coeffs)[0])
        frames = [rasterize(screen, model.triangles, RasterSettings((size, size), backend=b)) for b in RASTERIZERS]
        assert frames[0].mask.float().mean() > 0.2
        assert_same_raster(*frames)


def test_settings_and_inputs_are_validated():
    with pytest.raises(ValueError, match="image_size"):
        RasterSettings((0, 4))
    with pytest.raises(ValueError, match="image_size"):
        RasterSettings(4)
    with pytest.raises(ValueError, match="backend"):
        RasterSettings((4, 4), backend="opengl")
    assert RasterSettings([4, 5]).image_size == (4, 5)
    verts, faces = one_triangle([(0, 0), (0, 4), (4, 0)])
    with pytest.raises(ValueError, match="verts"):
        rasterize(verts[0], faces, RasterSettings((4, 4)))
    with pytest.raises(ValueError, match="faces"):
        rasterize(verts, faces.float(), RasterSettings((4, 4)))
    with pytest.raises(ValueError, match="finite"):
        rasterize(verts.index_fill(1, torch.tensor([0]), float("nan")), faces, RasterSettings((4, 4)))
    frags = rasterize(verts, faces, RasterSettings((4, 4)))
    with pytest.raises(ValueError, match="attrs"):
        interpolate(frags, faces, torch.zeros(2, 3, 1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_cuda_matches_cpu():
    verts, faces = random_mesh(8, batch=2)
    settings = RasterSettings((28, 36), backend="torch")
    cpu = rasterize(verts, faces, settings)
    gpu = rasterize(verts.cuda(), faces.cuda(), settings)
    assert gpu.triangle_id.device.type == "cuda"
    assert torch.equal(cpu.triangle_id, gpu.triangle_id.cpu())
    assert torch.allclose(cpu.bary, gpu.bary.cpu(), atol=1e-6)
    attrs = torch.randn(2, verts.shape[1], 3)
    assert torch.allclose(interpolate(cpu, faces, attrs), interpolate(gpu, faces.cuda(), attrs.cuda()).cpu(),
                          atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# the kernel's per-triangle table


def test_kernel_table_rows_are_a_layout_of_distinct_rows():
    k = raster_kernel
    named = [k.X0, k.X1, k.X2, k.Y0, k.Y1, k.Y2, k.Z0, k.Z1, k.Z2, k.CORNER0_X, k.CORNER0_Y, k.E1X, k.E2X, k.E1Y,
             k.E2Y, k.ORIENT, k.LO_COL, k.LO_ROW, k.EXTENT_X, k.EXTENT_Y, k.EDGE_0, k.EDGE_1, k.EDGE_2, k.AREA2,
             k.DEPTH, k.DZ1, k.DZ2]
    assert sorted(named) == list(range(k.NUM_ROWS))
    # blocks that are read as slices must be contiguous and in this order
    assert [k.X0, k.X1, k.X2, k.Y0, k.Y1, k.Y2, k.Z0, k.Z1, k.Z2] == list(range(k.X0, k.X0 + 9))
    assert [k.CORNER0_X, k.CORNER0_Y, k.E1X, k.E2X, k.E1Y, k.E2Y] == list(range(k.CORNER0_X, k.CORNER0_X + 6))
    for block in ((k.LO_COL, k.LO_ROW), (k.EXTENT_X, k.EXTENT_Y), (k.EDGE_0, k.EDGE_1, k.EDGE_2), (k.DZ1, k.DZ2)):
        assert list(block) == list(range(block[0], block[0] + len(block)))
    # the windows get the table from WINDOW_FIRST on: every row they read must be there
    window_rows = [k.E1X, k.E2X, k.E1Y, k.E2Y, k.ORIENT, k.LO_COL, k.LO_ROW, k.EXTENT_X, k.EXTENT_Y, k.EDGE_0,
                   k.EDGE_1, k.EDGE_2, k.AREA2, k.DEPTH, k.DZ1, k.DZ2]
    assert min(window_rows) >= k.WINDOW_FIRST


def test_kernel_table_rows_hold_what_their_names_say():
    """Fill the table for one triangle and read every named row against values computed by hand."""
    k = raster_kernel
    corners = [(2.7, 1.9, 0.5), (6.1, 2.3, 0.9), (3.2, 5.6, 0.2)]         # image coordinates, depth
    verts = torch.tensor([corners])
    faces = torch.tensor([[0, 1, 2]])
    table = k._triangle_table(verts, faces, k._Frame(B=1, F=1, H=8, W=8))
    k._fill_edge_planes(table)
    t = table[:, 0].double()
    (x0, y0, z0), (x1, y1, z1), (x2, y2, z2) = [(x - 0.5, y - 0.5, z) for x, y, z in corners]   # pixel-centre units
    expect = {k.X0: x0, k.X1: x1, k.X2: x2, k.Y0: y0, k.Y1: y1, k.Y2: y2, k.Z0: z0, k.Z1: z1, k.Z2: z2,
              k.CORNER0_X: x0, k.CORNER0_Y: y0, k.E1X: x1 - x0, k.E2X: x2 - x0, k.E1Y: y1 - y0, k.E2Y: y2 - y0,
              k.LO_COL: 3.0, k.LO_ROW: 2.0, k.EXTENT_X: 5.0 - 3.0, k.EXTENT_Y: 5.0 - 2.0,
              k.DZ1: z1 - z0, k.DZ2: z2 - z0}
    e1, e2, q = (x1 - x0, y1 - y0), (x2 - x0, y2 - y0), (3.0 - x0, 2.0 - y0)
    cross = lambda a, b: a[0] * b[1] - a[1] * b[0]  # noqa: E731
    area2, edge1, edge2 = cross(e1, e2), cross(q, e2), cross(e1, q)
    expect.update({k.AREA2: area2, k.EDGE_1: edge1, k.EDGE_2: edge2, k.EDGE_0: area2 - edge1 - edge2,
                   k.DEPTH: z0 + (edge1 * (z1 - z0) + edge2 * (z2 - z0)) / area2})
    for row, value in expect.items():
        assert t[row].item() == pytest.approx(value, abs=1e-5), row
