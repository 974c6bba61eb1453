"""Guidance speed: one pair's F_c + O_c + I_r (+ mask) at 256^2 with the full-size mesh on one CPU thread.

    python perf/bench_guidance.py [--size 256] [--threads 1] [--batches 1 8] [--repeats 20]

Issue #2 target: <= 15 ms per pair. Rows: vertex maths alone (Eq. 1, pose, projection), one rasterization,
the full guidance per pair with the source render off (what the pipeline stores) and on. Batched rows report the
time of one call divided by the number of pairs.
"""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perf.timing import median_seconds, print_table  # noqa: E402
from reenact.app.demo import sample_coeffs  # noqa: E402
from reenact.face3d.camera import PerspectiveCamera  # noqa: E402
from reenact.face3d.face import posed_vertices  # noqa: E402
from reenact.face3d.guidance import compute_guidance  # noqa: E402
from reenact.face3d.procedural import procedural_model  # noqa: E402
from reenact.face3d.raster import RasterSettings, rasterize  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--model", default="full", help="procedural model size: full, small, tiny")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = procedural_model(args.model)
    camera = PerspectiveCamera.deep3d(args.size)
    g = torch.Generator().manual_seed(0)
    rows = []
    for b in args.batches:
        src, drv = sample_coeffs(b, 0.7, g), sample_coeffs(b, 0.7, g)
        screen = camera.project(posed_vertices(model, src)[0])
        settings = RasterSettings(image_size=(args.size, args.size), backend="torch")
        timings = {
            "vertices (Eq. 1 + pose + projection), per mesh": lambda: camera.project(posed_vertices(model, src)[0]),
            "rasterization, per mesh": lambda: rasterize(screen, model.triangles, settings),
            "guidance F_c+O_c+I_r+mask, per pair": lambda: compute_guidance(model, src, drv, args.size,
                                                                           with_source_render=False),
            "guidance + source render, per pair": lambda: compute_guidance(model, src, drv, args.size),
        }
        for name, fn in timings.items():
            med, best = median_seconds(fn, repeats=args.repeats)
            rows.append([name, b, f"{1000 * med / b:.2f}", f"{1000 * best / b:.2f}"])
    print(f"mesh: procedural-{args.model} ({model.num_vertices} vertices, {model.num_triangles} triangles), "
          f"{args.size}x{args.size}, torch threads {args.threads}, {platform.processor() or platform.machine()}")
    print_table(["what", "batch", "median ms", "min ms"], rows)
    print("target (issue #2): guidance <= 15 ms per pair")


if __name__ == "__main__":
    main()
