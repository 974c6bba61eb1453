"""Self-reenactment pairs rendered on the fly from the synthetic world, for smoke training, tests and benchmarks.

:class:`SyntheticPairs` samples a few identities and smooth expression / pose trajectories with
:mod:`reenact.synth.world`, renders each frame (face, optionally hair / neck / shoulders, over a textured
background) straight into an ``S x S`` crop whose camera is ``PerspectiveCamera.deep3d(S)``, so the sampled
coefficients are exact for the images. Items follow the data layer's training-item contract:

* ``source``, ``driving``: float32 ``(3, S, S)`` in [0, 1];
* ``source_coeffs``, ``driving_coeffs``: float32 ``(257,)``;
* ``video``: the pair's video index.

Pairs are every ordered (source, driving) pair of distinct frames of a video; everything is deterministic in the
seed. The real data comes from the frame and coefficient shards (``reenact.data``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from reenact.face3d.camera import PerspectiveCamera
from reenact.face3d.procedural import procedural_model


@dataclass(frozen=True)
class SyntheticSpec:
    """What to render: ``videos`` identities of ``frames`` frames each at ``size``^2, procedural model ``model``."""

    size: int = 64
    videos: int = 2
    frames: int = 4
    seed: int = 0
    model: str = "small"
    body: bool = False        # hair / neck / shoulders (slow to build: seconds per identity)
    yaw_max_deg: float = 30.0


def _render_video(spec: SyntheticSpec, index: int, model) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames ``(T, 3, S, S)`` and coefficients ``(T, 257)`` of video ``index``."""
    from reenact.synth import scene, world

    rng = np.random.default_rng([spec.seed, index])
    ident = world.sample_identity(rng, f"synthetic{index}", "train")
    angles, trans = world.sample_pose(rng, spec.frames, spec.yaw_max_deg)
    coeffs = torch.from_numpy(world.frame_coeffs(ident, world.sample_expression(rng, spec.frames), angles, trans))
    if spec.body:
        body = scene.body_mesh(model, torch.from_numpy(ident.id_coeffs).float(),
                               torch.from_numpy(ident.tex_coeffs).float(), ident.hair_rgb, ident.cloth_rgb,
                               ident.hairline, ident.hair_length, ident.hair_volume, int(rng.integers(2 ** 31)))
    else:
        body = scene.Mesh(verts=torch.zeros(0, 3), normals=torch.zeros(0, 3), faces=torch.zeros(0, 3, dtype=torch.long),
                          albedo=torch.zeros(0, 3))
    backdrop = scene.background(rng, spec.size, spec.size)
    with torch.no_grad():
        frames = scene.render_frames(model, coeffs, PerspectiveCamera.deep3d(spec.size), body, backdrop)
    return frames.images.permute(0, 3, 1, 2).contiguous(), coeffs                # T x 3 x S x S


class SyntheticPairs(Dataset):
    """All ordered self-reenactment pairs of a few rendered synthetic videos (see module docstring)."""

    def __init__(self, spec: SyntheticSpec = SyntheticSpec()):
        self.spec = spec
        model = procedural_model(spec.model)
        rendered = [_render_video(spec, v, model) for v in range(spec.videos)]
        self.frames = torch.stack([r[0] for r in rendered])                       # V x T x 3 x S x S
        self.coeffs = torch.stack([r[1] for r in rendered])                       # V x T x 257
        t = spec.frames
        self.pairs = [(v, i, j) for v in range(spec.videos) for i in range(t) for j in range(t) if i != j]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        v, i, j = self.pairs[k]
        return {"source": self.frames[v, i], "driving": self.frames[v, j], "source_coeffs": self.coeffs[v, i],
                "driving_coeffs": self.coeffs[v, j], "video": torch.tensor(v)}
