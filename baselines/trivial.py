"""Trivial references that need no weights, so the harness can be tested and metrics bounded.

* ``copy-source``: I_g = I_s (perfect identity, no motion: the floor for AED/APD, the ceiling for CSIM).
* ``copy-driving``: I_g = I_d (perfect motion, wrong identity in cross-reenactment).
* ``render``: the 3DMM render I_r of v_t = (alpha_s, beta_d, delta_s, gamma_s, p_d), pasted over the source image
  (what the 3DMM alone can say about the target; needs source and driving coefficients).
"""
from __future__ import annotations

from typing import Any

import torch

from reenact.contract import Motion, ReenactInputs, Reenactor


class CopySource(Reenactor):
    name = "copy-source"

    def reenact(self, inputs: ReenactInputs, motion: Motion = "absolute") -> torch.Tensor:
        self.check_inputs(inputs, motion)
        return inputs.source.clone()

    @classmethod
    def from_checkpoint(cls, path: str | None = None, **kwargs: Any) -> "CopySource":
        return cls()

    @classmethod
    def random(cls, **kwargs: Any) -> "CopySource":
        return cls()


class CopyDriving(CopySource):
    name = "copy-driving"

    def reenact(self, inputs: ReenactInputs, motion: Motion = "absolute") -> torch.Tensor:
        self.check_inputs(inputs, motion)
        return inputs.driving.clone()


class RenderGuidance(CopySource):
    """I_r over the source image. ``model``: a morphable-model spec for ``reenact.face3d.io.load_morphable_model``."""

    name = "render"
    needs_coeffs = True

    def __init__(self, model: str = "procedural-full", paste_on_source: bool = True):
        super().__init__()
        from reenact.face3d.io import load_morphable_model

        self.morphable = load_morphable_model(model)
        self.paste_on_source = paste_on_source

    @classmethod
    def from_checkpoint(cls, path: str | None = None, **kwargs: Any) -> "RenderGuidance":
        return cls(**kwargs)

    @classmethod
    def random(cls, *, small: bool = True, **kwargs: Any) -> "RenderGuidance":
        return cls(model="procedural-small" if small else "procedural-full")

    def reenact(self, inputs: ReenactInputs, motion: Motion = "absolute") -> torch.Tensor:
        from reenact.face3d.camera import PerspectiveCamera
        from reenact.face3d.coeffs import check_coeffs, target_coeffs
        from reenact.face3d.face import render_face

        self.check_inputs(inputs, motion)
        if inputs.source_coeffs is None:
            raise ValueError("render needs source_coeffs as well as driving_coeffs")
        check_coeffs(inputs.source_coeffs, inputs.driving_coeffs, name="source and driving coefficients")
        target = target_coeffs(inputs.source_coeffs, inputs.driving_coeffs).float()
        face = render_face(self.morphable.to(inputs.source.device), target,
                           PerspectiveCamera.deep3d(inputs.source.shape[-1]), backend="torch")
        render = face.image.clamp(0, 1)
        return render * face.mask + inputs.source * (1 - face.mask) if self.paste_on_source else render
