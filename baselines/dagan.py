"""DaGAN, the Depth-Aware GAN (Hong et al., CVPR 2022), behind :class:`reenact.contract.Reenactor`.

A native re-implementation of harlanhong/CVPR2022-DaGAN's paper model (``--kp_num 15 --generator
DepthAwareGenerator``, ``config/vox-adv-256.yaml``): FOMM's keypoint detector on RGB+depth (4 channels), FOMM's dense
motion network, the depth-aware generator with its cross-modal attention, and the monodepth2-style depth network
(``ResnetEncoder`` + ``DepthDecoder``) that produces the depth it needs. ``state_dict`` keys equal the official ones
(``../shared/fixtures/baselines/dagan_keys.json``); outputs reproduce ``dagan_golden.pt`` and
``dagan_depth_golden.pt``.

* Input and output: RGB float32 NCHW in [0, 1], 256x256 for the released weights (H, W multiples of 128 run).
  Depth is the decoder's disparity ``disp_0`` (B, 1, H, W) in (0, 1), computed inside from the RGB frames.
* Motion: ``"absolute"`` (default, the paper's protocol) or ``"relative"`` via ``inputs.driving_initial``.
* grid_sample: ``align_corners=False`` by default (DaGAN was trained with torch>=1.7, where that is the default).
* Checkpoints: ``DaGAN_vox_adv_256.pth.tar`` (asset ``"dagan"``), top-level ``generator``/``kp_detector`` state dicts
  whose keys carry DDP's ``module.`` prefix (stripped here when present); the depth network from
  ``weights_19/encoder.pth`` (asset ``"dagan_depth_encoder"``, ResNet-18; filtered to the model's keys, as the
  official demo does, because monodepth2 stores ``height``/``width``/``use_stereo`` there) and
  ``weights_19/depth.pth`` (``"dagan_depth_decoder"``, strict). ``num_batches_tracked`` is optional everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from baselines._fomm_blocks import (
    SMALL_MODEL_PARAMS,
    DenseMotionNetwork,
    DiscriminatorConfig,
    GeneratorConfig,
    GeneratorOutput,
    KeypointModelConfig,
    Keypoints,
    KeypointWarpGenerator,
    KPDetector,
    KPDetectorConfig,
    checkpoint_entry,
    feature_decoder,
    feature_encoder,
    load_checkpoint_file,
    load_state_exact,
    normalize_kp,
    strip_prefix,
)
from baselines.fomm import check_size
from reenact.contract import Motion, ReenactInputs, Reenactor

# ----------------------------------------------------------------------------------------------------------------
# configs


@dataclass(frozen=True)
class DaGANConfig:
    """Keypoint detector (RGB+depth) + depth-aware generator + depth network (ResNet ``depth_layers``)."""

    keypoint_model: KeypointModelConfig = field(
        default_factory=lambda: _rgbd(KeypointModelConfig().with_num_kp(15)))
    depth_layers: int = 18

    @property
    def kp_detector(self) -> KPDetectorConfig:
        return self.keypoint_model.kp_detector

    @property
    def generator(self) -> GeneratorConfig:
        return self.keypoint_model.generator

    @property
    def size_multiple(self) -> int:
        return self.keypoint_model.size_multiple


def _rgbd(config: KeypointModelConfig) -> KeypointModelConfig:
    """The keypoint detector reads RGB + depth (4 channels)."""
    return replace(config, kp_detector=replace(config.kp_detector, num_channels=4))


#: the paper model: vox-adv-256.yaml with num_kp 15, ResNet-18 depth encoder (demo.py, weights_19)
VOX256 = DaGANConfig()
#: the small-width configuration of dagan_golden.pt (depth network stays full size: its widths are fixed)
SMALL = DaGANConfig(keypoint_model=_rgbd(KeypointModelConfig.from_model_params(SMALL_MODEL_PARAMS)))
#: vox-adv-256.yaml discriminator_params with use_kp (training only, no spectral norm)
VOX256_DISCRIMINATOR = DiscriminatorConfig(scales=(1,), block_expansion=32, max_features=512, num_blocks=4,
                                           sn=False, use_kp=True, num_kp=15)

# ----------------------------------------------------------------------------------------------------------------
# depth-aware generator


class DepthAwareAttention(nn.Module):
    """Cross-modal attention (paper Eq. 7-8): queries from the source-depth features, keys and values from the
    warped appearance features; ``out = gamma * attended + features``. Returns out and the (B, N, N) attention."""

    def __init__(self, in_dim: int):
        super().__init__()
        self.query_conv = nn.Conv2d(in_dim, in_dim // 8, kernel_size=1)
        self.key_conv = nn.Conv2d(in_dim, in_dim // 8, kernel_size=1)
        self.value_conv = nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, depth_features: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = depth_features.shape
        query = F.relu(self.query_conv(depth_features)).view(b, -1, h * w).permute(0, 2, 1)  # B x N x C/8
        key = F.relu(self.key_conv(features)).view(b, -1, h * w)  # B x C/8 x N
        attention = F.softmax(torch.bmm(query, key), dim=-1)  # B x N x N, rows: query positions
        value = F.relu(self.value_conv(features)).view(b, -1, h * w)  # B x C x N
        attended = torch.bmm(value, attention.permute(0, 2, 1)).view(b, c, h, w)
        return self.gamma * attended + features, attention


class DepthAwareGenerator(KeypointWarpGenerator):
    """FOMM's occlusion-aware generator plus a source-depth encoder (``src_first``, ``src_down_blocks``) whose
    features query the warped appearance features through :class:`DepthAwareAttention` before decoding."""

    def __init__(self, config: GeneratorConfig = VOX256.generator, *, align_corners: bool = False):
        super().__init__()
        c = config
        # modules are created in the official order, which fixes the state_dict order
        self.dense_motion_network = DenseMotionNetwork(c.num_kp, c.num_channels, c.dense_motion,
                                                       estimate_occlusion_map=c.estimate_occlusion_map,
                                                       align_corners=align_corners)
        self.first, self.down_blocks = feature_encoder(c.num_channels, c.block_expansion, c.max_features,
                                                       c.num_down_blocks)
        self.src_first, self.src_down_blocks = feature_encoder(1, c.block_expansion, c.max_features,
                                                               c.num_down_blocks)
        self.AttnModule = DepthAwareAttention(min(c.max_features, c.block_expansion * 2 ** c.num_down_blocks))
        self.up_blocks, self.bottleneck, self.final = feature_decoder(c)
        self.config = config

    def encode_depth(self, source_depth: torch.Tensor) -> torch.Tensor:
        out = self.src_first(source_depth)
        for block in self.src_down_blocks:
            out = block(out)
        return out

    def forward(self, source_image: torch.Tensor, kp_driving: Keypoints, kp_source: Keypoints,
                source_depth: torch.Tensor, driving_depth: torch.Tensor | None = None) -> GeneratorOutput:
        """``driving_depth`` is accepted for signature parity with the official code and unused (as there)."""
        features = self.encode(source_image)
        depth_features = self.encode_depth(source_depth)  # not warped: queries live in the source frame
        motion = self.dense_motion_network(source_image, kp_driving=kp_driving, kp_source=kp_source)
        attended, attention = self.AttnModule(depth_features, self.warp_features(features, motion))
        return GeneratorOutput(prediction=self.decode(attended),
                               deformed=self.deform_input(source_image, motion.deformation), mask=motion.mask,
                               sparse_deformed=motion.sparse_deformed, deformation=motion.deformation,
                               occlusion_map=motion.occlusion_map, attention=attention)

# ----------------------------------------------------------------------------------------------------------------
# depth network (monodepth2 layout, as vendored by DaGAN in depth/)


_RESNETS = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34, 50: torchvision.models.resnet50,
            101: torchvision.models.resnet101, 152: torchvision.models.resnet152}


class DepthEncoder(nn.Module):
    """The official ``ResnetEncoder``: a torchvision ResNet (``encoder.*``, unused ``fc`` included) returning the
    five feature maps at 1/2 .. 1/32 resolution; normalises its [0, 1] input with ``(x - 0.45) / 0.225`` itself."""

    def __init__(self, num_layers: int = 18):
        super().__init__()
        if num_layers not in _RESNETS:
            raise ValueError(f"depth encoder: num_layers must be one of {sorted(_RESNETS)}, got {num_layers}")
        self.encoder = _RESNETS[num_layers](weights=None)
        widths = (64, 64, 128, 256, 512)
        self.num_ch_enc = widths[:1] + tuple(4 * c for c in widths[1:]) if num_layers > 34 else widths

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        e = self.encoder
        x = (image - 0.45) / 0.225
        features = [e.relu(e.bn1(e.conv1(x)))]
        features.append(e.layer1(e.maxpool(features[-1])))
        for layer in (e.layer2, e.layer3, e.layer4):
            features.append(layer(features[-1]))
        return features


class Conv3x3(nn.Module):
    """Reflection-padded 3x3 convolution (``Conv3x3`` of monodepth2)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (1, 1, 1, 1), mode="reflect"))


