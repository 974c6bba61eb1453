"""CPU speed of the paper's model: one training step (tiny and full presets) and inference per 256x256 frame.

    python perf/bench_model.py                          # 1 thread, median of 3 timed steps / 5 frames
    python perf/bench_model.py --threads 2 --full-batch 8

Training step: forward, loss, backward and Adam update on random images with guidance computed from random but
plausible coefficients (the procedural morphable model, as in training), timed separately from the step. The loss is
the weight-free ``l1-msssim`` (the VGG-19 weights are not on this machine; the perceptual + style loss adds three
VGG-19 passes per pyramid scale). Inference: ``PaperReenactor`` (full size, random weights) through the model
contract, batch 1: guidance (3D face core) + F_c + F_r; the network alone is reported too.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perf.bench_baselines import bench_inputs
from perf.timing import median_seconds, print_table
from reenact.config import add_dataclass_arguments, from_namespace
from reenact.face3d.coeffs import motion_coeffs
from reenact.face3d.guidance import compute_guidance
from reenact.face3d.io import load_morphable_model
from reenact.model.losses import build_loss
from reenact.model.networks import MultipleGuidanceModel, model_config
from reenact.model.reenactor import PaperReenactor
from reenact.model.train import Batch, train_step


@dataclass(frozen=True)
class BenchConfig:
    threads: int = field(default=1, metadata={"help": "torch.set_num_threads"})
    tiny_batch: int = field(default=8, metadata={"help": "batch of the tiny training step"})
    full_batch: int = field(default=8, metadata={"help": "batch of the full training step (paper: 8)"})
    steps: int = field(default=3, metadata={"help": "timed training steps (median)"})
    frames: int = field(default=5, metadata={"help": "timed inference frames (median)"})


def random_batch(size: int, batch: int, morphable) -> Batch:
    inputs = bench_inputs(size)
    src = inputs.source_coeffs.expand(batch, -1).contiguous()
    drv = inputs.driving_coeffs.expand(batch, -1).contiguous()
    g = compute_guidance(morphable, src, drv, size, with_source_render=False)
    return Batch(torch.rand(batch, 3, size, size), torch.rand(batch, 3, size, size), motion_coeffs(drv), g.flow,
                 g.occlusion, g.render)


def step_row(name: str, batch: int, cfg: BenchConfig) -> list:
    mcfg = model_config(name)
    morphable = load_morphable_model("procedural-small" if name == "tiny" else "procedural-full")
    model, loss = MultipleGuidanceModel(mcfg), build_loss("l1-msssim")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    data = random_batch(mcfg.image_size, batch, morphable)
    step, _ = median_seconds(lambda: train_step(model, loss, optimizer, scaler, data, False), cfg.steps, 1)
    guidance, _ = median_seconds(lambda: random_batch(mcfg.image_size, batch, morphable), cfg.steps, 0)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return [name, f"{mcfg.image_size}^2", batch, f"{params:.1f}", f"{step:.3f}", f"{guidance:.3f}"]


def inference_rows(cfg: BenchConfig) -> list[list]:
    model = PaperReenactor.random(small=False).eval()
    inputs = bench_inputs(256)
    with torch.inference_mode():
        total, _ = median_seconds(lambda: model.reenact(inputs), cfg.frames, 1)
        g = compute_guidance(model.morphable, inputs.source_coeffs, inputs.driving_coeffs, 256,
                             with_source_render=False)
        motion = motion_coeffs(inputs.driving_coeffs)
        net, _ = median_seconds(lambda: model.network(inputs.source, motion, g.flow, g.occlusion, g.render),
                                cfg.frames, 1)
    return [["paper (guidance + F_c + F_r)", f"{1000 * total:.0f}"], ["F_c + F_r only", f"{1000 * net:.0f}"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(parser, BenchConfig)
    cfg = from_namespace(BenchConfig, parser.parse_args(argv))
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(0)
    print(f"training step, CPU, {cfg.threads} thread(s), loss l1-msssim, median of {cfg.steps}")
    print_table(["preset", "size", "batch", "params (M)", "step (s)", "guidance (s)"],
                [step_row("tiny", cfg.tiny_batch, cfg), step_row("full", cfg.full_batch, cfg)])
    print(f"\ninference per 256x256 frame, CPU, batch 1, median of {cfg.frames}")
    print_table(["model", "ms / frame"], inference_rows(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
