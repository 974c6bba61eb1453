"""Guidance speed: one pair's F_c + O_c + I_r (+ mask) at 256^2 with the full-size mesh on one CPU thread.

    python perf/bench_guidance.py [--size 256] [--threads 1] [--batches 1 8] [--repeats 20]

Target (issue #9): <= 15 ms per pair. Rows: vertex maths alone (Eq. 1, pose, projection; per mesh with torch, and
per pair as guidance does it: the identity part once, pose + projection in numba), one rasterization with
each CPU backend (numba, what guidance uses on CPU, and the torch reference), the full guidance per pair with the
source render off (what the pipeline stores) and on, and the naive yardstick (:func:`naive_guidance`: the
straightforward version of the same maths). Those guidance rows give every pair a new identity (alpha, delta): Eq. 1
and the albedo read all 96 MB of bases per pair. The "protocol order" row computes the pairs as ``prepare guidance``
does: a video's 20 pairs, whose sources share one identity (a shared-identity fit), in calls of at most the batch
size with one :class:`IdentityCache`; each round takes a new video (a new identity), so the cache finds the identity
parts for 19 of 20 pairs at batch 1 and never across rounds. The rows take turns, one call of each per round, so
that all see the same load and their ratio holds on a shared machine whose timings drift. Batched rows report the
time of one call divided by the number of pairs; each row gives the median wall time and, beside it, the median CPU
time of this thread. The numba kernels are compiled without ``parallel=True``: they run on the calling thread, so
``--threads 1`` (torch's intra-op threads) makes the whole run single-threaded.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perf.timing import print_table  # noqa: E402
from reenact.app.demo import sample_coeffs  # noqa: E402
from reenact.data.pairs import VOX_PER_CHUNK  # noqa: E402
from reenact.face3d.camera import PerspectiveCamera, pixel_grid  # noqa: E402
from reenact.face3d.coeffs import ID, TEX, Coeffs, target_coeffs  # noqa: E402
from reenact.face3d.face import build_face, posed_vertices  # noqa: E402
from reenact.face3d.guidance import DEPTH_TOLERANCE, SLOPE_CAP, compute_guidance  # noqa: E402
from reenact.face3d.morphable import IdentityCache, MorphableModel  # noqa: E402
from reenact.face3d.procedural import procedural_model  # noqa: E402
from reenact.face3d.raster import RasterSettings, interpolate, rasterize  # noqa: E402
from reenact.face3d.shading import shade  # noqa: E402
from reenact.face3d.transforms import euler_to_matrix, rigid_transform  # noqa: E402


# ------------------------------------------------------------------------------------------- the naive yardstick
def naive_guidance(model: MorphableModel, source: torch.Tensor, driving: torch.Tensor, size: int):
    """F_c, O_c, I_r and the face mask the straightforward way: Eq. 1 for the stacked [source; target], one
    raster, the depth test for every triangle, every vertex normal and colour of the target. Returns
    ``(flow, occlusion, render, face_mask)`` like :func:`compute_guidance` without the source render."""
    camera, b, faces = PerspectiveCamera.deep3d(size), source.shape[0], model.triangles
    both = Coeffs.from_vector(torch.cat([source, target_coeffs(source, driving)]))
    rest = model.shape(both.id, both.exp)
    rotation = euler_to_matrix(both.angle)
    screen = camera.project(rigid_transform(rest, rotation, both.trans))
    frags = rasterize(screen, faces, RasterSettings((size, size), backend="torch"))
    tid_t, depth_s = frags.triangle_id[b:], frags.depth[:b]
    # occlusion: every triangle's source centroid against the source z-buffer
    corners = screen[:b, faces]                                                  # B x F x 3 x 3
    centroid = corners.mean(2)
    col, row = centroid[..., 0].floor(), centroid[..., 1].floor()
    inside = (col >= 0) & (col < size) & (row >= 0) & (row < size)
    e1, e2 = corners[..., 1, :] - corners[..., 0, :], corners[..., 2, :] - corners[..., 0, :]
    det = e1[..., 0] * e2[..., 1] - e1[..., 1] * e2[..., 0]
    det = torch.where(det.abs() < 1e-12, torch.full_like(det, 1e-12), det)
    grad = torch.stack([(e1[..., 2] * e2[..., 1] - e2[..., 2] * e1[..., 1]) / det,
                        (e2[..., 2] * e1[..., 0] - e1[..., 2] * e2[..., 0]) / det], -1)
    slack = (grad * (torch.stack([col + 0.5, row + 0.5], -1) - centroid[..., :2])).sum(-1).abs().clamp(max=SLOPE_CAP)
    zbuf = depth_s.reshape(b, -1).gather(1, row.long().clamp(0, size - 1) * size + col.long().clamp(0, size - 1))
    visible = F.pad(inside & (centroid[..., 2] <= zbuf + DEPTH_TOLERANCE + slack), (1, 0))
    occlusion = visible.gather(1, tid_t.reshape(b, -1) + 1).reshape(tid_t.shape).float()
    # every vertex of the target: normals by scatter-adding face normals, SH shading
    rest_t, tri = rest[b:], faces
    p0, p1, p2 = rest_t[:, tri[:, 0]], rest_t[:, tri[:, 1]], rest_t[:, tri[:, 2]]
    face_n = F.normalize(torch.linalg.cross(p1 - p0, p2 - p0, dim=-1), dim=-1)
    normals = torch.zeros_like(rest_t).index_add_(1, tri.reshape(-1), face_n.repeat_interleave(3, 1))
    normals = F.normalize(normals, dim=-1) @ rotation[b:].transpose(-1, -2)
    colors = shade(model.albedo(both.tex[b:]), normals, both.gamma[b:])
    mask = frags.mask[b:]
    flow = (interpolate(frags, faces, screen[:b, :, :2].repeat(2, 1, 1))[b:] - pixel_grid(size, size)) * mask[..., None]
    render = interpolate(frags, faces, torch.cat([colors, colors]))[b:]
    return flow.permute(0, 3, 1, 2), occlusion[:, None], render.permute(0, 3, 1, 2), mask[:, None].float()


# ------------------------------------------------------------------------------------------------------- timing
WARMUP = 2
PROTOCOL_ROW = "guidance F_c+O_c+I_r+mask, protocol order (20 pairs per source identity), per pair"


def round_robin_ms(fns: dict, repeats: int, warmup: int = 2) -> dict[str, tuple[float, float]]:
    """Median (wall ms, thread-CPU ms) of each ``fns[name]()``. The calls take turns, one of each per round, so
    that every row sees the same load on a shared machine and their ratios hold while the load drifts."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    wall, cpu = ({name: [] for name in fns} for _ in range(2))
    for _ in range(repeats):
        for name, fn in fns.items():
            w, c = time.perf_counter(), time.thread_time()
            fn()
            wall[name].append(time.perf_counter() - w)
            cpu[name].append(time.thread_time() - c)
    return {name: (1000 * statistics.median(wall[name]), 1000 * statistics.median(cpu[name])) for name in fns}


