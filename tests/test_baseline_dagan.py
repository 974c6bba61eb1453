"""DaGAN: official key/shape parity (incl. both depth networks), the small-width golden, the full-size depth golden
rebuilt from the integer weight recipe, the Reenactor wrapper, and loading the official checkpoint files."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from baselines._fomm_blocks import (
    KeypointModelConfig,
    Keypoints,
    KPDetector,
    MultiScaleDiscriminator,
    load_state_exact,
    normalize_kp,
)
from baselines._recipe import RecipeChecksumError, check_recipe_source, hash_uniform, recipe_modules, recipe_state_dict
from baselines.dagan import (
    SMALL,
    VOX256_DISCRIMINATOR,
    DaGAN,
    DaGANConfig,
    DepthAwareGenerator,
    DepthDecoder,
    DepthEncoder,
)
from reenact.contract import ReenactInputs
from tests.conftest import fixture_path, state_dict_entries

# Bounds from measured float32 noise: max |ours - golden| over AVX-512, AVX2 (ATEN_CPU_CAPABILITY=avx2 and
# ONEDNN_MAX_CPU_ISA=AVX2), the SSE4.1/default kernels and 1 thread on one machine (the fixtures README's own
# fp32-vs-fp64 column agrees); each bound sits several times above the worst case, so it holds on other CPUs.
#: keypoints, jacobians, mask, occlusion, deformation, prediction: measured <= 6.3e-7; depth-golden disparities
#: <= 4.8e-7 and encoder features (values up to ~6) <= 8.6e-7 (>= 11x margin)
ATOL = 1e-5
#: deformed / sparse_deformed: zero padding amplifies grid rounding (fixtures README): measured <= 2.5e-5 (4x)
ATOL_WARPED_IMAGE = 1e-4
#: attention values are 2e-4..2e-3: relative error measured <= 9.4e-6 (10x)
RTOL_ATTENTION = 1e-4


@pytest.fixture(scope="module")
def golden():
    return torch.load(fixture_path("baselines", "dagan_golden.pt"), weights_only=True)


@pytest.fixture(scope="module")
def depth_golden():
    return torch.load(fixture_path("baselines", "dagan_depth_golden.pt"), weights_only=True)


@pytest.fixture(scope="module")
def official_keys():
    return json.loads(fixture_path("baselines", "dagan_keys.json").read_text())["modules"]


# --------------------------------------------------------------------------------------------- full-size keys


def test_full_size_state_dicts_equal_official_keys(official_keys):
    model = DaGAN()
    assert state_dict_entries(model.generator) == official_keys["generator"]
    assert state_dict_entries(model.kp_detector) == official_keys["kp_detector"]
    assert state_dict_entries(model.depth_encoder) == official_keys["depth_encoder_resnet18"]
    assert state_dict_entries(model.depth_decoder) == official_keys["depth_decoder_resnet18"]
    assert state_dict_entries(MultiScaleDiscriminator(VOX256_DISCRIMINATOR)) == official_keys["discriminator"]


def test_discriminator_with_keypoints_matches_hand_computation():
    """vox-adv-256's discriminator (keypoint Gaussians concatenated to the image) at a small width."""
    from tests.test_baseline_fomm import check_discriminator_against_hand_computation

    config = replace(VOX256_DISCRIMINATOR, block_expansion=8, max_features=32, num_kp=5)
    kp = Keypoints(value=torch.rand(2, 5, 2, generator=torch.Generator().manual_seed(1)) * 2 - 1, jacobian=None)
    check_discriminator_against_hand_computation(config, kp)


def test_resnet50_depth_network_keys(official_keys):
    encoder = DepthEncoder(50)
    assert state_dict_entries(encoder) == official_keys["depth_encoder_resnet50"]
    assert state_dict_entries(DepthDecoder(encoder.num_ch_enc)) == official_keys["depth_decoder_resnet50"]


# ------------------------------------------------------------------------------------------ small-width golden

GOLDEN_KEYS = [(kp, k) for kp in ("kp_source", "kp_driving", "kp_driving_initial", "kp_norm_relative")
               for k in ("value", "jacobian")]
GOLDEN_KEYS += [("generator", k) for k in ("mask", "sparse_deformed", "occlusion_map", "deformed", "prediction",
                                            "attention_rows_every_16th")]
