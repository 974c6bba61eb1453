"""dlib's 68 points: the model file is found without importing face_recognition_models, the points land near the
official 5-point detections of Deep3DFaceRecon's example photos, and the pixel-centre convention holds."""
from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
from PIL import Image

from reenact.assets import MissingAssetError
from reenact.faces import landmarks68 as l68
from tests.conftest import fixture_path

#: small photos (245-294 px wide) keep the HOG detector fast
NAMES = ("000033", "000037", "000050", "000125", "000007")


@pytest.fixture(scope="module")
def detector():
    return l68.Landmarks68()


def test_model_file_is_found_without_importing_the_package():
    sys.modules.pop(l68.PACKAGE, None)
    path = l68.model_file()
    assert path.name == "shape_predictor_68_face_landmarks.dat" and path.stat().st_size > 50_000_000
    assert l68.PACKAGE not in sys.modules            # its __init__ (pkg_resources) never ran


def test_missing_model_file_names_the_file():
    with pytest.raises(MissingAssetError, match="nope.dat.*face-recognition-models"):
        l68.model_file("nope.dat")


def test_missing_package_names_the_package(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingAssetError, match="package face_recognition_models not found"):
        l68.model_file()


def test_five_points_from_68():
    points = np.zeros((68, 2))
    points[36:42] = [10, 20]
    points[42:48, 0] = np.arange(6)          # mean 2.5
    points[30], points[48], points[54] = [5, 6], [7, 8], [9, 10]
    np.testing.assert_allclose(l68.five_points(points), [[10, 20], [2.5, 0], [5, 6], [7, 8], [9, 10]])


def test_landmarks_land_near_the_official_detections(detector, capsys):
    errors, relative = [], []
    for name in NAMES:
        image = Image.open(fixture_path("deep3d", "examples", f"{name}.jpg"))
        official = np.loadtxt(fixture_path("deep3d", "examples", "detections", f"{name}.txt"))   # 5 x 2
        points = detector(image)
        assert points is not None and points.shape == (68, 2)
        error = np.linalg.norm(l68.five_points(points) - official, axis=1)
        errors.append(error)
        relative.append(error / np.linalg.norm(official[0] - official[1]))
    errors, relative = np.concatenate(errors), np.concatenate(relative)
    with capsys.disabled():
        print(f"\ndlib 68 -> 5 points vs official detections on {len(NAMES)} photos: median {np.median(errors):.2f} px "
              f"(max {errors.max():.2f}); relative to the eye distance median {np.median(relative):.3f}")
    assert np.median(errors) < 4.0            # measured 3.2 px
    assert np.median(relative) < 0.08 and relative.max() < 0.2


def test_convention_pixel_centres(detector):
    """Points are dlib's pixel indices + 0.5; a box from detect() given back reproduces the same points."""
    image = np.asarray(Image.open(fixture_path("deep3d", "examples", "000033.jpg")).convert("RGB"))
    box = detector.detect(image)
    points = detector(image)
    np.testing.assert_array_equal(detector(image, box=box), points)
    np.testing.assert_array_equal(points % 1.0, np.full_like(points, 0.5))
    # translating the image by whole pixels translates the points exactly (no half-pixel drift)
    padded = np.pad(image, ((7, 0), (5, 0), (0, 0)), mode="edge")
    np.testing.assert_allclose(detector(padded, box=box + [5, 7, 5, 7]), points + [5, 7])


def test_no_face_gives_none(detector):
    assert detector(np.full((120, 160, 3), 128, np.uint8)) is None


def test_rejects_non_rgb(detector):
    with pytest.raises(ValueError, match="RGB uint8"):
        detector(np.zeros((10, 10), np.uint8))
