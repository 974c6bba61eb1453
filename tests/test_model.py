"""The paper's networks and losses (issue 10): shapes at two sizes, Eqs. 6-7 exactly, the Table 3 switches, warping
at every scale against integer shifts, and the losses against brute-force formulas."""
from __future__ import annotations

import pytest
import torch

from reenact.assets import MissingAssetError
from reenact.model import losses
from reenact.model.networks import (
    ABLATIONS,
    CompletionNetwork,
    MultipleGuidanceModel,
    ReenactmentNetwork,
    fuse,
    model_config,
    resize_flow,
    warp_and_mask,
)


def _inputs(b: int, size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, 3, size, size, generator=g), torch.randn(b, 70, generator=g),
            3 * torch.randn(b, 2, size, size, generator=g), torch.rand(b, 1, size, size, generator=g).round(),
            torch.rand(b, 3, size, size, generator=g))


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_network_shapes_and_ranges(size):
    cfg = model_config(size)
    s = cfg.image_size
    torch.manual_seed(0)
    source, motion, flow, occlusion, render = _inputs(2, s)
    flow_p, occlusion_p, mask_f, mask_o = CompletionNetwork(cfg)(source, motion)
    assert flow_p.shape == (2, 2, s, s) and occlusion_p.shape == mask_f.shape == mask_o.shape == (2, 1, s, s)
    image = ReenactmentNetwork(cfg)(source, flow, occlusion, render)
    assert image.shape == (2, 3, s, s) and image.min() >= 0 and image.max() <= 1
    out = MultipleGuidanceModel(cfg)(source, motion, flow, occlusion, render)
    assert out.image.shape == (2, 3, s, s) and out.completion.flow.shape == (2, 2, s, s)


def test_completion_starts_from_the_computed_guidance():
    """Zero-initialised head: F_p = 0, O_p = M_f = M_o = 1/2."""
    cfg = model_config("tiny")
    source, motion, *_ = _inputs(1, cfg.image_size)
    flow_p, occlusion_p, mask_f, mask_o = CompletionNetwork(cfg)(source, motion)
    assert flow_p.abs().max() == 0 and torch.all(occlusion_p == 0.5) and torch.all(mask_f == 0.5) and torch.all(mask_o == 0.5)


def test_fuse_is_eqs_6_and_7_exactly():
    p, c = torch.randn(2, 2, 8, 8), torch.randn(2, 2, 8, 8)
    assert torch.equal(fuse(p, c, torch.zeros(2, 1, 8, 8)), c)
    assert torch.equal(fuse(p, c, torch.ones(2, 1, 8, 8)), p)
    m = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(fuse(p, c, m), m * p + (1 - m) * c)


@pytest.mark.parametrize("mask_value", [0.0, 1.0])
def test_model_fusion_with_saturated_masks(mask_value):
    """M_f = M_o = 0 gives F = F_c and O = O_c exactly; M = 1 gives F_p and O_p exactly."""
    cfg = model_config("tiny")
    model = MultipleGuidanceModel(cfg)
    with torch.no_grad():
        model.completion.head.weight.normal_(0, 0.1)        # a non-trivial F_p
        model.completion.head.bias[3:] = 1e4 if mask_value else -1e4
    source, motion, flow, occlusion, render = _inputs(2, cfg.image_size)
    c = model(source, motion, flow, occlusion, render).completion
    assert torch.all(c.flow_mask == mask_value) and torch.all(c.occlusion_mask == mask_value)
    assert c.flow_predicted.abs().max() > 0
    assert torch.equal(c.flow, c.flow_predicted if mask_value else flow)
    assert torch.equal(c.occlusion, c.occlusion_predicted if mask_value else occlusion)


@pytest.mark.parametrize("ablation", sorted(ABLATIONS))
def test_ablation_reads_exactly_its_guidance(ablation):
    """Each Table 3 row reads F_c, O_c and I_r iff its switch is on (changing an unread input changes nothing)."""
    cfg = model_config("tiny", ablation)
    torch.manual_seed(0)
    model = MultipleGuidanceModel(cfg).eval()
    with torch.no_grad():
        model.completion.head.bias[3:] = 0.0                # masks 1/2: both terms of Eqs. 6-7 matter
    source, motion, flow, occlusion, render = _inputs(1, cfg.image_size)
    base = model(source, motion, flow, occlusion, render).image
    changed = {"flow": (flow + 5, occlusion, render), "occlusion": (flow, 1 - occlusion, render),
               "render": (flow, occlusion, 1 - render)}
    for switch, (name, args) in zip(cfg.guidance, changed.items()):
        differs = not torch.equal(model(source, motion, *args).image, base)
        assert differs == switch, f"{ablation}: {name} read={differs}, switch={switch}"


