"""reenact.faces tensor APIs: image checks, detect, 5/68 landmarks, align, estimate_coeffs, embed."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.extractors.landmark_fit import LandmarksExtractor
from reenact.assets import MissingAssetError
from reenact.data.codec import decode_image, uint8_to_tensor
from reenact.faces import embed as emb
from reenact.faces.align import align, align_image, load_lm3d
from reenact.faces.detect import detect
from reenact.faces.estimate import CoeffEstimate, estimate_coeffs, get_estimator
from reenact.faces.images import check_image, image_list
from reenact.faces.landmark_fit import LandmarkFitEstimator
from reenact.faces.landmarks5 import landmarks5, mtcnn
from reenact.faces.landmarks68 import dlib68, landmarks68
from tests.conftest import fixture_path

PHOTO = ("deep3d", "examples", "000033.jpg")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return decode_image(fixture_path(*PHOTO).read_bytes())


@pytest.fixture(scope="module")
def batch(photo) -> list[torch.Tensor]:
    """The photo and a blank frame of another size."""
    return [uint8_to_tensor(photo), torch.full((3, 120, 150), 0.5)]


# ---------------------------------------------------------------- inputs
def test_images_must_be_rgb_float_in_unit_range():
    with pytest.raises(ValueError, match="float tensor"):
        check_image(torch.zeros(3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_image(torch.full((3, 8, 8), 2.0))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        image_list(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="detector"):
        detect([torch.zeros(3, 8, 8)], "haar")


# ---------------------------------------------------------------- detection and landmarks
def test_detect_both_detectors_on_a_photo_and_nan_without_a_face(batch, photo):
    for name in ("mtcnn", "dlib"):
        found = detect(batch, name)
        assert found.detector == name and found.found.tolist() == [True, False]
        assert torch.isnan(found.boxes[1]).all() and torch.isnan(found.score[1])
        left, top, right, bottom = found.boxes[0].tolist()
        assert 0 <= left < right <= photo.shape[1] and 0 <= top < bottom <= photo.shape[0]
    mt, dl = detect(batch, "mtcnn"), detect(batch, "dlib")
    assert 0.9 < float(mt.score[0]) <= 1.0
    expected = mtcnn()([photo])[0]                                       # the class API, MTCNN's pixel indices
    np.testing.assert_allclose(mt.boxes[0].numpy(), expected.box + 0.5)
    np.testing.assert_allclose(dl.boxes[0].numpy(), dlib68().detect(photo))
    centre = lambda b: (b[:2] + b[2:]) / 2  # noqa: E731
    size = float(dl.boxes[0, 2] - dl.boxes[0, 0])
    assert np.linalg.norm(centre(mt.boxes[0]) - centre(dl.boxes[0])) < 0.3 * size   # the same face


def test_landmarks_tensor_apis_equal_the_detectors_in_continuous_pixels(batch, photo):
    five, sixty_eight = landmarks5(batch), landmarks68(batch)
    assert five.shape == (2, 5, 2) and sixty_eight.shape == (2, 68, 2)
    assert torch.isnan(five[1]).all() and torch.isnan(sixty_eight[1]).all()
    np.testing.assert_allclose(five[0].numpy(), mtcnn()([photo])[0].landmarks + 0.5)
    np.testing.assert_allclose(sixty_eight[0].numpy(), dlib68()(photo))
    boxed = landmarks68(batch, torch.tensor([[float("nan")] * 4, [10.0, 10.0, 110.0, 110.0]]))
    assert torch.isnan(boxed[0]).all() and torch.isfinite(boxed[1]).all()    # a given box skips detection


def test_symmetric_landmarks_are_mirror_equivariant(batch, photo):
    """dlib's own points move when the photo is mirrored; the mirror-averaged ones mirror exactly (up to the
    rounding of the mirrored box to whole pixels)."""
    from reenact.faces.landmarks68 import mirror_box, mirror_points

    width = photo.shape[1]
    box = detect(batch[:1], "dlib").boxes
    flipped = torch.from_numpy(mirror_box(box[0].numpy(), width))[None]
    plain = [landmarks68(batch[:1], box)[0], landmarks68([batch[0].flip(-1)], flipped)[0]]
    sym = [landmarks68(batch[:1], box, symmetric=True)[0], landmarks68([batch[0].flip(-1)], flipped, symmetric=True)[0]]
    np.testing.assert_allclose(mirror_points(sym[1], width).numpy(), sym[0].numpy(), atol=1e-9)
    assert (mirror_points(plain[1], width) - plain[0]).abs().max() > 0.1     # dlib alone is not symmetric


def test_align_tensor_api_equals_align_image(batch, photo):
    lm3d = load_lm3d(fixture_path("deep3d", "BFM", "similarity_Lm3D_all.mat"))
    points = landmarks5(batch)
    aligned = align(batch, points.numpy(), lm3d)
    assert aligned.images.shape == (2, 3, 224, 224) and aligned.ok.tolist() == [True, False]
    assert aligned.transforms[1] is None and "landmarks" in aligned.errors[1]
    reference = align_image(photo, points[0].numpy() - 0.5, lm3d)                 # align_image: pixel indices
    assert aligned.transforms[0] == reference.transform
    torch.testing.assert_close(aligned.images[0], uint8_to_tensor(reference.image), atol=0, rtol=0)
    assert not aligned.images[1].any()


# ---------------------------------------------------------------- coefficient estimation
def test_landmark_estimator_equals_the_row_adapter(batch, photo):
    estimator = get_estimator("landmarks")(model="procedural-small")
    result = estimator.estimate(batch)
    assert isinstance(result, CoeffEstimate) and result.coeffs.shape == (2, 257) and result.coeffs.dtype == torch.float32
    assert [s.value for s in result.status] == ["ok", "no_face"] and "neither MTCNN nor dlib" in result.error[1]
    assert torch.isnan(result.coeffs[1]).all() and torch.isfinite(result.coeffs[0]).all()
    rows = LandmarksExtractor(model="procedural-small")({"chunk_id": ["p#v#000000#000001"], "frame_index": [0],
                                                         "image": [fixture_path(*PHOTO).read_bytes()]})
    geometry = np.r_[0:144, 224:227, 254:257]             # the adapter also fits texture and light (estimator: off)
    np.testing.assert_allclose(np.asarray(rows["coeffs"][0])[geometry], result.coeffs[0].numpy()[geometry], atol=1e-6)
    appearance = np.r_[144:224, 227:254]                  # tex and gamma
    assert np.abs(np.asarray(rows["coeffs"][0])[appearance]).max() > 0 and not result.coeffs[0, appearance].any()
    assert rows["fit_error"][0] == pytest.approx(float(result.fit_error[0]))
    torch.testing.assert_close(estimator.estimate_coeffs(batch[:1]), result.coeffs[:1], equal_nan=True)


def test_estimate_coeffs_by_name_and_unknown_name(batch):
    coeffs = estimate_coeffs(batch[:1], "landmarks", model="procedural-small")
    assert coeffs.shape == (1, 257) and torch.isfinite(coeffs).all()
    with pytest.raises(ValueError, match="registered: deep3d, landmarks"):
        get_estimator("oracle")


def test_landmark_estimator_shares_identity_over_the_call(batch):
    flipped = batch[0].flip(-1)                                          # a mirrored frame of the same person
    result = LandmarkFitEstimator(model="procedural-small").estimate([batch[0], flipped])
    assert result.ok.all()
    assert torch.equal(result.coeffs[0, :80], result.coeffs[1, :80])


# ---------------------------------------------------------------- identity embeddings
def test_embed_same_image_has_cosine_one(batch):
    vectors = emb.embed([batch[0], batch[0], batch[1]])
    assert vectors.shape == (3, 128)
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(3))
    assert float(emb.cosine_similarity(vectors[:1], vectors[1:2])) == pytest.approx(1.0, abs=1e-6)
    found = emb.embed_faces([batch[0], batch[1]])
    assert found.found.tolist() == [True, False] and found.backend == "dlib"   # the blank frame: whole image


@pytest.mark.slow
def test_embed_ranks_the_same_synthetic_identity_above_another():
    """Two renders each of three synthetic identities (different expressions and poses): every render is closer to
    its own identity's other render than to any render of another identity."""
    from perf import calibrate_landmarks as cal
    from reenact.face3d.procedural import procedural_model
    from reenact.synth.world import sample_identity

    model, rng = procedural_model("small"), np.random.default_rng(0)
    renders = []
    for i in range(3):
        identity = sample_identity(rng, f"id{i}", "train")
        coeffs = cal.calibration_coeffs(rng, identity, 2)
        renders.append(cal.render_crops(model, coeffs, *cal.identity_scene(model, identity, i)))
    result = emb.embed_faces(uint8_to_tensor(np.concatenate(renders)))
    assert result.found.all()
    similarity = (result.vectors @ result.vectors.T).numpy()                       # 6 x 6, identities in pairs
    for a in range(6):
        same = a ^ 1
        others = [b for b in range(6) if b // 2 != a // 2]
        assert similarity[a, same] > similarity[a, others].max(), similarity.round(3)


def test_embed_backends_and_missing_weights(tmp_path, batch):
    with pytest.raises(ValueError, match="backend"):
        emb.embed(batch, "vgg")
    with pytest.raises(MissingAssetError, match="20180402-114759-vggface2.pt"):
        emb.FaceNetEmbedder(assets=tmp_path)
    with pytest.raises(MissingAssetError, match="w600k_r50.onnx"):
        emb.ArcFaceEmbedder(assets=tmp_path)


def test_facenet_embedder_loads_facenet_pytorch_weights(tmp_path, batch):
    """A file in facenet-pytorch's layout (with the VGGFace2 classifier) loads; rows are unit 512-d vectors."""
    from facenet_pytorch import InceptionResnetV1

    torch.manual_seed(0)
    net = InceptionResnetV1(pretrained=None, classify=False)
    state = net.state_dict() | {"logits.weight": torch.zeros(8631, 512), "logits.bias": torch.zeros(8631)}
    path = tmp_path / "facenet" / "20180402-114759-vggface2.pt"
    path.parent.mkdir()
    torch.save(state, path)
    embedder = emb.FaceNetEmbedder(assets=tmp_path)
    vectors = embedder(batch).vectors
    assert vectors.shape == (2, 512)
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(2))
    boxes, found = emb.face_boxes(batch)
    x = (emb.box_crops(batch, boxes, 160) * 255 - 127.5) / 128                     # the documented input
    with torch.no_grad():
        expected = torch.nn.functional.normalize(net.eval()(x), dim=-1)
    torch.testing.assert_close(vectors, expected, atol=1e-5, rtol=0)
    assert found.tolist() == [True, False]