def protocol_videos(model: MorphableModel, size: int, b: int, videos: int, g: torch.Generator):
    """A function computing the next of ``videos`` videos' guidance per call, as ``prepare guidance`` does: 20 pairs
    whose sources share one identity (alpha, delta), in calls of at most ``b`` pairs, with one IdentityCache."""
    cache, todo = IdentityCache(model), []
    for _ in range(videos):
        src, drv = sample_coeffs(VOX_PER_CHUNK, 0.7, g), sample_coeffs(VOX_PER_CHUNK, 0.7, g)
        src[:, ID], src[:, TEX] = src[0, ID], src[0, TEX]
        todo.append((src, drv))

    def next_video() -> None:
        src, drv = todo.pop()
        for i in range(0, VOX_PER_CHUNK, b):
            compute_guidance(model, src[i:i + b], drv[i:i + b], size, with_source_render=False, identity_cache=cache)

    return next_video


def batch_rows(model: MorphableModel, camera: PerspectiveCamera, b: int, args: argparse.Namespace,
               g: torch.Generator) -> list[list]:
    """The table rows of batch ``b``: each timing divided by the pairs (or meshes) of the call, and the ratio."""
    src, drv = sample_coeffs(b, 0.7, g), sample_coeffs(b, 0.7, g)
    screen = camera.project(posed_vertices(model, src)[0])
    numba, torch_ = (RasterSettings(image_size=(args.size, args.size), backend=b) for b in ("numba", "torch"))
    pair = torch.cat([src, target_coeffs(src, drv)])
    timings = {
        "vertices (Eq. 1 + pose + projection), per mesh": lambda: camera.project(posed_vertices(model, src)[0]),
        "vertices of [source; target] as guidance, per pair": lambda: build_face(
            model, pair, camera, False, model.identity_shape(Coeffs.from_vector(src).id)),
        "rasterization numba, per mesh": lambda: rasterize(screen, model.triangles, numba),
        "rasterization torch, per mesh": lambda: rasterize(screen, model.triangles, torch_),
        "guidance F_c+O_c+I_r+mask, per pair": lambda: compute_guidance(model, src, drv, args.size,
                                                                       with_source_render=False),
        "naive yardstick of the same, per pair": lambda: naive_guidance(model, src, drv, args.size),
        "guidance + source render, per pair": lambda: compute_guidance(model, src, drv, args.size),
        PROTOCOL_ROW: protocol_videos(model, args.size, b, args.repeats + WARMUP, g),
    }
    check = compute_guidance(model, src, drv, args.size, with_source_render=False)
    gaps = [(a - n).abs().max().item() for a, n in zip((check.flow, check.occlusion, check.render, check.face_mask),
                                                      naive_guidance(model, src, drv, args.size))]
    print(f"batch {b}: largest |guidance - naive| of flow, occlusion, render, mask: "
          + ", ".join(f"{gap:.2g}" for gap in gaps))
    measured = round_robin_ms(timings, args.repeats, WARMUP)
    pairs = {name: VOX_PER_CHUNK if name == PROTOCOL_ROW else b for name in measured}
    rows = [[name, b, f"{wall / pairs[name]:.2f}", f"{cpu / pairs[name]:.2f}"] for name, (wall, cpu) in measured.items()]
    fast, naive = measured["guidance F_c+O_c+I_r+mask, per pair"], measured["naive yardstick of the same, per pair"]
    return rows + [["naive / guidance (wall, cpu)", b, f"{naive[0] / fast[0]:.2f}x", f"{naive[1] / fast[1]:.2f}x"]]


def first_call_s(model: MorphableModel, camera: PerspectiveCamera) -> float:
    """Seconds of the first guidance call in this process: numba compiles its kernels (or loads them from its
    on-disk cache, ``cache=True``) then."""
    coeffs = torch.zeros(1, 257)
    start = time.perf_counter()
    compute_guidance(model, coeffs, coeffs, camera.width)
    return time.perf_counter() - start


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
    print(f"numba kernels: first call (compile, or load from numba's cache) {first_call_s(model, camera):.2f} s")
    rows = [row for b in args.batches for row in batch_rows(model, camera, b, args, g)]
    print(f"mesh: procedural-{args.model} ({model.num_vertices} vertices, {model.num_triangles} triangles), "
          f"{args.size}x{args.size}, torch threads {args.threads}, {platform.processor() or platform.machine()}")
    print_table(["what", "batch", "median wall ms", "median thread-CPU ms"], rows)
    print("target (issue #9): guidance <= 15 ms per pair")


if __name__ == "__main__":
    main()
