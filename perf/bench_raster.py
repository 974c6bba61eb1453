"""Rasterizer speed: one rasterization and one 2-channel interpolation, median ms, on one CPU thread by default.

    python perf/bench_raster.py [--size 256] [--threads 1] [--repeats 30] [--device cpu] [--backends torch numba]
                                [--profile]

Meshes: ``grid`` is a synthetic face stand-in, a jittered height-field grid of 189 x 189 = 35,721 vertices and
70,688 triangles (the full BFM's 35,709 / 70,789) whose projection covers about 180 x 200 pixels of 256^2, so most
triangles are 0.3-1 pixel; ``procedural`` is the procedural morphable model (reenact/face3d/procedural.py) at full
size in a neutral pose, when it can be built. Issue #2 budget: one rasterization well under 7 ms on one CPU thread
(two of them, the vertex maths and the interpolation make one pair's guidance, <= 15 ms).
A "naive yardstick" row times the straightforward vectorised rasterizer (``naive_rasterize``) under the same load,
since timings on a shared machine drift. One row per backend (numba is CPU only, and single-threaded: it is not
compiled with ``parallel=True``). ``--profile`` adds torch's per-operator table for the first mesh (torch backend).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perf.timing import print_table  # noqa: E402
from reenact.face3d.raster import RasterSettings, interpolate, rasterize  # noqa: E402


def grid_mesh(rows: int = 189, cols: int = 189, image_size: tuple[int, int] = (256, 256),
              extent: tuple[float, float] = (180.0, 200.0), jitter: float = 0.25,
              seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A jittered height-field grid projected to ``extent`` (w, h) pixels around the image centre.

    Returns screen vertices ``(1, rows * cols, 3)`` (x, y down, depth of a sphere cap, nearer in the middle) and
    faces ``(2 (rows - 1) (cols - 1), 3)``, front-facing (counter-clockwise as displayed).
    """
    g = torch.Generator().manual_seed(seed)
    v, u = torch.meshgrid(torch.linspace(-1, 1, rows, dtype=torch.float64),
                          torch.linspace(-1, 1, cols, dtype=torch.float64), indexing="ij")
    u = u + jitter * (2 / (cols - 1)) * (torch.rand(rows, cols, generator=g, dtype=torch.float64) - 0.5)
    v = v + jitter * (2 / (rows - 1)) * (torch.rand(rows, cols, generator=g, dtype=torch.float64) - 0.5)
    x = image_size[1] / 2 + u * extent[0] / 2
    y = image_size[0] / 2 + v * extent[1] / 2
    depth = 10 - 2 * torch.sqrt((4 - u**2 - v**2).clamp(min=0))
    verts = torch.stack([x, y, depth], -1).reshape(1, -1, 3).float()
    idx = torch.arange(rows * cols).reshape(rows, cols)
    tl, tr, bl, br = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    # (top-left, bottom-left, top-right) runs counter-clockwise as displayed (y down): front-facing
    faces = torch.cat([torch.stack([tl, bl, tr], -1).reshape(-1, 3), torch.stack([tr, bl, br], -1).reshape(-1, 3)])
    return verts, faces