def test_similarity_transform_recovers_a_known_similarity():
    rng = np.random.default_rng(3)
    src = rng.uniform(0, 200, (5, 2))
    angle, scale, shift = 0.3, 0.7, np.array([12.0, -5.0])
    matrix = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    got = emb.similarity_transform(src, src @ matrix.T + shift)
    np.testing.assert_allclose(got, np.concatenate([matrix, shift[:, None]], 1), atol=1e-10)


def test_warp_affine_matches_skimage():
    """OpenCV-style warp (pixel indices, bilinear, zeros outside) against skimage.transform.warp."""
    from skimage.transform import AffineTransform, warp

    rng = np.random.default_rng(4)
    image = rng.uniform(0, 1, (40, 50, 3))
    matrix = np.array([[0.9, 0.2, -3.0], [-0.1, 1.1, 4.0]])
    ours = emb.warp_affine(torch.from_numpy(image).permute(2, 0, 1), matrix, 32).permute(1, 2, 0).numpy()
    inverse = AffineTransform(matrix=np.vstack([matrix, [0, 0, 1]])).inverse
    reference = warp(image, inverse, output_shape=(32, 32), order=1, mode="constant", cval=0.0)
    inside = (warp(np.ones((40, 50)), inverse, output_shape=(32, 32), order=0, mode="constant") > 0)
    inside &= np.pad(inside, 1)[2:, 1:-1] & np.pad(inside, 1)[1:-1, 2:]          # away from the border ramp
    np.testing.assert_allclose(ours[inside], reference[inside], atol=1e-10)


def test_arcface_inputs_put_the_points_on_the_template():
    """Warping an image whose marks sit at the 5 points puts the marks at the template."""
    image = torch.zeros(3, 200, 180, dtype=torch.float64)
    points = np.array([[60.5, 80.5], [120.5, 78.5], [90.5, 110.5], [66.5, 140.5], [116.5, 139.5]])  # continuous
    for x, y in points:
        image[:, int(y) - 1:int(y) + 2, int(x) - 1:int(x) + 2] = 1.0
    warped = emb.arcface_inputs([image], torch.from_numpy(points)[None])[0, 0]
    for (tx, ty) in emb.ARCFACE_TEMPLATE:
        window = warped[int(round(ty)) - 2:int(round(ty)) + 3, int(round(tx)) - 2:int(round(tx)) + 3]
        assert window.max() > 0.2, (tx, ty)

