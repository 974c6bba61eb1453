"""Crop-stage throughput: decode + crop + resize to 256^2 + PNG encode + Parquet write, in frames/s per core.

    python perf/bench_crop.py [--frames 500] [--repeats 5] [--source clip.mp4] [--reference]

The source defaults to a generated 640x360, 25 fps H.264 clip (ffmpeg ``testsrc2`` with light temporal noise,
about 700 kb/s, roughly a YouTube 360p stream) cut into four clips whose boxes come from a 1280x720 reference,
as in vox-metadata.csv. Per core means frames divided by the CPU seconds of this process plus its ffmpeg
children (user + system), so the figure does not depend on how many cores the machine lends. Each repeat is a
fresh call of :func:`pipelines.crop.crop_video` after one warm-up call; the median is the figure to report.
``--reference`` also times load_videos.py's loop (imageio decode, numpy crop, skimage resize, no saving).
"""
from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from pipelines.crop import CropSettings, crop_video
from pipelines.media import ffmpeg_exe
from pipelines.metadata import Clip, VideoJob


def make_source(path: Path, frames: int) -> Path:
    cmd = [ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25",
           "-vf", "noise=alls=6:allf=t", "-frames:v", str(frames), "-c:v", "libx264", "-preset", "veryfast",
           "-b:v", "700k", "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(cmd, check=True)
    return path


def bench_job(frames: int) -> VideoJob:
    """Four clips covering the video, boxes of vox-like size (about 360x400 at 1280x720)."""
    step = frames // 4
    boxes = [(400, 100, 760, 500), (440, 120, 800, 520), (480, 80, 840, 480), (360, 140, 720, 540)]
    return VideoJob("bench", "id00000", "train", 25.0, 1280, 720,
                    tuple(Clip(k * step, (k + 1) * step, boxes[k], k + 2) for k in range(4)))


def cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def time_crop(source: Path, job: VideoJob, out: Path, settings: CropSettings) -> tuple[int, float, float]:
    """(frames, cpu seconds, wall seconds) of one crop_video call."""
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    result = crop_video(job, source, out, settings)
    return result.frames, cpu_seconds() - cpu0, time.perf_counter() - wall0


def time_reference(source: Path, job: VideoJob, limit: int) -> tuple[int, float]:
    """(frames, cpu seconds) of load_videos.py's loop over the first ``limit`` frames."""
    import imageio.v2 as imageio
    from skimage import img_as_ubyte
    from skimage.transform import resize

    cpu0, n = cpu_seconds(), 0
    reader = imageio.get_reader(str(source))
    fps = reader.get_meta_data()["fps"]
    for i, frame in enumerate(reader):
        if i >= limit:
            break
        for c in job.clips:
            if i * job.ref_fps >= c.start * fps and i * job.ref_fps < c.end * fps:
                sx, sy = job.ref_width / frame.shape[1], job.ref_height / frame.shape[0]
                l, t, r, b = int(c.bbox[0] / sx), int(c.bbox[1] / sy), int(c.bbox[2] / sx), int(c.bbox[3] / sy)
                img_as_ubyte(resize(frame[t:b, l:r], (256, 256), anti_aliasing=True))
                n += 1
    reader.close()
    return n, cpu_seconds() - cpu0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=500, help="frames in the generated source clip")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--source", type=Path, help="an existing video instead of the generated clip")
    parser.add_argument("--image-format", default="png", choices=["png", "jpeg"])
    parser.add_argument("--reference", action="store_true", help="also time load_videos.py's loop")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = args.source or make_source(tmp / "src.mp4", args.frames)
        job = bench_job(args.frames)
        settings = CropSettings(image_format=args.image_format)
        time_crop(source, job, tmp / "warmup", settings)
        runs = [time_crop(source, job, tmp / f"run{k}", settings) for k in range(args.repeats)]
        per_core = [n / cpu for n, cpu, _ in runs]
        for k, (n, cpu, wall) in enumerate(runs):
            print(f"run {k}: {n} frames, {cpu:.2f} cpu-s, {wall:.2f} wall-s -> {n / cpu:.0f} frames/s per core, "
                  f"{n / wall:.0f} frames/s wall")
        size = sum(p.stat().st_size for p in (tmp / "run0").rglob("*.parquet"))
        print(f"crop throughput (decode+crop+resize+{args.image_format}+parquet, 640x360 -> 256^2): median "
              f"{statistics.median(per_core):.0f} frames/s per core (min {min(per_core):.0f}, max "
              f"{max(per_core):.0f}, {args.repeats} runs); {size / runs[0][0] / 1024:.1f} KiB per frame")
        if args.reference:
            n, cpu = time_reference(source, job, min(args.frames, 200))
            print(f"reference loop (imageio + numpy crop + skimage resize, no saving): {n / cpu:.0f} frames/s "
                  "per core")


if __name__ == "__main__":
    main()
