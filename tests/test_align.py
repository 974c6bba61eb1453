"""Deep3D's 5-point alignment (reenact/faces/align.py): POS, the exact pixel map, its inverse, and the warp."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from reenact.faces.align import (
    AlignTransform,
    align_image,
    align_transform,
    five_from_68,
    flip_y,
    image_to_tensor_input,
    load_lm3d,
    pos,
    warp_image,
)
from tests.conftest import fixture_path

EXAMPLES = ("deep3d", "examples")


@pytest.fixture(scope="module")
def lm3d() -> np.ndarray:
    return load_lm3d(fixture_path("deep3d", "BFM", "similarity_Lm3D_all.mat"))


def official_detection(name: str) -> np.ndarray:
    return np.loadtxt(fixture_path(*EXAMPLES, "detections", f"{name}.txt"))


def project(lm3d: np.ndarray, scale: float, t_up: np.ndarray, height: int, rotation=np.eye(3)) -> np.ndarray:
    """Landmarks of a face ``scale * R X + t`` (y-up image), returned y-down like a detector's."""
    return flip_y(scale * (lm3d @ rotation.T)[:, :2] + t_up, height)


# ---------------------------------------------------------------- conventions
def test_convention_five_from_68_order_and_means():
    lm68 = np.arange(68 * 3, dtype=np.float64).reshape(68, 3) ** 1.5
    five = five_from_68(lm68)
    expected = [(lm68[36] + lm68[39]) / 2, (lm68[42] + lm68[45]) / 2, lm68[30], lm68[48], lm68[54]]
    np.testing.assert_allclose(five, expected)


def test_convention_lm3d_is_image_left_first(lm3d):
    # the mean face's 5 points: image-left eye first (x < 0 in the model's x-right frame), y up (eyes above mouth)
    assert lm3d.shape == (5, 3)
    assert lm3d[0, 0] < 0 < lm3d[1, 0] and lm3d[3, 0] < 0 < lm3d[4, 0]
    assert lm3d[0, 1] > lm3d[2, 1] > lm3d[3, 1]


def test_convention_flip_y_is_deep3ds_and_an_involution():
    p = np.array([[3.0, 0.0], [5.5, 9.0]])
    np.testing.assert_array_equal(flip_y(p, 10), [[3.0, 9.0], [5.5, 0.0]])  # lm[:, -1] = H - 1 - lm[:, -1]
    np.testing.assert_array_equal(flip_y(flip_y(p, 10), 10), p)


# ---------------------------------------------------------------- POS
@pytest.mark.parametrize("seed", range(4))
def test_pos_recovers_scale_and_translation_of_a_similarity(seed, lm3d):
    rng = np.random.default_rng(seed)
    rotation = Rotation.from_euler("xyz", rng.uniform(-0.4, 0.4, 3)).as_matrix()
    scale, t = rng.uniform(50, 400), rng.uniform(-100, 500, 2)
    xp = scale * (lm3d @ rotation.T)[:, :2] + t
    t_hat, s_hat = pos(xp, lm3d)
    np.testing.assert_allclose(t_hat, t, atol=1e-9)
    assert s_hat == pytest.approx(scale, rel=1e-12)


def test_pos_is_the_least_squares_affine_camera(lm3d):
    # noisy points: POS's translation and camera rows are the minimisers of the 2N residuals (normal equations)
    rng = np.random.default_rng(7)
    xp = 120 * lm3d[:, :2] + [200, 150] + rng.normal(0, 2, (5, 2))
    t, _ = pos(xp, lm3d)
    design = np.c_[lm3d, np.ones(5)]
    solution = np.linalg.solve(design.T @ design, design.T @ xp)
    np.testing.assert_allclose(t, solution[3], atol=1e-9)


# ---------------------------------------------------------------- the transform
def test_align_transform_recovers_known_scale_and_translation(lm3d):
    w0, h0, scale, t_up = 640, 480, 150.0, np.array([300.0, 260.0])
    tr = align_transform(project(lm3d, scale, t_up, h0), lm3d, (w0, h0))
    assert tr.s == pytest.approx(102.0 / scale, rel=1e-12)
    np.testing.assert_allclose([tr.tx, tr.ty], t_up, atol=1e-9)  # Deep3D's y-up translation
    assert tr.resized == (int(w0 * tr.s), int(h0 * tr.s))


