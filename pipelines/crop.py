"""The crop stage: FOMM's protocol exactly as video-preprocessing's ``load_videos.py`` applies vox-metadata.csv.

For every clip of a source video (:class:`pipelines.metadata.VideoJob`):

1. the bbox ``l-t-r-b`` is rescaled from the reference width x height to the decoded size with load_videos.py's
   arithmetic, truncation included: ``l' = int(l / (ref_width / width))`` (same for t, r, b);
2. decoded frame ``i`` belongs to the clip when ``i * ref_fps >= start * fps`` and ``i * ref_fps < end * fps``
   (``fps``: the decoded stream's rate, as ffmpeg reports it);
3. the frame is cropped to ``[t':b', l':r']`` (no enlarging or squaring: the metadata box is final) and resized
   to 256 x 256 with anti-aliasing.

Each source video is decoded **once** for all its clips: one ffmpeg process splits the decoded stream into one
branch per clip (trim -> crop -> scale) and concatenates the branches into a single raw rgb24 pipe. A branch crops
a 4-pixel-aligned box around the clip's box in the decoded format, converts only that to planar RGB (the same
values imageio's whole-frame rgb24 conversion gives, which the exact-copy tests check), then crops exactly. Branches are ordered by clip end, so when
the video is shorter than expected the complete clips are exactly a prefix of the stream. Resizing uses
swscale's ``area`` filter: for upscales it is bilinear interpolation, identical to
``skimage.transform.resize(anti_aliasing=True)`` up to rounding; for downscales it averages where skimage
Gaussian-prefilters, so pixels differ by about 0.6 grey levels on average (PSNR >= 34 dB on ffmpeg ``testsrc``;
tests/test_crop.py states and checks the tolerances).

Bad input is a row, never an exception (status rows have ``frame_index`` -1 and no image):

* ``decode_error``: the file is missing, has no video stream, or ffmpeg fails while decoding it;
* ``too_short``: the video ends before the clip's last frame (none of the clip's frames are written);
* ``out_of_frame``: the rescaled box, clipped to the frame, keeps less than ``min_visible`` (default 50 %) of its
  area; a box fully outside keeps 0 %. A box that keeps at least that much is cropped to its visible part and
  resized to 256 x 256, which is what load_videos.py's numpy slicing does at the right and bottom edges.

Rows of a video, in order: the frames of its complete clips, clip by clip in (end, start) order, frame index
ascending; then one status row per failed clip in (start, end) order.
"""
from __future__ import annotations

import math
import os
import resource
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.media import VideoInfo, ffmpeg_exe, probe
from pipelines.metadata import MAX_FPS, MIN_FPS, Clip, VideoJob
from reenact.data.codec import encode_image
from reenact.data.schema import FRAMES, Status, clean_error
from reenact.data.shards import ParquetStream, finish_part, part_paths

STAGE = "frames"
OK = Status.OK.value


@dataclass(frozen=True)
class CropSettings:
    """How clips are cut and stored."""

    size: int = 256                 # output side, pixels
    scale_flags: str = "area"       # swscale filter for the resize
    image_format: str = "png"       # png (lossless) | jpeg
    png_level: int = 1
    jpeg_quality: int = 95
    min_visible: float = 0.5        # out_of_frame below this visible fraction of the box
    write_mp4: bool = False         # also write <clips_dir>/<partition>/<chunk_id>.mp4
    threads: int = 1                # ffmpeg decoder / filter threads per video
    timeout: float = 3600.0         # seconds for one video's decode


@dataclass(frozen=True)
class ChunkPlan:
    """One clip resolved against the decoded video: which frames, which box, or why it fails."""

    chunk_id: str
    clip: Clip
    frames: range                   # decoded frame indices
    box: tuple[int, int, int, int] | None   # l, t, r, b in decoded pixels, clipped to the frame
    status: str = OK
    error: str = ""


# ---------------------------------------------------------------- the protocol, one pure function per step