def test_base_model_needs_no_guidance_but_full_model_does():
    source, motion, *_ = _inputs(1, 64)
    assert MultipleGuidanceModel(model_config("tiny", "base"))(source, motion).image.shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="guidance flow"):
        MultipleGuidanceModel(model_config("tiny"))(source, motion)
    with pytest.raises(ValueError, match="source must be"):
        MultipleGuidanceModel(model_config("tiny", "base"))(source[:, :, :32, :32], motion)
    with pytest.raises(ValueError, match="v~_d"):
        MultipleGuidanceModel(model_config("tiny", "base"))(source, motion[:, :64])


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_skip_features_are_warped_at_their_scale(scale):
    """A flow of (+4, -8) full-resolution pixels moves features at 1/scale by (4, -8) / scale pixels: compared with
    an integer shift (torch.roll) away from the borders; O multiplies."""
    size = 32
    feats = torch.randn(1, 5, size // scale, size // scale)
    flow = torch.zeros(1, 2, size, size)
    flow[:, 0], flow[:, 1] = 4.0, -8.0
    occlusion = torch.ones(1, 1, size, size)
    out = warp_and_mask(feats, flow, occlusion)
    dx, dy = 4 // scale, -8 // scale
    expected = torch.roll(feats, shifts=(-dy, -dx), dims=(2, 3))   # out(p) = feats(p + F)
    n = size // scale
    inner = (slice(None), slice(None), slice(max(0, -dy), n - max(0, dy)), slice(max(0, -dx), n - max(0, dx)))
    torch.testing.assert_close(out[inner], expected[inner], atol=1e-5, rtol=0)
    assert warp_and_mask(feats, flow, 0 * occlusion).abs().max() == 0


def test_resize_flow_scales_displacements():
    flow = torch.stack([torch.full((16, 16), 6.0), torch.full((16, 16), -2.0)])[None]
    half = resize_flow(flow, (8, 8))
    assert half.shape == (1, 2, 8, 8)
    torch.testing.assert_close(half[0, :, 0, 0], torch.tensor([3.0, -1.0]))


# ---------------------------------------------------------------------------------------------------- losses
def test_gram_matches_brute_force():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    brute = torch.stack([torch.stack([torch.stack([(x[b, i] * x[b, j]).sum() for j in range(3)]) for i in range(3)])
                         for b in range(2)]) / (3 * 4 * 5)
    torch.testing.assert_close(losses.gram(x), brute)


def test_pyramid_scales_as_fomm():
    sizes = [tuple(p.shape[-2:]) for p in losses.pyramid(torch.rand(1, 3, 64, 64))]
    assert sizes == [(64, 64), (32, 32), (16, 16), (8, 8)]


@pytest.mark.parametrize("size,window", [(64, 3), (128, 7), (256, 11)])
def test_msssim_window_fits(size, window):
    assert losses.msssim_window(size) == window


def test_weight_free_loss_is_zero_on_identity_and_grows_with_noise():
    loss = losses.build_loss(losses.WEIGHT_FREE)
    assert loss.name == "l1-msssim"
    x = torch.rand(2, 3, 64, 64)
    zero, terms = loss(x, x)
    assert abs(float(zero)) < 1e-5 and set(terms) == {"L1", "1-MS-SSIM"}
    small, _ = loss((x + 0.02 * torch.randn_like(x)).clamp(0, 1), x)
    large, _ = loss((x + 0.2 * torch.randn_like(x)).clamp(0, 1), x)
    assert 0 < float(small) < float(large)


def _no_vgg(monkeypatch, tmp_path):
    monkeypatch.setenv("REENACT_ASSETS", str(tmp_path / "assets"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


def test_missing_vgg_names_file_destination_and_fallback(monkeypatch, tmp_path):
    _no_vgg(monkeypatch, tmp_path)
    with pytest.raises(MissingAssetError) as err:
        losses.build_loss(losses.PERCEPTUAL)
    message = str(err.value)
    assert "vgg19-dcbb9e9d.pth" in message
    assert str(tmp_path / "assets" / "torch" / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth") in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in message
    assert "--loss l1-msssim" in message


def test_perceptual_and_style_loss_match_their_equations(monkeypatch, tmp_path):
    """Eqs. 8-10 with a VGG-19 file at the asset path (random weights here: the formulas, not the features)."""
    from torchvision.models.vgg import cfgs, make_layers

    _no_vgg(monkeypatch, tmp_path)
    path = tmp_path / "assets" / "torch" / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth"
    path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save({f"features.{k}": v for k, v in make_layers(cfgs["E"]).state_dict().items()}, path)
    loss = losses.build_loss(losses.PERCEPTUAL)
    g, d = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    total, terms = loss(g, d)
    vgg = loss.reconstruction.vgg
    l_c = sum((a - b).abs().mean() for gj, dj in zip(losses.pyramid(g), losses.pyramid(d))
              for a, b in zip(vgg(gj), vgg(dj)))
    l_s = sum((losses.gram(a) - losses.gram(b)).abs().mean() for a, b in zip(vgg(g), vgg(d)))
    torch.testing.assert_close(total, l_c + 250 * l_s)
    assert terms["L_c"] == pytest.approx(float(l_c), rel=1e-5) and terms["L_s"] == pytest.approx(float(l_s), rel=1e-5)
    assert float(loss(d, d)[0]) == 0.0
