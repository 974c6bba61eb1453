"""Building blocks shared by FOMM (Siarohin et al., NeurIPS 2019) and DaGAN (Hong et al., CVPR 2022).

Written from the FOMM paper and checked against ``../shared/fixtures/baselines`` (``fomm_golden.pt``,
``dagan_golden.pt``). Conventions, stated once:

* Images and feature maps are float32 NCHW.
* Keypoints ``value`` are ``(B, K, 2)`` in grid_sample order, ``[..., 0] = x`` (width) and ``[..., 1] = y``
  (height), in [-1, 1] where -1 and +1 are the centres of the first and last pixel: the identity grid of
  :func:`make_coordinate_grid` is align-corners style whatever mode ``grid_sample`` runs in.
  ``jacobian`` is ``(B, K, 2, 2)`` acting on ``(x, y)`` column vectors.
* A motion field ("deformation") is a ``(B, H, W, 2)`` sampling grid for ``F.grid_sample`` (bilinear, zero padding):
  output pixel z reads the source at ``deformation[z]`` (backward warping, T_{S<-D} in the paper).
* ``align_corners`` of every ``grid_sample`` is a setting of :class:`DenseMotionNetwork` and the generators. The
  official code calls ``grid_sample`` without it, so it ran with ``True`` under torch<1.3 (FOMM's released weights)
  and ``False`` since; ``F.interpolate`` calls are unaffected (their default has been ``False`` since torch 0.4).
* Submodules are named as in the official code, so the official ``state_dict`` keys, shapes and order come out
  exactly and checkpoints load strictly. BatchNorm is ``nn.BatchNorm2d`` (the official ``SynchronizedBatchNorm2d``
  has the same keys and the same eval-mode arithmetic).
"""
from __future__ import annotations

import math
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------------------------------------------
# configs


@dataclass(frozen=True)
class KPDetectorConfig:
    """``kp_detector_params`` + ``common_params`` of the official yaml."""

    num_kp: int = 10
    num_channels: int = 3
    block_expansion: int = 32
    max_features: int = 1024
    num_blocks: int = 5
    temperature: float = 0.1
    scale_factor: float = 0.25
    estimate_jacobian: bool = True


@dataclass(frozen=True)
class DenseMotionConfig:
    """``generator_params.dense_motion_params`` of the official yaml."""

    block_expansion: int = 64
    max_features: int = 1024
    num_blocks: int = 5
    scale_factor: float = 0.25
    kp_variance: float = 0.01


@dataclass(frozen=True)
class GeneratorConfig:
    """``generator_params`` + ``common_params`` of the official yaml."""

    num_kp: int = 10
    num_channels: int = 3
    block_expansion: int = 64
    max_features: int = 512
    num_down_blocks: int = 2
    num_bottleneck_blocks: int = 6
    estimate_occlusion_map: bool = True
    dense_motion: DenseMotionConfig = field(default_factory=DenseMotionConfig)