def test_aligned_landmarks_sit_where_rescale_factor_puts_the_mean_face(lm3d):
    # a frontal face lands at 112 + 102 * (X, -Y) in the crop, up to the two truncations (< 1.5 px)
    h0 = 400
    tr = align_transform(project(lm3d, 180.0, np.array([210.0, 190.0]), h0), lm3d, (420, h0))
    aligned = tr.to_aligned(project(lm3d, 180.0, np.array([210.0, 190.0]), h0))
    ideal = 111.5 + 102 * np.c_[lm3d[:, 0], -lm3d[:, 1]]  # pixel centres of a 224 crop: 0..223, centre 111.5
    assert np.abs(aligned - ideal).max() < 1.5


def test_68_point_input_equals_its_five_points(lm3d):
    rng = np.random.default_rng(3)
    lm68 = rng.uniform(100, 300, (68, 2))
    a = align_transform(lm68, lm3d, (400, 400))
    b = align_transform(five_from_68(lm68), lm3d, (400, 400))
    np.testing.assert_array_equal(a.trans_params, b.trans_params)


@pytest.mark.parametrize("name", ["000002", "015309", "000125"])
def test_inverse_of_forward_is_identity(name, lm3d):
    image = Image.open(fixture_path(*EXAMPLES, f"{name}.jpg"))
    tr = align_transform(official_detection(name), lm3d, image.size)
    p = np.random.default_rng(0).uniform(-50, 900, (100, 2))
    np.testing.assert_allclose(tr.to_original(tr.to_aligned(p)), p, atol=1e-9)
    np.testing.assert_allclose(tr.to_aligned(tr.to_original(p)), p, atol=1e-9)
    homogeneous = np.c_[tr.to_aligned(p), np.ones(len(p))]
    np.testing.assert_allclose(homogeneous @ tr.matrix_to_original.T, p, atol=1e-9)


def test_trans_params_rebuild_the_same_transform(lm3d):
    tr = align_transform(official_detection("000002"), lm3d, (423, 594))
    again = AlignTransform.from_trans_params(tr.trans_params.astype(np.float64))
    assert again == tr and again.box == tr.box and again.resized == tr.resized


def test_truncations_are_toward_zero_like_numpy_int32():
    # Deep3D writes (value).astype(np.int32): toward zero, also for a crop that starts left of the image
    tr = AlignTransform(w0=900, h0=1354, s=0.2226, tx=400.7, ty=728.3)
    w, h = tr.resized
    left = np.float64(w / 2 - 112 + (tr.tx - tr.w0 / 2) * tr.s)
    up = np.float64(h / 2 - 112 + (tr.h0 / 2 - tr.ty) * tr.s)
    assert left < 0 and tr.box == (int(left.astype(np.int32)), int(up.astype(np.int32)))
    assert tr.resized == (int(np.float64(900 * tr.s).astype(np.int32)), int(np.float64(1354 * tr.s).astype(np.int32)))


def test_convention_deep3d_lm_new_is_within_two_pixels_of_the_exact_map(lm3d):
    # Deep3D's own landmark map (resize_n_crop_img's lm_new, y up) ignores the truncations of w, h, left and up.
    # In y-down crop pixels it differs from the exact map by less than 2 px + |s - 1| / 2.
    for name in ("000002", "000033", "015316"):
        image = Image.open(fixture_path(*EXAMPLES, f"{name}.jpg"))
        lm = official_detection(name)
        tr = align_transform(lm, lm3d, image.size)
        w, h = tr.resized
        lm_up = flip_y(lm, tr.h0)
        lm_new = (lm_up - [tr.tx, tr.ty] + [tr.w0 / 2, tr.h0 / 2]) * tr.s - [w / 2 - 112, h / 2 - 112]
        gap = np.abs(flip_y(lm_new, 224) - tr.to_aligned(lm)).max()
        assert gap < 2 + abs(tr.s - 1) / 2, (name, gap)


