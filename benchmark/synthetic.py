"""Benchmark pairs straight from the embedded synthetic world, rendered at the benchmark's crop size.

A stand-in pair source for tests, perf and the quickstart where no prepared manifest exists: the synthetic world's
VoxCeleb-style sequences (:func:`reenact.synth.sample_world`) are rendered with Deep3D's camera at ``size`` x
``size`` (the exact 256^2 chunk crop of the source video, :func:`reenact.synth.vox_camera`), so each frame's
coefficients are exact ground truth for its image. Items follow ``reenact.data.datasets.PairDataset``'s contract:
``source`` / ``driving`` float32 ``(3, H, W)`` in [0, 1], ``source_coeffs`` / ``driving_coeffs`` ``(257,)``,
``pair_id``, ``source_key`` / ``driving_key`` frame keys, ``source_person`` / ``driving_person``.

Pair rules: ``self`` pairs two frames of one video; ``cross`` pairs frames of two different identities. Pairs are
drawn from a generator seeded by ``seed``; each frame is rendered once.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from reenact.data.schema import frame_key


@dataclass(frozen=True)
class FrameRef:
    video: int
    frame: int


def sample_pair_refs(world, kind: str, count: int, seed: int = 0) -> list[tuple[FrameRef, FrameRef]]:
    """``count`` (source, driving) frame references of ``world`` following the ``kind`` rule."""
    if kind not in ("self", "cross"):
        raise ValueError(f"kind must be self or cross, got {kind!r}")
    rng = np.random.default_rng([seed, 1 if kind == "self" else 2])
    videos = world.videos
    pairs = []
    for _ in range(count):
        s = int(rng.integers(len(videos)))
        if kind == "self":
            d = s
        else:
            others = [i for i, v in enumerate(videos) if v.identity.person_id != videos[s].identity.person_id]
            d = others[int(rng.integers(len(others)))]
        fs, fd = (int(rng.integers(videos[i].num_frames)) for i in (s, d))
        pairs.append((FrameRef(s, fs), FrameRef(d, fd)))
    return pairs


@lru_cache(maxsize=2)
def _model(size: str):
    from reenact.face3d.procedural import procedural_model

    return procedural_model(size)


def render_refs(world, refs: list[FrameRef], size: int, model_size: str = "small") -> dict[FrameRef, np.ndarray]:
    """Render each distinct frame once: ``{ref: (size, size, 3) uint8}``."""
    from reenact.face3d.camera import PerspectiveCamera
    from reenact.synth.scene import background, body_mesh, render_frames, to_uint8

    model, camera, out = _model(model_size), PerspectiveCamera.deep3d(size), {}
    for video in sorted({r.video for r in refs}):
        seq = world.videos[video]
        ident = seq.identity
        frames = sorted({r.frame for r in refs if r.video == video})
        with torch.no_grad():
            body = body_mesh(model, torch.from_numpy(ident.id_coeffs).float(), torch.from_numpy(ident.tex_coeffs).float(),
                             ident.hair_rgb, ident.cloth_rgb, ident.hairline, ident.hair_length, ident.hair_volume,
                             seq.seed)
            backdrop = background(np.random.default_rng(seq.seed), size, size)
            images = to_uint8(render_frames(model, torch.from_numpy(seq.coeffs[frames]), camera, body, backdrop).images)
        out.update({FrameRef(video, f): img for f, img in zip(frames, images)})
    return out


def _key(world, ref: FrameRef) -> str:
    seq = world.videos[ref.video]
    return frame_key(f"{seq.identity.person_id}#{seq.video_id}#000000#{seq.num_frames:06d}", ref.frame)


def synthetic_pairs(kind: str, count: int, *, preset: str = "tiny", seed: int = 0, size: int = 256,
                    model_size: str = "small") -> list[dict]:
    """``count`` benchmark pair items of ``kind`` from the synthetic world ``preset`` / ``seed`` (module docstring)."""
    from reenact.data.codec import uint8_to_tensor
    from reenact.synth import sample_world

    world = sample_world(preset, seed)
    refs = sample_pair_refs(world, kind, count, seed)
    images = render_refs(world, [r for pair in refs for r in pair], size, model_size)
    items = []
    for pair_id, (s, d) in enumerate(refs):
        coeffs = [torch.from_numpy(world.videos[r.video].coeffs[r.frame]).float() for r in (s, d)]
        items.append({"pair_id": pair_id, "source": uint8_to_tensor(images[s]), "driving": uint8_to_tensor(images[d]),
                      "source_coeffs": coeffs[0], "driving_coeffs": coeffs[1],
                      "source_key": _key(world, s), "driving_key": _key(world, d),
                      "source_person": world.videos[s.video].identity.person_id,
                      "driving_person": world.videos[d.video].identity.person_id})
    return items