class ConvBlock(nn.Module):
    """Conv3x3 then ELU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = Conv3x3(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.elu(self.conv(x))


class DepthDecoder(nn.Module):
    """The official ``DepthDecoder``: U-Net decoder with nearest 2x upsampling and a sigmoid disparity head per scale.

    ``decoder`` is a ModuleList in the official order: ``upconv(i, 0)``, ``upconv(i, 1)`` for i = 4..0 (indices
    0..9), then ``dispconv(s)`` for each scale (10..). ``forward`` returns ``{s: disp_s}`` with disp_s
    ``(B, 1, H / 2**s, W / 2**s)`` in (0, 1).
    """

    num_ch_dec = (16, 32, 64, 128, 256)

    def __init__(self, num_ch_enc: tuple[int, ...] = (64, 64, 128, 256, 512), scales: tuple[int, ...] = (0, 1, 2, 3)):
        super().__init__()
        dec, convs = self.num_ch_dec, []
        for i in range(4, -1, -1):
            convs.append(ConvBlock(num_ch_enc[-1] if i == 4 else dec[i + 1], dec[i]))
            convs.append(ConvBlock(dec[i] + (num_ch_enc[i - 1] if i > 0 else 0), dec[i]))
        convs.extend(Conv3x3(dec[s], 1) for s in scales)
        self.decoder = nn.ModuleList(convs)
        self.scales = tuple(scales)

    def upconv(self, i: int, j: int) -> nn.Module:
        return self.decoder[2 * (4 - i) + j]

    def dispconv(self, s: int) -> nn.Module:
        return self.decoder[10 + self.scales.index(s)]

    def forward(self, features: list[torch.Tensor]) -> dict[int, torch.Tensor]:
        disp: dict[int, torch.Tensor] = {}
        x = features[-1]
        for i in range(4, -1, -1):
            x = F.interpolate(self.upconv(i, 0)(x), scale_factor=2, mode="nearest")
            if i > 0:
                x = torch.cat([x, features[i - 1]], dim=1)
            x = self.upconv(i, 1)(x)
            if i in self.scales:
                disp[i] = torch.sigmoid(self.dispconv(i)(x))
        return disp

# ----------------------------------------------------------------------------------------------------------------
# the model


class DaGAN(Reenactor):
    """DaGAN: ``depth_encoder`` + ``depth_decoder`` (disparity), ``kp_detector`` (RGB+depth), ``generator``."""

    name = "dagan"
    image_size = 256
    #: smallest input the configs accept (H, W multiples of 128); the registry contract test reads it
    test_image_size = 128
    supports_relative = True

    def __init__(self, config: DaGANConfig = VOX256, *, align_corners: bool = False, adapt_scale: bool = False):
        super().__init__()
        self.kp_detector = KPDetector(config.kp_detector)
        self.generator = DepthAwareGenerator(config.generator, align_corners=align_corners)
        self.depth_encoder = DepthEncoder(config.depth_layers)
        self.depth_decoder = DepthDecoder(self.depth_encoder.num_ch_enc)
        self.config = config
        self.adapt_scale = adapt_scale
        self.eval()

    def depth(self, image: torch.Tensor) -> torch.Tensor:
        """Disparity ``(B, 1, H, W)`` in (0, 1) of ``image`` (B, 3, H, W) in [0, 1] (decoder scale 0)."""
        return self.depth_decoder(self.depth_encoder(image))[0]

    def keypoints(self, image: torch.Tensor, depth: torch.Tensor) -> Keypoints:
        return self.kp_detector(torch.cat([image, depth], dim=1))

    def animate(self, inputs: ReenactInputs, motion: Motion = "absolute") -> GeneratorOutput:
        """All generator outputs for ``inputs`` (see :meth:`reenact` for the contract)."""
        self.check_inputs(inputs, motion)
        check_size(self, inputs.source)
        source_depth, driving_depth = self.depth(inputs.source), self.depth(inputs.driving)
        kp_source = self.keypoints(inputs.source, source_depth)
        kp_driving = self.keypoints(inputs.driving, driving_depth)
        if motion == "relative":
            initial = inputs.driving_initial
            kp_driving = normalize_kp(kp_source, kp_driving, self.keypoints(initial, self.depth(initial)),
                                      adapt_movement_scale=self.adapt_scale)
        return self.generator(inputs.source, kp_driving=kp_driving, kp_source=kp_source, source_depth=source_depth,
                              driving_depth=driving_depth)

    def reenact(self, inputs: ReenactInputs, motion: Motion = "absolute") -> torch.Tensor:
        """I_g (B, 3, H, W) in (0, 1): ``inputs.source`` animated by ``inputs.driving`` (RGB in [0, 1])."""
        return self.animate(inputs, motion).prediction

    @classmethod
    def from_checkpoint(cls, path: str | Path | None = None, *, assets: str | None = None,
                        depth_encoder: str | Path | None = None, depth_decoder: str | Path | None = None,
                        config: DaGANConfig = VOX256, align_corners: bool = False, adapt_scale: bool = False,
                        trust_pickle: bool = False, **kwargs: Any) -> "DaGAN":
        """Load ``DaGAN_vox_adv_256.pth.tar`` plus the depth network's ``encoder.pth`` and ``depth.pth``.

        Each file is ``path`` / ``depth_encoder`` / ``depth_decoder`` when given, else found in the asset folder;
        a missing one raises ``reenact.assets.MissingAssetError`` naming it, where it is published and where to put
        it. For the ResNet-50 depth network pass ``config=DaGANConfig(depth_layers=50)`` and both depth paths.
        """
        from reenact.assets import asset_path

        files = {"main": asset_path("dagan", assets, path=path),
                 "encoder": asset_path("dagan_depth_encoder", assets, path=depth_encoder),
                 "decoder": asset_path("dagan_depth_decoder", assets, path=depth_decoder)}
        model = cls(config, align_corners=align_corners, adapt_scale=adapt_scale, **kwargs)
        checkpoint = load_checkpoint_file(files["main"], trust_pickle=trust_pickle)
        for name in ("generator", "kp_detector"):
            state = strip_prefix(checkpoint_entry(checkpoint, name, files["main"]))
            load_state_exact(getattr(model, name), state, what=f"{files['main']}:{name}")
        load_state_exact(model.depth_encoder, load_checkpoint_file(files["encoder"], trust_pickle=trust_pickle),
                         what=str(files["encoder"]), drop_unknown=True)
        load_state_exact(model.depth_decoder, load_checkpoint_file(files["decoder"], trust_pickle=trust_pickle),
                         what=str(files["decoder"]))
        return model.eval()

    @classmethod
    def random(cls, *, small: bool = True, seed: int = 0, **kwargs: Any) -> "DaGAN":
        """Random weights (official init): the golden's small widths (depth net full size), or the paper model."""
        torch.manual_seed(seed)
        return cls(SMALL if small else VOX256, **kwargs)
