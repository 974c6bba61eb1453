"""The photometric stage (issue 12 item 3) on synthetic renders with known texture, light and pose: its pixel
interpolation against the rasterizer's, its mask against a brute-force polygon test, and recovery of the truth."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from reenact.face3d.coeffs import ANGLE, EXP, GAMMA, ID, TEX
from reenact.face3d.face import project_landmarks, render_face
from reenact.face3d.procedural import procedural_model
from reenact.face3d.raster import interpolate
from reenact.face3d.transforms import euler_to_matrix, rotation_angle_between
from reenact.faces.images import frame_camera
from reenact.faces.photometric import (
    INNER,
    OUTLINE,
    PhotometricConfig,
    _Scene,
    inside_outline,
    occluders,
    photometric_fit,
)

SIZE = 96


@pytest.fixture(scope="module")
def model():
    return procedural_model("small")


def truth(frames: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    c = torch.zeros(frames, 257)
    c[:, ID] = 0.5 * torch.randn(1, 80, generator=g)
    c[:, EXP] = 0.3 * torch.randn(frames, 64, generator=g)
    c[:, ANGLE] = torch.tensor([[0.08, 0.25, 0.03], [-0.05, -0.2, 0.0]])[:frames]
    c[:, TEX] = 0.8 * torch.randn(1, 80, generator=g)
    c[:, GAMMA] = 0.15 * torch.randn(frames, 27, generator=g)
    return c


def scene_of(model, coeffs: torch.Tensor):
    camera = frame_camera(SIZE, SIZE)
    render = render_face(model, coeffs, camera)
    background = torch.tensor([0.2, 0.5, 0.3])[None, :, None, None]
    image = (render.image * render.mask + background * (1 - render.mask)).clamp(0, 1)
    return image, project_landmarks(model, coeffs, camera)


def test_pixel_colours_equal_the_rasterizers_interpolation(model):
    """The stage's barycentrics from the screen vertices give interpolate's colours at the masked pixels."""
    coeffs = truth()
    image, points = scene_of(model, coeffs)
    scene = _Scene(model, image, coeffs, points, PhotometricConfig())
    colors = torch.rand(2, model.num_vertices, 3)
    screen = render_face(model, coeffs, frame_camera(SIZE, SIZE)).mesh.screen
    local = colors[:, scene.vertices]
    assert len(scene.pixel_xy) > 1000
    torch.testing.assert_close(scene._at_pixels(local, screen[:, scene.vertices]),
                               interpolate(scene.fragments, model.triangles, colors)[scene.mask], atol=1e-5, rtol=0)


def crossings_inside(polygon: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Brute-force even-odd ray casting of points against a closed polygon ``(K, 2)``."""
    inside = np.zeros(x.shape, bool)
    for (x0, y0), (x1, y1) in zip(polygon, np.roll(polygon, -1, 0)):
        crosses = (y0 > y) != (y1 > y)
        inside ^= crosses & (x < x0 + (y - y0) * (x1 - x0) / np.where(y1 == y0, 1, y1 - y0))
    return inside


def test_outline_mask_is_the_polygon_of_dlibs_outline():
    rng = np.random.default_rng(0)
    points = torch.from_numpy(rng.uniform(20, 76, (1, 68, 2)))
    angles = np.linspace(0, 2 * np.pi, len(OUTLINE), endpoint=False)                # a convex outline
    points[0, OUTLINE] = torch.from_numpy(np.stack([48 + 30 * np.cos(angles), 48 + 25 * np.sin(angles)], -1))
    mask = inside_outline(points, SIZE, SIZE)[0].numpy()
    yy, xx = np.mgrid[:SIZE, :SIZE] + 0.5
    brute = crossings_inside(points[0, OUTLINE].numpy(), xx, yy)
    assert (mask != brute).sum() <= 0.01 * brute.sum()                          # edge pixels may go either way
    assert 0.9 < mask.sum() / (np.pi * 30 * 25) < 1.1


