"""The deep3d extractor: net_recon structure and golden, checkpoints, MTCNN landmarks, cameras, the Ray-ready class."""
from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from pipelines.extractors.deep3d import Deep3DExtractor
from reenact.assets import MissingAssetError
from reenact.data.schema import COEFFS
from reenact.face3d.camera import PerspectiveCamera
from reenact.face3d.coeffs import LAYOUT, TRANS
from reenact.faces import deep3d
from reenact.faces.align import (
    AlignedFace,
    AlignTransform,
    align_transform,
    image_to_tensor_input,
    load_lm3d,
    warp_image,
)
from reenact.faces.deep3d import (
    ReconNet,
    aligned_camera,
    build_recon_net,
    checkpoint_filter_fn,
    coeffs_to_aligned,
    coeffs_to_frame,
    frame_camera,
    read_net_recon,
)
from reenact.faces.landmarks5 import Landmarks5
from tests.conftest import fixture_path, state_dict_entries

EXAMPLES = ("deep3d", "examples")
NAMES = ("000002", "000006", "000007", "000031", "000033", "000037", "000050", "000055", "000114", "000125",
         "000126", "015259", "015270", "015309", "015310", "015316", "015384")


@pytest.fixture(scope="module")
def golden() -> dict:
    return torch.load(fixture_path("baselines", "deep3dfacerecon_golden.pt"), weights_only=True)


@pytest.fixture(scope="module")
def random_weights() -> dict[str, torch.Tensor]:
    """A ReconNet with seeded random weights everywhere (the heads too, so coefficients are not all zero)."""
    torch.manual_seed(0)
    net = ReconNet()
    for layer in net.final_layers:
        torch.nn.init.normal_(layer.weight, std=0.02)
        torch.nn.init.normal_(layer.bias, std=0.1)
    return {k: v.clone() for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def detector() -> Landmarks5:
    return Landmarks5()


@pytest.fixture(scope="module")
def lm3d_path():
    return fixture_path("deep3d", "BFM", "similarity_Lm3D_all.mat")


def example(name: str) -> Image.Image:
    return Image.open(fixture_path(*EXAMPLES, f"{name}.jpg")).convert("RGB")


def official_detection(name: str) -> np.ndarray:
    return np.loadtxt(fixture_path(*EXAMPLES, "detections", f"{name}.txt"))


# ---------------------------------------------------------------- net_recon
def test_state_dict_keys_and_shapes_equal_the_official_ones():
    spec = json.loads(fixture_path("baselines", "deep3dfacerecon_keys.json").read_text())
    ours = state_dict_entries(ReconNet())
    assert ours == spec["modules"]["net_recon"]
    assert sum(p.numel() for p in ReconNet().parameters()) == spec["num_parameters"]["net_recon"]


def test_reproduces_the_official_forward_with_recipe_weights(golden):
    from baselines._recipe import recipe_state_dict

    weights = recipe_state_dict(golden["recipe"]["net_recon"], golden["recipe_source"])  # checks every checksum
    net = build_recon_net(weights=weights)
    image = golden["inputs"]["image"]
    with torch.no_grad():
        backbone, coeffs = net.backbone(image), net(image)
    assert backbone.shape == (2, 2048, 1, 1) and coeffs.shape == (2, 257)
    # README: 2 threads vs 1 differ by 3.6e-7; a same-op re-implementation should match to ~1e-6
    torch.testing.assert_close(backbone, golden["outputs"]["backbone"], atol=1e-5, rtol=0)
    torch.testing.assert_close(coeffs, golden["outputs"]["coeffs"], atol=1e-5, rtol=0)


def test_convention_heads_fill_the_coefficient_layout():
    net = ReconNet().eval()  # heads are zero-initialised (official constructor): bias alone sets the output
    offset = 0
    for layer in net.final_layers:
        width = layer.bias.numel()
        layer.bias.data = torch.arange(offset, offset + width, dtype=torch.float32)
        offset += width
    with torch.no_grad():
        out = net(torch.rand(1, 3, 64, 64))
    torch.testing.assert_close(out[0], torch.arange(257, dtype=torch.float32))
    assert list(LAYOUT) == ["id", "exp", "tex", "angle", "gamma", "trans"]
    assert [n for n, _ in deep3d.HEADS][:5] == list(LAYOUT)[:5] and TRANS == slice(254, 257)


# ---------------------------------------------------------------- checkpoints
def test_missing_checkpoint_raises_missing_asset_error(tmp_path):
    with pytest.raises(MissingAssetError, match=r"epoch_20\.pth"):
        build_recon_net(assets=tmp_path)
    with pytest.raises(MissingAssetError, match="nowhere.pth"):
        build_recon_net(tmp_path / "nowhere.pth")


def fake_official_checkpoint(path, weights: dict[str, torch.Tensor]) -> None:
    """``BaseModel.save_networks``'s layout: net_recon state dict + optimizer and scheduler state dicts."""
    head = torch.nn.Conv2d(2048, 1, 1)  # a tiny optimizer target keeps the fake small; the format is what matters
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-4)
    head(torch.ones(1, 2048, 1, 1)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.5 ** epoch)
    torch.save({"net_recon": weights, "opt_00": optimizer.state_dict(), "sched_00": scheduler.state_dict()}, path)


