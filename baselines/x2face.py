"""X2Face (Wiles et al., ECCV 2018), re-implemented to be numerically equal to the official code.

The official model is ``UnwrappedFaceWeightedAverage`` from oawiles/X2Face (branch ``py37_pytorch_0.4.1``):

* the **embedding network** (``pix2pixUnwrapped``) maps each source frame to a sampler that warps it into the
  *embedded face*, plus a per-pixel confidence; a skip-connected U-Net with 3 outputs (2 sampler + 1 confidence);
* the **driving network** (``pix2pixSampler``) maps the driving frame to a sampler that warps the embedded face into
  the generated frame; a U-Net without skips whose bottleneck (``inner_nc`` = 128 wide) is the *driving vector*.

Conventions (stated once):

* Images are RGB float32 NCHW in [0, 1] (torchvision ``ToTensor``); the released weights expect 256².
* Call order is the official one: ``net(driving, *sources)``, driving first.
* Samplers are ``(B, H, W, 2)`` grids in ``grid_sample`` convention (``[..., 0]`` = x, ``[..., 1]`` = y, in [-1, 1]):
  ``tanh(network output)`` added to the identity grid ``linspace(-1, 1, W) x linspace(-1, 1, H)`` (an
  align-corners-style grid, as the official NumPy ``meshgrid``).
* Confidences are ``exp(c) + 0.1`` in :meth:`X2FaceNet.forward` but ``exp(c)`` in :meth:`X2FaceNet.get_unwrapped`
  (both as in the official code).
* ``grid_sample``: the released weights were trained under torch 0.2 / 0.4.1, whose ``grid_sample`` behaved like
  ``align_corners=True``; that is our default. ``align_corners=False`` reproduces what the unchanged official code
  computes on torch >= 1.3. Bilinear up-sampling inside the U-Nets is always ``align_corners=True`` (explicit in
  the py37 branch, implicit in torch 0.2).
* The official U-Net blocks use **in-place** ``LeakyReLU(0.2)`` / ``ReLU``. Two observable effects follow and are
  written out explicitly here: the skip tensor a block concatenates is its *LeakyReLU'd* input, and the bottleneck
  a U-Net returns (index ``[1]``) has already been ReLU'd by the up path. No convolution has a bias
  (BatchNorm follows them; the outermost up-convolution has none either).

State-dict keys and shapes equal the official ones (``pix2pixUnwrapped.netG.model.{up,down,submodule}...``).
The checkpoint ``x2face_model_forpython3.pth`` holds ``{'state_dict': ..., ['optimizer': ...]}``; old torch
versions did not store BatchNorm's ``num_batches_tracked``, which :func:`checkpoint_filter_fn` fills in.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reenact.contract import Motion, ReenactInputs, Reenactor

CHECKPOINT_ASSET = "x2face"


@dataclass(frozen=True)
class X2FaceConfig:
    """Widths of the two U-Nets. ``FULL`` is the released model, ``SMALL`` the golden-fixture one."""

    num_downs: int = 8        # U-Net levels; the bottleneck is image_size / 2**num_downs
    ngf: int = 64             # width of the first level
    inner_nc: int = 128       # driving-vector width (driving-net bottleneck)
    image_size: int = 256     # native input size of the weights
    align_corners: bool = True  # grid_sample semantics (True = the released torch 0.2/0.4 weights)


FULL = X2FaceConfig()
SMALL = X2FaceConfig(num_downs=6, ngf=8, inner_nc=16, image_size=64)


# ----------------------------------------------------------------------------------------------- blocks
class UNetLevel(nn.Module):
    """One U-Net level: ``down`` path, the levels below (``submodule``, None at the innermost), ``up`` path.

    Module indices follow the official ``UnetSkipConnectionBlockBetterUpsampler`` so that keys match:
    ``down = [LeakyReLU, Conv4x4/2, BN]`` (outermost: ``[Conv]``, innermost: no BN),
    ``up = [ReLU, Upsample x2, Conv3x3, BN]`` (outermost: no BN, ``Tanh`` instead when ``tanh``).
    With ``skip`` a non-outermost level returns ``cat([up, LeakyReLU(input)])``.
    """

    def __init__(self, outer_nc: int, inner_nc: int, *, submodule: "UNetLevel | None" = None,
                 input_nc: int | None = None, outermost: bool = False, skip: bool = True, tanh: bool = False):
        super().__init__()
        self.outermost, self.skip = outermost, skip
        innermost = submodule is None
        below_nc = 2 * inner_nc if (skip and not innermost) else inner_nc
        up: list[nn.Module] = [nn.ReLU(), nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
                               nn.Conv2d(below_nc, outer_nc, 3, stride=1, padding=1, bias=False)]
        if not outermost:
            up.append(nn.BatchNorm2d(outer_nc))
        elif tanh:
            up.append(nn.Tanh())
        down: list[nn.Module] = [nn.Conv2d(input_nc or outer_nc, inner_nc, 4, stride=2, padding=1, bias=False)]
        if not outermost:
            down.insert(0, nn.LeakyReLU(0.2))
            if not innermost:
                down.append(nn.BatchNorm2d(inner_nc))
        self.up = nn.Sequential(*up)
        self.down = nn.Sequential(*down)
        self.submodule = submodule

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(output, bottleneck)``; bottleneck is the ReLU'd innermost down output."""
        if not self.outermost:
            x = self.down[0](x)                 # the official in-place LeakyReLU: the skip sees this
        h = self.down[int(not self.outermost):](x)
        if self.submodule is None:
            below, bottleneck = h, F.relu(h)    # the official in-place ReLU of the up path hits the bottleneck
        else:
            below, bottleneck = self.submodule(h)
        y = self.up(below)
        if self.skip and not self.outermost:
            y = torch.cat([y, x], 1)
        return y, bottleneck


