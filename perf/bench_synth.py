"""Synthetic world: generation time of each preset, and how often face detectors find its faces.

    python perf/bench_synth.py                                  # tiny + demo, 2 workers, 200 demo frames
    python perf/bench_synth.py --presets demo --reuse --json-out perf/synth.json

For each preset the world is generated with ``reenact.synth.generate``: wall seconds, and CPU seconds of the
process and its workers (on a shared machine the wall time depends on the load; CPU seconds / 2 is the wall time
on 2 idle cores). On the last preset (``demo`` by default), ``frames`` VoxCeleb-style frames are sampled uniformly
(seeded) from the decoded videos, plus every CelebV image, and two detectors run on them:

* MTCNN (facenet-pytorch, ``keep_all=False``, CPU, default thresholds) on the full 640x360 frame and on the 256^2
  chunk crop;
* dlib's frontal HOG detector (``dlib.get_frontal_face_detector()``, one upsampling) on the same images.

A frame counts as detected when the detector returns a box; "correct" additionally requires that box to overlap
the ground-truth face box (``face_bbox``, all projected face vertices) with IoU >= 0.3. Rates are also split by
|yaw| (0-15, 15-30, 30-45 degrees).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perf.timing import print_table  # noqa: E402
from reenact.config import add_dataclass_arguments, from_namespace, provenance  # noqa: E402

YAW_BINS = ((0, 15), (15, 30), (30, 46))


@dataclass(frozen=True)
class BenchConfig:
    presets: list[str] = field(default_factory=lambda: ["tiny", "demo"], metadata={"help": "presets to generate"})
    out_root: str = field(default="/tmp/bench_synth", metadata={"help": "worlds go to <out_root>/<preset>"})
    workers: int = field(default=2, metadata={"help": "rendering processes"})
    seed: int = field(default=0, metadata={"help": "world seed (and frame sampling seed)"})
    frames: int = field(default=200, metadata={"help": "VoxCeleb-style frames to run the detectors on"})
    reuse: bool = field(default=False, metadata={"help": "skip generation when <out_root>/<preset> exists"})
    json_out: str | None = field(default=None, metadata={"help": "also write the results as JSON here"})


def generate_timed(preset: str, out: Path, workers: int, seed: int, reuse: bool) -> dict:
    from reenact.synth import generate

    if reuse and (out / "config.json").exists():
        summary = json.loads((out / "config.json").read_text())["provenance"]["summary"]
        return {"preset": preset, "reused": True, **summary}
    load, cpu, start = os.getloadavg()[0], cpu_seconds(), time.perf_counter()
    summary = generate(preset, out, seed=seed, workers=workers, progress=False)
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    frames = summary["vox_frames"] + summary["celebv_images"]
    return {"preset": preset, "reused": False, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "cpu_s_per_frame": round(cpu / frames, 3), "frames": frames, "frames_per_s": round(frames / wall, 2),
            "load_avg_before": round(load, 2), "load_avg_after": round(os.getloadavg()[0], 2), **summary}


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (workers, ffmpeg)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def sample_frames(root, count: int, seed: int) -> list[dict]:
    """``count`` (frame, crop, face box, yaw) samples, uniformly over all source-video frames."""
    import pyarrow.parquet as pq
    from PIL import Image

    from reenact.synth import read_video

    truth = pq.read_table(root.vox_truth).to_pandas()
    pick = np.sort(np.random.default_rng(seed).choice(len(truth), size=min(count, len(truth)), replace=False))
    samples = []
    for vid, rows in truth.iloc[pick].groupby("video_id", sort=False):
        video = read_video(root.video(vid), int(rows.width.iloc[0]), int(rows.height.iloc[0]))
        for _, row in rows.iterrows():
            frame = video[row.source_frame]
            left, top, right, bottom = row.crop_box
            crop = np.asarray(Image.fromarray(frame[top:bottom, left:right]).resize((256, 256), Image.BILINEAR))
            scale = 256 / (right - left)
            box = np.asarray(row.face_bbox)
            samples.append({"full": frame, "full_box": box, "crop": crop,
                            "crop_box": (box - [left, top, left, top]) * scale,
                            "yaw": abs(float(np.rad2deg(row.coeffs[225])))})
    return samples


def celebv_samples(root) -> list[dict]:
    import pyarrow.parquet as pq
    from PIL import Image

    truth = pq.read_table(root.celebv_truth).to_pandas()
    return [{"full": np.asarray(Image.open(root.celebv / row.path).convert("RGB")),
             "full_box": np.asarray(row.face_bbox), "yaw": abs(float(np.rad2deg(row.coeffs[225])))}
            for _, row in truth.iterrows()]


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def detect_mtcnn(images: list[np.ndarray]) -> list[np.ndarray | None]:
    from facenet_pytorch import MTCNN

    mtcnn = MTCNN(keep_all=False, device="cpu")
    boxes = []
    for image in images:                        # one by one: images differ in size (CelebV)
        found, _ = mtcnn.detect(image)
        boxes.append(None if found is None else found[0])
    return boxes


def detect_dlib(images: list[np.ndarray]) -> list[np.ndarray | None]:
    import dlib

    detector = dlib.get_frontal_face_detector()
    boxes = []
    for image in images:
        found = detector(image, 1)
        boxes.append(None if len(found) == 0 else
                     np.array([found[0].left(), found[0].top(), found[0].right(), found[0].bottom()], float))
    return boxes


def rates(boxes, truth_boxes, yaws) -> dict:
    found = np.array([b is not None for b in boxes])
    correct = np.array([b is not None and iou(b, t) >= 0.3 for b, t in zip(boxes, truth_boxes)])
    yaws = np.asarray(yaws)
    by_yaw = {f"{lo}-{min(hi, 45)}": round(float(found[(yaws >= lo) & (yaws < hi)].mean()), 3)
              for lo, hi in YAW_BINS if ((yaws >= lo) & (yaws < hi)).any()}
    return {"n": len(boxes), "detected": round(float(found.mean()), 3), "correct": round(float(correct.mean()), 3),
            "detected_by_abs_yaw": by_yaw}


def detection_report(root, count: int, seed: int) -> dict:
    vox, celeb = sample_frames(root, count, seed), celebv_samples(root)
    sets = {"vox full 640x360": ([s["full"] for s in vox], [s["full_box"] for s in vox], [s["yaw"] for s in vox]),
            "vox crop 256": ([s["crop"] for s in vox], [s["crop_box"] for s in vox], [s["yaw"] for s in vox]),
            "celebv image": ([s["full"] for s in celeb], [s["full_box"] for s in celeb], [s["yaw"] for s in celeb])}
    report = {}
    for name, (images, boxes, yaws) in sets.items():
        for detector, fn in (("mtcnn", detect_mtcnn), ("dlib_hog", detect_dlib)):
            start = time.perf_counter()
            found = fn(images)
            report[f"{detector} | {name}"] = {**rates(found, boxes, yaws),
                                              "seconds": round(time.perf_counter() - start, 1)}
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(parser, BenchConfig)
    cfg = from_namespace(BenchConfig, parser.parse_args(argv))
    from reenact.synth import layout

    generation = [generate_timed(p, Path(cfg.out_root) / p, cfg.workers, cfg.seed, cfg.reuse) for p in cfg.presets]
    print_table(["preset", "videos", "chunks", "vox frames", "celebv images", "model", "wall s", "CPU s",
                 "CPU s / frame", "load avg"],
                [[g["preset"], g["videos"], g["chunks"], g["vox_frames"], g["celebv_images"], g["model"],
                  g.get("wall_s", "reused"), g.get("cpu_s", "-"), g.get("cpu_s_per_frame", "-"),
                  g.get("load_avg_after", "-")] for g in generation])
    detection = detection_report(layout(Path(cfg.out_root) / cfg.presets[-1]), cfg.frames, cfg.seed)
    print_table(["detector | images", "n", "detected", "correct (IoU>=0.3)", "detected by |yaw|", "s"],
                [[k, v["n"], v["detected"], v["correct"], v["detected_by_abs_yaw"], v["seconds"]]
                 for k, v in detection.items()])
    result = {"config": cfg.__dict__, "generation": generation, "detection_preset": cfg.presets[-1],
              "detection": detection, "provenance": provenance(cpus=os.cpu_count())}
    if cfg.json_out:
        Path(cfg.json_out).write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