def test_fake_official_checkpoint_loads_and_reproduces_outputs(tmp_path, random_weights):
    path = tmp_path / "deep3d" / "epoch_20.pth"
    path.parent.mkdir()
    fake_official_checkpoint(path, random_weights)
    reference = build_recon_net(weights=random_weights)
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(x)
        for net in (build_recon_net(path), build_recon_net(assets=tmp_path)):  # explicit file, asset folder
            torch.testing.assert_close(net(x), expected, atol=0, rtol=0)
    assert expected.abs().max() > 0.01


def test_checkpoint_filter_fn_strips_ddp_prefix_and_fills_num_batches_tracked(random_weights):
    saved = {f"module.{k}": v for k, v in random_weights.items() if not k.endswith("num_batches_tracked")}
    filtered = checkpoint_filter_fn(saved)
    assert list(sorted(filtered)) == sorted(random_weights)
    ReconNet().load_state_dict(filtered, strict=True)


def test_non_official_checkpoint_is_refused(tmp_path, random_weights):
    torch.save({"state_dict": random_weights}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="net_recon"):
        read_net_recon(tmp_path / "other.pth")


# ---------------------------------------------------------------- MTCNN 5 points
def test_mtcnn_landmarks_land_near_the_official_detections(detector, capsys):
    errors, relative = [], []
    for name, detection in zip(NAMES, detector([example(n) for n in NAMES])):
        official = official_detection(name)
        assert detection is not None, name
        error = np.linalg.norm(detection.landmarks - official, axis=1)  # 5 points, pixels
        errors.append(error)
        relative.append(error.mean() / np.linalg.norm(official[1] - official[0]))
        assert detection.landmarks[0, 0] < detection.landmarks[1, 0]  # image-left eye first, as the official files
    errors = np.concatenate(errors)
    with capsys.disabled():
        print(f"\nMTCNN vs official 5 points on {len(NAMES)} photos: median {np.median(errors):.2f} px, "
              f"mean {errors.mean():.2f} px, max {errors.max():.2f} px; per-photo mean error / eye distance: "
              f"median {np.median(relative):.3f}, max {np.max(relative):.3f}")
    assert np.median(errors) < 5.0           # measured 3.6 px (images 245-1354 px wide)
    assert max(relative) < 0.1               # measured 0.063 (the largest faces have the largest pixel errors)


def test_alignment_from_mtcnn_is_close_to_alignment_from_the_official_points(detector, lm3d_path):
    lm3d = load_lm3d(lm3d_path)
    for name in ("000002", "000050", "015316"):
        image = example(name)
        ours = align_transform(detector([image])[0].landmarks, lm3d, image.size)
        theirs = align_transform(official_detection(name), lm3d, image.size)
        assert abs(ours.s / theirs.s - 1) < 0.08                       # measured <= 6 %
        shift = ours.to_aligned(official_detection(name)) - theirs.to_aligned(official_detection(name))
        assert np.abs(shift).max() < 8                                 # crop pixels; measured <= 5.9


def test_no_face_gives_none(detector):
    blank = Image.new("RGB", (200, 160), (128, 128, 128))
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (160, 200, 3), dtype=np.uint8))
    assert detector([blank, noise]) == [None, None]


# ---------------------------------------------------------------- cameras
def test_frame_coefficients_put_the_head_where_the_crop_shows_it(lm3d_path):
    lm3d = load_lm3d(lm3d_path)
    transform = align_transform(official_detection("000002"), lm3d, (423, 594))
    trans = torch.tensor([[0.3, -0.2, 0.4], [-0.5, 0.6, -0.2]], dtype=torch.float64)
    coeffs = torch.zeros(2, 257, dtype=torch.float64)
    coeffs[:, TRANS] = trans
    framed = coeffs_to_frame(coeffs, transform)
    # the head origin under Deep3D's 224 camera, carried to frame pixels by the alignment's exact inverse ...
    crop_px = PerspectiveCamera.deep3d(224).project(trans)[:, :2].numpy()    # continuous, y down
    expected = transform.to_original(crop_px - 0.5) + 0.5                       # index <-> continuous pixels
    # ... is where the frame camera puts the re-framed head
    got = frame_camera(423, 594).project(framed[:, TRANS])[:, :2].numpy()
    # one camera focal cannot carry the crop's two scales k = (w / w0, h / h0), which differ by the truncations of
    # w and h (here 0.2 %); that costs about |k_x / k_y - 1| / 2 times the distance from the principal point
    (kx, ky), offset = transform.scale, np.abs(crop_px - 112).max() / transform.s
    np.testing.assert_allclose(got, expected, atol=abs(kx / ky - 1) * offset + 1e-6)  # < 0.1 px
    torch.testing.assert_close(framed[:, :254], coeffs[:, :254])
    torch.testing.assert_close(coeffs_to_aligned(framed, transform), coeffs, atol=1e-12, rtol=0)