GOLDEN_KEYS += [("dense_motion", "deformation"), ("generator_relative", "prediction"),
                ("generator_relative", "occlusion_map")]


def golden_config(golden) -> DaGANConfig:
    """The model configuration recorded in the golden file: any golden of this format is checked, not only ours.
    (``from_model_params`` honours the golden's ``kp_detector_num_channels`` = 4, RGB + depth.)"""
    params = golden["config"]["model_params"]
    assert params["generator_class"] == "DepthAwareGenerator" and params["kp_detector_num_channels"] == 4
    return DaGANConfig(keypoint_model=KeypointModelConfig.from_model_params(params))


def golden_modules_of(golden) -> tuple[KPDetector, DepthAwareGenerator]:
    """The keypoint detector and generator built from the golden's config, with its weights (eval mode)."""
    cfg = golden_config(golden)
    kp_detector, generator = KPDetector(cfg.kp_detector).eval(), DepthAwareGenerator(cfg.generator).eval()
    kp_detector.load_state_dict(golden["state_dicts"]["kp_detector"], strict=True)
    generator.load_state_dict(golden["state_dicts"]["generator"], strict=True)
    return kp_detector, generator


def golden_calls(golden, kp_detector: KPDetector, generator: DepthAwareGenerator) -> dict:
    """Our outputs for every call of the golden file, keyed as its ``outputs``."""
    x = golden["inputs"]
    depths = {"source": x["source_depth"], "driving": x["driving_depth"]}
    with torch.no_grad():
        kp_s, kp_d, kp_d1 = (kp_detector(torch.cat([x[k], x[k + "_depth"]], 1))
                             for k in ("source", "driving", "driving_initial"))
        out = generator(x["source"], kp_driving=kp_d, kp_source=kp_s, source_depth=depths["source"],
                        driving_depth=depths["driving"])
        kp_rel = normalize_kp(kp_s, kp_d, kp_d1, use_relative_movement=True, use_relative_jacobian=True,
                              adapt_movement_scale=False)
        out_rel = generator(x["source"], kp_driving=kp_rel, kp_source=kp_s, source_depth=depths["source"],
                            driving_depth=depths["driving"])
    kp = lambda k: {"value": k.value, "jacobian": k.jacobian}  # noqa: E731
    fields = ("mask", "sparse_deformed", "occlusion_map", "deformed", "prediction")
    return {"kp_source": kp(kp_s), "kp_driving": kp(kp_d), "kp_driving_initial": kp(kp_d1),
            "generator": {**{f: getattr(out, f) for f in fields}, "attention_rows_every_16th": out.attention[:, ::16]},
            "dense_motion": {"deformation": out.deformation}, "kp_norm_relative": kp(kp_rel),
            "generator_relative": {f: getattr(out_rel, f) for f in fields}}


@pytest.fixture(scope="module")
def golden_modules(golden):
    return golden_modules_of(golden)


@pytest.fixture(scope="module")
def ours(golden, golden_modules):
    return golden_calls(golden, *golden_modules)


def test_golden_inputs_have_the_recorded_batch_and_size(golden):
    c = golden["config"]
    for name, x in golden["inputs"].items():
        channels = 1 if name.endswith("_depth") else 3
        assert x.shape == (c["batch_size"], channels, c["image_size"], c["image_size"]), name
    assert c["image_size"] % golden_config(golden).size_multiple == 0


def test_golden_stores_exactly_these(golden):
    assert sorted((g, k) for g, d in golden["outputs"].items() for k in d) == sorted(GOLDEN_KEYS)


@pytest.mark.parametrize("group,key", GOLDEN_KEYS)
def test_golden_output(golden, ours, group, key):
    want = golden["outputs"][group][key]
    if key == "attention_rows_every_16th":
        atol, rtol = 0.0, RTOL_ATTENTION
    else:
        atol, rtol = (ATOL_WARPED_IMAGE if key in ("deformed", "sparse_deformed") else ATOL), 0.0
    torch.testing.assert_close(ours[group][key], want, atol=atol, rtol=rtol, msg=lambda m: f"{group}.{key}: {m}")


