"""FOMM, the First Order Motion Model (Siarohin et al., NeurIPS 2019), behind :class:`reenact.contract.Reenactor`.

A native re-implementation (blocks in :mod:`baselines._fomm_blocks`) whose ``state_dict`` equals the official
``OcclusionAwareGenerator`` / ``KPDetector`` of AliaksandrSiarohin/first-order-model (``config/vox-256.yaml``) key by
key, and whose forward pass reproduces the official code (``../shared/fixtures/baselines/fomm_golden.pt``).

* Input and output: RGB float32 NCHW in [0, 1], 256x256 for the released weights (any H, W that are multiples of
  ``config.size_multiple`` = 128 run). The prediction is a sigmoid, so it lies in (0, 1).
* Motion: ``"absolute"`` (the paper's protocol: driving keypoints used as they are) or ``"relative"``
  (``normalize_kp`` with relative movement and jacobians against ``inputs.driving_initial``, as the official demo's
  ``--relative``; ``adapt_scale=True`` is its ``--adapt_scale``).
* grid_sample: ``align_corners=True`` by default, because ``vox-cpk.pth.tar`` was trained under torch 1.0 whose
  ``grid_sample`` behaved that way; ``align_corners=False`` is what the unchanged official code computes on
  torch>=1.3. Both are tested against their golden keys.
* Checkpoint: ``vox-cpk.pth.tar`` (asset key ``"fomm"``), top-level ``generator`` and ``kp_detector`` state dicts
  without prefix (``discriminator``, optimizers and ``epoch`` are ignored); ``num_batches_tracked`` is optional.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from baselines._fomm_blocks import (
    SMALL_MODEL_PARAMS,
    DiscriminatorConfig,
    GeneratorOutput,
    KeypointModelConfig,
    Keypoints,
    KPDetector,
    OcclusionAwareGenerator,
    checkpoint_entry,
    load_checkpoint_file,
    load_state_exact,
    normalize_kp,
)
from reenact.contract import Motion, ReenactInputs, Reenactor

#: config/vox-256.yaml (num_kp 10); ``FOMMConfig()`` is the same
VOX256 = KeypointModelConfig()
#: the small-width configuration of fomm_golden.pt (num_kp 5, widths 8..32)
SMALL = KeypointModelConfig.from_model_params(SMALL_MODEL_PARAMS)
#: vox-256.yaml discriminator_params (training only, spectral norm)
VOX256_DISCRIMINATOR = DiscriminatorConfig(scales=(1,), block_expansion=32, max_features=512, num_blocks=4, sn=True,
                                           num_kp=10)

FOMMConfig = KeypointModelConfig


class FOMM(Reenactor):
    """FOMM: keypoint detector + occlusion-aware generator. Submodules ``kp_detector`` and ``generator``."""

    name = "fomm"
    image_size = 256
    #: smallest input the configs accept (H, W multiples of 128); the registry contract test reads it
    test_image_size = 128
    supports_relative = True

    def __init__(self, config: KeypointModelConfig = VOX256, *, align_corners: bool = True, adapt_scale: bool = False):
        super().__init__()
        self.kp_detector = KPDetector(config.kp_detector)
        self.generator = OcclusionAwareGenerator(config.generator, align_corners=align_corners)
        self.config = config
        self.adapt_scale = adapt_scale
        self.eval()

    @property
    def align_corners(self) -> bool:
        return self.generator.align_corners

    @align_corners.setter
    def align_corners(self, value: bool) -> None:
        self.generator.align_corners = value

    def keypoints(self, image: torch.Tensor) -> Keypoints:
        """Keypoints of ``image`` (B, 3, H, W) in [0, 1]."""
        return self.kp_detector(image)

    def animate(self, inputs: ReenactInputs, motion: Motion = "absolute") -> GeneratorOutput:
        """All generator outputs for ``inputs`` (see :meth:`reenact` for the contract)."""
        self.check_inputs(inputs, motion)
        check_size(self, inputs.source)
        kp_source = self.kp_detector(inputs.source)
        kp_driving = self.kp_detector(inputs.driving)
        if motion == "relative":
            kp_driving = normalize_kp(kp_source, kp_driving, self.kp_detector(inputs.driving_initial),
                                      adapt_movement_scale=self.adapt_scale)
        return self.generator(inputs.source, kp_driving=kp_driving, kp_source=kp_source)

    def reenact(self, inputs: ReenactInputs, motion: Motion = "absolute") -> torch.Tensor:
        """I_g (B, 3, H, W) in (0, 1): ``inputs.source`` animated by ``inputs.driving`` (RGB in [0, 1])."""
        return self.animate(inputs, motion).prediction

    @classmethod
    def from_checkpoint(cls, path: str | Path | None = None, *, assets: str | None = None,
                        config: KeypointModelConfig = VOX256, align_corners: bool = True, adapt_scale: bool = False,
                        trust_pickle: bool = False, **kwargs: Any) -> "FOMM":
        """Load ``vox-cpk.pth.tar`` (``path`` or ``<assets>/baselines/vox-cpk.pth.tar``).

        Raises ``reenact.assets.MissingAssetError`` (file, where it is published, where to put it) when absent.
        """
        from reenact.assets import asset_path

        file = asset_path("fomm", assets, path=path)
        checkpoint = load_checkpoint_file(file, trust_pickle=trust_pickle)
        model = cls(config, align_corners=align_corners, adapt_scale=adapt_scale, **kwargs)
        for name in ("generator", "kp_detector"):
            load_state_exact(getattr(model, name), checkpoint_entry(checkpoint, name, file), what=f"{file}:{name}")
        return model.eval()

    @classmethod
    def random(cls, *, small: bool = True, seed: int = 0, **kwargs: Any) -> "FOMM":
        """Random weights (official init): the golden's small widths, or the full vox-256 model."""
        torch.manual_seed(seed)
        return cls(SMALL if small else VOX256, **kwargs)


def check_size(model: Reenactor, image: torch.Tensor) -> None:
    """Raise ``ValueError`` unless H and W are multiples of the model's ``config.size_multiple``."""
    multiple = model.config.size_multiple
    h, w = image.shape[2:]
    if h % multiple or w % multiple:
        raise ValueError(f"{model.name}: height and width must be multiples of {multiple}, got {h}x{w}")