class UNetGenerator(nn.Module):
    """``UnetGeneratorBetterUpsampler``: levels ngf*8 (innermost, ``num_downs - 4`` of them) .. ngf, outermost."""

    def __init__(self, input_nc: int, output_nc: int, num_downs: int, ngf: int, *,
                 inner_nc: int | None = None, skip: bool = True, tanh: bool = False):
        super().__init__()
        if num_downs < 5:
            raise ValueError(f"num_downs must be >= 5, got {num_downs}")
        level = UNetLevel(ngf * 8, inner_nc or ngf * 8, skip=skip)
        for _ in range(num_downs - 5):
            level = UNetLevel(ngf * 8, ngf * 8, submodule=level, skip=skip)
        for mult in (4, 2, 1):
            level = UNetLevel(ngf * mult, ngf * mult * 2, submodule=level, skip=skip)
        self.model = UNetLevel(output_nc, ngf, submodule=level, input_nc=input_nc, outermost=True,
                               skip=skip, tanh=tanh)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(x)


class Pix2Pix(nn.Module):
    """The official ``Pix2PixModel`` holder (it only adds the ``netG.`` key level)."""

    def __init__(self, netG: UNetGenerator):
        super().__init__()
        self.netG = netG

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.netG(x)


# ----------------------------------------------------------------------------------------------- model
def identity_grid(batch: int, height: int, width: int, *, device=None) -> torch.Tensor:
    """``(B, H, W, 2)`` identity sampler, x then y, endpoints at exactly -1 and 1 (NumPy ``linspace`` grid)."""
    xs = torch.linspace(-1, 1, width, dtype=torch.float64)
    ys = torch.linspace(-1, 1, height, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).float()  # H x W x 2
    return grid.to(device).expand(batch, height, width, 2)


