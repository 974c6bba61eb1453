"""Benchmark metrics against references: scipy, scikit-image, hand-computed values, synthetic-world identities."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark.metrics import Backends, MetricBatch, MetricOptions, create_metrics
from benchmark.metrics.frechet import FID, FrechetDistance, features_frechet
from benchmark.metrics.identity import CSIM, cosine_similarity
from benchmark.metrics.image import L1, PSNR, SSIM, psnr, ssim
from benchmark.metrics.landmarks import AKD, keypoint_distance
from benchmark.metrics.motion import AED, APD, expression_distance, pose_distance


def _images(n: int, seed: int, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _batch(n: int = 4, seed: int = 0, size: int = 32) -> MetricBatch:
    return MetricBatch(generated=_images(n, seed, size), source=_images(n, seed + 1, size),
                       driving=_images(n, seed + 2, size))


class MeanColour:
    """A toy embedder: the per-channel mean and spread (deterministic, no face needed)."""

    name = "mean-colour"

    def __call__(self, images):
        return torch.cat([images.mean((2, 3)), images.std((2, 3))], 1).double()


class CoeffsFromPixels:
    """A toy extractor: 257 values read off the image, so identical images give identical coefficients."""

    name = "toy"

    def __call__(self, images):
        return images.flatten(1)[:, :257].double()


# ---------------------------------------------------------------------------------------------------- CSIM
def test_cosine_similarity_matches_scipy():
    from scipy.spatial.distance import cosine

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 128)), rng.normal(size=(5, 128))
    np.testing.assert_allclose(cosine_similarity(a, b), [1 - cosine(x, y) for x, y in zip(a, b)], atol=1e-12)
    assert np.isnan(cosine_similarity(np.zeros((1, 3)), np.ones((1, 3))))[0]


def test_csim_of_an_image_with_itself_is_one_dlib():
    from benchmark.metrics.backends import FaceEmbedder

    x = _images(2, 0, 96)
    values = CSIM(FaceEmbedder("dlib"), "self").update(MetricBatch(generated=x, source=_images(2, 5, 96), driving=x))
    np.testing.assert_allclose(values, 1.0, atol=1e-9)


def test_csim_reference_is_source_for_cross_and_driving_for_self():
    b = _batch()
    cross = CSIM(MeanColour(), "cross").update(MetricBatch(b.source, b.source, b.driving))
    self_ = CSIM(MeanColour(), "self").update(MetricBatch(b.driving, b.source, b.driving))
    np.testing.assert_allclose(cross, 1.0, atol=1e-12)
    np.testing.assert_allclose(self_, 1.0, atol=1e-12)
    assert CSIM(MeanColour(), "cross").recorded_name == "CSIM[mean-colour]"


# ---------------------------------------------------------------------------------------------------- AED / APD
def _coeffs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.zeros(2, 257, dtype=torch.float64)
    d = g.clone()
    d[0, 80:144] = 0.5                     # every expression value off by 0.5
    d[1, 80] = -2.0                        # one expression value off by 2
    d[0, 224:227] = torch.tensor([0.1, -0.2, 0.3])   # angles
    d[0, 254:257] = torch.tensor([1.0, 0.0, -0.5])   # translation
    return g, d


def test_aed_apd_are_zero_for_identical_coefficients():
    c = torch.randn(3, 257, dtype=torch.float64)
    for reduce in ("mean", "sum"):
        assert np.all(expression_distance(c, c, reduce) == 0)
        for pose in ("angles", "angles+trans"):
            assert np.all(pose_distance(c, c, reduce, pose) == 0)


def test_aed_apd_hand_computed_per_option():
    g, d = _coeffs()
    np.testing.assert_allclose(expression_distance(g, d, "sum"), [32.0, 2.0])
    np.testing.assert_allclose(expression_distance(g, d, "mean"), [0.5, 2.0 / 64])
    np.testing.assert_allclose(pose_distance(g, d, "sum", "angles"), [0.6, 0.0])
    np.testing.assert_allclose(pose_distance(g, d, "mean", "angles"), [0.2, 0.0])
    np.testing.assert_allclose(pose_distance(g, d, "sum", "angles+trans"), [2.1, 0.0])
    np.testing.assert_allclose(pose_distance(g, d, "mean", "angles+trans"), [0.35, 0.0])
    with pytest.raises(ValueError, match="reduce"):
        expression_distance(g, d, "median")
    with pytest.raises(ValueError, match="257"):
        pose_distance(g[:, :100], d[:, :100])


def test_motion_metrics_record_their_options_and_use_dataset_coefficients():
    g, d = _coeffs()

    def extractor(images):
        return g
    extractor.name = "fixed"
    b = MetricBatch(*(_images(2, i) for i in range(3)), driving_coeffs=d)
    apd = APD(extractor, reduce="sum", pose="angles", driving="dataset")
    np.testing.assert_allclose(apd.update(b), [0.6, 0.0])
    assert apd.options() == {"extractor": "fixed", "reduce": "sum", "driving": "dataset", "pose": "angles"}
    assert apd.recorded_name == "APD[fixed]"
    np.testing.assert_allclose(AED(extractor, driving="dataset").update(b), [32.0, 2.0])


def test_copy_driving_scores_zero_motion_with_extracted_driving():
    b = _batch()
    same = MetricBatch(generated=b.driving, source=b.source, driving=b.driving)
    assert np.all(AED(CoeffsFromPixels()).update(same) == 0)
    assert np.all(APD(CoeffsFromPixels()).update(same) == 0)


# ---------------------------------------------------------------------------------------------------- Frechet / FID
def _scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_frechet_distance_matches_scipy_reference():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 16)), rng.normal(0.3, 1.5, size=(150, 16))
    assert features_frechet(a, b) == pytest.approx(_scipy_frechet(a, b), rel=1e-6)
    assert features_frechet(a, a) == pytest.approx(0.0, abs=1e-6)


def test_frechet_metric_batchwise_equals_all_at_once():
    b1, b2 = _batch(6, 0), _batch(5, 10)
    whole = MetricBatch(*(torch.cat([getattr(b1, r), getattr(b2, r)]) for r in ("generated", "source", "driving")))
    batched, once = FrechetDistance(MeanColour(), "cross"), FrechetDistance(MeanColour(), "cross")
    batched.update(b1), batched.update(b2), once.update(whole)
    assert batched.compute() == pytest.approx(once.compute(), rel=1e-9)
    reference = _scipy_frechet(MeanColour()(whole.generated).numpy(), MeanColour()(whole.source).numpy())
    assert once.compute() == pytest.approx(reference, rel=1e-5)
    assert batched.recorded_name == "FD[mean-colour]"


def test_fid_is_unavailable_without_the_standard_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("REENACT_ASSETS", str(tmp_path))
    fid = FID("cross")
    assert fid.unavailable and "pt_inception-2015-12-05-6726825d.pth" in fid.unavailable
    fid.update(_batch())
    assert fid.compute() is None and fid.recorded_name == "FID"
    (tmp_path / "pt_inception-2015-12-05-6726825d.pth").write_bytes(b"other weights")
    fid = FID("cross")
    assert fid.unavailable and "sha256" in fid.unavailable and fid.compute() is None


# ---------------------------------------------------------------------------------------------------- pixels
def test_psnr_and_ssim_match_scikit_image():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    a = _images(3, 0, 48)
    b = (a + 0.1 * _images(3, 1, 48) - 0.05).clamp(0, 1)
    for i in range(3):
        x, y = a[i].permute(1, 2, 0).double().numpy(), b[i].permute(1, 2, 0).double().numpy()
        assert psnr(a[i:i + 1], b[i:i + 1]).item() == pytest.approx(peak_signal_noise_ratio(x, y, data_range=1.0),
                                                                     rel=1e-9)
        reference = structural_similarity(x, y, channel_axis=-1, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                          use_sample_covariance=False)
        assert ssim(a[i:i + 1], b[i:i + 1]).item() == pytest.approx(reference, abs=1e-6)


def test_pair_metrics_batchwise_equal_all_at_once():
    b1, b2 = _batch(3, 0), _batch(4, 20)
    whole = MetricBatch(*(torch.cat([getattr(b1, r), getattr(b2, r)]) for r in ("generated", "source", "driving")))
    for cls in (L1, PSNR, SSIM):
        batched, once = cls(), cls()
        batched.update(b1), batched.update(b2)
        np.testing.assert_allclose(once.update(whole), batched.values(), rtol=1e-12)
        assert batched.compute() == pytest.approx(once.compute(), rel=1e-12)


def test_akd_hand_computed():
    a = torch.zeros(1, 68, 2, dtype=torch.float64)
    b = a.clone()
    b[0, :34, 0] = 3.0
    b[0, 34:, 1] = 4.0
    np.testing.assert_allclose(keypoint_distance(a, b), [3.5])

    def detector(images):
        return images[:, 0, :68, :2].double() * 10
    detector.name = "toy"
    x = _images(2, 0, 96)
    assert np.all(AKD(detector).update(MetricBatch(x, x, x)) == 0)


def test_registry_builds_the_defaults_with_injected_backends(tmp_path, monkeypatch):
    monkeypatch.setenv("REENACT_ASSETS", str(tmp_path))
    backends = Backends(MetricOptions(), embedder=MeanColour(), extractor=CoeffsFromPixels(),
                        landmarks=lambda x: torch.zeros(len(x), 68, 2))
    metrics = create_metrics(None, "self", backends)
    assert set(metrics) == {"csim", "aed", "apd", "fid", "fd-dlib", "l1", "psnr", "ssim", "akd"}
    with pytest.raises(ValueError, match="self"):
        create_metrics(["psnr"], "cross", backends)
    with pytest.raises(ValueError, match="unknown metrics"):
        create_metrics(["nope"], "cross", backends)


# ---------------------------------------------------------------------------------------------------- synthetic world
@pytest.mark.slow
def test_dlib_csim_ranks_same_identity_above_different_on_the_synthetic_world():
    from benchmark.metrics.backends import FaceEmbedder
    from benchmark.synthetic import synthetic_pairs

    pairs = synthetic_pairs("self", 6, seed=3, size=160) + synthetic_pairs("cross", 6, seed=3, size=160)
    embedder = FaceEmbedder("dlib")
    src = embedder(torch.stack([p["source"] for p in pairs]))
    drv = embedder(torch.stack([p["driving"] for p in pairs]))
    values = cosine_similarity(src, drv)
    same = values[[p["source_person"] == p["driving_person"] for p in pairs]]
    different = values[[p["source_person"] != p["driving_person"] for p in pairs]]
    assert same.size and different.size
    ranked = (same[:, None] > different[None, :]).mean()      # AUC of "same identity" by CSIM
    assert ranked >= 0.8, (same, different)
    assert same.mean() > different.mean()
