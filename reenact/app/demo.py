"""``reenact demo``: guidance maps for a few sampled coefficient pairs, written as one PNG per pair.

Each picture shows, left to right: source render, target render I_r, computed flow F_c (hue = direction),
computed occlusion O_c, the source render warped by F_c, and the inner-face mask.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from reenact.config import add_dataclass_arguments, from_namespace, save_run_config


@dataclass(frozen=True)
class DemoConfig:
    out: str = field(default="runs/demo", metadata={"help": "output folder"})
    pairs: int = field(default=4, metadata={"help": "number of (source, driving) pairs"})
    size: int = field(default=256, metadata={"help": "image size of the guidance maps"})
    model: str = field(default="procedural-full",
                       metadata={"help": "morphable model: procedural-full, procedural-small, bfm or a .mat path"})
    max_yaw_deg: float = field(default=45.0, metadata={"help": "largest |yaw| sampled for source and driving"})
    seed: int = field(default=0, metadata={"help": "random seed"})


def sample_coeffs(n: int, max_yaw: float, generator: torch.Generator) -> torch.Tensor:
    """``(n, 257)`` plausible coefficients: N(0, 0.5) shape/texture/expression, uniform yaw, mild light."""
    from reenact.face3d.coeffs import ANGLE, EXP, GAMMA, ID, TEX, TRANS

    v = torch.zeros(n, 257)
    v[:, ID] = torch.randn(n, 80, generator=generator) * 0.5
    v[:, TEX] = torch.randn(n, 80, generator=generator) * 0.5
    v[:, EXP] = torch.randn(n, 64, generator=generator) * 0.5
    v[:, GAMMA] = torch.randn(n, 27, generator=generator) * 0.05
    v[:, GAMMA.start::9] += 0.3
    v[:, ANGLE] = (torch.rand(n, 3, generator=generator) * 2 - 1) * torch.tensor([0.2, max_yaw, 0.1])
    v[:, TRANS] = torch.tensor([0.0, 0.0, -1.0])
    return v


def run_demo(cfg: DemoConfig) -> dict:
    from reenact.face3d.guidance import compute_guidance, warp_with_flow
    from reenact.face3d.io import load_morphable_model
    from reenact.viz import flow_to_rgb, grid_image, save_png

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_run_config(cfg, out)
    g = torch.Generator().manual_seed(cfg.seed)
    model = load_morphable_model(cfg.model)
    src = sample_coeffs(cfg.pairs, math.radians(cfg.max_yaw_deg), g)
    drv = sample_coeffs(cfg.pairs, math.radians(cfg.max_yaw_deg), g)
    start = time.perf_counter()
    guide = compute_guidance(model, src, drv, cfg.size)
    seconds = time.perf_counter() - start
    warped = warp_with_flow(guide.source_render, guide.flow)
    for i in range(cfg.pairs):
        row = [guide.source_render[i], guide.render[i], flow_to_rgb(guide.flow[i]), guide.occlusion[i], warped[i],
               guide.face_mask[i]]
        save_png(grid_image([row]), out / f"pair-{i:03d}.png")
    summary = {"pairs": cfg.pairs, "size": cfg.size, "model": model.name, "guidance_seconds": round(seconds, 4),
               "occluded_fraction": [round(1 - float(guide.occlusion[i].sum() / guide.face_mask[i].sum()), 4)
                                     for i in range(cfg.pairs)]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, DemoConfig)


def run(args: argparse.Namespace) -> int:
    summary = run_demo(from_namespace(DemoConfig, args))
    print(json.dumps(summary, indent=2))
    return 0