def test_texture_light_and_pose_are_recovered_from_a_render(model):
    """Start from the truth's geometry with a 3 degree yaw error, zero texture and light: the fit brings the render
    to the frame (measured: error 0.012 from a flat 0.158) and, without the prior that holds the rotation to the
    landmark fit's, the pose back to the truth (3 -> 0.2 deg)."""
    coeffs = truth(1)
    image, points = scene_of(model, coeffs)
    start = coeffs.clone()
    start[:, TEX], start[:, GAMMA] = 0.0, 0.0
    start[:, ANGLE.start + 1] += np.deg2rad(3.0)
    result = photometric_fit(image, start, points, model, PhotometricConfig(steps=60, rotation_weight=0.0))
    assert result.error < 0.3 * result.flat_error and result.error < 0.02, (result.error, result.flat_error)
    rotation = lambda c: euler_to_matrix(c[:, ANGLE].double())  # noqa: E731
    before = torch.rad2deg(rotation_angle_between(rotation(start), rotation(coeffs)))
    after = torch.rad2deg(rotation_angle_between(rotation(result.coeffs), rotation(coeffs)))
    assert (after < 0.25 * before).all(), (before, after)
    fixed = photometric_fit(image, start, points, model, PhotometricConfig(steps=60, refine_geometry=False))
    assert torch.equal(fixed.coeffs[:, ANGLE], start[:, ANGLE]) and fixed.error > result.error


def test_the_least_squares_start_already_explains_a_render(model):
    """Texture and light by alternating least squares at the true geometry, before any Adam step (measured: error
    0.005 from a flat 0.17); without it the start is the flat render."""
    coeffs = truth(1)
    image, points = scene_of(model, coeffs)
    start = coeffs.clone()
    start[:, TEX], start[:, GAMMA] = 0.0, 0.0
    solved = photometric_fit(image, start, points, model, PhotometricConfig(steps=0))
    assert solved.error < 0.02 and solved.flat_error > 0.1, (solved.error, solved.flat_error)
    flat = photometric_fit(image, start, points, model, PhotometricConfig(steps=0, warm_start=0))
    assert flat.error == pytest.approx(flat.flat_error)


def test_hair_over_a_cheek_is_left_out_and_does_not_colour_the_texture(model):
    """Dark hair painted over the image-left cheek (outside the inner face): :func:`occluders` finds exactly those
    pixels (measured: 283 of 283, none else, none on the clean render), and the fit without them explains the clean
    face (measured: 0.007 inside the whole face mask against the clean render) where the fit with them smears the
    hair into the texture and light (0.050)."""
    coeffs = truth(1)
    clean, points = scene_of(model, coeffs)
    yy, xx = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")
    p = points[0]
    hair = (xx < float(p[INNER, 0].min()) - 3) & (yy > float(p[36, 1])) & (yy < float(p[48, 1]))
    image = clean.clone()
    image[0, :, hair] = torch.tensor([0.09, 0.06, 0.05])[:, None]
    face = render_face(model, coeffs, frame_camera(SIZE, SIZE)).mask[0, 0].bool()
    found = occluders(image, points)[0] & face
    assert (hair & face).sum() > 100 and torch.equal(found, hair & face)
    assert not (occluders(clean, points)[0] & face).any()
    start = coeffs.clone()
    start[:, TEX], start[:, GAMMA] = 0.0, 0.0
    trimmed = photometric_fit(image, start, points, model, PhotometricConfig(steps=60))
    kept = photometric_fit(image, start, points, model, PhotometricConfig(steps=60, occlusion=False))
    whole = kept.mask.bool()
    assert torch.equal(trimmed.mask.bool(), whole & ~hair) and trimmed.face_error > 3 * trimmed.error
    assert torch.equal(trimmed.face_mask.bool(), whole) and torch.equal(kept.face_mask, kept.mask)   # kept: no trim
    against_clean = lambda r: float((r.render - clean).abs()[whole.expand_as(clean)].mean())  # noqa: E731
    assert against_clean(trimmed) < 0.015 and against_clean(kept) > 2 * against_clean(trimmed), (
        against_clean(trimmed), against_clean(kept))