@dataclass(frozen=True)
class KeypointModelConfig:
    """Keypoint detector + generator of a FOMM-family model (FOMM ``vox-256.yaml`` by default)."""

    kp_detector: KPDetectorConfig = field(default_factory=KPDetectorConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)

    @classmethod
    def from_model_params(cls, model_params: Mapping[str, Any]) -> "KeypointModelConfig":
        """Build from an official ``model_params`` dict (yaml or golden ``config["model_params"]``).

        ``kp_detector_num_channels`` (the DaGAN golden's RGB+depth override) is honoured when present.
        """
        common = dict(model_params["common_params"])
        kp_params = dict(model_params["kp_detector_params"])
        gen_params = dict(model_params["generator_params"])
        dense = DenseMotionConfig(**_known(DenseMotionConfig, gen_params.pop("dense_motion_params")))
        kp_common = dict(common, num_channels=model_params.get("kp_detector_num_channels", common["num_channels"]))
        return cls(kp_detector=KPDetectorConfig(**_known(KPDetectorConfig, {**kp_params, **kp_common})),
                   generator=GeneratorConfig(dense_motion=dense, **_known(GeneratorConfig, {**gen_params, **common})))

    def with_num_kp(self, num_kp: int) -> "KeypointModelConfig":
        return replace(self, kp_detector=replace(self.kp_detector, num_kp=num_kp),
                       generator=replace(self.generator, num_kp=num_kp))

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this (hourglass skips must line up after downsampling)."""
        kp, dm, g = self.kp_detector, self.generator.dense_motion, self.generator
        return math.lcm(round(1 / kp.scale_factor) * 2 ** kp.num_blocks,
                        round(1 / dm.scale_factor) * 2 ** dm.num_blocks, 2 ** g.num_down_blocks)


def _known(cls: type, params: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)} - {"dense_motion"}
    return {k: v for k, v in params.items() if k in names}


#: the small-width configuration of the golden fixtures (``config["model_params"]`` of fomm/dagan goldens)
SMALL_MODEL_PARAMS: dict[str, Any] = {
    "common_params": {"num_kp": 5, "num_channels": 3, "estimate_jacobian": True},
    "kp_detector_params": {"temperature": 0.1, "block_expansion": 8, "max_features": 32, "scale_factor": 0.25,
                           "num_blocks": 5},
    "generator_params": {"block_expansion": 8, "max_features": 32, "num_down_blocks": 2, "num_bottleneck_blocks": 6,
                         "estimate_occlusion_map": True,
                         "dense_motion_params": {"block_expansion": 8, "max_features": 32, "num_blocks": 5,
                                                 "scale_factor": 0.25}},
}

# ----------------------------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class Keypoints:
    """Keypoints of a batch: ``value`` (B, K, 2) in [-1, 1] (x, y); ``jacobian`` (B, K, 2, 2) or None."""

    value: torch.Tensor
    jacobian: torch.Tensor | None = None


@dataclass(frozen=True)
class DenseMotion:
    """Output of :class:`DenseMotionNetwork` at its own (downscaled) resolution h x w.

    mask (B, K+1, h, w) softmax over K+1 (index 0: background/identity); sparse_deformed (B, K+1, C, h, w);
    deformation (B, h, w, 2); occlusion_map (B, 1, h, w) in (0, 1) or None.
    """

    mask: torch.Tensor
    sparse_deformed: torch.Tensor
    deformation: torch.Tensor
    occlusion_map: torch.Tensor | None


@dataclass(frozen=True)
class GeneratorOutput:
    """prediction (B, C, H, W) in (0, 1); deformed (B, C, H, W) source warped by the dense motion; motion fields as
    in :class:`DenseMotion`; attention (B, N, N), N = h*w, for DaGAN's depth-aware attention, else None."""

    prediction: torch.Tensor
    deformed: torch.Tensor
    mask: torch.Tensor
    sparse_deformed: torch.Tensor
    deformation: torch.Tensor
    occlusion_map: torch.Tensor | None
    attention: torch.Tensor | None = None

# ----------------------------------------------------------------------------------------------------------------
# geometry


def make_coordinate_grid(height: int, width: int, dtype: torch.dtype = torch.float32,
                         device: torch.device | str | None = None) -> torch.Tensor:
    """Identity grid ``(H, W, 2)`` with ``[..., 0] = x``, ``[..., 1] = y``, both ``linspace(-1, 1)`` inclusive."""
    x = torch.arange(width, device=device).to(dtype)
    y = torch.arange(height, device=device).to(dtype)
    x = 2 * (x / (width - 1)) - 1
    y = 2 * (y / (height - 1)) - 1
    return torch.stack([x.view(1, width).expand(height, width), y.view(height, 1).expand(height, width)], dim=-1)


def kp2gaussian(value: torch.Tensor, spatial_size: tuple[int, int], kp_variance: float) -> torch.Tensor:
    """Unnormalised Gaussians ``exp(-|z - kp|^2 / (2 var))`` around keypoints ``(..., K, 2)`` -> ``(..., K, H, W)``."""
    grid = make_coordinate_grid(*spatial_size, dtype=value.dtype, device=value.device)
    diff = grid - value[..., None, None, :]  # ... x K x H x W x 2
    return torch.exp(-0.5 * (diff ** 2).sum(-1) / kp_variance)