def rescale_bbox(bbox: tuple[int, int, int, int], ref_size: tuple[int, int],
                 size: tuple[int, int]) -> tuple[int, int, int, int]:
    """load_videos.py's rescale: each coordinate divided by ``ref / actual`` and truncated. Sizes are (w, h)."""
    (ref_w, ref_h), (w, h) = ref_size, size
    left, top, right, bottom = bbox
    return int(left / (ref_w / w)), int(top / (ref_h / h)), int(right / (ref_w / w)), int(bottom / (ref_h / h))


def _first_index(bound: int, fps: float, ref_fps: float) -> int:
    """Smallest i >= 0 with ``i * ref_fps >= bound * fps`` (the predicate evaluated exactly as load_videos.py).

    Starts from the rounded quotient and corrects it by a few steps; never loops on floats: ValueError when the
    predicate does not settle within ``_MAX_STEPS`` (rates so far apart that float products stop changing).
    """
    target = bound * fps
    i = max(0, math.ceil(target / ref_fps) - 1)
    for _ in range(_MAX_STEPS):
        if i * ref_fps < target:
            i += 1
        elif i > 0 and (i - 1) * ref_fps >= target:
            i -= 1
        else:
            return i
    raise ValueError(f"frame index of {bound} at {fps:g} fps over {ref_fps:g} fps does not settle")


_MAX_STEPS = 16
#: frame rates a clip may have (metadata and decoded video): outside it frame arithmetic is not exact
FPS_RANGE = (MIN_FPS, MAX_FPS)


def frame_range(start: int, end: int, fps: float, ref_fps: float) -> range:
    """Decoded frame indices ``i`` with ``i * ref_fps >= start * fps`` and ``i * ref_fps < end * fps``.

    Raises ValueError unless both rates lie within :data:`FPS_RANGE`.
    """
    if not (MIN_FPS <= fps <= MAX_FPS and MIN_FPS <= ref_fps <= MAX_FPS):
        raise ValueError(f"frame rates must lie within [{MIN_FPS:g}, {MAX_FPS:g}], got fps={fps:g} "
                         f"ref_fps={ref_fps:g}")
    return range(_first_index(start, fps, ref_fps), _first_index(end, fps, ref_fps))


def visible_box(box: tuple[int, int, int, int], width: int,
                height: int) -> tuple[tuple[int, int, int, int], float]:
    """``box`` clipped to a ``width`` x ``height`` frame, and the fraction of its area that stays visible."""
    left, top, right, bottom = box
    clipped = (max(left, 0), max(top, 0), min(right, width), min(bottom, height))
    area = (right - left) * (bottom - top)
    kept = max(0, clipped[2] - clipped[0]) * max(0, clipped[3] - clipped[1])
    return clipped, (kept / area if area > 0 else 0.0)


def plan_chunks(job: VideoJob, info: VideoInfo, min_visible: float = 0.5) -> list[ChunkPlan]:
    """Resolve every clip of ``job`` against the decoded stream ``info`` (frames, box, or out_of_frame)."""
    plans = []
    for clip in job.clips:
        chunk_id = str(job.chunk_id(clip))
        frames = frame_range(clip.start, clip.end, info.fps, job.ref_fps)
        box = rescale_bbox(clip.bbox, (job.ref_width, job.ref_height), (info.width, info.height))
        clipped, visible = visible_box(box, info.width, info.height)
        if visible < min_visible:
            plans.append(ChunkPlan(chunk_id, clip, frames, None, Status.OUT_OF_FRAME.value,
                                   f"box {box} (l, t, r, b) in a {info.width}x{info.height} frame keeps "
                                   f"{visible:.0%} of its area, below {min_visible:.0%}"))
        elif len(frames) == 0:
            plans.append(ChunkPlan(chunk_id, clip, frames, None, Status.TOO_SHORT.value,
                                   f"clip {clip.start}-{clip.end} selects no frame at {info.fps:g} fps"))
        else:
            plans.append(ChunkPlan(chunk_id, clip, frames, clipped))
    return plans