def test_aligned_camera_crops_back_to_deep3ds_camera(lm3d_path):
    transform = align_transform(official_detection("015316"), load_lm3d(lm3d_path), (1131, 1080))
    (kx, ky), (left, up) = transform.scale, transform.box
    crop = aligned_camera(transform).crop(left / kx, up / ky, 224 / kx, 224)
    reference = PerspectiveCamera.deep3d(224)
    assert crop.cx == pytest.approx(reference.cx) and crop.focal == pytest.approx(reference.focal, rel=1e-3)
    assert crop.cy == pytest.approx(reference.cy * kx / ky, rel=1e-12)  # square crop cut with the x scale
    assert frame_camera(256, 256) == PerspectiveCamera.deep3d(256)


# ---------------------------------------------------------------- the extractor
def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_extractor_end_to_end_on_a_real_photo(random_weights, lm3d_path, detector):
    photo = example("000002")
    batch = {
        "chunk_id": ["p#v#000000#000010"] * 5,
        "frame_index": np.arange(5, dtype=np.int32),
        "image": [encode(photo, "JPEG"), encode(Image.new("RGB", (256, 256), (90, 90, 90))), b"not an image",
                  None, encode(photo)],
        "status": ["ok", "ok", "ok", "too_short", "ok"],
        "error": ["", "", "", "chunk beyond the video's length", ""],
    }
    extractor = Deep3DExtractor(weights=random_weights, lm3d=lm3d_path, device="cpu")
    out = extractor(batch)
    assert out["status"] == ["ok", "no_face", "decode_error", "too_short", "ok"]
    assert out["error"][0] == "" and "no face" in out["error"][1] and "decode" in out["error"][2]
    assert out["error"][3] == "chunk beyond the video's length"
    assert out["extractor"] == ["deep3d"] * 5 and out["frame_index"] == [0, 1, 2, 3, 4]
    assert all(out[k][i] is None for k in ("coeffs", "align") for i in (1, 2, 3))
    pa.Table.from_pydict(out, schema=COEFFS).validate(full=True)  # the rows follow the schema

    # the recorded transform is the alignment of MTCNN's points on the decoded frame (MTCNN run alone here, batched
    # with the JPEG frame there: float noise ~1e-5 px)
    decoded = Image.open(io.BytesIO(batch["image"][4])).convert("RGB")
    alone = align_transform(detector([decoded])[0].landmarks, load_lm3d(lm3d_path), decoded.size)
    np.testing.assert_allclose(out["align"][4], alone.trans_params, rtol=1e-6, atol=1e-3)
    # and the coefficients are the network's output on the crop it records, re-framed into the frame's camera
    transform = AlignTransform.from_trans_params(out["align"][4])
    face = AlignedFace(warp_image(decoded, transform), transform)
    with torch.no_grad():
        raw = extractor.net(image_to_tensor_input(face.image[None]))                   # 1 x 257
    coeffs = torch.tensor([out["coeffs"][4]], dtype=torch.float32)
    assert coeffs.shape == (1, 257) and raw.abs().max() > 0.01
    # (batch of 2 there, of 1 here: the convolutions differ by ~1e-5)
    torch.testing.assert_close(coeffs_to_aligned(coeffs, face.transform), raw, atol=1e-4, rtol=1e-4)
    # the tensor API: the same coefficients, NaN where no face
    from reenact.data.codec import uint8_to_tensor

    tensor = extractor.estimator.estimate_coeffs([uint8_to_tensor(np.array(decoded)), torch.full((3, 64, 80), 0.4)])
    assert tensor.shape == (2, 257) and torch.isnan(tensor[1]).all()
    torch.testing.assert_close(tensor[0], coeffs[0], atol=1e-4, rtol=1e-4)
    # JPEG and PNG of the same photo align to nearly the same crop
    jpeg = np.array(out["align"][0]) / np.array(out["align"][4])
    np.testing.assert_allclose(jpeg, 1, atol=0.02)


def test_extractor_without_checkpoint_raises_missing_asset_error(tmp_path, lm3d_path):
    with pytest.raises(MissingAssetError, match="deep3d"):
        Deep3DExtractor(assets=tmp_path, lm3d=lm3d_path, device="cpu")