def heatmap_to_keypoints(heatmap: torch.Tensor) -> torch.Tensor:
    """Expected coordinate of softmax heatmaps ``(B, K, H, W)`` -> ``(B, K, 2)``."""
    grid = make_coordinate_grid(*heatmap.shape[2:], dtype=heatmap.dtype, device=heatmap.device)
    return (heatmap.unsqueeze(-1) * grid).sum(dim=(2, 3))


def convex_hull_area(points: torch.Tensor) -> float:
    """Area of the 2-D convex hull of ``points`` ``(N, 2)`` (Andrew's monotone chain, float64)."""
    pts = sorted(set(map(tuple, points.detach().to("cpu", torch.float64).tolist())))
    if len(pts) < 3:
        return 0.0

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    def half(seq):
        chain: list[tuple[float, float]] = []
        for p in seq:
            while len(chain) >= 2 and cross(chain[-2], chain[-1], p) <= 0:
                chain.pop()
            chain.append(p)
        return chain[:-1]

    hull = half(pts) + half(reversed(pts))
    return 0.5 * abs(sum(p[0] * q[1] - q[0] * p[1] for p, q in zip(hull, hull[1:] + hull[:1])))


def normalize_kp(kp_source: Keypoints, kp_driving: Keypoints, kp_driving_initial: Keypoints, *,
                 use_relative_movement: bool = True, use_relative_jacobian: bool = True,
                 adapt_movement_scale: bool = False) -> Keypoints:
    """Relative motion transfer (FOMM Sec. 3.4): move the source keypoints as the driving ones moved since frame 1.

    value = s * (kp_d - kp_d1) + kp_s, with s = sqrt(area(hull(kp_s[0])) / area(hull(kp_d1[0]))) when
    ``adapt_movement_scale`` (batch element 0 only, as the official demo) else 1; jacobian = (J_d J_d1^-1) J_s.
    """
    if not use_relative_movement:
        return kp_driving
    scale = 1.0
    if adapt_movement_scale:
        scale = math.sqrt(convex_hull_area(kp_source.value[0])) / math.sqrt(
            convex_hull_area(kp_driving_initial.value[0]))
    value = (kp_driving.value - kp_driving_initial.value) * scale + kp_source.value
    jacobian = kp_driving.jacobian
    if use_relative_jacobian and jacobian is not None:
        jacobian = torch.matmul(torch.matmul(kp_driving.jacobian, torch.inverse(kp_driving_initial.jacobian)),
                                kp_source.jacobian)
    return Keypoints(value=value, jacobian=jacobian)

# ----------------------------------------------------------------------------------------------------------------
# convolutional blocks (names as in the official modules/util.py)


class SameBlock2d(nn.Module):
    """conv -> BN -> ReLU at constant resolution."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=kernel_size, padding=padding)
        self.norm = nn.BatchNorm2d(out_features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)))


class DownBlock2d(SameBlock2d):
    """conv -> BN -> ReLU -> 2x2 average pool."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(super().forward(x), kernel_size=(2, 2))


class UpBlock2d(SameBlock2d):
    """2x nearest upsampling -> conv -> BN -> ReLU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.interpolate(x, scale_factor=2))


class ResBlock2d(nn.Module):
    """Pre-activation residual block: x + conv2(relu(bn2(conv1(relu(bn1(x))))))."""

    def __init__(self, in_features: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_features, in_features, kernel_size=kernel_size, padding=padding)
        self.conv2 = nn.Conv2d(in_features, in_features, kernel_size=kernel_size, padding=padding)
        self.norm1 = nn.BatchNorm2d(in_features, affine=True)
        self.norm2 = nn.BatchNorm2d(in_features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        return self.conv2(F.relu(self.norm2(out))) + x


def _width(block_expansion: int, max_features: int, level: int) -> int:
    return min(max_features, block_expansion * 2 ** level)


class Encoder(nn.Module):
    """Hourglass encoder: ``num_blocks`` DownBlock2d; returns the input and every block's output."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int = 3, max_features: int = 256):
        super().__init__()
        self.down_blocks = nn.ModuleList(
            DownBlock2d(in_features if i == 0 else _width(block_expansion, max_features, i),
                        _width(block_expansion, max_features, i + 1)) for i in range(num_blocks))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = [x]
        for block in self.down_blocks:
            outs.append(block(outs[-1]))
        return outs


