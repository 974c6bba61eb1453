"""Coefficient layout, rotations, camera conventions, SH shading and the procedural morphable model."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from reenact.face3d import coeffs as C
from reenact.face3d.camera import PerspectiveCamera, pixel_grid, pixel_to_grid, reframe_translation
from reenact.face3d.procedural import EXPRESSION_NAMES, procedural_model
from reenact.face3d.shading import sh_basis, shade
from reenact.face3d.transforms import euler_to_matrix, matrix_to_euler, rigid_transform, rotation_angle_between


def test_coefficient_layout_is_contiguous_and_totals_257():
    slices = list(C.LAYOUT.values())
    assert slices[0].start == 0 and slices[-1].stop == C.NUM_COEFFS == 257
    assert all(a.stop == b.start for a, b in zip(slices, slices[1:]))
    sizes = {k: s.stop - s.start for k, s in C.LAYOUT.items()}
    assert sizes == {"id": 80, "exp": 64, "tex": 80, "angle": 3, "gamma": 27, "trans": 3}


def test_coeffs_round_trip_and_target_recombination():
    src, drv = torch.randn(4, 257), torch.randn(4, 257)
    assert torch.equal(C.Coeffs.from_vector(src).to_vector(), src)
    tgt = C.Coeffs.from_vector(C.target_coeffs(src, drv))
    s, d = C.Coeffs.from_vector(src), C.Coeffs.from_vector(drv)
    for name in ("id", "tex", "gamma"):
        assert torch.equal(getattr(tgt, name), getattr(s, name))
    for name in ("exp", "angle", "trans"):
        assert torch.equal(getattr(tgt, name), getattr(d, name))
    assert torch.equal(C.motion_coeffs(drv), torch.cat([d.exp, d.angle, d.trans], -1))
    with pytest.raises(ValueError, match="257"):
        C.Coeffs.from_vector(torch.zeros(3, 256))


@pytest.mark.parametrize("bad", [torch.zeros(3, 256), torch.zeros(257), torch.zeros(2, 257, dtype=torch.int64)])
def test_check_coeffs_names_what_it_got(bad):
    with pytest.raises(ValueError, match=r"\(B, 257\).*got"):
        C.check_coeffs(bad)
    C.check_coeffs(torch.zeros(2, 257), torch.zeros(2, 257, dtype=torch.float64))   # any float dtype is fine
    with pytest.raises(ValueError, match="of one shape"):
        C.check_coeffs(torch.zeros(2, 257), torch.zeros(3, 257))


def test_convention_euler_is_extrinsic_xyz_like_deep3d():
    angles = torch.tensor([[0.3, -0.7, 1.1], [-1.2, 0.4, -2.5]], dtype=torch.float64)
    expected = Rotation.from_euler("xyz", angles.numpy()).as_matrix()   # extrinsic x, then y, then z = Rz Ry Rx
    assert np.allclose(euler_to_matrix(angles).numpy(), expected, atol=1e-12)
    assert torch.allclose(matrix_to_euler(euler_to_matrix(angles)), angles, atol=1e-10)


def test_convention_positive_yaw_turns_plus_x_away_from_camera():
    point = torch.tensor([[1.0, 0.0, 0.0]])
    posed = rigid_transform(point, euler_to_matrix(torch.tensor([0.0, 0.5, 0.0])), torch.zeros(3))
    assert posed[0, 2] < 0   # camera looks from +z: smaller z is farther


def test_rotation_angle_between_matches_scipy():
    r1, r2 = Rotation.random(5, random_state=1), Rotation.random(5, random_state=2)
    expected = (r1.inv() * r2).magnitude()
    got = rotation_angle_between(torch.from_numpy(r1.as_matrix()), torch.from_numpy(r2.as_matrix()))
    assert np.allclose(got.numpy(), expected, atol=1e-7)


def test_convention_camera_deep3d_intrinsics_and_y_down():
    cam = PerspectiveCamera.deep3d(224)
    assert (cam.focal, cam.cx, cam.cy, cam.distance) == (1015.0, 112.0, 112.0, 10.0)
    cam256 = PerspectiveCamera.deep3d(256)
    assert math.isclose(cam256.focal, 1015 * 256 / 224) and math.isclose(cam256.cx, 128.0) and cam256.size == 256
    screen = cam.project(torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.2, 1.0]]))
    assert torch.allclose(screen[0], torch.tensor([112.0, 112.0, 10.0]))
    # a point above the origin (y up in model space) lands ABOVE the centre in the image (smaller row)
    assert torch.isclose(screen[1, 0], torch.tensor(112 + 1015 * 0.1 / 9.0))
    assert torch.isclose(screen[1, 1], torch.tensor(224 - (112 + 1015 * 0.2 / 9.0)))
    assert torch.isclose(screen[1, 2], torch.tensor(9.0))


def test_camera_unproject_inverts_project_at_any_size():
    cam = PerspectiveCamera(width=640, height=360, focal=900.0, cx=300.0, cy=170.0)
    pts = torch.randn(100, 3, dtype=torch.float64) * 0.5
    assert torch.allclose(cam.unproject(cam.project(pts)), pts, atol=1e-12)


def test_crop_camera_and_reframing_agree_with_cropping_pixels():
    frame = PerspectiveCamera(width=640, height=360, focal=1200.0, cx=330.0, cy=175.0)
    crop = frame.crop(left=250.0, top=60.0, side=200.0, size=256)
    head = torch.tensor([[0.3, -0.2, -2.0]])
    pts = head + procedural_model("tiny").mean_shape                            # a face at the head's place
    in_frame = frame.project(pts)[:, :2]
    assert torch.allclose(crop.project(pts)[:, :2], (in_frame - torch.tensor([250.0, 60.0])) * 256 / 200, atol=1e-3)
    deep3d = PerspectiveCamera.deep3d(256)
    moved = reframe_translation(head[0], crop, deep3d)
    assert torch.allclose(deep3d.project(moved)[:2], crop.project(head[0])[:2], atol=1e-3)   # exact at the origin
    err = (deep3d.project(pts - head + moved)[:, :2] - crop.project(pts)[:, :2]).norm(dim=-1)
    assert err.max() < 2.5    # weak-perspective error with a 1.3x focal change and an off-axis head: < 2.5 px
    side = 1200 * 224 / 1015                                  # crop focal == Deep3D focal, principal point centred
    same_scale = frame.crop(left=330.0 - side / 2, top=175.0 - side / 2, side=side, size=256)
    exact = reframe_translation(head[0], same_scale, deep3d)
    assert torch.allclose(deep3d.project(pts - head + exact), same_scale.project(pts), atol=1e-3)


def test_convention_pixel_grid_centres_and_grid_sample_coordinates():
    g = pixel_grid(2, 3)
    assert g.shape == (2, 3, 2) and torch.equal(g[1, 2], torch.tensor([2.5, 1.5]))
    img = torch.arange(6.0).reshape(1, 1, 2, 3)
    sampled = torch.nn.functional.grid_sample(img, pixel_to_grid(g, 2, 3)[None], align_corners=False)
    assert torch.allclose(sampled, img, atol=1e-6)   # sampling at pixel centres returns the pixels


def _real_sh_reference(n: np.ndarray) -> np.ndarray:
    """Real SH from scipy's complex ones (Condon-Shortley phase kept, as Deep3D's signs imply)."""
    from scipy.special import sph_harm_y

    theta, phi = np.arccos(np.clip(n[:, 2], -1, 1)), np.arctan2(n[:, 1], n[:, 0])
    out = []
    for band in range(3):
        for m in range(-band, band + 1):
            y = sph_harm_y(band, abs(m), theta, phi)
            out.append(np.sqrt(2) * y.imag if m < 0 else (y.real if m == 0 else np.sqrt(2) * y.real))
    return np.stack(out, -1)


def test_sh_basis_matches_scipy_real_harmonics_times_lambertian_constants():
    n = torch.nn.functional.normalize(torch.randn(50, 3, dtype=torch.float64), dim=-1)
    a = np.repeat([math.pi, 2 * math.pi / math.sqrt(3), 2 * math.pi / math.sqrt(8)], [1, 3, 5])
    assert np.allclose(sh_basis(n).numpy(), _real_sh_reference(n.numpy()) * a, atol=1e-10)


def test_shade_with_only_ambient_light_is_albedo_times_constant():
    albedo, normals = torch.rand(2, 10, 3), torch.nn.functional.normalize(torch.randn(2, 10, 3), dim=-1)
    gamma = torch.zeros(2, 27)
    gamma[:, [0, 9, 18]] = 0.2
    expected = albedo * (0.8 + 0.2) * math.pi / math.sqrt(4 * math.pi)
    assert torch.allclose(shade(albedo, normals, gamma), expected, atol=1e-6)


@pytest.fixture(scope="module")
def small_model():
    return procedural_model("small")


def test_procedural_full_model_has_bfm_like_size():
    full = procedural_model("full")
    assert abs(full.num_vertices - 35709) < 100 and abs(full.num_triangles - 70789) < 200
    assert full.id_base.shape == (3 * full.num_vertices, 80) and full.exp_base.shape[1] == 64
    assert full.tex_base.shape[1] == 80 and full.landmark_indices.shape == (68,)


def test_procedural_model_is_deterministic(small_model):
    procedural_model.cache_clear()
    again = procedural_model("small")
    for name in ("mean_shape", "id_base", "exp_base", "mean_tex", "tex_base", "landmark_indices"):
        assert torch.equal(getattr(again, name), getattr(small_model, name)), name


def test_procedural_normals_face_the_camera_and_adjacency_is_complete(small_model):
    m = small_model
    normals = m.vertex_normals(m.mean_shape)
    centre = m.landmarks(m.mean_shape)[30]          # nose tip region
    assert (normals[:, 2] > 0).float().mean() > 0.99
    # every triangle appears in the adjacency of each of its 3 vertices (nothing dropped on a grid mesh)
    for k in range(3):
        rows = m.vertex_triangles[m.triangles[:, k]]
        assert (rows == torch.arange(m.num_triangles)[:, None]).any(1).all()
    assert centre[2] == m.landmarks(m.mean_shape)[:, 2].max()


def test_procedural_landmarks_sit_at_semantic_places(small_model):
    lm = small_model.landmarks(small_model.mean_shape)
    x, y = lm[:, 0], lm[:, 1]
    brows, eyes, nose_tip, mouth, chin = y[17:27].mean(), y[36:48].mean(), y[30], y[48:68].mean(), y[8]
    assert brows > eyes > nose_tip > mouth > chin
    assert x[36] < x[39] < x[42] < x[45]                       # outer-left, inner-left, inner-right, outer-right eye
    assert x[48] < x[51] < x[54] and y[51] > y[57]              # mouth corners, upper above lower lip
    assert x[0] < x[8] < x[16] and y[8] == y[:17].min()         # jaw outline runs through the chin


def test_procedural_expressions_do_what_their_names_say(small_model):
    from reenact.face3d.procedural import grid_uv

    m = small_model
    shape = lambda exp: m.shape(torch.zeros(80), exp)  # noqa: E731
    unit = lambda k: torch.nn.functional.one_hot(torch.tensor(k), 64).float() * 2  # noqa: E731
    neutral = shape(torch.zeros(64))
    jaw = shape(unit(EXPRESSION_NAMES.index("jaw_open")))
    blink = shape(unit(EXPRESSION_NAMES.index("blink")))
    lip = m.landmark_indices[[51, 57]]                                         # upper and lower lip centre
    assert (jaw[lip[1], 1] - jaw[lip[0], 1]) < (neutral[lip[1], 1] - neutral[lip[0], 1]) - 0.05   # mouth opens
    uv = torch.from_numpy(grid_uv(41))
    upper_lids = [int(((uv - torch.tensor([cu, 0.26])) ** 2).sum(1).argmin()) for cu in (-0.36, 0.36)]
    assert (blink[upper_lids, 1] < neutral[upper_lids, 1] - 0.03).all()        # the painted upper lids drop


def _finite_difference_normals(verts: torch.Tensor, side: int) -> torch.Tensor:
    """Unit surface normals ``(side - 2, side - 2, 3)`` of a grid mesh ``(side * side, 3)`` (row-major, rows going
    down the face, columns to its right) by central differences at the interior vertices, pointing out of the
    face (towards the camera when frontal)."""
    grid = verts.reshape(side, side, 3).double()
    down = grid[2:, 1:-1] - grid[:-2, 1:-1]
    right = grid[1:-1, 2:] - grid[1:-1, :-2]
    return torch.nn.functional.normalize(torch.linalg.cross(down, right, dim=-1), dim=-1)


def test_shading_uses_the_posed_surface_normals(small_model, face3d_kernels):
    """The normals the renderer lights are those of the posed surface: read back from the lit colours of a light
    that is linear in the normal, against finite-difference normals of the posed vertices (independent of the
    mesh's face normals and of the rotation convention)."""
    from reenact.face3d.face import build_face
    from reenact.face3d.procedural import GRID_SIDES

    side = GRID_SIDES["small"]
    v = torch.zeros(1, 257, dtype=torch.float64)
    v[0, C.ANGLE] = torch.tensor([0.35, -0.55, 0.25])                 # pitch, yaw, roll: a real pose
    v[0, C.TRANS] = torch.tensor([0.1, -0.05, -1.0])
    # light per channel = one first-band SH term: R = -a1 c1 y, G = a1 c1 z, B = -a1 c1 x (Deep3D's basis), plus
    # Deep3D's constant ambient 0.8 a0 c0
    a0c0, a1c1 = math.pi / math.sqrt(4 * math.pi), 2 * math.pi / math.sqrt(3) * math.sqrt(3) / math.sqrt(4 * math.pi)
    v[0, C.GAMMA.start + 0 * 9 + 1] = v[0, C.GAMMA.start + 1 * 9 + 2] = v[0, C.GAMMA.start + 2 * 9 + 3] = 1.0
    m = small_model
    face = build_face(m, v.float(), PerspectiveCamera.deep3d(256))
    irradiance = (face.colors[0] / m.albedo(v[0, C.TEX].float())).double() - 0.8 * a0c0
    shaded = torch.stack([-irradiance[:, 2], -irradiance[:, 0], irradiance[:, 1]], -1) / a1c1    # (x, y, z)
    shaded = shaded.reshape(side, side, 3)[1:-1, 1:-1]
    truth = _finite_difference_normals(face.verts[0], side)
    rest = _finite_difference_normals(m.mean_shape, side)
    assert (rest[..., 2] > 0).float().mean() > 0.99                     # the difference normals point outwards
    angle = torch.rad2deg(torch.acos((shaded * truth).sum(-1).clamp(-1, 1)))
    assert angle.median() < 1.0 and torch.quantile(angle.flatten(), 0.95) < 4.0, (angle.median(), angle.max())


def test_procedural_bases_hold_no_subnormals():
    """Subnormal basis entries (underflowed Gaussian tails) make every product with the bases several times slower
    on x86 (microcode assists); the procedural model flushes them to zero."""
    full = procedural_model("full")
    tiny = torch.finfo(torch.float32).tiny
    for name in ("mean_shape", "id_base", "exp_base", "mean_tex", "tex_base"):
        values = getattr(full, name).abs()
        assert not ((values > 0) & (values < tiny)).any(), name
