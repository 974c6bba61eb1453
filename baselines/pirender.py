"""PIRenderer (Ren et al., ICCV 2021), re-implemented to be numerically equal to the official ``FaceGenerator``.

Three networks, named as in the official code (and in its state-dict keys, ``warpping_net`` spelling included):

* the **mapping network** ``mapping_net`` turns a motion window (73 values x 27 frames) into a latent
  descriptor ``z`` (``descriptor_nc`` wide) with 1-D convolutions and average pooling;
* the **warping network** ``warpping_net``, an AdaIN hourglass conditioned on ``z``, predicts a flow field at 1/4
  resolution and warps the source image with it;
* the **editing network** ``editing_net`` refines ``cat(source, warped)`` into the final image.

Conventions (stated once):

* Images: RGB float32 NCHW in **[-1, 1]** (``ToTensor`` then ``Normalize(0.5, 0.5)``); the released weights expect
  256². ``fake_image`` is tanh-bounded; inference clamps it to [-1, 1].
* Motion window ``(B, 73, 2r+1)``, time on the last axis, r = ``semantic_radius`` = 13 (27 frames). Per frame:
  ``[exp 64 | angle 3 | trans 3 | crop 3]`` = Deep3DFaceRecon coefficients ``[80:144]``, ``[224:227]``,
  ``[254:257]`` and the 3 crop parameters ``(s, t0, t1)`` that PIRender's LMDB stores after the 257
  coefficients (``align_img``'s scale and translation). Frame indices outside the video are clamped to its ends.
* Unknown crop parameters default to :data:`DEFAULT_CROP_PARAMS` = ``(102/128, 128, 128)``: the values PIRender's
  own ``scripts/face_recon_videos.py`` produces for a 256² frame without detected landmarks (the standard 3D
  landmarks placed at ``(lm3d + 1)/2 * 256`` give POS scale 128 and centre (128, 128), and ``s = 102 / 128``).
* ``flow_field`` ``(B, 2, H/4, W/4)`` is in pixels of its own grid. It is turned into a ``grid_sample`` grid by
  dividing by ``(w - 1, h - 1)``, adding an align-corners identity grid, bilinearly resizing to the image size
  (``align_corners=False``), and sampling with ``align_corners=False`` (PIRender was developed on torch 1.7).
* ADAIN's hidden width is 128 (hard-coded in the official code); normalisations have eps 1e-5.
* Official quirk kept: ``FineADAINResBlock2d`` computes ``conv1``/``norm1`` and then overwrites the result, so its
  output is ``x + norm2(conv2(x), z)``. The ``conv1``/``norm1`` weights exist in every checkpoint; we keep them and
  skip the dead computation.

The checkpoint ``epoch_00190_iteration_000400000_checkpoint.pt`` holds ``net_G``, ``net_G_ema`` (+ optionally
``opt_G``, ``sch_G``), ``current_epoch``, ``current_iteration``; inference uses ``net_G_ema``. The official code
loads it non-strictly; we strip any ``module.`` prefix and load strictly.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reenact.contract import Motion, ReenactInputs, Reenactor

CHECKPOINT_ASSET = "pirender"
CHECKPOINT_KEY = "net_G_ema"
SEMANTIC_RADIUS = 13
NUM_COEFFS = 257
MOTION_NC = 73            # exp 64 + angle 3 + trans 3 + crop 3
#: Crop parameters (s, t0, t1) used when a frame's own are unknown (see module docstring).
DEFAULT_CROP_PARAMS = (102.0 / 128.0, 128.0, 128.0)
_EXP, _ANGLE, _TRANS = slice(80, 144), slice(224, 227), slice(254, 257)  # reenact.face3d.coeffs layout


@dataclass(frozen=True)
class PIRenderConfig:
    """``gen.param`` of the official config. ``FULL`` = ``config/face_demo.yaml``; ``SMALL`` = the golden's."""

    coeff_nc: int = MOTION_NC
    descriptor_nc: int = 256
    mapping_layers: int = 3
    warp_encoder_layers: int = 5
    warp_decoder_layers: int = 3
    warp_base_nc: int = 32
    edit_layers: int = 3
    edit_res_blocks: int = 2
    edit_base_nc: int = 64
    max_nc: int = 256
    image_nc: int = 3
    image_size: int = 256     # native input size of the weights

    @classmethod
    def from_gen_param(cls, p: Mapping[str, Mapping[str, Any]], image_size: int = 256) -> "PIRenderConfig":
        """Read the official nested ``gen.param`` dict (mapping_net, warpping_net, editing_net, common)."""
        m, w, e, c = p["mapping_net"], p["warpping_net"], p["editing_net"], p["common"]
        if c.get("use_spect", False):
            raise ValueError("use_spect=True (spectral norm) is not supported: the released model does not use it")
        if m["descriptor_nc"] != c["descriptor_nc"]:
            raise ValueError(f"mapping_net descriptor_nc {m['descriptor_nc']} != common {c['descriptor_nc']}")
        return cls(coeff_nc=m["coeff_nc"], descriptor_nc=c["descriptor_nc"], mapping_layers=m["layer"],
                   warp_encoder_layers=w["encoder_layer"], warp_decoder_layers=w["decoder_layer"],
                   warp_base_nc=w["base_nc"], edit_layers=e["layer"], edit_res_blocks=e["num_res_blocks"],
                   edit_base_nc=e["base_nc"], max_nc=c["max_nc"], image_nc=c["image_nc"], image_size=image_size)