class Decoder(nn.Module):
    """Hourglass decoder: UpBlock2d from the deepest level, concatenating each encoder level (U-Net skips)."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int = 3, max_features: int = 256):
        super().__init__()
        self.up_blocks = nn.ModuleList(
            UpBlock2d((1 if i == num_blocks - 1 else 2) * _width(block_expansion, max_features, i + 1),
                      _width(block_expansion, max_features, i)) for i in reversed(range(num_blocks)))
        self.out_filters = block_expansion + in_features

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        out = skips[-1]
        for block, skip in zip(self.up_blocks, reversed(skips[:-1])):
            out = torch.cat([block(out), skip], dim=1)
        return out


class Hourglass(nn.Module):
    """U-Net hourglass; output has ``out_filters = block_expansion + in_features`` channels at input resolution."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int = 3, max_features: int = 256):
        super().__init__()
        self.encoder = Encoder(block_expansion, in_features, num_blocks, max_features)
        self.decoder = Decoder(block_expansion, in_features, num_blocks, max_features)
        self.out_filters = self.decoder.out_filters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def gaussian_kernel2d(size: int, sigma: float) -> torch.Tensor:
    """Normalised separable Gaussian ``(size, size)`` centred at ``(size - 1) / 2``."""
    t = torch.arange(size, dtype=torch.float32)
    g = torch.exp(-(t - (size - 1) / 2) ** 2 / (2 * sigma ** 2))
    kernel = g.view(size, 1) * g.view(1, size)
    return kernel / kernel.sum()


class AntiAliasInterpolation2d(nn.Module):
    """Gaussian blur (sigma = (1/scale - 1)/2) then keep every (1/scale)-th pixel; the kernel is buffer ``weight``."""

    def __init__(self, channels: int, scale: float):
        super().__init__()
        sigma = (1 / scale - 1) / 2
        size = 2 * round(sigma * 4) + 1
        self.ka = size // 2
        self.kb = self.ka - 1 if size % 2 == 0 else self.ka
        self.register_buffer("weight", gaussian_kernel2d(size, sigma).repeat(channels, 1, 1, 1))  # C x 1 x k x k
        self.groups = channels
        self.scale = scale
        self.stride = int(1 / scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale == 1.0:
            return x
        out = F.conv2d(F.pad(x, (self.ka, self.kb, self.ka, self.kb)), self.weight, groups=self.groups)
        return out[:, :, ::self.stride, ::self.stride]

# ----------------------------------------------------------------------------------------------------------------
# keypoint detector, dense motion, generator


class KPDetector(nn.Module):
    """Keypoints and local affine jacobians from an image (FOMM Sec. 3.1), on a 1/4-scale copy of the input.

    The heatmaps come from a 7x7 *valid* convolution (the official ``pad=0``), so their grid is slightly smaller
    than the hourglass output; keypoints are the heatmap-weighted mean of that grid.
    """

    def __init__(self, config: KPDetectorConfig = KPDetectorConfig()):
        super().__init__()
        c = config
        self.predictor = Hourglass(c.block_expansion, in_features=c.num_channels, max_features=c.max_features,
                                   num_blocks=c.num_blocks)
        self.kp = nn.Conv2d(self.predictor.out_filters, c.num_kp, kernel_size=(7, 7), padding=0)
        self.jacobian = None
        if c.estimate_jacobian:
            self.jacobian = nn.Conv2d(self.predictor.out_filters, 4 * c.num_kp, kernel_size=(7, 7), padding=0)
            with torch.no_grad():  # official init: every jacobian starts as the identity
                self.jacobian.weight.zero_()
                self.jacobian.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 1.0] * c.num_kp))
        if c.scale_factor != 1:
            self.down = AntiAliasInterpolation2d(c.num_channels, c.scale_factor)
        self.config = config

    def forward(self, x: torch.Tensor) -> Keypoints:
        if self.config.scale_factor != 1:
            x = self.down(x)
        features = self.predictor(x)
        logits = self.kp(features)
        b, k, h, w = logits.shape
        heatmap = F.softmax(logits.view(b, k, h * w) / self.config.temperature, dim=2).view(b, k, h, w)
        value = heatmap_to_keypoints(heatmap)
        if self.jacobian is None:
            return Keypoints(value=value)
        jacobian_map = self.jacobian(features).reshape(b, k, 4, h, w)
        jacobian = (heatmap.unsqueeze(2) * jacobian_map).view(b, k, 4, h * w).sum(dim=-1)
        return Keypoints(value=value, jacobian=jacobian.view(b, k, 2, 2))


