"""Download stage against the local HTTP server: throughput, and retries on a server that fails on purpose.

    python perf/bench_download.py [--videos 48] [--repeats 3] [--cpus 2] [--skip-ray]

Throughput: the download stage alone (yt-dlp extraction + download + probe and tail decode of each file, ledger
parts and shards) over ``--videos`` 640x360 2 s H.264 clips served by ``tests/http_server.py``, no request cap, on
the engine's local executor (one process; also videos per CPU-second, which does not depend on how busy the
machine is) and on Ray (``--cpus`` CPUs, 4 downloads at once); median videos/s.

Retries: ``reenact prepare vox`` (local executor, no coefficients) against the same server, where a quarter of the
videos answer 503 to their first two requests, the first second from the first request on answers 429 to everything, and two videos
are missing (404); one retry per video. Counts per split and failure class after the first run and after a rerun
with ``--retry-failed`` (pipelines.availability).
"""
from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipelines.availability import availability, render  # noqa: E402
from pipelines.download import DownloadSettings, download_stage  # noqa: E402
from pipelines.engine import Plan, RunConfig, Stage, WorkItem, run_plan, shard_items  # noqa: E402
from pipelines.media import ffmpeg_exe  # noqa: E402
from pipelines.metadata import Clip, VideoJob  # noqa: E402
from pipelines.prepare import VoxConfig, prepare_vox  # noqa: E402
from reenact.data.schema import LEDGER  # noqa: E402
from tests.http_server import LocalServer  # noqa: E402


def make_clip(path: Path) -> bytes:
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25",
                    "-frames:v", "50", "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", str(path)],
                   check=True)
    return path.read_bytes()


def cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def download_only(server: LocalServer, videos: list[str], out: Path, executor: str,
                  cpus: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and its children) of one run of the download stage alone."""
    settings = DownloadSettings(url_template=server.template("good"), retries=0, backoff=0.0,
                                limiter=f"bench-{out.name}")
    items = [WorkItem(v, VideoJob(v, "id0", "train", 25.0, 640, 360, (Clip(0, 50, (0, 0, 360, 360), 2),)).to_json())
             for v in videos]
    stage = Stage("ledger", download_stage, LEDGER, num_cpus=0.5, concurrency=4,
                  kwargs={"out": str(out), "root": str(out / "videos"), "settings": settings})
    cfg = RunConfig(out=str(out), executor=executor, num_cpus=cpus, progress=False)
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    run_plan(cfg, Plan("bench", shard_items(items, 8), {"bench": len(items)}), [stage], report="ledger")
    return time.perf_counter() - t0, cpu_seconds() - cpu0


def retries(server: LocalServer, videos: list[str], tmp: Path) -> None:
    lines = ["video_id,start,end,bbox,fps,width,height,partition,person_id"]
    for k, v in enumerate(videos + ["gone1", "gone2"]):
        split = "test" if k % 4 == 0 else "train"
        lines.append(f"{v},0,25,100-20-400-320,25,640,360,{split},id{k % 7:05d}")
    metadata = tmp / "vox-metadata.csv"
    metadata.write_text("\n".join(lines) + "\n")
    server.script = {f"{v}.mp4": [503, 503] for v in videos[::4]}
    cfg = {"metadata": str(metadata), "out": str(tmp / "retry"), "url_template": server.template("good"),
           "executor": "local", "extractor": "none", "progress": False, "retries": 1, "backoff": 0.1,
           "requests_per_second": 0.0, "throttle_pause": 0.5, "max_throttle_pause": 4.0}
    server.throttle(1.0)
    prepare_vox(VoxConfig(**cfg))
    print("after the first run:\n" + render(availability(tmp / "retry")))
    server.script = {}
    prepare_vox(VoxConfig(**cfg, retry_failed="transient"))
    print("after the rerun with --retry-failed:\n" + render(availability(tmp / "retry")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--skip-ray", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-download-"))
    clip = make_clip(tmp / "clip.mp4")
    videos = [f"v{k:04d}" for k in range(args.videos)]
    with LocalServer({f"{v}.mp4": clip for v in videos}) as server:
        print(f"{len(videos)} videos of {len(clip) / 1e3:.0f} kB")
        for executor in ["local"] + ([] if args.skip_ray else ["ray"]):
            runs = [download_only(server, videos, tmp / f"{executor}-{r}", executor, args.cpus)
                    for r in range(args.repeats)]
            rates = sorted(len(videos) / wall for wall, _ in runs)
            per_core = statistics.median(len(videos) / cpu for _, cpu in runs)
            print(f"download stage, {executor} executor: median {statistics.median(rates):.2f} videos/s "
                  f"(runs: {', '.join(f'{r:.2f}' for r in rates)})"
                  + (f"; {per_core:.2f} videos per CPU-second" if executor == "local" else ""))
        retries(server, videos[:24], tmp)


if __name__ == "__main__":
    main()