def test_attention_changes_the_prediction(golden, golden_modules):
    """With gamma = 0 (the official init) the attention branch is silent: the golden's gamma 0.5 must matter."""
    _, generator = golden_modules
    x, out = golden["inputs"], golden["outputs"]
    kp_s, kp_d = Keypoints(**out["kp_source"]), Keypoints(**out["kp_driving"])
    gamma = generator.AttnModule.gamma.detach().clone()
    try:
        with torch.no_grad():
            generator.AttnModule.gamma.zero_()
            silent = generator(x["source"], kp_d, kp_s, source_depth=x["source_depth"]).prediction
    finally:
        with torch.no_grad():
            generator.AttnModule.gamma.copy_(gamma)
    assert (silent - golden["outputs"]["generator"]["prediction"]).abs().max() > 100 * ATOL


def dagan_with_golden_weights(golden, depths: dict[int, torch.Tensor]) -> DaGAN:
    """DaGAN built from the golden's config and weights, its depth network replaced by a lookup of the golden's
    depths."""
    model = DaGAN(golden_config(golden))
    load_state_exact(model.kp_detector, golden["state_dicts"]["kp_detector"], what="golden kp_detector")
    load_state_exact(model.generator, golden["state_dicts"]["generator"], what="golden generator")
    model.depth = lambda image: depths[id(image)]
    return model


def test_reenactor_absolute_and_relative_match_golden(golden):
    x, out = golden["inputs"], golden["outputs"]
    depths = {id(x[k]): x[k + "_depth"] for k in ("source", "driving", "driving_initial")}
    model = dagan_with_golden_weights(golden, depths)
    inputs = ReenactInputs(source=x["source"], driving=x["driving"], driving_initial=x["driving_initial"])
    with torch.no_grad():
        torch.testing.assert_close(model.reenact(inputs), out["generator"]["prediction"], atol=ATOL, rtol=0)
        torch.testing.assert_close(model.reenact(inputs, motion="relative"), out["generator_relative"]["prediction"],
                                   atol=ATOL, rtol=0)


def test_default_align_corners_is_false():
    assert DaGAN.random(small=True).generator.align_corners is False


def test_depth_is_disparity_of_the_depth_network():
    model = DaGAN.random(small=True)
    image = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        disp = model.depth(image)
        assert torch.equal(disp, model.depth_decoder(model.depth_encoder(image))[0])
    assert disp.shape == (1, 1, 128, 128) and 0 < disp.min() and disp.max() < 1


def test_random_small_model_contract():
    model = DaGAN.random(small=True, seed=1)
    source, driving = torch.rand(2, 1, 3, 128, 128)
    with torch.no_grad():
        out = model.reenact(ReenactInputs(source=source, driving=driving, driving_initial=source), "relative")
    assert out.shape == (1, 3, 128, 128) and torch.isfinite(out).all() and 0 <= out.min() and out.max() <= 1


# ------------------------------------------------------------------------------------ recipe + depth golden


def numpy_hash_uniform(n: int, seed: int) -> np.ndarray:
    """The recipe as documented in the fixtures README, in NumPy (independent of baselines._recipe)."""
    i = np.arange(n, dtype=np.uint64)
    x = (i * np.uint64(2654435761) + np.uint64((seed + 1) * 40503 + 12345)) % np.uint64(2 ** 32)
    for _ in range(2):
        x = ((x >> np.uint64(16)) ^ x) * np.uint64(73244475) % np.uint64(2 ** 32)
    x = (x >> np.uint64(16)) ^ x
    return x.astype(np.float64) / 2.0 ** 32


@pytest.mark.parametrize("seed", [0, 7, 346])
def test_hash_uniform_equals_numpy_reference(seed):
    n = 100_003
    assert np.array_equal(hash_uniform(n, seed).numpy(), numpy_hash_uniform(n, seed))


def test_recipe_checksums_catch_a_wrong_entry(depth_golden):
    recipe = [dict(e) for e in depth_golden["recipe"]["resnet18"][:3]]
    assert len(recipe_state_dict(recipe, depth_golden["recipe_source"])) == 3
    recipe[1]["seed"] += 1
    with pytest.raises(RecipeChecksumError, match="encoder.bn1.weight"):
        recipe_state_dict(recipe)
    with pytest.raises(ValueError, match="hash_uniform"):
        check_recipe_source("def hash_uniform(n, seed): return torch.rand(n)")