class DenseMotionNetwork(nn.Module):
    """Dense motion T_{S<-D} and occlusion map from K local affine motions (FOMM Sec. 3.2), at ``scale_factor``."""

    def __init__(self, num_kp: int, num_channels: int, config: DenseMotionConfig = DenseMotionConfig(), *,
                 estimate_occlusion_map: bool = True, align_corners: bool = False):
        super().__init__()
        c = config
        self.hourglass = Hourglass(c.block_expansion, in_features=(num_kp + 1) * (num_channels + 1),
                                   max_features=c.max_features, num_blocks=c.num_blocks)
        self.mask = nn.Conv2d(self.hourglass.out_filters, num_kp + 1, kernel_size=(7, 7), padding=(3, 3))
        self.occlusion = None
        if estimate_occlusion_map:
            self.occlusion = nn.Conv2d(self.hourglass.out_filters, 1, kernel_size=(7, 7), padding=(3, 3))
        if c.scale_factor != 1:
            self.down = AntiAliasInterpolation2d(num_channels, c.scale_factor)
        self.num_kp = num_kp
        self.config = config
        self.align_corners = align_corners

    def heatmap_representation(self, spatial_size: tuple[int, int], kp_driving: Keypoints,
                               kp_source: Keypoints) -> torch.Tensor:
        """H_k(z) (paper Eq. 6) with a zero background map first: ``(B, K+1, 1, h, w)``."""
        var = self.config.kp_variance
        heatmap = kp2gaussian(kp_driving.value, spatial_size, var) - kp2gaussian(kp_source.value, spatial_size, var)
        zeros = heatmap.new_zeros(heatmap.shape[0], 1, *spatial_size)
        return torch.cat([zeros, heatmap], dim=1).unsqueeze(2)

    def sparse_motions(self, spatial_size: tuple[int, int], kp_driving: Keypoints,
                       kp_source: Keypoints) -> torch.Tensor:
        """T_{S<-D}^k(z) = kp_s + J_s J_d^-1 (z - kp_d) (paper Eq. 4), identity first: ``(B, K+1, h, w, 2)``."""
        b, k = kp_source.value.shape[:2]
        identity = make_coordinate_grid(*spatial_size, dtype=kp_source.value.dtype, device=kp_source.value.device)
        coords = identity.view(1, 1, *spatial_size, 2) - kp_driving.value.view(b, k, 1, 1, 2)  # B x K x h x w x 2
        if kp_driving.jacobian is not None:
            jacobian = torch.matmul(kp_source.jacobian, torch.inverse(kp_driving.jacobian))  # B x K x 2 x 2
            coords = torch.matmul(jacobian[:, :, None, None], coords.unsqueeze(-1)).squeeze(-1)
        driving_to_source = coords + kp_source.value.view(b, k, 1, 1, 2)
        return torch.cat([identity.expand(b, 1, *spatial_size, 2), driving_to_source], dim=1)

    def deformed_sources(self, source: torch.Tensor, sparse_motions: torch.Tensor) -> torch.Tensor:
        """The source warped by each of the K+1 motions (paper Eq. 7): ``(B, K+1, C, h, w)``."""
        b, c, h, w = source.shape
        k1 = sparse_motions.shape[1]
        repeated = source.unsqueeze(1).expand(b, k1, c, h, w).reshape(b * k1, c, h, w)
        warped = F.grid_sample(repeated, sparse_motions.reshape(b * k1, h, w, 2), align_corners=self.align_corners)
        return warped.view(b, k1, c, h, w)

    def forward(self, source_image: torch.Tensor, kp_driving: Keypoints, kp_source: Keypoints) -> DenseMotion:
        if self.config.scale_factor != 1:
            source_image = self.down(source_image)
        b, _, h, w = source_image.shape
        heatmaps = self.heatmap_representation((h, w), kp_driving, kp_source)
        motions = self.sparse_motions((h, w), kp_driving, kp_source)
        sparse_deformed = self.deformed_sources(source_image, motions)
        features = self.hourglass(torch.cat([heatmaps, sparse_deformed], dim=2).view(b, -1, h, w))
        mask = F.softmax(self.mask(features), dim=1)  # B x (K+1) x h x w
        deformation = (motions.permute(0, 1, 4, 2, 3) * mask.unsqueeze(2)).sum(dim=1).permute(0, 2, 3, 1)
        occlusion = torch.sigmoid(self.occlusion(features)) if self.occlusion is not None else None
        return DenseMotion(mask=mask, sparse_deformed=sparse_deformed, deformation=deformation,
                           occlusion_map=occlusion)


