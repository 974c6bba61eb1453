"""The paper's networks: the completion network F_c (Eq. 5, Fig. 3) and the reenactment network F_r (Fig. 4).

Read next to the Methodology section of "Exploiting Multiple Guidance from 3DMM for Face Reenactment" (AAAI 2023).
Conventions (those of :mod:`reenact.face3d.guidance`, stated once):

* images are RGB float NCHW in [0, 1];
* a flow is a *backward* flow in pixels ``(B, 2, H, W)`` (channel 0 = x, 1 = y): the generated image at pixel p
  reads the source at ``p + F(p)`` (:func:`reenact.face3d.guidance.warp_with_flow`);
* an occlusion map ``(B, 1, H, W)`` is 1 where the target pixel is visible in the source, 0 where it must be
  inpainted;
* v~_d = (beta_d, p_d) is the 70-vector :func:`reenact.face3d.coeffs.motion_coeffs` of the driving coefficients.

F_c sees only I_s and v~_d (Eq. 5) and predicts F_p, O_p and the fusion masks M_f, M_o; the computed guidance enters
only through Eqs. 6-7. The ablations of Table 3 switch the guidance off: without flow guidance (FG) F = F_p, without
occlusion guidance (OG) O = O_p, without synthesis guidance (SG) the decoder's normalisation has no I_r (a learned
affine instance norm in place of SPADE).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reenact.face3d.guidance import warp_with_flow

MOTION_DIM = 70  # v~_d = (beta_d 64, angle 3, trans 3)


# ---------------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the two networks and the guidance switches of Table 3."""

    image_size: int = 256
    channels: int = 64                 # F_r width at full resolution; doubles per scale up to max_channels
    max_channels: int = 256
    scales: int = 3                    # F_r down-sampling steps (skips at 1, 1/2, ..., 1/2^scales)
    bottleneck_blocks: int = 4         # residual blocks at the lowest F_r scale
    completion_channels: int = 32      # F_c width at full resolution
    completion_scales: int = 4         # F_c hourglass depth
    style_dim: int = 256               # width of the AdaIN mapping of v~_d
    spade_hidden: int = 64             # width of SPADE's shared convolution on I_r
    flow_guidance: bool = True         # FG: fuse the computed F_c (Eq. 6)
    occlusion_guidance: bool = True    # OG: fuse the computed O_c (Eq. 7)
    synthesis_guidance: bool = True    # SG: inject I_r into F_r's decoder with SPADE

    def __post_init__(self):
        if self.image_size % (2 ** max(self.scales, self.completion_scales)):
            raise ValueError(f"image_size {self.image_size} must be divisible by 2^{max(self.scales, self.completion_scales)}")

    @property
    def ablation(self) -> str:
        """The Table 3 row this config is: ``base``, ``fg``, ``fg-og`` or ``fg-og-sg``."""
        return next((k for k, v in ABLATIONS.items() if v == self.guidance), "custom")

    @property
    def guidance(self) -> tuple[bool, bool, bool]:
        return self.flow_guidance, self.occlusion_guidance, self.synthesis_guidance


#: Table 3 rows: (FG, OG, SG).
ABLATIONS: dict[str, tuple[bool, bool, bool]] = {
    "base": (False, False, False),    # Base: predicted flow and occlusion only, no I_r
    "fg": (True, False, False),       # +FG
    "fg-og": (True, True, False),     # +FG+OG
    "fg-og-sg": (True, True, True),   # +FG+OG+SG: the full model
}
ABLATION_LABELS = {"base": "Base", "fg": "+FG", "fg-og": "+FG+OG", "fg-og-sg": "+FG+OG+SG"}

#: Network sizes: ``full`` (256^2, the paper's setting) and ``tiny`` (64^2, CPU smoke runs and tests).
SIZES: dict[str, ModelConfig] = {
    "full": ModelConfig(),
    "small": ModelConfig(image_size=128, channels=16, max_channels=128, scales=3, bottleneck_blocks=2,
                         completion_channels=16, completion_scales=4, style_dim=64, spade_hidden=32),
    "tiny": ModelConfig(image_size=64, channels=8, max_channels=32, scales=2, bottleneck_blocks=1,
                        completion_channels=8, completion_scales=3, style_dim=32, spade_hidden=16),
}