@pytest.mark.parametrize("variant,layers", [("resnet18", 18), ("resnet50", 50)])
def test_depth_golden(depth_golden, variant, layers):
    recipe, source = depth_golden["recipe"][variant], depth_golden["recipe_source"]
    assert recipe_modules(recipe) == ["depth_encoder", "depth_decoder"]
    encoder = DepthEncoder(layers).eval()
    decoder = DepthDecoder(encoder.num_ch_enc).eval()
    encoder.load_state_dict(recipe_state_dict(recipe, source, module="depth_encoder"), strict=True)
    decoder.load_state_dict(recipe_state_dict(recipe, source, module="depth_decoder"), strict=True)
    with torch.no_grad():
        features = encoder(depth_golden["inputs"]["image"])
        disp = decoder(features)
    want = depth_golden["outputs"][variant]
    for s in range(4):
        torch.testing.assert_close(disp[s], want[f"disp_{s}"], atol=ATOL, rtol=0, msg=lambda m, s=s: f"disp_{s}: {m}")
    assert [list(f.shape) for f in features] == want["features_shapes"]
    torch.testing.assert_close(torch.stack([f.double().mean() for f in features]), want["features_mean"],
                               rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(torch.stack([f.double().abs().mean() for f in features]), want["features_abs_mean"],
                               rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(features[4][:, :8], want["features_4_first_rows"], atol=ATOL, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- checkpoints


def write_fake_official_files(model: DaGAN, folder) -> dict[str, object]:
    """DaGAN_vox_adv_256.pth.tar as written under DDP (``module.`` keys) + monodepth2-style depth files."""
    prefixed = lambda sd: {"module." + k: v for k, v in sd.items()}  # noqa: E731
    optimizer = torch.optim.Adam(model.kp_detector.parameters(), lr=2e-4, betas=(0.5, 0.999))
    checkpoint = {"generator": prefixed(model.generator.state_dict()),
                  "kp_detector": prefixed(model.kp_detector.state_dict()), "discriminator": {},
                  "optimizer_generator": {}, "optimizer_discriminator": {},
                  "optimizer_kp_detector": optimizer.state_dict(), "epoch": 149}
    paths = {"main": folder / "DaGAN_vox_adv_256.pth.tar", "encoder": folder / "weights_19" / "encoder.pth",
             "decoder": folder / "weights_19" / "depth.pth"}
    paths["encoder"].parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, paths["main"])
    torch.save({**model.depth_encoder.state_dict(), "height": 256, "width": 256, "use_stereo": False},
               paths["encoder"])
    torch.save(model.depth_decoder.state_dict(), paths["decoder"])
    return paths


def test_from_checkpoint_loads_official_format(tmp_path):
    original = DaGAN.random(small=True, seed=5)
    with torch.no_grad():
        original.generator.AttnModule.gamma.fill_(0.5)  # make the attention branch count
    write_fake_official_files(original, tmp_path / "baselines")
    loaded = DaGAN.from_checkpoint(assets=str(tmp_path), config=SMALL)
    source, driving = torch.rand(2, 1, 3, 128, 128)
    inputs = ReenactInputs(source=source, driving=driving)
    with torch.no_grad():  # (from_checkpoint's own random init would not reproduce seed 5's weights)
        assert torch.equal(loaded.reenact(inputs), original.reenact(inputs))
    assert not loaded.training


def test_missing_depth_network_names_file_source_and_destination(tmp_path):
    from reenact.assets import MissingAssetError

    with pytest.raises(MissingAssetError, match="DaGAN_vox_adv_256.pth.tar"):
        DaGAN.from_checkpoint(assets=str(tmp_path))
    paths = write_fake_official_files(DaGAN.random(small=True), tmp_path / "baselines")
    paths["encoder"].unlink()
    with pytest.raises(MissingAssetError) as err:
        DaGAN.from_checkpoint(assets=str(tmp_path), config=SMALL)
    message = str(err.value)
    assert str(paths["encoder"]) in message and "CVPR2022-DaGAN" in message


def test_from_checkpoint_rejects_a_depth_network_of_the_wrong_depth(tmp_path):
    paths = write_fake_official_files(DaGAN.random(small=True), tmp_path)
    with pytest.raises(ValueError, match="encoder.pth: checkpoint does not match"):
        DaGAN.from_checkpoint(paths["main"], depth_encoder=paths["encoder"], depth_decoder=paths["decoder"],
                              config=replace(SMALL, depth_layers=50))