FULL = PIRenderConfig()
SMALL = PIRenderConfig(descriptor_nc=32, warp_base_nc=8, edit_base_nc=8, max_nc=32, image_size=64)
ADAIN_HIDDEN = 128
_SLOPE = 0.1              # every LeakyReLU in the generator


# ----------------------------------------------------------------------------------------------- motion window
def motion_window(coeffs_sequence: torch.Tensor, center: int, crop_params: torch.Tensor | Sequence[float],
                  radius: int = SEMANTIC_RADIUS) -> torch.Tensor:
    """PIRender's motion window around frame ``center`` of one video.

    Args:
        coeffs_sequence: ``(T, 257)`` coefficients of the video's frames (``reenact.face3d.coeffs`` layout).
        center: index of the driving frame, ``0 <= center < T``.
        crop_params: ``(T, 3)`` per-frame or ``(3,)`` shared crop parameters ``(s, t0, t1)``.
        radius: semantic radius r; frames ``center - r .. center + r``, indices clamped to ``[0, T - 1]``.
    Returns:
        ``(73, 2r + 1)`` float32: ``[exp | angle | trans | crop]`` per frame, time on the last axis.
    """
    if coeffs_sequence.ndim != 2 or coeffs_sequence.shape[1] != NUM_COEFFS:
        raise ValueError(f"coeffs_sequence must be (T, {NUM_COEFFS}), got {tuple(coeffs_sequence.shape)}")
    num_frames = coeffs_sequence.shape[0]
    if not 0 <= center < num_frames:
        raise ValueError(f"center must be in [0, {num_frames}), got {center}")
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    crop = torch.as_tensor(crop_params, dtype=coeffs_sequence.dtype, device=coeffs_sequence.device)
    if crop.shape not in ((3,), (num_frames, 3)):
        raise ValueError(f"crop_params must be (3,) or ({num_frames}, 3), got {tuple(crop.shape)}")
    crop = crop.expand(num_frames, 3)
    index = torch.arange(center - radius, center + radius + 1, device=coeffs_sequence.device).clamp(0, num_frames - 1)
    frames = coeffs_sequence[index]                                                  # (2r+1) x 257
    window = torch.cat([frames[:, _EXP], frames[:, _ANGLE], frames[:, _TRANS], crop[index]], 1)  # (2r+1) x 73
    return window.t().float()


