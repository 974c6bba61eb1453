"""FOMM: official key/shape parity, the small-width golden (absolute, relative, both grid_sample modes), the
Reenactor wrapper, and loading the official checkpoint format."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from baselines._fomm_blocks import (
    Discriminator,
    DiscriminatorConfig,
    KeypointModelConfig,
    Keypoints,
    KPDetector,
    MultiScaleDiscriminator,
    OcclusionAwareGenerator,
    convex_hull_area,
    kp2gaussian,
    load_state_exact,
    normalize_kp,
)
from baselines.fomm import FOMM, SMALL, VOX256_DISCRIMINATOR
from reenact.contract import ReenactInputs
from tests.conftest import fixture_path, state_dict_entries

# Bounds from measured float32 noise: max |ours - golden| over AVX-512, AVX2 (ATEN_CPU_CAPABILITY=avx2 and
# ONEDNN_MAX_CPU_ISA=AVX2), the SSE4.1/default kernels and 1 thread on one machine (the fixtures README's own
# fp32-vs-fp64 column agrees); each bound sits several times above the worst case, so it holds on other CPUs.
#: keypoints, jacobians, mask, occlusion, deformation, prediction: measured <= 8.3e-7 (12x margin)
ATOL = 1e-5
#: deformed / sparse_deformed: bilinear sampling where the grid leaves [-1, 1] and meets the zero padding amplifies
#: the grid's rounding (fixtures README): measured <= 2.9e-5 (legacy deformed, SSE kernels; 3.4x margin)
ATOL_WARPED_IMAGE = 1e-4


@pytest.fixture(scope="module")
def golden():
    return torch.load(fixture_path("baselines", "fomm_golden.pt"), weights_only=True)


def golden_config(golden) -> KeypointModelConfig:
    """The model configuration recorded in the golden file: any golden of this format is checked, not only ours."""
    return KeypointModelConfig.from_model_params(golden["config"]["model_params"])


def golden_modules_of(golden) -> tuple[KPDetector, OcclusionAwareGenerator]:
    """The keypoint detector and generator built from the golden's config, with its weights (eval mode)."""
    cfg = golden_config(golden)
    kp_detector, generator = KPDetector(cfg.kp_detector).eval(), OcclusionAwareGenerator(cfg.generator).eval()
    kp_detector.load_state_dict(golden["state_dicts"]["kp_detector"], strict=True)
    generator.load_state_dict(golden["state_dicts"]["generator"], strict=True)
    return kp_detector, generator


def golden_calls(golden, kp_detector: KPDetector, generator: OcclusionAwareGenerator) -> dict:
    """Our outputs for every call of the golden file, keyed as its ``outputs`` (``generator*`` keys use
    align_corners=False, ``*_legacy_align_corners_true`` True)."""
    x = golden["inputs"]
    with torch.no_grad():
        kp_s, kp_d, kp_d1 = (kp_detector(x[k]) for k in ("source", "driving", "driving_initial"))
        generator.align_corners = False
        out = generator(x["source"], kp_driving=kp_d, kp_source=kp_s)
        kp_rel = normalize_kp(kp_s, kp_d, kp_d1, use_relative_movement=True, use_relative_jacobian=True,
                              adapt_movement_scale=False)
        out_rel = generator(x["source"], kp_driving=kp_rel, kp_source=kp_s)
        generator.align_corners = True
        out_legacy = generator(x["source"], kp_driving=kp_d, kp_source=kp_s)
        generator.align_corners = False
    kp = lambda k: {"value": k.value, "jacobian": k.jacobian}  # noqa: E731
    fields = ("mask", "sparse_deformed", "occlusion_map", "deformed", "prediction")
    return {"kp_source": kp(kp_s), "kp_driving": kp(kp_d), "kp_driving_initial": kp(kp_d1),
            "generator": {f: getattr(out, f) for f in fields},
            "dense_motion": {"deformation": out.deformation},
            "kp_norm_relative": kp(kp_rel),
            "generator_relative": {f: getattr(out_rel, f) for f in fields},
            "generator_legacy_align_corners_true": {f: getattr(out_legacy, f) for f in fields}}