def feature_encoder(in_channels: int, block_expansion: int, max_features: int,
                    num_down_blocks: int) -> tuple[SameBlock2d, nn.ModuleList]:
    """The generators' 7x7 SameBlock2d plus ``num_down_blocks`` DownBlock2d (official ``first`` / ``down_blocks``)."""
    first = SameBlock2d(in_channels, block_expansion, kernel_size=7, padding=3)
    down = nn.ModuleList(DownBlock2d(_width(block_expansion, max_features, i),
                                     _width(block_expansion, max_features, i + 1)) for i in range(num_down_blocks))
    return first, down


def feature_decoder(config: GeneratorConfig) -> tuple[nn.ModuleList, nn.Sequential, nn.Conv2d]:
    """``up_blocks``, ``bottleneck`` (ResBlock2d r0..r{n-1}) and the 7x7 ``final`` conv of the generators."""
    c, n = config, config.num_down_blocks
    up = nn.ModuleList(UpBlock2d(_width(c.block_expansion, c.max_features, n - i),
                                 _width(c.block_expansion, c.max_features, n - i - 1)) for i in range(n))
    bottleneck = nn.Sequential()
    for i in range(c.num_bottleneck_blocks):
        bottleneck.add_module(f"r{i}", ResBlock2d(_width(c.block_expansion, c.max_features, n)))
    final = nn.Conv2d(c.block_expansion, c.num_channels, kernel_size=(7, 7), padding=(3, 3))
    return up, bottleneck, final


class KeypointWarpGenerator(nn.Module):
    """Shared behaviour of the occlusion-aware generators; subclasses create the modules in the official order.

    ``align_corners`` lives on the dense motion network and is used by every grid_sample of the generator.
    """

    dense_motion_network: DenseMotionNetwork
    first: SameBlock2d
    down_blocks: nn.ModuleList
    up_blocks: nn.ModuleList
    bottleneck: nn.Sequential
    final: nn.Conv2d

    @property
    def align_corners(self) -> bool:
        return self.dense_motion_network.align_corners

    @align_corners.setter
    def align_corners(self, value: bool) -> None:
        self.dense_motion_network.align_corners = bool(value)

    def deform_input(self, x: torch.Tensor, deformation: torch.Tensor) -> torch.Tensor:
        """Warp ``x`` by ``deformation`` (bilinearly resized to x's resolution first when they differ)."""
        if deformation.shape[1:3] != x.shape[2:]:
            deformation = F.interpolate(deformation.permute(0, 3, 1, 2), size=x.shape[2:], mode="bilinear")
            deformation = deformation.permute(0, 2, 3, 1)
        return F.grid_sample(x, deformation, align_corners=self.align_corners)

    def encode(self, source_image: torch.Tensor) -> torch.Tensor:
        out = self.first(source_image)
        for block in self.down_blocks:
            out = block(out)
        return out

    def warp_features(self, features: torch.Tensor, motion: DenseMotion) -> torch.Tensor:
        """Deform the encoded source and multiply by the occlusion map (paper Eq. 8)."""
        out = self.deform_input(features, motion.deformation)
        occlusion = motion.occlusion_map
        if occlusion is not None:
            if occlusion.shape[2:] != out.shape[2:]:
                occlusion = F.interpolate(occlusion, size=out.shape[2:], mode="bilinear")
            out = out * occlusion
        return out

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        out = self.bottleneck(features)
        for block in self.up_blocks:
            out = block(out)
        return torch.sigmoid(self.final(out))