def single_frame_windows(coeffs: torch.Tensor, crop_params: torch.Tensor | Sequence[float] = DEFAULT_CROP_PARAMS,
                         radius: int = SEMANTIC_RADIUS) -> torch.Tensor:
    """Windows for driving frames known only by themselves: each frame repeated ``2r + 1`` times.

    Args:
        coeffs: ``(B, 257)``; crop_params: ``(B, 3)`` or ``(3,)``.
    Returns:
        ``(B, 73, 2r + 1)``, equal to :func:`motion_window` of a one-frame video per batch element.
    """
    if coeffs.ndim != 2 or coeffs.shape[1] != NUM_COEFFS:
        raise ValueError(f"coeffs must be (B, {NUM_COEFFS}), got {tuple(coeffs.shape)}")
    crop = torch.as_tensor(crop_params, dtype=coeffs.dtype, device=coeffs.device)
    if crop.shape not in ((3,), (coeffs.shape[0], 3)):
        raise ValueError(f"crop_params must be (3,) or ({coeffs.shape[0]}, 3), got {tuple(crop.shape)}")
    crop = crop.expand(coeffs.shape[0], 3)
    return torch.stack([motion_window(c[None], 0, p, radius) for c, p in zip(coeffs, crop)])


# ----------------------------------------------------------------------------------------------- blocks
class LayerNorm2d(nn.Module):
    """Layer norm over (C, H, W) with a per-channel affine ``(C, 1, 1)``."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[1:]
        return F.layer_norm(x, shape, self.weight.expand(shape), self.bias.expand(shape))


class ADAIN(nn.Module):
    """AdaIN: ``instance_norm(x) * (1 + gamma(z)) + beta(z)`` with a shared 128-wide MLP on the descriptor z."""

    def __init__(self, norm_nc: int, feature_nc: int):
        super().__init__()
        self.mlp_shared = nn.Sequential(nn.Linear(feature_nc, ADAIN_HIDDEN), nn.ReLU())
        self.mlp_gamma = nn.Linear(ADAIN_HIDDEN, norm_nc)
        self.mlp_beta = nn.Linear(ADAIN_HIDDEN, norm_nc)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        actv = self.mlp_shared(z.reshape(z.shape[0], -1))                 # B x 128
        gamma = self.mlp_gamma(actv)[:, :, None, None]                     # B x C x 1 x 1
        beta = self.mlp_beta(actv)[:, :, None, None]
        return F.instance_norm(x, eps=1e-5) * (1 + gamma) + beta


def _act(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, _SLOPE)


class ADAINEncoderBlock(nn.Module):
    """``conv3x3(act(ADAIN(conv4x4/2(act(ADAIN(x))))))``, halving the resolution."""

    def __init__(self, in_nc: int, out_nc: int, feature_nc: int):
        super().__init__()
        self.conv_0 = nn.Conv2d(in_nc, out_nc, 4, stride=2, padding=1)
        self.conv_1 = nn.Conv2d(out_nc, out_nc, 3, stride=1, padding=1)
        self.norm_0 = ADAIN(in_nc, feature_nc)
        self.norm_1 = ADAIN(out_nc, feature_nc)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_0(_act(self.norm_0(x, z)))
        return self.conv_1(_act(self.norm_1(x, z)))


class ADAINDecoderBlock(nn.Module):
    """Residual up block: ``convT_s(act(ADAIN_s(x))) + convT_1(act(ADAIN_1(conv_0(act(ADAIN_0(x))))))``, x2."""

    def __init__(self, in_nc: int, out_nc: int, hidden_nc: int, feature_nc: int):
        super().__init__()
        up = dict(kernel_size=3, stride=2, padding=1, output_padding=1)
        self.conv_0 = nn.Conv2d(in_nc, hidden_nc, 3, stride=1, padding=1)
        self.conv_1 = nn.ConvTranspose2d(hidden_nc, out_nc, **up)
        self.conv_s = nn.ConvTranspose2d(in_nc, out_nc, **up)
        self.norm_0 = ADAIN(in_nc, feature_nc)
        self.norm_1 = ADAIN(hidden_nc, feature_nc)
        self.norm_s = ADAIN(in_nc, feature_nc)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        shortcut = self.conv_s(_act(self.norm_s(x, z)))
        dx = self.conv_0(_act(self.norm_0(x, z)))
        return shortcut + self.conv_1(_act(self.norm_1(dx, z)))


def _width(base: int, level: int, max_nc: int) -> int:
    return min(base * 2 ** level, max_nc)


class ADAINEncoder(nn.Module):
    def __init__(self, image_nc: int, feature_nc: int, base: int, max_nc: int, layers: int):
        super().__init__()
        self.layers = layers
        self.input_layer = nn.Conv2d(image_nc, base, 7, stride=1, padding=3)
        for i in range(layers):
            self.add_module(f"encoder{i}", ADAINEncoderBlock(_width(base, i, max_nc), _width(base, i + 1, max_nc),
                                                             feature_nc))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> list[torch.Tensor]:
        """Features at every scale, full resolution first."""
        features = [self.input_layer(x)]
        for i in range(self.layers):
            features.append(getattr(self, f"encoder{i}")(features[-1], z))
        return features


class ADAINDecoder(nn.Module):
    """Decoder levels ``encoder_layers - 1`` down to ``encoder_layers - decoder_layers``, each concatenated with
    the encoder feature of its output scale."""

    def __init__(self, feature_nc: int, base: int, max_nc: int, encoder_layers: int, decoder_layers: int):
        super().__init__()
        self.levels = list(range(encoder_layers - decoder_layers, encoder_layers))[::-1]
        for i in self.levels:
            in_nc = _width(base, i + 1, max_nc) * (1 if i == encoder_layers - 1 else 2)
            out_nc = _width(base, i, max_nc)
            self.add_module(f"decoder{i}", ADAINDecoderBlock(in_nc, out_nc, out_nc, feature_nc))
        self.output_nc = 2 * _width(base, self.levels[-1], max_nc)

    def forward(self, features: list[torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        features = list(features)
        out = features.pop()
        for i in self.levels:
            out = torch.cat([getattr(self, f"decoder{i}")(out, z), features.pop()], 1)
        return out


class ADAINHourglass(nn.Module):
    def __init__(self, image_nc: int, feature_nc: int, base: int, max_nc: int, encoder_layers: int,
                 decoder_layers: int):
        super().__init__()
        self.encoder = ADAINEncoder(image_nc, feature_nc, base, max_nc, encoder_layers)
        self.decoder = ADAINDecoder(feature_nc, base, max_nc, encoder_layers, decoder_layers)
        self.output_nc = self.decoder.output_nc

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x, z), z)


class _ConvNormAct(nn.Module):
    """``model = [Conv, LayerNorm2d, LeakyReLU(0.1), (AvgPool 2x2)]`` (official First/Down/Up/Jump blocks)."""

    def __init__(self, in_nc: int, out_nc: int, kernel: int, *, pool: bool = False, upsample: bool = False):
        super().__init__()
        layers = [nn.Conv2d(in_nc, out_nc, kernel, stride=1, padding=kernel // 2), LayerNorm2d(out_nc),
                  nn.LeakyReLU(_SLOPE)]
        if pool:
            layers.append(nn.AvgPool2d(2))
        self.model = nn.Sequential(*layers)
        self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2)             # nearest, as the official UpBlock2d
        return self.model(x)


class FineADAINResBlock(nn.Module):
    """Official ``FineADAINResBlock2d``: output ``x + ADAIN_2(conv2(x))`` (see the module docstring's quirk)."""

    def __init__(self, nc: int, feature_nc: int):
        super().__init__()
        self.conv1 = nn.Conv2d(nc, nc, 3, stride=1, padding=1)
        self.conv2 = nn.Conv2d(nc, nc, 3, stride=1, padding=1)
        self.norm1 = ADAIN(nc, feature_nc)
        self.norm2 = ADAIN(nc, feature_nc)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.conv2(x), z) + x


