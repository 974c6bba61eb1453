"""The paper's model behind the suite's contract (:class:`reenact.contract.Reenactor`), registered as ``paper`` (the
full model, +FG+OG+SG) and ``paper-base`` (Table 3's Base) in ``baselines/registry.py``.

Inference follows Fig. 2: target coefficients v_t = (alpha_s, beta_d, delta_s, gamma_s, p_d), guidance F_c, O_c,
I_r from the 3D face core, then F_c -> Eqs. 6-7 -> F_r. Disentangled modes (Fig. 8): ``expression`` keeps the
source pose and takes the driving expression; ``pose`` keeps the source expression and takes the driving pose.

Inputs of another size than the network's are resized to it (anti-aliased) and the output back (coefficients do not
depend on the image size: the camera is ``PerspectiveCamera.deep3d(size)``). There is no released checkpoint: train
one with ``reenact train`` and load its ``checkpoint.pt``.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from reenact.assets import MissingAssetError
from reenact.contract import Motion, ReenactInputs, Reenactor
from reenact.face3d.coeffs import ANGLE, EXP, TRANS, motion_coeffs
from reenact.face3d.guidance import compute_guidance
from reenact.face3d.io import load_morphable_model
from reenact.model.networks import ModelConfig, MultipleGuidanceModel, model_config

Mode = Literal["full", "expression", "pose"]
MODES = ("full", "expression", "pose")


def driving_for_mode(source: torch.Tensor, driving: torch.Tensor, mode: Mode) -> torch.Tensor:
    """The driving coefficients ``(B, 257)`` a mode uses: all of v_d (``full``), only beta_d (``expression``,
    source pose kept) or only p_d (``pose``, source expression kept)."""
    if mode == "full":
        return driving
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    out = source.clone()
    for part in ((EXP,) if mode == "expression" else (ANGLE, TRANS)):
        out[..., part] = driving[..., part]
    return out


def _resize(image: torch.Tensor, size: int) -> torch.Tensor:
    if image.shape[-1] == size and image.shape[-2] == size:
        return image
    return F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class PaperReenactor(Reenactor):
    """The multiple-guidance model (``config.ablation`` says which Table 3 row); see the module docstring."""

    name: ClassVar[str] = "paper"
    needs_coeffs: ClassVar[bool] = True
    ablation: ClassVar[str] = "fg-og-sg"

    def __init__(self, config: ModelConfig | None = None, *, morphable: str = "procedural-full", mode: Mode = "full",
                 assets: str | None = None):
        super().__init__()
        self.config = config or model_config("full", self.ablation)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.network = MultipleGuidanceModel(self.config)
        self.morphable = load_morphable_model(morphable, assets)
        self.mode = mode

    @classmethod
    def from_checkpoint(cls, path: str | None = None, *, assets: str | None = None, mode: Mode = "full",
                        morphable: str | None = None, **kwargs: Any) -> PaperReenactor:
        """Load a ``reenact train`` checkpoint (its model config and morphable model unless overridden)."""
        from reenact.model.train import load_checkpoint

        if path is None:
            raise MissingAssetError(f"{cls.name}: the paper released no weights; train a model with `reenact train` "
                                    "and pass its run folder's checkpoint.pt (--checkpoint)")
        state = load_checkpoint(path)
        config = ModelConfig(**state["model_config"])
        if config.ablation != cls.ablation:
            raise ValueError(f"{path} holds a '{config.ablation}' model, not {cls.name}'s '{cls.ablation}'")
        model = cls(config, morphable=morphable or state["config"]["morphable"], mode=mode, assets=assets)
        model.network.load_state_dict(state["model"])
        return model.eval()

    @classmethod
    def random(cls, *, small: bool = True, seed: int = 0, mode: Mode = "full", **kwargs: Any) -> PaperReenactor:
        torch.manual_seed(seed)
        return cls(model_config("tiny" if small else "full", cls.ablation),
                   morphable="procedural-small" if small else "procedural-full", mode=mode, **kwargs)

    def reenact(self, inputs: ReenactInputs, motion: Motion = "absolute") -> torch.Tensor:
        self.check_inputs(inputs, motion)
        if inputs.source_coeffs is None or inputs.driving_coeffs is None:
            raise ValueError(f"{self.name} needs source_coeffs and driving_coeffs, (B, 257) each")
        size, out_size = self.config.image_size, inputs.source.shape[-2:]
        source_coeffs = inputs.source_coeffs.float()
        driving = driving_for_mode(source_coeffs, inputs.driving_coeffs.float(), self.mode)
        with torch.no_grad():
            g = compute_guidance(self._morphable_on(inputs.source.device), source_coeffs, driving, size,
                                 with_source_render=False)
        out = self.network(_resize(inputs.source, size), motion_coeffs(driving), g.flow, g.occlusion, g.render).image
        if tuple(out.shape[-2:]) != tuple(out_size):
            out = F.interpolate(out, size=tuple(out_size), mode="bilinear", align_corners=False).clamp(0, 1)
        return out


    def _morphable_on(self, device: torch.device):
        """The morphable model on ``device`` (moved once per device)."""
        self.morphable = self.morphable.to(device)
        return self.morphable


class PaperBaseReenactor(PaperReenactor):
    """Table 3's Base: flow and occlusion predicted by F_c alone, no I_r."""

    name: ClassVar[str] = "paper-base"
    ablation: ClassVar[str] = "base"