class OcclusionAwareGenerator(KeypointWarpGenerator):
    """FOMM's generator: encode the source, warp features by the dense motion, mask occlusions, decode."""

    def __init__(self, config: GeneratorConfig = GeneratorConfig(), *, align_corners: bool = False):
        super().__init__()
        c = config
        self.dense_motion_network = DenseMotionNetwork(c.num_kp, c.num_channels, c.dense_motion,
                                                       estimate_occlusion_map=c.estimate_occlusion_map,
                                                       align_corners=align_corners)
        self.first, self.down_blocks = feature_encoder(c.num_channels, c.block_expansion, c.max_features,
                                                       c.num_down_blocks)
        self.up_blocks, self.bottleneck, self.final = feature_decoder(c)
        self.config = config

    def forward(self, source_image: torch.Tensor, kp_driving: Keypoints, kp_source: Keypoints) -> GeneratorOutput:
        features = self.encode(source_image)
        motion = self.dense_motion_network(source_image, kp_driving=kp_driving, kp_source=kp_source)
        prediction = self.decode(self.warp_features(features, motion))
        return GeneratorOutput(prediction=prediction, deformed=self.deform_input(source_image, motion.deformation),
                               mask=motion.mask, sparse_deformed=motion.sparse_deformed,
                               deformation=motion.deformation, occlusion_map=motion.occlusion_map)

# ----------------------------------------------------------------------------------------------------------------
# discriminator (training only; built so the official checkpoints' "discriminator" entry can be checked and loaded)


@dataclass(frozen=True)
class DiscriminatorConfig:
    """``discriminator_params`` (+ ``common_params``) of the official yaml."""

    scales: tuple[float, ...] = (1,)
    num_channels: int = 3
    block_expansion: int = 32
    max_features: int = 512
    num_blocks: int = 4
    sn: bool = False
    use_kp: bool = False
    num_kp: int = 10
    kp_variance: float = 0.01


class DiscriminatorBlock(nn.Module):
    """4x4 valid conv (optionally spectral-normalised) -> InstanceNorm -> LeakyReLU(0.2) -> optional 2x2 avg pool."""

    def __init__(self, in_features: int, out_features: int, *, norm: bool, pool: bool, sn: bool):
        super().__init__()
        conv = nn.Conv2d(in_features, out_features, kernel_size=4)
        self.conv = nn.utils.spectral_norm(conv) if sn else conv
        self.norm = nn.InstanceNorm2d(out_features, affine=True) if norm else None
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        if self.norm is not None:
            out = self.norm(out)
        out = F.leaky_relu(out, 0.2)
        return F.avg_pool2d(out, (2, 2)) if self.pool else out


