"""The ``deep3d`` coefficient estimator: MTCNN 5 points -> 224^2 alignment -> Deep3DFaceRecon ``net_recon`` -> 257.

Conventions (stated once):

* :class:`ReconNet` is Deep3DFaceRecon's ``ReconNetWrapper('resnet50', use_last_fc=False)``: ``backbone.*`` is a
  torchvision ResNet-50 without ``fc`` (output ``(B, 2048, 1, 1)`` after global average pooling) and
  ``final_layers.0..6`` are 1x1 convolutions 2048 -> 80 (id), 64 (exp), 80 (tex), 3 (angle), 27 (gamma), 2 (trans xy),
  1 (trans z), concatenated into the layout of :mod:`reenact.face3d.coeffs`. Its state dict equals the official one
  key for key, so ``epoch_20.pth``'s ``net_recon`` loads strictly.
* Input: float32 RGB ``(B, 3, 224, 224)`` in [0, 1], aligned by :mod:`reenact.faces.align` from MTCNN's 5 landmarks.
* Cameras. The network's coefficients are in Deep3D's camera on the *aligned* 224^2 crop. Coefficient rows hold
  them in the *frame's* Deep3D camera instead (``reenact.face3d.camera``: coefficients are expressed for the image
  they were extracted from; for a W x H frame that camera has focal ``1015 min(W, H) / 224`` and its principal point
  at the frame centre, which is ``PerspectiveCamera.deep3d(S)`` for square S x S frames). Only ``trans`` changes
  (:func:`coeffs_to_frame`). Each row's ``align`` column holds Deep3D's ``trans_params`` ``(w0, h0, s, tx, ty)``;
  :func:`coeffs_to_aligned` and :class:`reenact.faces.align.AlignTransform` recover the network's own output and the
  pixel map between the frame and the aligned crop from them.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from reenact.data.schema import Status
from reenact.face3d.camera import PerspectiveCamera, reframe_translation
from reenact.face3d.coeffs import LAYOUT, NUM_COEFFS, TRANS
from reenact.faces.align import AlignTransform, align, load_lm3d
from reenact.faces.estimate import CoeffEstimate
from reenact.faces.images import ImageBatch, frame_camera, image_list, nan_rows

NAME = "deep3d"
#: final_layers in order: (part, width); trans is split into xy and z heads.
HEADS: tuple[tuple[str, int], ...] = (("id", 80), ("exp", 64), ("tex", 80), ("angle", 3), ("gamma", 27),
                                      ("trans_xy", 2), ("trans_z", 1))
FEATURES = 2048
INPUT_SIZE = 224


# ---------------------------------------------------------------- network
class ResNet50Backbone(ResNet):
    """torchvision ResNet-50 without ``fc``: ``(B, 3, H, W) -> (B, 2048, 1, 1)``."""

    def __init__(self):
        super().__init__(Bottleneck, [3, 4, 6, 3])
        del self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x)  # B x 2048 x 1 x 1


class ReconNet(nn.Module):
    """Deep3DFaceRecon's ``net_recon``: aligned face ``(B, 3, 224, 224)`` in [0, 1] -> coefficients ``(B, 257)``.

    The heads are zero-initialised as in the official constructor (an untrained net predicts the mean face).
    """

    def __init__(self):
        super().__init__()
        self.backbone = ResNet50Backbone()
        self.final_layers = nn.ModuleList([nn.Conv2d(FEATURES, width, 1, bias=True) for _, width in HEADS])
        for layer in self.final_layers:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feature = self.backbone(x)                                                  # B x 2048 x 1 x 1
        return torch.cat([head(feature) for head in self.final_layers], dim=1).flatten(1)  # B x 257


def _check_layout() -> None:
    widths = dict(HEADS)
    assert sum(widths.values()) == NUM_COEFFS
    assert widths["trans_xy"] + widths["trans_z"] == TRANS.stop - TRANS.start
    assert all(widths[name] == s.stop - s.start for name, s in LAYOUT.items() if name != "trans")


_check_layout()


# ---------------------------------------------------------------- checkpoints
def checkpoint_filter_fn(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a saved ``net_recon`` state dict onto :class:`ReconNet`: drop a DDP ``module.`` prefix and fill
    BatchNorm ``num_batches_tracked`` where an older torch did not save it."""
    out = {k.removeprefix("module."): v for k, v in state.items()}
    for key in [k for k in out if k.endswith(".running_var")]:
        out.setdefault(key.removesuffix("running_var") + "num_batches_tracked", torch.zeros((), dtype=torch.int64))
    return out


