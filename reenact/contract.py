"""The one interface every reenactment model implements (baselines, trivial references and the paper's model).

Contract (all models, all methods):
* ``source`` and ``driving``: RGB float32 NCHW tensors in [0, 1], shape ``(B, 3, 256, 256)`` unless a model
  documents another size; channel order R, G, B.
* ``reenact`` returns the generated image ``I_g`` with the same contract: ``(B, 3, H, W)`` in [0, 1].
* ``motion`` is ``"absolute"`` (the paper's protocol for all methods) or ``"relative"`` (needs
  ``driving_initial``); models without relative motion raise ``ValueError`` for it.
* ``driving_coeffs`` / ``source_coeffs``: optional ``(B, 257)`` 3DMM coefficients (``reenact.face3d.coeffs``
  layout) for models that are driven by them (PIRenderer, ``render``, the paper's model).
Any conversion to a model's own convention ([-1, 1], 4-channel RGB+depth, motion windows) happens inside it.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

Motion = Literal["absolute", "relative"]


@dataclass
class ReenactInputs:
    """One batch of the benchmark: what every model may read."""

    source: torch.Tensor                       # (B, 3, H, W) in [0, 1]
    driving: torch.Tensor                      # (B, 3, H, W) in [0, 1]
    source_coeffs: torch.Tensor | None = None  # (B, 257)
    driving_coeffs: torch.Tensor | None = None  # (B, 257)
    driving_window: torch.Tensor | None = None  # (B, 73, 27) PIRender motion window, when precomputed
    driving_initial: torch.Tensor | None = None  # (B, 3, H, W) first driving frame, for relative motion
    extras: dict[str, Any] = field(default_factory=dict)


class Reenactor(abc.ABC, torch.nn.Module):
    """A face-reenactment model behind the suite's contract (see module docstring)."""

    #: registry name, e.g. "fomm"
    name: ClassVar[str] = ""
    #: the input size the model's weights expect
    image_size: ClassVar[int] = 256
    #: which optional inputs the model reads
    needs_coeffs: ClassVar[bool] = False
    supports_relative: ClassVar[bool] = False

    @abc.abstractmethod
    def reenact(self, inputs: ReenactInputs, motion: Motion = "absolute") -> torch.Tensor:
        """Generate I_g, ``(B, 3, H, W)`` RGB in [0, 1], from ``inputs`` (see module docstring)."""

    @classmethod
    def from_checkpoint(cls, path: str | None = None, *, assets: str | None = None, **kwargs: Any) -> "Reenactor":
        """Build the full-size model and load its official checkpoint (``path`` or the asset folder).

        Raises ``reenact.assets.MissingAssetError`` naming the file, where it is published and where to put it.
        """
        raise NotImplementedError(f"{cls.__name__} has no released checkpoint")

    @classmethod
    def random(cls, *, small: bool = True, seed: int = 0, **kwargs: Any) -> "Reenactor":
        """A model with random weights (``small`` width for tests), for contract and speed tests."""
        torch.manual_seed(seed)
        return cls(**kwargs)

    def check_inputs(self, inputs: ReenactInputs, motion: Motion) -> None:
        """Validate the public contract; raises ``ValueError`` naming what it got."""
        for name in ("source", "driving"):
            x = getattr(inputs, name)
            if x.ndim != 4 or x.shape[1] != 3:
                raise ValueError(f"{self.name}: {name} must be (B, 3, H, W), got {tuple(x.shape)}")
        if inputs.source.shape != inputs.driving.shape:
            raise ValueError(f"{self.name}: source {tuple(inputs.source.shape)} and driving "
                             f"{tuple(inputs.driving.shape)} differ")
        if motion == "relative" and not self.supports_relative:
            raise ValueError(f"{self.name} has no relative motion mode")
        if motion == "relative" and inputs.driving_initial is None:
            raise ValueError(f"{self.name}: relative motion needs driving_initial")
        if self.needs_coeffs and inputs.driving_coeffs is None and inputs.driving_window is None:
            raise ValueError(f"{self.name} is driven by 3DMM coefficients: pass driving_coeffs")