class Discriminator(nn.Module):
    """Patch discriminator; with ``use_kp`` the keypoint Gaussians are concatenated to the image."""

    def __init__(self, config: DiscriminatorConfig = DiscriminatorConfig()):
        super().__init__()
        c = config
        in_first = c.num_channels + c.num_kp * c.use_kp
        self.down_blocks = nn.ModuleList(
            DiscriminatorBlock(in_first if i == 0 else _width(c.block_expansion, c.max_features, i),
                               _width(c.block_expansion, c.max_features, i + 1),
                               norm=i != 0, pool=i != c.num_blocks - 1, sn=c.sn) for i in range(c.num_blocks))
        conv = nn.Conv2d(_width(c.block_expansion, c.max_features, c.num_blocks), 1, kernel_size=1)
        self.conv = nn.utils.spectral_norm(conv) if c.sn else conv
        self.config = config

    def forward(self, x: torch.Tensor, kp: Keypoints | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        out = x
        if self.config.use_kp:
            out = torch.cat([out, kp2gaussian(kp.value, x.shape[2:], self.config.kp_variance)], dim=1)
        feature_maps = []
        for block in self.down_blocks:
            out = block(out)
            feature_maps.append(out)
        return feature_maps, self.conv(out)


class MultiScaleDiscriminator(nn.Module):
    """One :class:`Discriminator` per scale, keyed ``discs.<scale with '.' -> '-'>``."""

    def __init__(self, config: DiscriminatorConfig = DiscriminatorConfig()):
        super().__init__()
        self.discs = nn.ModuleDict({str(s).replace(".", "-"): Discriminator(config) for s in config.scales})

    def forward(self, pyramid: Mapping[str, torch.Tensor], kp: Keypoints | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, disc in self.discs.items():
            key = "prediction_" + name.replace("-", ".")
            out["feature_maps_" + key], out["prediction_map_" + key] = disc(pyramid[key], kp)
        return out

# ----------------------------------------------------------------------------------------------------------------
# checkpoints


def load_checkpoint_file(path: str | Path, *, trust_pickle: bool = False) -> dict[str, Any]:
    """``torch.load`` an official checkpoint on CPU, with ``weights_only=True`` unless ``trust_pickle``.

    The official ``.pth.tar`` files hold state dicts, optimizer state dicts (tensors, ints, floats, tuples) and an
    int epoch: all of that loads with ``weights_only=True``, in the legacy (torch<1.6) and the zip format alike.
    Only if a release also pickled other Python objects does the restricted unpickler refuse it; then
    ``trust_pickle=True`` falls back to ``weights_only=False``, which runs arbitrary code from the file, so use it
    only for a file whose origin you trust.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not trust_pickle:
            raise ValueError(f"{path} holds Python objects beyond tensors and plain containers, so it does not load "
                             f"with torch.load(weights_only=True) ({err}). If you trust its origin, pass "
                             f"trust_pickle=True.") from err
    # weights_only=False: explicitly requested by the caller for a file the restricted unpickler rejects (see above).
    return torch.load(path, map_location="cpu", weights_only=False)


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Remove a leading ``prefix`` (DataParallel/DDP's ``module.``) from every key that has it."""
    return {k.removeprefix(prefix): v for k, v in state.items()}


def load_state_exact(module: nn.Module, state: Mapping[str, Any], *, what: str,
                     drop_unknown: bool = False) -> None:
    """Load ``state`` into ``module`` strictly, except that BatchNorm ``num_batches_tracked`` may be absent.

    ``drop_unknown`` ignores keys the module does not have (DaGAN's depth ``encoder.pth`` carries ``height``,
    ``width``, ``use_stereo``). Anything else missing, unexpected or mis-shaped raises ``ValueError`` naming ``what``.
    """
    own = module.state_dict()
    tensors = {k: v for k, v in state.items() if not drop_unknown or k in own}
    unexpected = sorted(set(tensors) - set(own))
    missing = sorted(k for k in set(own) - set(tensors) if not k.endswith("num_batches_tracked"))
    wrong = sorted(k for k in set(own) & set(tensors)
                   if not torch.is_tensor(tensors[k]) or tensors[k].shape != own[k].shape)
    if unexpected or missing or wrong:
        raise ValueError(f"{what}: checkpoint does not match the model: missing {missing[:5]} ({len(missing)}), "
                         f"unexpected {unexpected[:5]} ({len(unexpected)}), wrong shape {wrong[:5]} ({len(wrong)})")
    module.load_state_dict(tensors, strict=False)


def checkpoint_entry(checkpoint: Mapping[str, Any], key: str, path: str | Path) -> Mapping[str, Any]:
    if key not in checkpoint:
        raise ValueError(f"{path}: no top-level key {key!r} (found {sorted(checkpoint)[:10]})")
    return checkpoint[key]