@pytest.fixture(scope="module")
def golden_modules(golden):
    return golden_modules_of(golden)


@pytest.fixture(scope="module")
def ours(golden, golden_modules):
    return golden_calls(golden, *golden_modules)


#: every output stored in fomm_golden.pt, as (call, key); test_golden_stores_exactly_these keeps this list honest
GOLDEN_KEYS = [(kp, k) for kp in ("kp_source", "kp_driving", "kp_driving_initial", "kp_norm_relative")
               for k in ("value", "jacobian")]
GOLDEN_KEYS += [("generator", k) for k in ("mask", "sparse_deformed", "occlusion_map", "deformed", "prediction")]
GOLDEN_KEYS += [("dense_motion", "deformation"), ("generator_relative", "prediction"),
                ("generator_relative", "occlusion_map")]
GOLDEN_KEYS += [("generator_legacy_align_corners_true", k) for k in ("prediction", "deformed", "sparse_deformed")]


def test_full_size_state_dicts_equal_official_keys():
    official = json.loads(fixture_path("baselines", "fomm_keys.json").read_text())["modules"]
    model = FOMM()
    assert state_dict_entries(model.generator) == official["generator"]
    assert state_dict_entries(model.kp_detector) == official["kp_detector"]
    assert state_dict_entries(MultiScaleDiscriminator(VOX256_DISCRIMINATOR)) == official["discriminator"]


# ---------------------------------------------------------------------------------------------- discriminator