def read_net_recon(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``net_recon`` state dict of a Deep3DFaceRecon checkpoint (``{'net_recon', 'opt_00', 'sched_00'}``)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses pickled code; the official format has none
        raise ValueError(f"{path}: cannot read as a Deep3DFaceRecon checkpoint with weights_only=True: {exc}") from exc
    if not isinstance(checkpoint, Mapping) or "net_recon" not in checkpoint:
        keys = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ValueError(f"{path}: expected a Deep3DFaceRecon checkpoint with key 'net_recon', found {keys}")
    return checkpoint_filter_fn(checkpoint["net_recon"])


def build_recon_net(checkpoint: str | Path | None = None, *, assets: str | Path | None = None,
                    weights: Mapping[str, torch.Tensor] | None = None) -> ReconNet:
    """:class:`ReconNet` in eval mode with ``weights`` (a state dict), else ``checkpoint`` (default: the ``deep3d``
    asset, ``epoch_20.pth``). A missing checkpoint raises :class:`reenact.assets.MissingAssetError`."""
    if weights is None:
        from reenact.assets import asset_path

        weights = read_net_recon(asset_path(NAME, assets, path=checkpoint))
    net = ReconNet()
    net.load_state_dict(checkpoint_filter_fn(weights), strict=True)
    return net.eval()


# ---------------------------------------------------------------- cameras
def aligned_camera(transform: AlignTransform) -> PerspectiveCamera:
    """Deep3D's camera of the aligned crop, expressed in the frame's pixels (continuous, y down).

    The crop shows frame pixels ``x`` at ``u = k x - (left, up)`` (continuous coordinates), so the camera is the
    crop's camera scaled back by ``1 / k`` and shifted by the box; ``.crop(left / k, up / k, T / k, T)`` of it is
    ``PerspectiveCamera.deep3d(T)`` again.
    """
    reference = PerspectiveCamera.deep3d(transform.target_size)
    (kx, ky), (left, up) = transform.scale, transform.box
    return PerspectiveCamera(width=transform.w0, height=transform.h0, focal=reference.focal / ((kx + ky) / 2),
                             cx=(reference.cx + left) / kx, cy=(reference.cy + up) / ky, distance=reference.distance)


def coeffs_to_frame(coeffs: torch.Tensor, transform: AlignTransform) -> torch.Tensor:
    """Network output ``(..., 257)`` (aligned crop's camera) -> the frame's Deep3D camera (``trans`` re-framed)."""
    out = coeffs.clone()
    cameras = aligned_camera(transform), frame_camera(transform.w0, transform.h0)
    out[..., TRANS] = reframe_translation(coeffs[..., TRANS].double(), *cameras).to(coeffs.dtype)
    return out


def coeffs_to_aligned(coeffs: torch.Tensor, transform: AlignTransform) -> torch.Tensor:
    """Inverse of :func:`coeffs_to_frame`: frame-camera coefficients back to the network's own output."""
    out = coeffs.clone()
    cameras = frame_camera(transform.w0, transform.h0), aligned_camera(transform)
    out[..., TRANS] = reframe_translation(coeffs[..., TRANS].double(), *cameras).to(coeffs.dtype)
    return out


# ---------------------------------------------------------------- the estimator
class Deep3DEstimator:
    """RGB float images -> Deep3D coefficients in each frame's camera (:meth:`estimate_coeffs`, ``(B, 257)``).

    Args:
        checkpoint: path to ``epoch_20.pth``; default the ``deep3d`` asset.
        assets: asset folder override.
        weights: a ``net_recon`` state dict to use instead of a checkpoint (tests, random weights).
        lm3d: path to ``similarity_Lm3D_all.mat``; default the ``deep3d_lm3d`` asset.
        device: torch device; default CUDA when available.
        batch_size: faces per network forward.
    """

    name = NAME

    def __init__(self, checkpoint: str | Path | None = None, *, assets: str | Path | None = None,
                 weights: Mapping[str, torch.Tensor] | None = None, lm3d: str | Path | None = None,
                 device: str | None = None, batch_size: int = 16):
        from reenact.assets import asset_path

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.net = build_recon_net(checkpoint, assets=assets, weights=weights).to(self.device)
        self.lm3d = load_lm3d(asset_path("deep3d_lm3d", assets, path=lm3d))
        self.batch_size = int(batch_size)

    def estimate_coeffs(self, images: ImageBatch) -> torch.Tensor:
        """``(B, 257)`` float32, NaN rows where no face was found or aligned."""
        return self.estimate(images).coeffs

    def estimate(self, images: ImageBatch) -> CoeffEstimate:
        """Coefficients, statuses, MTCNN's 5 points and the alignments (``trans_params``) of B images."""
        from reenact.faces.landmarks5 import landmarks5

        images = image_list(images)
        points = landmarks5(images, str(self.device))                                 # B x 5 x 2
        aligned = align(images, points.numpy(), self.lm3d, target_size=INPUT_SIZE)
        coeffs, params = nan_rows(len(images), NUM_COEFFS).float(), nan_rows(len(images), 5)
        faces = [i for i, t in enumerate(aligned.transforms) if t is not None]
        for i, raw in zip(faces, self._regress(aligned.images[faces])):
            coeffs[i] = coeffs_to_frame(raw, aligned.transforms[i])
            params[i] = torch.from_numpy(aligned.transforms[i].trans_params)
        status, error = zip(*[_status(points[i], aligned.errors[i], im) for i, im in enumerate(images)]) \
            if images else ((), ())
        return CoeffEstimate(coeffs, status, error, landmarks=points, align=params)

    @torch.no_grad()
    def _regress(self, aligned: torch.Tensor) -> torch.Tensor:
        """Network output ``(N, 257)`` float32 of aligned crops ``(N, 3, 224, 224)``, in batches."""
        out = [self.net(aligned[s:s + self.batch_size].to(self.device)).float().cpu()
               for s in range(0, len(aligned), self.batch_size)]
        return torch.cat(out) if out else torch.zeros(0, NUM_COEFFS)


def _status(points: torch.Tensor, align_error: str, image: torch.Tensor) -> tuple[Status, str]:
    if not torch.isfinite(points).all():
        return Status.NO_FACE, f"MTCNN found no face in the {image.shape[2]}x{image.shape[1]} frame"
    if align_error:
        return Status.FIT_ERROR, f"5-point alignment failed: {align_error}"
    return Status.OK, ""