def model_config(size: str = "full", ablation: str = "fg-og-sg", **overrides) -> ModelConfig:
    """The named size with the named Table 3 ablation (and any field overrides)."""
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose from {sorted(SIZES)}")
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}; choose from {sorted(ABLATIONS)}")
    fg, og, sg = ABLATIONS[ablation]
    return dataclasses.replace(SIZES[size], flow_guidance=fg, occlusion_guidance=og, synthesis_guidance=sg,
                               **overrides)


# ---------------------------------------------------------------------------------------------------- blocks
class AdaIN(nn.Module):
    """Adaptive instance normalisation (Huang and Belongie 2017): IN(x) (1 + gamma(s)) + beta(s)."""

    def __init__(self, channels: int, style_dim: int):
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.affine = nn.Linear(style_dim, 2 * channels)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.affine(style)[:, :, None, None].chunk(2, dim=1)   # B x C x 1 x 1 each
        return self.norm(x) * (1 + gamma) + beta


class AdaINConv(nn.Module):
    """conv 3x3 -> AdaIN(v~_d) -> LeakyReLU."""

    def __init__(self, cin: int, cout: int, style_dim: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm = AdaIN(cout, style_dim)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.norm(self.conv(x), style), 0.2)


class SPADE(nn.Module):
    """Spatially-adaptive normalisation (Park et al. 2019) conditioned on the rendered image I_r."""

    def __init__(self, channels: int, hidden: int, label_channels: int = 3):
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(label_channels, hidden, 3, padding=1), nn.ReLU())
        self.gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, render: torch.Tensor | None) -> torch.Tensor:
        label = F.interpolate(render, size=x.shape[-2:], mode="bilinear", align_corners=False, antialias=True)
        hidden = self.shared(label)
        return self.norm(x) * (1 + self.gamma(hidden)) + self.beta(hidden)


class AffineNorm(nn.Module):
    """The decoder's normalisation without synthesis guidance: instance norm with a learned affine."""

    def __init__(self, channels: int, hidden: int = 0):
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=True)

    def forward(self, x: torch.Tensor, render: torch.Tensor | None) -> torch.Tensor:
        return self.norm(x)


class NormResBlock(nn.Module):
    """SPADE ResBlk: (norm -> LeakyReLU -> conv) x 2 plus a learned shortcut when the width changes."""

    def __init__(self, cin: int, cout: int, norm: type[nn.Module], hidden: int):
        super().__init__()
        mid = min(cin, cout)
        self.norm0, self.conv0 = norm(cin, hidden), nn.Conv2d(cin, mid, 3, padding=1)
        self.norm1, self.conv1 = norm(mid, hidden), nn.Conv2d(mid, cout, 3, padding=1)
        self.shortcut = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, render: torch.Tensor | None) -> torch.Tensor:
        h = self.conv0(F.leaky_relu(self.norm0(x, render), 0.2))
        h = self.conv1(F.leaky_relu(self.norm1(h, render), 0.2))
        return self.shortcut(x) + h


class DownBlock(nn.Module):
    """conv 3x3 -> instance norm -> LeakyReLU -> average pool 2x (the encoder of F_r)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm = nn.InstanceNorm2d(cout, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.leaky_relu(self.norm(self.conv(x)), 0.2), 2)


def fuse(predicted: torch.Tensor, computed: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eqs. 6-7: ``M * predicted + (1 - M) * computed`` (element-wise, M broadcast over channels)."""
    return mask * predicted + (1 - mask) * computed