def sampler_from_output(out: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """``(B, 2, H, W)`` network output -> ``(B, H, W, 2)`` absolute sampler ``tanh(out) + identity``."""
    return torch.tanh(out).permute(0, 2, 3, 1) + grid


class X2FaceNet(nn.Module):
    """``UnwrappedFaceWeightedAverage``: embedding network + driving network (see module docstring)."""

    def __init__(self, config: X2FaceConfig = FULL):
        super().__init__()
        self.config = config
        c = config
        self.pix2pixUnwrapped = Pix2Pix(UNetGenerator(3, 3, c.num_downs, c.ngf, skip=True))
        self.pix2pixSampler = Pix2Pix(UNetGenerator(3, 2, c.num_downs, c.ngf, inner_nc=c.inner_nc,
                                                     skip=False, tanh=True))

    def _warp(self, image: torch.Tensor, sampler: torch.Tensor) -> torch.Tensor:
        return F.grid_sample(image, sampler, mode="bilinear", padding_mode="zeros",
                             align_corners=self.config.align_corners)

    def _embed(self, sources: tuple[torch.Tensor, ...], offset: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Confidence-weighted average of the embedded sources and the ``(B, 1, H, W, N)`` confidences."""
        b, _, h, w = sources[0].shape
        grid = identity_grid(b, h, w, device=sources[0].device)
        weighted, confidences = [], []
        for source in sources:
            out = self.pix2pixUnwrapped(source)[0]               # B x 3 x H x W: sampler (2) + confidence (1)
            confidence = out[:, 2:3].exp() + offset             # B x 1 x H x W
            weighted.append(self._warp(source, sampler_from_output(out[:, 0:2], grid)) * confidence)
            confidences.append(confidence)
        confidences_n = torch.stack(confidences, 4)              # B x 1 x H x W x N
        return torch.stack(weighted, 4).sum(4) / confidences_n.sum(4), confidences_n

    def forward(self, driving: torch.Tensor, *sources: torch.Tensor) -> torch.Tensor:
        """Generated frame ``(B, 3, H, W)``: the embedded face warped by the driving sampler."""
        if not sources:
            raise ValueError("X2FaceNet needs at least one source frame after the driving frame")
        embedded, _ = self._embed(sources, offset=0.1)
        return self._warp(embedded, self.get_sampler(driving))

    def get_unwrapped(self, *sources: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embedded face ``(B, 3, H, W)`` and confidences ``exp(c)`` ``(B, 1, H, W, N)``."""
        return self._embed(sources, offset=0.0)

    def get_sampler(self, driving: torch.Tensor) -> torch.Tensor:
        """Driving sampler ``(B, H, W, 2)`` (absolute grid)."""
        out = self.pix2pixSampler(driving)[0]                   # B x 2 x H x W, already tanh'd once
        b, _, h, w = out.shape
        return sampler_from_output(out, identity_grid(b, h, w, device=out.device))

    def driving_vector(self, driving: torch.Tensor) -> torch.Tensor:
        """The driving-net bottleneck ``(B, inner_nc, H/2**n, W/2**n)`` (``pix2pixSampler(driving)[1]``)."""
        return self.pix2pixSampler(driving)[1]


# ----------------------------------------------------------------------------------------------- checkpoint
def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map an official state dict onto ``model``: strip ``module.`` and add BatchNorm's ``num_batches_tracked``
    where an old-torch checkpoint lacks it (the only keys allowed to be missing)."""
    out = {k.removeprefix("module."): v for k, v in state_dict.items()}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in out:
            out[key] = torch.zeros_like(value)
    return out


def load_official_state_dict(path, config: X2FaceConfig = FULL) -> X2FaceNet:
    """Build :class:`X2FaceNet` and load ``torch.load(path)['state_dict']`` strictly."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        keys = list(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"{path}: expected an X2Face checkpoint with top-level 'state_dict', got {keys}")
    net = X2FaceNet(config)
    net.load_state_dict(checkpoint_filter_fn(checkpoint["state_dict"], net), strict=True)
    return net.eval()


# ----------------------------------------------------------------------------------------------- harness
def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


class X2Face(Reenactor):
    """X2Face behind the suite's contract: RGB [0, 1] in and out, absolute motion, one source frame.

    Frames whose size differs from the weights' native size (256² at full size) are resized to it and the
    result is resized back, as the official notebooks resize every frame to 256².
    Resizing is bilinear with antialiasing, ``align_corners=False`` (``F.interpolate``).
    """

    name = "x2face"
    image_size = 256

    def __init__(self, config: X2FaceConfig = FULL, *, net: X2FaceNet | None = None):
        super().__init__()
        self.net = net if net is not None else X2FaceNet(config)

    @classmethod
    def from_checkpoint(cls, path: str | None = None, *, assets: str | None = None,
                        align_corners: bool = True, config: X2FaceConfig = FULL, **kwargs: Any) -> "X2Face":
        """Load ``x2face_model_forpython3.pth`` (``path`` or the asset folder); ``MissingAssetError`` if absent."""
        from reenact.assets import asset_path

        found = asset_path(CHECKPOINT_ASSET, assets, path=path)
        return cls(net=load_official_state_dict(found, replace(config, align_corners=align_corners)), **kwargs).eval()

    @classmethod
    def random(cls, *, small: bool = True, seed: int = 0, align_corners: bool = True, **kwargs: Any) -> "X2Face":
        torch.manual_seed(seed)
        return cls(replace(SMALL if small else FULL, align_corners=align_corners), **kwargs).eval()

    @torch.no_grad()
    def reenact(self, inputs: ReenactInputs, motion: Motion = "absolute") -> torch.Tensor:
        self.check_inputs(inputs, motion)
        size = tuple(inputs.source.shape[-2:])
        native = (self.net.config.image_size,) * 2
        out = self.net(_resize(inputs.driving, native), _resize(inputs.source, native))
        return _resize(out, size).clamp(0, 1)