def naive_rasterize(verts: torch.Tensor, faces: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The straightforward vectorised rasterizer, as a yardstick measured under the same load (one mesh).

    Every (triangle, bounding-box pixel) pair is enumerated with ``repeat_interleave``, edge functions are evaluated
    in image coordinates, and the z-buffer takes two scatters (depth, then id). Returns the triangle ids ``(H, W)``.
    """
    H, W = size
    x, y, z = verts[0][faces].unbind(-1)  # F x 3 each
    col0 = x.amin(1).sub(0.5).ceil().clamp(0, W - 1)
    row0 = y.amin(1).sub(0.5).ceil().clamp(0, H - 1)
    width = (x.amax(1).sub(0.5).floor().clamp(max=W - 1) - col0 + 1).clamp(min=0).long()
    height = (y.amax(1).sub(0.5).floor().clamp(max=H - 1) - row0 + 1).clamp(min=0).long()
    counts = width * height
    tri = torch.repeat_interleave(torch.arange(faces.shape[0]), counts)
    offset = torch.arange(tri.numel()) - (counts.cumsum(0) - counts)[tri]
    px = col0[tri] + offset % width[tri] + 0.5
    py = row0[tri] + offset // width[tri] + 0.5
    xa, ya = x[tri], y[tri]  # C x 3
    x1, y1, x2, y2 = xa.roll(-1, 1), ya.roll(-1, 1), xa.roll(-2, 1), ya.roll(-2, 1)
    edge = (x2 - x1) * (py[:, None] - y1) - (y2 - y1) * (px[:, None] - x1)  # C x 3
    area = edge.sum(1)
    inside = ((edge * area.sign()[:, None]) >= 0).all(1) & (area != 0)
    tri, edge, area, px, py = tri[inside], edge[inside], area[inside], px[inside], py[inside]
    depth = (edge / area[:, None] * z[tri]).sum(1)
    pixel = py.long() * W + px.long()
    zbuf = torch.full((H * W,), float("inf")).scatter_reduce(0, pixel, depth, "amin")
    nearest = depth == zbuf[pixel]
    ids = torch.full((H * W,), faces.shape[0]).scatter_reduce(0, pixel[nearest], tri[nearest], "amin")
    return torch.where(ids == faces.shape[0], -1, ids).view(H, W)


def procedural_mesh(size: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The full-size procedural morphable model, neutral, through Deep3D's camera; None if it cannot be built."""
    try:
        from reenact.face3d.camera import PerspectiveCamera
        from reenact.face3d.face import posed_vertices
        from reenact.face3d.procedural import procedural_model
    except ImportError as err:
        print(f"procedural model unavailable: {err}")
        return None
    model = procedural_model("full")
    screen = PerspectiveCamera.deep3d(size).project(posed_vertices(model, torch.zeros(1, 257))[0])
    return screen, model.triangles


def timings(fn, repeats: int, warmup: int = 5) -> tuple[float, float, float]:
    """(median wall ms, min wall ms, median thread-CPU ms) of ``fn()`` over ``repeats`` calls after ``warmup``.

    CPU time leaves out the time the thread waited for a core, which on a shared machine is most of the noise."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start_wall, start_cpu = time.perf_counter(), time.thread_time()
        fn()
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.thread_time() - start_cpu)
    return 1000 * statistics.median(wall), 1000 * min(wall), 1000 * statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backends", nargs="+", default=["torch", "numba"], choices=["torch", "numba"])
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive yardstick rows")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    scale = args.size / 256
    meshes = {"grid": grid_mesh(image_size=(args.size, args.size), extent=(180.0 * scale, 200.0 * scale))}
    procedural = procedural_mesh(args.size)
    if procedural is not None:
        meshes["procedural-full"] = procedural
    backends = [b for b in args.backends if device.type == "cpu" or b == "torch"]
    size = (args.size, args.size)
    load_before = os.getloadavg()[0]
    rows = []
    for name, (verts, faces) in meshes.items():
        verts, faces = verts.to(device), faces.to(device)
        threads = args.threads if device.type == "cpu" else device.type
        for backend in backends:
            settings = RasterSettings(image_size=size, backend=backend)
            frags = rasterize(verts, faces, settings)
            attrs = verts[..., :2].contiguous()
            raster = timings(lambda v=verts, f=faces, s=settings: (rasterize(v, f, s), sync()), args.repeats)
            interp = timings(lambda fr=frags, f=faces, a=attrs: (interpolate(fr, f, a), sync()), args.repeats)
            rows.append([f"{name}, {backend}", f"{verts.shape[1]} / {faces.shape[0]}", f"{args.size}x{args.size}",
                         threads, int(frags.mask.sum()), *raster, interp[0], interp[1]])
        if device.type == "cpu" and not args.no_naive:
            naive = timings(lambda v=verts, f=faces: naive_rasterize(v, f, size), args.repeats, warmup=2)
            rows.append([f"{name}, naive yardstick", "", "", threads, "", *naive, "", ""])
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, device {device}, "
          f"{args.repeats} repetitions after warm-up; 1-min load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after, on {os.cpu_count()} cores")
    print_table(["mesh", "vertices / triangles", "image", "threads", "covered px", "raster median ms",
                 "raster min ms", "raster CPU median ms", "interp (D=2) median ms", "interp min ms"], rows)
    print("budget (issue #2): one rasterization well under 7 ms; one pair's guidance <= 15 ms")
    if args.profile:
        _profile(*next(iter(meshes.values())), RasterSettings(image_size=size, backend="torch"), device)


def _profile(verts: torch.Tensor, faces: torch.Tensor, settings: RasterSettings, device: torch.device) -> None:
    from torch.profiler import profile

    verts, faces = verts.to(device), faces.to(device)
    repeats = 20
    with profile(record_shapes=True) as prof:
        for _ in range(repeats):
            rasterize(verts, faces, settings)
    events = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events) / repeats
    print(f"\nper-operator self CPU time per rasterization (profiled total {total:.0f} us, "
          f"{sum(e.count for e in events) // repeats} operator calls)")
    for e in events[:30]:
        print(f"{e.key:28s} {e.self_cpu_time_total / repeats:8.1f} us x{e.count // repeats:3d}  "
              f"{str(e.input_shapes)[:80]}")


if __name__ == "__main__":
    main()