# ---------------------------------------------------------------- the warp
def resize_then_crop(image: Image.Image, tr: AlignTransform) -> np.ndarray:
    """Deep3D's resize_n_crop_img image path: PIL bicubic resize of the whole image, then crop (zeros outside)."""
    (w, h), (left, up) = tr.resized, tr.box
    return np.asarray(image.resize((w, h), Image.Resampling.BICUBIC).crop((left, up, left + 224, up + 224)))


@pytest.mark.parametrize("name", ["000002", "000125", "015309", "015316"])  # 015309's crop leaves the image
def test_warp_is_bit_identical_to_resize_then_crop(name, lm3d):
    image = Image.open(fixture_path(*EXAMPLES, f"{name}.jpg")).convert("RGB")
    face = align_image(image, official_detection(name), lm3d)
    assert face.image.shape == (224, 224, 3) and face.image.dtype == np.uint8
    np.testing.assert_array_equal(face.image, resize_then_crop(image, face.transform))


def test_warp_outside_the_image_is_black():
    tr = AlignTransform(w0=100, h0=100, s=1.0, tx=1000.0, ty=50.0)
    assert not warp_image(np.full((100, 100, 3), 200, np.uint8), tr).any()


def blob_image(width: int, height: int, centres: np.ndarray, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.zeros((height, width))
    for cx, cy in centres:
        image += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma ** 2))
    return np.repeat((255 * np.clip(image, 0, 1)).round().astype(np.uint8)[..., None], 3, axis=-1)


def centroid(channel: np.ndarray, around: np.ndarray, radius: int) -> np.ndarray:
    x0, y0 = np.round(around).astype(int) - radius
    window = channel[y0:y0 + 2 * radius + 1, x0:x0 + 2 * radius + 1].astype(np.float64)
    yy, xx = np.mgrid[0:window.shape[0], 0:window.shape[1]]
    return np.array([(window * xx).sum(), (window * yy).sum()]) / window.sum() + [x0, y0]


@pytest.mark.parametrize("face_scale", [70.0, 120.0, 200.0])  # s = 102 / face_scale: up- and down-scaling
def test_landmarks_land_where_the_aligned_image_shows_them(face_scale, lm3d):
    h0, w0 = 420, 460
    rotation = Rotation.from_euler("z", 0.2).as_matrix()
    landmarks = project(lm3d, face_scale, np.array([227.3, 201.6]), h0, rotation)
    image = blob_image(w0, h0, landmarks, sigma=2.5 * face_scale / 102)
    face = align_image(image, landmarks, lm3d)
    expected = face.transform.to_aligned(landmarks)
    found = np.array([centroid(face.image[..., 0], p, radius=9) for p in expected])
    np.testing.assert_allclose(found, expected, atol=0.03)  # measured <= 0.008 px
    # and back: the dots found in the crop map onto the drawn ones
    np.testing.assert_allclose(face.transform.to_original(found), landmarks, atol=0.03 * face_scale / 102)


# ---------------------------------------------------------------- entry-point checks
def test_bad_inputs_raise_value_error(lm3d):
    with pytest.raises(ValueError, match=r"\(5, 2\) or \(68, 2\)"):
        align_transform(np.zeros((4, 2)), lm3d, (100, 100))
    with pytest.raises(ValueError, match="finite"):
        align_transform(np.full((5, 2), np.nan), lm3d, (100, 100))
    with pytest.raises(ValueError, match="degenerate"):
        align_transform(np.full((5, 2), 50.0), lm3d, (100, 100))
    with pytest.raises(ValueError, match=r"\(5, 3\)"):
        align_transform(np.zeros((5, 2)) + np.arange(5)[:, None], lm3d[:4], (100, 100))
    tr = AlignTransform(w0=100, h0=100, s=1.0, tx=50.0, ty=50.0)
    with pytest.raises(ValueError, match="does not match"):
        warp_image(np.zeros((90, 100, 3), np.uint8), tr)


def test_image_to_tensor_input_is_deep3ds_division():
    image = np.random.default_rng(1).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    x = image_to_tensor_input(image)
    assert x.shape == (2, 3, 224, 224) and str(x.dtype) == "torch.float32"
    np.testing.assert_array_equal(x.numpy(), (image / 255.0).astype(np.float32).transpose(0, 3, 1, 2))