def discriminator_by_hand(disc: Discriminator, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The official ``Discriminator.forward`` written out in float64 from the paper code's definition of each step:
    4x4 valid conv, InstanceNorm (affine, instance statistics, eps 1e-5) except in block 0, LeakyReLU with slope
    0.2 as max(x, 0.2 x), 2x2 average pool except after the last block, then the 1x1 prediction conv."""
    blocks, maps, out = disc.down_blocks, [], x.double()
    for i, block in enumerate(blocks):
        out = F.conv2d(out, block.conv.weight.double(), block.conv.bias.double())
        if i != 0:
            mean, var = out.mean((2, 3), keepdim=True), out.var((2, 3), unbiased=False, keepdim=True)
            out = ((out - mean) / torch.sqrt(var + 1e-5) * block.norm.weight.double()[:, None, None]
                   + block.norm.bias.double()[:, None, None])
        out = torch.maximum(out, 0.2 * out)
        if i != len(blocks) - 1:
            h, w = out.shape[2] // 2 * 2, out.shape[3] // 2 * 2
            out = out[..., :h, :w].unflatten(3, (w // 2, 2)).unflatten(2, (h // 2, 2)).mean((3, 5))
        maps.append(out)
    return maps, F.conv2d(out, disc.conv.weight.double(), disc.conv.bias.double())


def check_discriminator_against_hand_computation(config: DiscriminatorConfig, kp: Keypoints | None = None) -> None:
    torch.manual_seed(0)
    disc = Discriminator(config).eval()
    with torch.no_grad():
        for m in disc.modules():            # non-trivial affine InstanceNorm parameters
            if isinstance(m, torch.nn.InstanceNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
        image = torch.rand(2, 3, 96, 96)                     # the last block still normalises 6x6 values
        maps, prediction = disc(image, kp)
        x = image if kp is None else torch.cat([image, kp2gaussian(kp.value, (96, 96), config.kp_variance)], 1)
        want_maps, want_prediction = discriminator_by_hand(disc, x)
    assert len(maps) == config.num_blocks and all((m < 0).any() for m in maps)   # the slope is exercised
    # float32 against float64, relative to each map's largest value (up to ~33): measured <= 1.5e-6 (13x margin)
    for name, got, want in [*((f"feature map {i}", *pair) for i, pair in enumerate(zip(maps, want_maps))),
                            ("prediction", prediction, want_prediction)]:
        scale = max(1.0, want.abs().max().item())
        assert (got.double() - want).abs().max().item() <= 2e-5 * scale, name


def test_discriminator_matches_hand_computation():
    """vox-256's discriminator (spectral norm) at a small width."""
    check_discriminator_against_hand_computation(replace(VOX256_DISCRIMINATOR, block_expansion=8, max_features=32))


def test_golden_inputs_have_the_recorded_batch_and_size(golden):
    c = golden["config"]
    for name, x in golden["inputs"].items():
        assert x.shape == (c["batch_size"], 3, c["image_size"], c["image_size"]), name
    assert c["image_size"] % golden_config(golden).size_multiple == 0


def test_golden_stores_exactly_these(golden):
    assert sorted((g, k) for g, d in golden["outputs"].items() for k in d) == sorted(GOLDEN_KEYS)


@pytest.mark.parametrize("group,key", GOLDEN_KEYS)
def test_golden_output(golden, ours, group, key):
    atol = ATOL_WARPED_IMAGE if key in ("deformed", "sparse_deformed") else ATOL
    torch.testing.assert_close(ours[group][key], golden["outputs"][group][key], atol=atol, rtol=0,
                               msg=lambda m: f"{group}.{key}: {m}")


def test_align_corners_modes_differ_beyond_tolerance(golden, ours):
    """The two grid_sample modes must be distinguishable, or the legacy test above would prove nothing."""
    modern, legacy = ours["generator"]["prediction"], golden["outputs"]["generator_legacy_align_corners_true"]
    assert (modern - legacy["prediction"]).abs().max() > 100 * ATOL


def test_default_align_corners_is_legacy_true():
    assert FOMM.random(small=True).align_corners is True
    assert FOMM.random(small=True, align_corners=False).generator.dense_motion_network.align_corners is False


def fomm_with_golden_weights(golden, **kwargs) -> FOMM:
    model = FOMM(golden_config(golden), **kwargs)
    load_state_exact(model.kp_detector, golden["state_dicts"]["kp_detector"], what="golden kp_detector")
    load_state_exact(model.generator, golden["state_dicts"]["generator"], what="golden generator")
    return model


def test_reenactor_absolute_relative_and_legacy_match_golden(golden):
    x, out = golden["inputs"], golden["outputs"]
    inputs = ReenactInputs(source=x["source"], driving=x["driving"], driving_initial=x["driving_initial"])
    modern = fomm_with_golden_weights(golden, align_corners=False)
    legacy = fomm_with_golden_weights(golden)  # default: align_corners=True
    with torch.no_grad():
        torch.testing.assert_close(modern.reenact(inputs), out["generator"]["prediction"], atol=ATOL, rtol=0)
        torch.testing.assert_close(modern.reenact(inputs, motion="relative"), out["generator_relative"]["prediction"],
                                   atol=ATOL, rtol=0)
        torch.testing.assert_close(legacy.reenact(inputs), out["generator_legacy_align_corners_true"]["prediction"],
                                   atol=ATOL, rtol=0)


def test_reenactor_rejects_bad_inputs():
    model = FOMM.random(small=True)
    image = torch.rand(1, 3, 128, 128)
    with pytest.raises(ValueError, match="driving_initial"):
        model.reenact(ReenactInputs(source=image, driving=image), motion="relative")
    with pytest.raises(ValueError, match="multiples of 128"):
        model.reenact(ReenactInputs(source=image[..., :96, :96], driving=image[..., :96, :96]))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model.reenact(ReenactInputs(source=image[:, :1], driving=image[:, :1]))


def test_random_small_model_contract():
    model = FOMM.random(small=True, seed=1)
    source, driving = torch.rand(2, 1, 3, 256, 256)
    with torch.no_grad():
        out = model.reenact(ReenactInputs(source=source, driving=driving, driving_initial=source), "relative")
    assert out.shape == (1, 3, 256, 256) and torch.isfinite(out).all() and 0 <= out.min() and out.max() <= 1


def test_convex_hull_area_matches_scipy():
    from scipy.spatial import ConvexHull

    points = torch.randn(15, 2, generator=torch.Generator().manual_seed(0))
    assert convex_hull_area(points) == pytest.approx(ConvexHull(points.numpy()).volume, rel=1e-12)


def test_adapt_movement_scale_uses_hull_area_ratio_of_first_element():
    from scipy.spatial import ConvexHull

    g = torch.Generator().manual_seed(3)
    kp = [Keypoints(value=torch.rand(2, 10, 2, generator=g) * s, jacobian=torch.eye(2).expand(2, 10, 2, 2))
          for s in (1.0, 0.9, 0.5)]
    scale = (ConvexHull(kp[0].value[0].numpy()).volume / ConvexHull(kp[2].value[0].numpy()).volume) ** 0.5
    got = normalize_kp(*kp, adapt_movement_scale=True)
    torch.testing.assert_close(got.value, (kp[1].value - kp[2].value) * scale + kp[0].value)


# ---------------------------------------------------------------------------------------------- checkpoints


class NotAWeight:
    """A Python object that torch.load(weights_only=True) refuses to unpickle."""


def fake_official_checkpoint(model: FOMM, path, *, extra=None) -> None:
    """The layout of logger.py::save_cpk under torch 1.0: legacy serialization, no num_batches_tracked."""
    drop = lambda sd: {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}  # noqa: E731
    optimizer = torch.optim.Adam(model.generator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    model.generator.final.weight.grad = torch.zeros_like(model.generator.final.weight)
    optimizer.step()
    checkpoint = {"generator": drop(model.generator.state_dict()), "kp_detector": drop(model.kp_detector.state_dict()),
                  "discriminator": {}, "optimizer_generator": optimizer.state_dict(),
                  "optimizer_discriminator": {}, "optimizer_kp_detector": {}, "epoch": 99, **(extra or {})}
    torch.save(checkpoint, path, _use_new_zipfile_serialization=False)


def test_from_checkpoint_loads_official_format(tmp_path):
    original = FOMM.random(small=True, seed=5)
    with torch.no_grad():  # make BatchNorm statistics non-trivial so that loading them matters
        for m in original.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1), m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "vox-cpk.pth.tar"
    fake_official_checkpoint(original, path)
    loaded = FOMM.from_checkpoint(path, config=SMALL)
    source, driving = torch.rand(2, 1, 3, 128, 128)
    inputs = ReenactInputs(source=source, driving=driving)
    with torch.no_grad():
        assert torch.equal(loaded.reenact(inputs), original.reenact(inputs))
        assert not torch.equal(FOMM.random(small=True, seed=6).reenact(inputs), original.reenact(inputs))
    assert loaded.align_corners is True and not loaded.training
    via_assets = tmp_path / "assets" / "baselines"
    via_assets.mkdir(parents=True)
    path.rename(via_assets / "vox-cpk.pth.tar")
    assert FOMM.from_checkpoint(assets=str(tmp_path / "assets"), config=SMALL) is not None


def test_from_checkpoint_missing_file_names_file_source_and_destination(tmp_path):
    from reenact.assets import MissingAssetError

    with pytest.raises(MissingAssetError) as err:
        FOMM.from_checkpoint(assets=str(tmp_path))
    message = str(err.value)
    assert "vox-cpk.pth.tar" in message and "first-order-model" in message
    assert str(tmp_path / "baselines" / "vox-cpk.pth.tar") in message


def test_from_checkpoint_rejects_mismatched_weights(tmp_path):
    path = tmp_path / "vox-cpk.pth.tar"
    fake_official_checkpoint(FOMM.random(small=True), path)
    with pytest.raises(ValueError, match="wrong shape"):
        FOMM.from_checkpoint(path)  # full-size model, small checkpoint


def test_pickled_objects_need_explicit_trust(tmp_path):
    path = tmp_path / "vox-cpk.pth.tar"
    fake_official_checkpoint(FOMM.random(small=True), path, extra={"logger": NotAWeight()})
    with pytest.raises(ValueError, match="trust_pickle=True"):
        FOMM.from_checkpoint(path, config=SMALL)
    assert isinstance(FOMM.from_checkpoint(path, config=SMALL, trust_pickle=True), FOMM)