def resize_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A pixel flow ``(B, 2, H, W)`` at another resolution: resampled, and its displacements rescaled."""
    if tuple(flow.shape[-2:]) == tuple(size):
        return flow
    scale = flow.new_tensor([size[1] / flow.shape[-1], size[0] / flow.shape[-2]])[None, :, None, None]
    return F.interpolate(flow, size=size, mode="bilinear", align_corners=False) * scale


def warp_and_mask(features: torch.Tensor, flow: torch.Tensor, occlusion: torch.Tensor) -> torch.Tensor:
    """Encoder features warped by F and masked by O, both brought to the features' resolution."""
    size = features.shape[-2:]
    mask = F.interpolate(occlusion.float(), size=size, mode="bilinear", align_corners=False)
    warped = warp_with_flow(features.float(), resize_flow(flow.float(), size))   # float32 sampling, also under AMP
    return (warped * mask).to(features.dtype)


# ---------------------------------------------------------------------------------------------------- F_c
@dataclass(frozen=True)
class Completion:
    """Eq. 5's outputs and the fused results of Eqs. 6-7, all at H x W."""

    flow_predicted: torch.Tensor        # F_p, B x 2 x H x W, pixels
    occlusion_predicted: torch.Tensor   # O_p, B x 1 x H x W in (0, 1)
    flow_mask: torch.Tensor             # M_f, B x 1 x H x W in (0, 1)
    occlusion_mask: torch.Tensor        # M_o, B x 1 x H x W in (0, 1)
    flow: torch.Tensor                  # F
    occlusion: torch.Tensor             # O


