"""Landmark-fit throughput (frames/s) and pose accuracy of the ``landmarks`` extractor's fit.

    python perf/bench_landmark_fit.py [--frames 64] [--chunks 4] [--repeats 5] [--noise 1.0] [--model full]

Chunks are synthetic sequences drawn from the procedural model (one identity per chunk, expressions N(0, 0.7^2),
yaw uniform in +-45 degrees, pitch +-15, roll +-10, depth 2.4-3.6 dm in front of the model origin), whose 68
landmarks are projected with ``PerspectiveCamera.deep3d(256)`` plus Gaussian noise. Each repeat fits every chunk
once (:func:`reenact.faces.landmark_fit.fit_landmarks`, one optimisation per chunk); the figure is the
median over repeats of frames / wall seconds, with one torch intra-op thread (``FitConfig.threads = 1``, the
default) and with torch's default thread count (``threads = 0``).
Landmark detection (dlib) is not included. Accuracy: geodesic rotation error against the truth (median, p90, max)
and translation error.

The frames of a chunk are independent draws, not a video, so the fit is told that no two are neighbours
(``links`` all False: the temporal term, which assumes steps of ~2 degrees between neighbouring frames, would pull
poses up to 90 degrees apart towards each other: 7.1 deg median instead of 0.60). The landmarks are projections of
the model's own landmark vertices, so the jaw points are fitted as fixed vertices (``FitConfig.jaw_contour`` off,
as its help says for such landmarks; with landmark marching the median is 0.78 deg).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perf.timing import print_table  # noqa: E402
from reenact.face3d.camera import PerspectiveCamera  # noqa: E402
from reenact.face3d.coeffs import ANGLE, EXP, ID, TRANS  # noqa: E402
from reenact.face3d.face import project_landmarks  # noqa: E402
from reenact.face3d.procedural import procedural_model  # noqa: E402
from reenact.face3d.transforms import euler_to_matrix, rotation_angle_between  # noqa: E402
from reenact.faces.landmark_fit import FitConfig, fit_landmarks, landmark_bases  # noqa: E402


def sample_chunk(rng: np.random.Generator, frames: int) -> np.ndarray:
    c = np.zeros((frames, 257), np.float32)
    c[:, ID] = rng.normal(0, 1, 80)
    c[:, EXP] = rng.normal(0, 0.7, (frames, 64))
    c[:, ANGLE] = np.deg2rad(np.stack([rng.uniform(-15, 15, frames), rng.uniform(-45, 45, frames),
                                       rng.uniform(-10, 10, frames)], -1))
    c[:, TRANS] = np.stack([rng.uniform(-0.1, 0.1, frames), rng.uniform(-0.05, 0.15, frames),
                            rng.uniform(-3.6, -2.4, frames)], -1)
    return c


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=64, help="frames per chunk")
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--noise", type=float, default=1.0, help="landmark noise std, pixels at 256^2")
    parser.add_argument("--model", default="full", choices=["full", "small", "tiny"])
    args = parser.parse_args()

    model = procedural_model(args.model)
    bases = landmark_bases(model)
    rng = np.random.default_rng(0)
    truths = [sample_chunk(rng, args.frames) for _ in range(args.chunks)]
    camera = PerspectiveCamera.deep3d(256)
    landmarks = [project_landmarks(model, torch.from_numpy(c), camera).numpy().astype(np.float64)
                 + rng.normal(0, args.noise, (len(c), 68, 2)) for c in truths]
    rows, results = [], None
    for threads in (1, 0):                                                # FitConfig.threads: 0 = torch's default
        config = FitConfig(threads=threads, jaw_contour=False, landmark_offsets=False)   # the model's own vertices
        independent = np.zeros(args.frames - 1, bool)                     # no two frames are neighbours
        fit_landmarks(landmarks[0], 256, bases, config, links=independent)   # warm-up
        rates = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            results = [fit_landmarks(lm, 256, bases, config, links=independent) for lm in landmarks]
            rates.append(args.chunks * args.frames / (time.perf_counter() - start))
        rows.append([threads or f"default ({torch.get_num_threads()})", args.frames, statistics.median(rates),
                     min(rates), max(rates)])
    print_table(["torch threads", "frames/chunk", "median frames/s", "min", "max"], rows)

    truth = np.concatenate(truths).astype(np.float64)
    fitted = np.concatenate([r.coeffs for r in results]).astype(np.float64)
    rot = lambda c: euler_to_matrix(torch.from_numpy(c[:, ANGLE]))  # noqa: E731
    errors = np.rad2deg(rotation_angle_between(rot(truth), rot(fitted)).numpy())
    trans = np.linalg.norm(fitted[:, TRANS] - truth[:, TRANS], axis=1)
    depth = np.abs(fitted[:, TRANS.start + 2] - truth[:, TRANS.start + 2]) / (10 - truth[:, TRANS.start + 2])
    rmse = np.concatenate([r.rmse for r in results])
    print(f"\n{len(truth)} frames, {args.model} model, {args.noise} px noise, yaw <= 45 deg: rotation error median "
          f"{np.median(errors):.2f} deg, p90 {np.percentile(errors, 90):.2f}, max {errors.max():.2f}; translation "
          f"error median {np.median(trans):.3f} dm (relative depth error median {np.median(depth):.3f}); "
          f"landmark RMSE median {np.median(rmse):.2f} px; iterations {[r.iterations for r in results]}")


if __name__ == "__main__":
    main()