class FineADAINResBlocks(nn.Module):
    def __init__(self, num_blocks: int, nc: int, feature_nc: int):
        super().__init__()
        self.num_blocks = num_blocks
        for i in range(num_blocks):
            self.add_module(f"res{i}", FineADAINResBlock(nc, feature_nc))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        for i in range(self.num_blocks):
            x = getattr(self, f"res{i}")(x, z)
        return x


class FinalBlock(nn.Module):
    def __init__(self, in_nc: int, out_nc: int):
        super().__init__()
        self.model = nn.Sequential(nn.Conv2d(in_nc, out_nc, 7, stride=1, padding=3), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class FineEncoder(nn.Module):
    def __init__(self, image_nc: int, base: int, max_nc: int, layers: int):
        super().__init__()
        self.layers = layers
        self.first = _ConvNormAct(image_nc, base, 7)
        for i in range(layers):
            self.add_module(f"down{i}", _ConvNormAct(_width(base, i, max_nc), _width(base, i + 1, max_nc), 3,
                                                     pool=True))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [self.first(x)]
        for i in range(self.layers):
            features.append(getattr(self, f"down{i}")(features[-1]))
        return features


class FineDecoder(nn.Module):
    def __init__(self, image_nc: int, feature_nc: int, base: int, max_nc: int, layers: int, num_blocks: int):
        super().__init__()
        self.layers = layers
        for i in reversed(range(layers)):
            in_nc, out_nc = _width(base, i + 1, max_nc), _width(base, i, max_nc)
            self.add_module(f"up{i}", _ConvNormAct(in_nc, out_nc, 3, upsample=True))
            self.add_module(f"res{i}", FineADAINResBlocks(num_blocks, in_nc, feature_nc))
            self.add_module(f"jump{i}", _ConvNormAct(out_nc, out_nc, 3))
        self.final = FinalBlock(_width(base, 0, max_nc), image_nc)

    def forward(self, features: list[torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        features = list(features)
        out = features.pop()
        for i in reversed(range(self.layers)):
            out = getattr(self, f"up{i}")(getattr(self, f"res{i}")(out, z))
            out = getattr(self, f"jump{i}")(features.pop()) + out
        return self.final(out)


# ----------------------------------------------------------------------------------------------- networks
class MappingNet(nn.Module):
    """Motion window ``(B, 73, 27)`` -> descriptor z ``(B, descriptor_nc, 1)``."""

    def __init__(self, coeff_nc: int, descriptor_nc: int, layers: int):
        super().__init__()
        self.layers = layers
        self.first = nn.Sequential(nn.Conv1d(coeff_nc, descriptor_nc, kernel_size=7, padding=0))
        for i in range(layers):
            self.add_module(f"encoder{i}", nn.Sequential(
                nn.LeakyReLU(_SLOPE), nn.Conv1d(descriptor_nc, descriptor_nc, kernel_size=3, padding=0, dilation=3)))

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        out = self.first(window)                                             # B x C x (T - 6)
        for i in range(self.layers):
            out = getattr(self, f"encoder{i}")(out) + out[:, :, 3:-3]        # B x C x (T - 6 - 6(i+1))
        return F.adaptive_avg_pool1d(out, 1)                                 # B x C x 1


def flow_to_deformation(flow: torch.Tensor) -> torch.Tensor:
    """``(B, 2, h, w)`` flow in pixels -> ``(B, h, w, 2)`` sampling grid (align-corners identity + 2 flow/(size-1))."""
    _, _, h, w = flow.shape
    flow_norm = 2 * torch.cat([flow[:, :1] / (w - 1), flow[:, 1:] / (h - 1)], 1)
    x = 2 * (torch.arange(w).to(flow) / (w - 1)) - 1
    y = 2 * (torch.arange(h).to(flow) / (h - 1)) - 1
    identity = torch.stack([x.view(1, w).expand(h, w), y.view(h, 1).expand(h, w)], 2)   # h x w x 2
    return identity + flow_norm.permute(0, 2, 3, 1)


def warp_image(image: torch.Tensor, deformation: torch.Tensor) -> torch.Tensor:
    """Resize the ``(B, h, w, 2)`` grid to the image size (bilinear) and ``grid_sample`` the image with it."""
    h, w = image.shape[-2:]
    if deformation.shape[1:3] != (h, w):
        deformation = F.interpolate(deformation.permute(0, 3, 1, 2), size=(h, w), mode="bilinear",
                                    align_corners=False).permute(0, 2, 3, 1)
    return F.grid_sample(image, deformation, mode="bilinear", padding_mode="zeros", align_corners=False)


@dataclass(frozen=True)
class PIRenderOutput:
    """``flow_field`` ``(B, 2, H/4, W/4)`` pixels; ``warp_image``, ``fake_image`` ``(B, 3, H, W)`` in [-1, 1]."""

    flow_field: torch.Tensor
    warp_image: torch.Tensor
    fake_image: torch.Tensor | None = None


class WarpingNet(nn.Module):
    def __init__(self, c: PIRenderConfig):
        super().__init__()
        self.hourglass = ADAINHourglass(c.image_nc, c.descriptor_nc, c.warp_base_nc, c.max_nc,
                                        c.warp_encoder_layers, c.warp_decoder_layers)
        nc = self.hourglass.output_nc
        self.flow_out = nn.Sequential(LayerNorm2d(nc), nn.LeakyReLU(_SLOPE), nn.Conv2d(nc, 2, 7, stride=1, padding=3))

    def forward(self, image: torch.Tensor, z: torch.Tensor) -> PIRenderOutput:
        flow = self.flow_out(self.hourglass(image, z))
        return PIRenderOutput(flow_field=flow, warp_image=warp_image(image, flow_to_deformation(flow)))


class EditingNet(nn.Module):
    def __init__(self, c: PIRenderConfig):
        super().__init__()
        self.encoder = FineEncoder(2 * c.image_nc, c.edit_base_nc, c.max_nc, c.edit_layers)
        self.decoder = FineDecoder(c.image_nc, c.descriptor_nc, c.edit_base_nc, c.max_nc, c.edit_layers,
                                   c.edit_res_blocks)

    def forward(self, image: torch.Tensor, warped: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(torch.cat([image, warped], 1)), z)


class FaceGenerator(nn.Module):
    """The official ``FaceGenerator`` (``net_G_ema``): mapping, warping and editing networks."""

    def __init__(self, config: PIRenderConfig = FULL):
        super().__init__()
        self.config = config
        self.mapping_net = MappingNet(config.coeff_nc, config.descriptor_nc, config.mapping_layers)
        self.warpping_net = WarpingNet(config)
        self.editing_net = EditingNet(config)

    def forward(self, input_image: torch.Tensor, driving_source: torch.Tensor,
                stage: str | None = None) -> PIRenderOutput:
        """``input_image`` ``(B, 3, H, W)`` in [-1, 1], ``driving_source`` ``(B, 73, 27)``; ``stage='warp'``
        skips the editing network (``fake_image`` is then None)."""
        z = self.mapping_net(driving_source)
        out = self.warpping_net(input_image, z)
        if stage == "warp":
            return out
        return PIRenderOutput(out.flow_field, out.warp_image, self.editing_net(input_image, out.warp_image, z))


# ----------------------------------------------------------------------------------------------- checkpoint
def checkpoint_filter_fn(checkpoint: Mapping[str, Any], key: str = CHECKPOINT_KEY) -> dict[str, torch.Tensor]:
    """``checkpoint[key]`` (``net_G_ema``) with any ``module.`` prefix stripped."""
    if key not in checkpoint:
        raise ValueError(f"expected a PIRender checkpoint with top-level '{key}', got {list(checkpoint)}")
    return {k.removeprefix("module."): v for k, v in checkpoint[key].items()}


def load_official_generator(path, config: PIRenderConfig = FULL) -> FaceGenerator:
    """Build :class:`FaceGenerator` and load the checkpoint's ``net_G_ema`` strictly."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(checkpoint).__name__}")
    net = FaceGenerator(config)
    net.load_state_dict(checkpoint_filter_fn(checkpoint), strict=True)
    return net.eval()


# ----------------------------------------------------------------------------------------------- harness
def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


class PIRenderer(Reenactor):
    """PIRenderer behind the suite's contract: RGB [0, 1] in and out, driven by 3DMM coefficients.

    The motion window comes from ``inputs.driving_window`` ``(B, 73, 27)`` when given, else from
    ``inputs.driving_coeffs`` ``(B, 257)`` with the frame repeated 27 times and crop parameters from
    ``inputs.extras['driving_crop_params']`` ``(B, 3)`` or, when unknown, ``self.crop_params``
    (:data:`DEFAULT_CROP_PARAMS`). Frames are resized to the weights' native size and back when they differ.
    Resizing is bilinear with antialiasing, ``align_corners=False`` (``F.interpolate``).
    """

    name = "pirender"
    image_size = 256
    needs_coeffs = True

    def __init__(self, config: PIRenderConfig = FULL, *, net: FaceGenerator | None = None,
                 crop_params: Sequence[float] = DEFAULT_CROP_PARAMS):
        super().__init__()
        self.net = net if net is not None else FaceGenerator(config)
        self.crop_params = tuple(float(v) for v in crop_params)

    @classmethod
    def from_checkpoint(cls, path: str | None = None, *, assets: str | None = None,
                        config: PIRenderConfig = FULL, **kwargs: Any) -> "PIRenderer":
        """Load ``net_G_ema`` of ``epoch_00190_iteration_000400000_checkpoint.pt``; ``MissingAssetError`` if absent."""
        from reenact.assets import asset_path

        found = asset_path(CHECKPOINT_ASSET, assets, path=path)
        return cls(net=load_official_generator(found, config), **kwargs).eval()

    @classmethod
    def random(cls, *, small: bool = True, seed: int = 0, **kwargs: Any) -> "PIRenderer":
        torch.manual_seed(seed)
        return cls(SMALL if small else FULL, **kwargs).eval()

    def driving_window(self, inputs: ReenactInputs) -> torch.Tensor:
        """The ``(B, 73, 27)`` motion window for ``inputs`` (see class docstring)."""
        batch = inputs.driving.shape[0]
        if inputs.driving_window is not None:
            window = inputs.driving_window
            if window.shape != (batch, self.net.config.coeff_nc, 2 * SEMANTIC_RADIUS + 1):
                raise ValueError(f"pirender: driving_window must be ({batch}, 73, 27), got {tuple(window.shape)}")
            return window.float()
        crop = inputs.extras.get("driving_crop_params", self.crop_params)
        if inputs.driving_coeffs.shape != (batch, NUM_COEFFS):
            raise ValueError(f"pirender: driving_coeffs must be ({batch}, 257), got "
                             f"{tuple(inputs.driving_coeffs.shape)}")
        return single_frame_windows(inputs.driving_coeffs, crop)

    @torch.no_grad()
    def reenact(self, inputs: ReenactInputs, motion: Motion = "absolute") -> torch.Tensor:
        self.check_inputs(inputs, motion)
        window = self.driving_window(inputs).to(inputs.source.device)
        size = tuple(inputs.source.shape[-2:])
        image = _resize(inputs.source, (self.net.config.image_size,) * 2) * 2 - 1
        fake = self.net(image, window).fake_image.clamp(-1, 1)
        return _resize((fake + 1) / 2, size).clamp(0, 1)