class CompletionNetwork(nn.Module):
    """F_c (Eq. 5): an hourglass over I_s whose every convolution is modulated by v~_d through AdaIN.

    Returns F_p (pixels), O_p, M_f and M_o. The flow head starts at zero, the masks and O_p at 0.5.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c, s, d = cfg.completion_channels, cfg.completion_scales, cfg.style_dim
        widths = [min(c * 2 ** k, cfg.max_channels) for k in range(s + 1)]
        self.mapping = nn.Sequential(nn.Linear(MOTION_DIM, d), nn.LeakyReLU(0.2), nn.Linear(d, d), nn.LeakyReLU(0.2))
        self.stem = AdaINConv(3, widths[0], d)
        self.down = nn.ModuleList(AdaINConv(widths[k], widths[k + 1], d) for k in range(s))
        self.up = nn.ModuleList(AdaINConv(widths[k + 1] + widths[k], widths[k], d) for k in reversed(range(s)))
        self.head = nn.Conv2d(widths[0], 5, 3, padding=1)   # F_p (2), O_p, M_f, M_o
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, source: torch.Tensor, motion: torch.Tensor):
        style = self.mapping(motion)                                           # B x style_dim
        x = self.stem(source, style)
        skips = [x]
        for block in self.down:
            x = block(F.avg_pool2d(x, 2), style)
            skips.append(x)
        skips.pop()
        for block in self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skips.pop()], 1), style)
        out = self.head(x)                                                     # B x 5 x H x W
        h, w = source.shape[-2:]
        flow = out[:, :2] * out.new_tensor([w / 2, h / 2])[None, :, None, None]   # grid units -> pixels
        occlusion, flow_mask, occlusion_mask = torch.sigmoid(out[:, 2:]).split(1, dim=1)
        return flow, occlusion, flow_mask, occlusion_mask


# ---------------------------------------------------------------------------------------------------- F_r
class ReenactmentNetwork(nn.Module):
    """F_r (Fig. 4): encoder-decoder; each encoder feature map is warped by F and masked by O before it reaches the
    decoder (skips at every scale, the bottleneck included); I_r enters every decoder block through SPADE."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c, s = cfg.channels, cfg.scales
        norm = SPADE if cfg.synthesis_guidance else AffineNorm
        hid = cfg.spade_hidden
        widths = [min(c * 2 ** k, cfg.max_channels) for k in range(s + 1)]
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 7, padding=3), nn.InstanceNorm2d(widths[0], affine=True),
                                  nn.LeakyReLU(0.2))
        self.encoder = nn.ModuleList(DownBlock(widths[k], widths[k + 1]) for k in range(s))
        self.bottleneck = nn.ModuleList(NormResBlock(widths[s], widths[s], norm, hid)
                                        for _ in range(cfg.bottleneck_blocks))
        self.up = nn.ModuleList(nn.Conv2d(widths[k + 1], widths[k], 3, padding=1) for k in reversed(range(s)))
        self.decoder = nn.ModuleList(NormResBlock(2 * widths[k], widths[k], norm, hid) for k in reversed(range(s)))
        self.to_rgb = nn.Conv2d(widths[0], 3, 7, padding=3)

    def encode(self, source: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features at scales 1, 1/2, ..., 1/2^scales."""
        features = [self.stem(source)]
        for block in self.encoder:
            features.append(block(features[-1]))
        return features

    def forward(self, source: torch.Tensor, flow: torch.Tensor, occlusion: torch.Tensor,
                render: torch.Tensor | None) -> torch.Tensor:
        skips = [warp_and_mask(f, flow, occlusion) for f in self.encode(source)]
        x = skips.pop()
        for block in self.bottleneck:
            x = block(x, render)
        for up, block in zip(self.up, self.decoder):
            x = up(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
            x = block(torch.cat([x, skips.pop()], 1), render)
        return torch.sigmoid(self.to_rgb(F.leaky_relu(x, 0.2)))               # I_g, B x 3 x H x W


# ---------------------------------------------------------------------------------------------------- model
@dataclass(frozen=True)
class ModelOutput:
    image: torch.Tensor          # I_g, B x 3 x H x W in [0, 1]
    completion: Completion


class MultipleGuidanceModel(nn.Module):
    """The whole framework of Fig. 2 after guidance extraction: F_c, the fusion of Eqs. 6-7, then F_r."""

    def __init__(self, cfg: ModelConfig = ModelConfig()):
        super().__init__()
        self.config = cfg
        self.completion = CompletionNetwork(cfg)    # F_c
        self.reenactor = ReenactmentNetwork(cfg)    # F_r

    def forward(self, source: torch.Tensor, motion: torch.Tensor, flow: torch.Tensor | None = None,
                occlusion: torch.Tensor | None = None, render: torch.Tensor | None = None) -> ModelOutput:
        """I_s ``(B, 3, H, W)``, v~_d ``(B, 70)`` and the computed guidance F_c ``(B, 2, H, W)``, O_c
        ``(B, 1, H, W)``, I_r ``(B, 3, H, W)`` (each needed only when its switch is on)."""
        self._check(source, motion, flow, occlusion, render)
        cfg = self.config
        flow_p, occlusion_p, mask_f, mask_o = self.completion(source, motion)
        fused_flow = fuse(flow_p, flow, mask_f) if cfg.flow_guidance else flow_p
        fused_occlusion = fuse(occlusion_p, occlusion, mask_o) if cfg.occlusion_guidance else occlusion_p
        image = self.reenactor(source, fused_flow, fused_occlusion, render if cfg.synthesis_guidance else None)
        return ModelOutput(image=image, completion=Completion(flow_p, occlusion_p, mask_f, mask_o, fused_flow,
                                                              fused_occlusion))

    def _check(self, source, motion, flow, occlusion, render) -> None:
        b, size = source.shape[0], self.config.image_size
        if source.ndim != 4 or tuple(source.shape[1:]) != (3, size, size):
            raise ValueError(f"source must be (B, 3, {size}, {size}), got {tuple(source.shape)}")
        if tuple(motion.shape) != (b, MOTION_DIM):
            raise ValueError(f"v~_d must be ({b}, {MOTION_DIM}), got {tuple(motion.shape)}")
        needed = {"flow": (flow, 2, self.config.flow_guidance), "occlusion": (occlusion, 1, self.config.occlusion_guidance),
                  "render": (render, 3, self.config.synthesis_guidance)}
        for name, (x, ch, on) in needed.items():
            if on and (x is None or tuple(x.shape) != (b, ch, size, size)):
                got = None if x is None else tuple(x.shape)
                raise ValueError(f"guidance {name} must be ({b}, {ch}, {size}, {size}) for ablation "
                                 f"{self.config.ablation}, got {got}")