def decode_order(plans: list[ChunkPlan]) -> list[ChunkPlan]:
    """The clips to decode, ordered by (end, start): a video ending early then truncates only a suffix."""
    return sorted((p for p in plans if p.status == OK), key=lambda p: (p.frames.stop, p.frames.start))


def aligned_box(box: tuple[int, int, int, int], frame_size: tuple[int, int],
                align: int = 4) -> tuple[int, int, int, int]:
    """The smallest box holding ``box`` whose left/top are multiples of ``align`` and whose width/height are too,
    unless that would pass the frame's right/bottom edge (then it stops there). Boxes are (l, t, r, b).

    Cropping this box in the decoded (chroma-subsampled) format keeps every chroma sample the pixels of ``box``
    use, so converting it to RGB gives the same values as converting the whole frame (swscale's conversion is
    per pixel, chroma per block; the exact-copy tests check it).
    """
    (left, top, right, bottom), (width, height) = box, frame_size
    x0, y0 = left - left % align, top - top % align
    x1 = min(x0 + -(-(right - x0) // align) * align, width)
    y1 = min(y0 + -(-(bottom - y0) // align) * align, height)
    return x0, y0, x1, y1


def crop_command(path: str | os.PathLike, plans: list[ChunkPlan], settings: CropSettings,
                 frame_size: tuple[int, int], exe: str | None = None) -> list[str]:
    """The ffmpeg argument list: decode once; per plan a branch trim -> crop (aligned, in the decoded format) ->
    planar RGB -> exact crop -> scale; the branches concatenated to rgb24 on stdout. ``frame_size`` is (w, h)."""
    import ffmpeg

    if not plans:
        raise ValueError("crop_command needs at least one clip to decode, got none")
    src = ffmpeg.input(os.fspath(path), threads=settings.threads).video
    split = src.split() if len(plans) > 1 else None
    segments = []
    for k, plan in enumerate(plans):
        left, top, right, bottom = plan.box
        x0, y0, x1, y1 = aligned_box(plan.box, frame_size)
        stream = split[k] if split is not None else src
        segments.append(stream.trim(start_frame=plan.frames.start, end_frame=plan.frames.stop)
                        .setpts("PTS-STARTPTS").crop(x0, y0, x1 - x0, y1 - y0).filter("format", "gbrp")
                        .crop(left - x0, top - y0, right - left, bottom - top)
                        .filter("scale", settings.size, settings.size, flags=settings.scale_flags)
                        .filter("setsar", 1))
    out = ffmpeg.concat(*segments, v=1, a=0) if len(segments) > 1 else segments[0]
    head = [exe or ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error",
            "-filter_complex_threads", str(settings.threads)]
    return out.output("pipe:", format="rawvideo", pix_fmt="rgb24", fps_mode="passthrough").compile(cmd=head)


def segment_lengths(ranges: list[range], received: int) -> list[int] | None:
    """Frames each concatenated segment delivered when the stream held ``received`` frames in all.

    Segment k trims ``ranges[k]`` from a video of F frames, so it delivers ``max(0, min(stop, F) - start)``. The
    total is non-decreasing in F, and constant only where every segment is, so ``received`` fixes the lengths.
    None when no F explains ``received`` (ffmpeg dropped or duplicated frames).
    """
    def lengths(num_frames: int) -> list[int]:
        return [max(0, min(r.stop, num_frames) - r.start) for r in ranges]

    lo, hi = 0, max((r.stop for r in ranges), default=0)
    while lo < hi:                                  # smallest F with total >= received
        mid = (lo + hi) // 2
        if sum(lengths(mid)) >= received:
            hi = mid
        else:
            lo = mid + 1
    result = lengths(lo)
    return result if sum(result) == received else None


# ---------------------------------------------------------------- decoding

class FrameReader:
    """Run an ffmpeg command and iterate over its raw rgb24 ``size x size`` frames (stderr kept for errors)."""

    def __init__(self, cmd: list[str], size: int, timeout: float):
        self.cmd, self.frame_bytes, self.size, self.timeout = cmd, size * size * 3, size, timeout
        self.returncode: int | None = None
        self.stderr = ""
        self.timed_out = False

    def __iter__(self) -> Iterator[np.ndarray]:
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                    bufsize=0)
            timer = threading.Timer(self.timeout, self._kill, args=(proc,))
            timer.start()
            try:
                buf = bytearray(self.frame_bytes)
                view = memoryview(buf)
                while self._read_into(proc.stdout, view):
                    yield np.frombuffer(buf, np.uint8).reshape(self.size, self.size, 3)
            finally:
                timer.cancel()
                proc.stdout.close()
                if proc.poll() is None:                  # the consumer stopped early
                    proc.kill()
                self.returncode = proc.wait()
                err.seek(0)
                self.stderr = clean_error(err.read().decode("utf-8", "replace")).strip()

    def _kill(self, proc: subprocess.Popen) -> None:
        self.timed_out = True
        proc.kill()

    @staticmethod
    def _read_into(stream, view: memoryview) -> bool:
        got = 0
        while got < len(view):
            n = stream.readinto(view[got:])
            if not n:
                return False                            # EOF (a partial trailing frame is dropped)
            got += n
        return True


def mp4_command(path: str | os.PathLike, size: int, fps: float, exe: str | None = None) -> list[str]:
    """Encode raw rgb24 frames from stdin into an H.264 mp4 at ``path``."""
    return [exe or ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-f", "rawvideo",
            "-pix_fmt", "rgb24", "-s", f"{size}x{size}", "-r", f"{fps:g}", "-i", "-", "-c:v", "libx264",
            "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p", "-threads", "1", os.fspath(path)]


# ---------------------------------------------------------------- rows

def status_rows(job: VideoJob, plans: list[ChunkPlan]) -> pa.Table:
    """One FRAMES row per failed clip (frame_index -1, no image), in (start, end) order."""
    plans = sorted(plans, key=lambda p: (p.clip.start, p.clip.end))
    n = len(plans)
    return pa.table({
        "chunk_id": [p.chunk_id for p in plans], "video_id": [job.video_id] * n,
        "person_id": [job.person_id] * n, "partition": [job.partition] * n, "frame_index": [-1] * n,
        "source_frame": [None] * n, "image": [None] * n, "image_format": [None] * n, "height": [None] * n,
        "width": [None] * n, "status": [p.status for p in plans], "error": [p.error for p in plans]},
        schema=FRAMES)


class _FrameBatch:
    """Accumulates ok frame rows of one video and hands them out as FRAMES record batches."""

    def __init__(self, job: VideoJob, settings: CropSettings):
        self.job, self.settings = job, settings
        self.chunk_ids: list[str] = []
        self.frame_index: list[int] = []
        self.source_frame: list[int] = []
        self.images: list[bytes] = []

    def add(self, plan: ChunkPlan, k: int, image: bytes) -> None:
        self.chunk_ids.append(plan.chunk_id)
        self.frame_index.append(k)
        self.source_frame.append(plan.frames.start + k)
        self.images.append(image)

    def __len__(self) -> int:
        return len(self.images)

    def pop(self) -> pa.RecordBatch:
        n, s, job = len(self.images), self.settings, self.job
        batch = pa.RecordBatch.from_pydict({
            "chunk_id": self.chunk_ids, "video_id": [job.video_id] * n, "person_id": [job.person_id] * n,
            "partition": [job.partition] * n, "frame_index": self.frame_index, "source_frame": self.source_frame,
            "image": self.images, "image_format": [s.image_format] * n, "height": [s.size] * n,
            "width": [s.size] * n, "status": [OK] * n, "error": [""] * n}, schema=FRAMES)
        self.chunk_ids, self.frame_index, self.source_frame, self.images = [], [], [], []
        return batch


# ---------------------------------------------------------------- one video

@dataclass(frozen=True)
class CropResult:
    """What cropping one video produced."""

    rows: int
    frames: int                     # ok frame rows
    chunks_ok: int
    chunks_failed: int
    seconds: float                  # wall
    cpu_seconds: float              # this process + ffmpeg


def _cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def crop_video(job: VideoJob, path: str | os.PathLike | None, out: str | os.PathLike,
               settings: CropSettings = CropSettings(), clips_dir: str | os.PathLike | None = None,
               failure: tuple[str, str] | None = None, input_token: str | None = None) -> CropResult:
    """Crop every clip of ``job`` from the video at ``path`` into the part ``<out>/parts/frames/<video_id>``.

    ``failure`` = (status, error) marks every clip failed without decoding (e.g. the download failed). With
    ``settings.write_mp4`` each complete clip is also written to ``<clips_dir>/<partition>/<chunk_id>.mp4``
    (``clips_dir`` defaults to ``<out>/clips``). ``input_token`` is stored in the part's stats so a rerun can tell
    whether the part was made from the same input.
    """
    clips_dir = Path(clips_dir if clips_dir is not None else Path(out) / "clips")
    wall0, cpu0 = time.perf_counter(), _cpu_seconds()
    plans, info = _plans_for(job, path, settings, failure)
    todo = decode_order(plans)
    failed, done = [p for p in plans if p.status != OK], []
    stream = ParquetStream(part_paths(out, STAGE, job.video_id)[0], FRAMES)
    try:
        if todo:
            done, decode_failed, keep = _decode_into(job, path, todo, info, settings, stream, clips_dir)
            failed += decode_failed
            if keep is not None:
                stream = _keep_prefix(stream, keep)
        stream.write(status_rows(job, failed))
    except BaseException:
        stream.abort()
        raise
    stream.close()
    frames = sum(len(p.frames) for p in done)
    result = CropResult(frames + len(failed), frames, len(done), len(failed), time.perf_counter() - wall0,
                        _cpu_seconds() - cpu0)
    finish_part(out, STAGE, job.video_id, extra_stats={
        "videos": 1, "frames": frames, "chunks_ok": len(done), "chunks_failed": len(failed),
        "seconds": result.seconds, "cpu_seconds": result.cpu_seconds, "input": input_token})
    return result


def _plans_for(job: VideoJob, path, settings: CropSettings,
               failure: tuple[str, str] | None) -> tuple[list[ChunkPlan], VideoInfo | None]:
    """Plans for every clip; all failed with one status when the video is unusable."""
    def all_failed(status: str, error: str) -> list[ChunkPlan]:
        return [ChunkPlan(str(job.chunk_id(c)), c, range(0), None, status, error) for c in job.clips]

    if failure is not None:
        return all_failed(*failure), None
    if path is None:
        return all_failed(Status.DECODE_ERROR.value, "no video file"), None
    try:
        info = probe(path)
        return plan_chunks(job, info, settings.min_visible), info
    except ValueError as e:                         # MediaError (unreadable), or a frame rate outside FPS_RANGE
        return all_failed(Status.DECODE_ERROR.value, str(e)), None


class _Mp4Clips:
    """Optional per-clip mp4 files, written to temporary names and renamed once the clip is known complete."""

    def __init__(self, job: VideoJob, clips_dir, settings: CropSettings, fps: float):
        self.dir = Path(clips_dir) / job.partition if clips_dir is not None else None
        self.settings, self.fps = settings, fps
        self.proc: subprocess.Popen | None = None
        self.pending: dict[str, Path] = {}

    def frame(self, plan: ChunkPlan, k: int, rgb: np.ndarray) -> None:
        if self.dir is None:
            return
        if k == 0:
            self._close()
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = self.dir / f".{plan.chunk_id}.{os.getpid()}.tmp.mp4"
            self.pending[plan.chunk_id] = tmp
            self.proc = subprocess.Popen(mp4_command(tmp, self.settings.size, self.fps), stdin=subprocess.PIPE,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.proc.stdin.write(rgb.tobytes())

    def _close(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait()
            self.proc = None

    def finish(self, complete: set[str]) -> None:
        self._close()
        for chunk_id, tmp in self.pending.items():
            if chunk_id in complete and tmp.is_file():
                os.replace(tmp, self.dir / f"{chunk_id}.mp4")
            else:
                tmp.unlink(missing_ok=True)


def _decode_into(job: VideoJob, path, todo: list[ChunkPlan], info: VideoInfo, settings: CropSettings,
                 stream: ParquetStream, clips_dir) -> tuple[list[ChunkPlan], list[ChunkPlan], int | None]:
    """Decode once, writing ok frames to ``stream``: (complete plans, failed plans, rows to keep or None = all)."""
    batch, mp4 = _FrameBatch(job, settings), _Mp4Clips(job, clips_dir if settings.write_mp4 else None,
                                                         settings, info.fps)
    expected = [len(p.frames) for p in todo]
    reader = FrameReader(crop_command(path, todo, settings, (info.width, info.height)), settings.size,
                         settings.timeout)
    k = count = received = 0
    for rgb in reader:
        while k < len(todo) and count == expected[k]:
            k, count = k + 1, 0
        if k == len(todo):                          # more frames than planned: ffmpeg misbehaved
            received = -1
            break
        batch.add(todo[k], count, encode_image(rgb, settings.image_format, png_level=settings.png_level,
                                               jpeg_quality=settings.jpeg_quality))
        mp4.frame(todo[k], count, rgb)
        count, received = count + 1, received + 1
        if len(batch) >= 64:
            stream.write(batch.pop())
    if len(batch):
        stream.write(batch.pop())
    lengths = segment_lengths([p.frames for p in todo], received) if received >= 0 else None
    if reader.returncode != 0 or reader.timed_out or lengths is None:
        why = ("timed out" if reader.timed_out else f"ffmpeg exit {reader.returncode}" if reader.returncode
               else f"ffmpeg returned {received if received >= 0 else 'more'} frames, which no video length explains")
        mp4.finish(set())
        error = f"decoding failed ({why}): {reader.stderr[-300:]}".rstrip(": ")
        return [], [replace(p, status=Status.DECODE_ERROR.value, error=error) for p in todo], 0
    complete = [p for p, n in zip(todo, lengths) if n == len(p.frames)]
    note = f"; ffmpeg: {reader.stderr[-200:]}" if reader.stderr else ""
    short = [replace(p, status=Status.TOO_SHORT.value, error=_short_reason(p.frames, n) + note)
             for p, n in zip(todo, lengths) if n != len(p.frames)]
    mp4.finish({p.chunk_id for p in complete})
    # complete clips come first in the stream (ordered by end): keep exactly their rows
    return complete, short, (sum(len(p.frames) for p in complete) if short else None)


def _short_reason(frames: range, got: int) -> str:
    where = f"has {frames.start + got} frames" if got else f"ends before frame {frames.start}"
    return f"clip needs decoded frames {frames.start}-{frames.stop - 1} but the video {where}"


def _keep_prefix(stream: ParquetStream, keep: int) -> ParquetStream:
    """A new stream onto the same part holding only the first ``keep`` rows written to ``stream``."""
    stream.writer.close()
    old = stream.tmp.rename(stream.tmp.with_name(stream.tmp.name + ".old"))
    fresh = ParquetStream(stream.path, FRAMES)
    for batch in pq.ParquetFile(old).iter_batches(batch_size=256):
        if keep <= 0:
            break
        fresh.write(batch.slice(0, keep))
        keep -= batch.num_rows
    old.unlink()
    return fresh
