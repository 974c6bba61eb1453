"""Training losses (Eqs. 8-10): a multi-scale perceptual loss L_c and a Gram style loss L_s on VGG-19 activations.

    L_c = sum_{i,j} | phi_i(I_g^j) - phi_i(I_d^j) |      (Eq. 8; j over the image pyramid 1, 1/2, 1/4, 1/8 as FOMM)
    L_s = sum_i | G_i(I_g) - G_i(I_d) |                  (Eq. 9; G_i the Gram matrix of phi_i, full scale)
    L   = L_c + lambda_s L_s,  lambda_s = 250             (Eq. 10)

phi_i are VGG-19's relu1_1, relu2_1, relu3_1, relu4_1 and relu5_1 on ImageNet-normalised input (FOMM's choice);
|.| is the mean absolute difference. Layers an image is too small for are skipped (a 64^2 image at 1/8 scale has
no relu5_1). The VGG-19 ImageNet weights are torchvision's ``vgg19-dcbb9e9d.pth`` (asset
``vgg19``). A VGG with random weights is not a perceptual loss, so without the file training stops, unless the
weight-free loss ``l1-msssim`` is chosen explicitly:

    L = sum_j | I_g^j - I_d^j | + (1 - MS-SSIM(I_g, I_d))   (pixel L1 over the same pyramid; MS-SSIM from
                                                             pytorch-msssim, window shrunk to fit small images)

Each loss is a small callable class returning ``(total, terms)``; :func:`build_loss` picks one by name.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from reenact.assets import ASSETS, MissingAssetError, asset_dir, asset_path

PERCEPTUAL = "vgg19-perceptual"
WEIGHT_FREE = "l1-msssim"
LOSSES = (PERCEPTUAL, WEIGHT_FREE)
PYRAMID_SCALES = (1.0, 0.5, 0.25, 0.125)
LAMBDA_STYLE = 250.0
#: torchvision's vgg19 ``features`` indices ending at relu1_1, relu2_1, relu3_1, relu4_1, relu5_1.
VGG_SLICES = ((0, 2), (2, 7), (7, 12), (12, 21), (21, 30))
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def pyramid(image: torch.Tensor, scales: tuple[float, ...] = PYRAMID_SCALES) -> list[torch.Tensor]:
    """I^j: the image at each scale (anti-aliased bilinear down-sampling)."""
    return [image if s == 1 else F.interpolate(image, scale_factor=s, mode="bilinear", align_corners=False,
                                               antialias=True) for s in scales]


def gram(features: torch.Tensor) -> torch.Tensor:
    """Gram matrix ``(B, C, C)`` of ``(B, C, H, W)`` features, normalised by C H W."""
    b, c, h, w = features.shape
    flat = features.reshape(b, c, h * w)                                        # B x C x HW
    return flat @ flat.transpose(1, 2) / (c * h * w)


# ---------------------------------------------------------------------------------------------------- VGG-19
def vgg19_weights_path(assets: str | os.PathLike | None = None) -> Path:
    """The VGG-19 ImageNet file: the asset folder's ``torch/hub/checkpoints/vgg19-dcbb9e9d.pth``, else torchvision's
    own cache (``$TORCH_HOME/hub/checkpoints``). Raises :class:`MissingAssetError` naming both and the fallback."""
    try:
        return asset_path("vgg19", assets)
    except MissingAssetError:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(ASSETS["vgg19"].relpath).name
        if cached.is_file():
            return cached
        raise MissingAssetError(
            f"the perceptual loss needs VGG-19 ImageNet weights: {Path(ASSETS['vgg19'].relpath).name} was found "
            f"neither at {asset_dir(assets) / ASSETS['vgg19'].relpath} (the asset folder; $REENACT_ASSETS or "
            f"--assets) nor at {cached} (torchvision's cache). Get it from {ASSETS['vgg19'].source} (torchvision "
            f"downloads it with `torchvision.models.vgg19(weights='IMAGENET1K_V1')` on a connected machine) and put "
            f"it at either place, or train with the weight-free loss instead: --loss {WEIGHT_FREE} (multi-scale L1 "
            f"+ MS-SSIM; recorded in the run config, checkpoint and logs).") from None


class VGG19Features(nn.Module):
    """Frozen VGG-19 activations phi_1..phi_5 of an RGB [0, 1] image."""

    def __init__(self, weights: str | os.PathLike):
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        features = make_layers(cfgs["E"])                       # VGG-19's conv trunk, without the classifier
        state = torch.load(weights, map_location="cpu", weights_only=True)
        features.load_state_dict({k.removeprefix("features."): v for k, v in state.items()
                                  if k.startswith("features.")})
        self.slices = nn.ModuleList(features[a:b] for a, b in VGG_SLICES)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN)[None, :, None, None])
        self.register_buffer("std", torch.tensor(IMAGENET_STD)[None, :, None, None])
        self.requires_grad_(False)
        self.eval()

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        x, out = (image - self.mean) / self.std, []
        for block in self.slices:
            if len(out) and min(x.shape[-2:]) < 2:      # too small for the next max-pool: deeper layers skipped
                break
            x = block(x)
            out.append(x)
        return out


# ---------------------------------------------------------------------------------------------------- losses
class PerceptualLoss(nn.Module):
    """Eq. 8: L1 between VGG-19 activations of I_g^j and I_d^j, summed over layers i and pyramid scales j."""

    def __init__(self, vgg: VGG19Features, scales: tuple[float, ...] = PYRAMID_SCALES):
        super().__init__()
        self.vgg, self.scales = vgg, scales

    def forward(self, generated: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = generated.new_zeros(())
        for g, d in zip(pyramid(generated, self.scales), pyramid(target, self.scales)):
            total = total + sum((a - b.detach()).abs().mean() for a, b in zip(self.vgg(g), self.vgg(d)))
        return total


class StyleLoss(nn.Module):
    """Eq. 9: L1 between Gram matrices of VGG-19 activations of I_g and I_d, summed over layers."""

    def __init__(self, vgg: VGG19Features):
        super().__init__()
        self.vgg = vgg

    def forward(self, generated: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum((gram(a) - gram(b).detach()).abs().mean() for a, b in zip(self.vgg(generated), self.vgg(target)))


class MultiScaleL1(nn.Module):
    """Pixel L1 over the image pyramid (the weight-free stand-in for Eq. 8)."""

    def __init__(self, scales: tuple[float, ...] = PYRAMID_SCALES):
        super().__init__()
        self.scales = scales

    def forward(self, generated: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum((g - d).abs().mean() for g, d in zip(pyramid(generated, self.scales), pyramid(target, self.scales)))


def msssim_window(size: int, levels: int = 5) -> int:
    """Largest odd Gaussian window (at most 11, pytorch-msssim's default) that ``levels`` scales of a
    ``size``-pixel image can hold (pytorch-msssim needs ``size > (window - 1) 2^(levels - 1)``)."""
    window = 11
    while window > 3 and size <= (window - 1) * 2 ** (levels - 1):
        window -= 2
    if size <= (window - 1) * 2 ** (levels - 1):
        raise ValueError(f"MS-SSIM needs images larger than {(window - 1) * 2 ** (levels - 1)} pixels, got {size}")
    return window


class MSSSIMLoss(nn.Module):
    """1 - MS-SSIM (Wang et al. 2003, pytorch-msssim), data range 1."""

    def forward(self, generated: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from pytorch_msssim import ms_ssim

        window = msssim_window(min(generated.shape[-2:]))
        return 1 - ms_ssim(generated, target, data_range=1.0, win_size=window)


class PaperLoss(nn.Module):
    """Eq. 10: L_c + lambda_s L_s with VGG-19 activations."""

    name = PERCEPTUAL

    def __init__(self, vgg: VGG19Features, scales: tuple[float, ...] = PYRAMID_SCALES,
                 lambda_style: float = LAMBDA_STYLE):
        super().__init__()
        self.reconstruction, self.style, self.lambda_style = PerceptualLoss(vgg, scales), StyleLoss(vgg), lambda_style

    def forward(self, generated: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        l_c, l_s = self.reconstruction(generated, target), self.style(generated, target)
        return l_c + self.lambda_style * l_s, {"L_c": l_c.item(), "L_s": l_s.item()}


class WeightFreeLoss(nn.Module):
    """The explicit fallback: multi-scale L1 + (1 - MS-SSIM); needs no weights."""

    name = WEIGHT_FREE

    def __init__(self, scales: tuple[float, ...] = PYRAMID_SCALES):
        super().__init__()
        self.l1, self.msssim = MultiScaleL1(scales), MSSSIMLoss()

    def forward(self, generated: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        l1, ms = self.l1(generated, target), self.msssim(generated, target)
        return l1 + ms, {"L1": l1.item(), "1-MS-SSIM": ms.item()}


def build_loss(name: str = PERCEPTUAL, *, scales: tuple[float, ...] = PYRAMID_SCALES,
               lambda_style: float = LAMBDA_STYLE, assets: str | None = None,
               vgg_weights: str | None = None) -> nn.Module:
    """The training loss named ``name`` (``vgg19-perceptual`` or ``l1-msssim``).

    ``vgg19-perceptual`` raises :class:`reenact.assets.MissingAssetError` when the VGG-19 weights are missing.
    """
    if name == PERCEPTUAL:
        weights = Path(vgg_weights) if vgg_weights else vgg19_weights_path(assets)
        return PaperLoss(VGG19Features(weights), tuple(scales), lambda_style)
    if name == WEIGHT_FREE:
        return WeightFreeLoss(tuple(scales))
    raise ValueError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")
