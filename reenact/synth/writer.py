"""Writing the synthetic world in the real datasets' layouts, with its ground truth.

Layout under ``DIR`` (see :class:`SynthLayout`)::

    DIR/config.json                    config + provenance (reenact.config.save_run_config)
    DIR/vox/videos/<video_id>.mp4      640x360, 25 fps, H.264 yuv420p "source videos", one or more chunks each
    DIR/vox/vox-metadata.csv           video_id,start,end,bbox,fps,width,height,partition,person_id (real header)
    DIR/vox/truth.parquet              reenact.data.schema.SYNTH_TRUTH, one row per source-video frame
    DIR/CelebV/<Name>/Image/%06d.jpg   5 identities, 256-400 px images
    DIR/CelebV/truth.parquet           SYNTH_TRUTH, one row per image

Metadata conventions (AliaksandrSiarohin/video-preprocessing ``load_videos.py``): frames ``start <= i < end`` form a
chunk; bbox is ``l-t-r-b`` integers in the reference ``width x height`` (here the video's own size), and a chunk is
``frame[t:b, l:r]`` resized to 256^2. Chunks of one video share one square bbox, so their crops see exactly
Deep3D's camera (:func:`reenact.synth.world.vox_camera`): ``crop_coeffs`` equal ``coeffs``.

Ground truth is computed in float64 from the sampled coefficients (independent of rendering batches and threads),
so the same seed gives byte-identical ``vox-metadata.csv`` and ``truth.parquet`` files. Landmarks are the 68
model landmarks projected with the coefficients (hidden ones included); ``face_bbox`` bounds every projected face
vertex. Videos are encoded by the ffmpeg binary (a system ``ffmpeg`` on PATH, else imageio-ffmpeg's bundled one)
from raw rgb24 frames on a pipe.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from reenact.data.schema import SYNTH_TRUTH, ChunkId
from reenact.face3d.camera import PerspectiveCamera
from reenact.face3d.coeffs import ANGLE, EXP, ID, TRANS
from reenact.face3d.morphable import NUM_EXP, NUM_ID, MorphableModel
from reenact.face3d.transforms import euler_to_matrix, rigid_transform
from reenact.ffmpeg import ffmpeg_exe
from reenact.files import atomic_write_bytes
from reenact.synth.world import CROP_SIZE, FPS, Sequence, World

VOX_HEADER = "video_id,start,end,bbox,fps,width,height,partition,person_id"
RENDER_BATCH = 8


@dataclass(frozen=True)
class SynthLayout:
    """Where a generated world lives (all paths absolute)."""

    root: Path

    @property
    def vox(self) -> Path:
        return self.root / "vox"

    @property
    def vox_videos(self) -> Path:
        return self.vox / "videos"

    @property
    def vox_metadata(self) -> Path:
        return self.vox / "vox-metadata.csv"

    @property
    def vox_truth(self) -> Path:
        return self.vox / "truth.parquet"

    @property
    def celebv(self) -> Path:
        return self.root / "CelebV"

    @property
    def celebv_truth(self) -> Path:
        return self.celebv / "truth.parquet"

    @property
    def url_template(self) -> str:
        """A download URL template for the videos: ``file:///.../vox/videos/{video_id}.mp4``."""
        return self.vox_videos.as_uri() + "/{video_id}.mp4"

    def video(self, video_id: str) -> Path:
        return self.vox_videos / f"{video_id}.mp4"


def layout(root: str | os.PathLike) -> SynthLayout:
    return SynthLayout(Path(root).resolve())


def world_model_size(root: str | os.PathLike) -> str:
    """The procedural model size (``full``, ``small``, ``tiny``) the world under ``root`` was rendered with."""
    config = json.loads((Path(root) / "config.json").read_text())
    return config["provenance"]["preset"]["model"]


# ---------------------------------------------------------------------------------------------------- ffmpeg
def encode_args(ffmpeg: str, path: str | os.PathLike, width: int, height: int, fps: int = FPS, crf: int = 18
                ) -> list[str]:
    """ffmpeg arguments that read raw rgb24 frames from stdin and write an H.264 yuv420p mp4 (no audio)."""
    return [ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
            "-s", f"{width}x{height}", "-r", str(fps), "-i", "pipe:0", "-an", "-c:v", "libx264",
            "-preset", "veryfast", "-crf", str(crf), "-pix_fmt", "yuv420p", "-threads", "1",
            "-fflags", "+bitexact", "-flags:v", "+bitexact", "-map_metadata", "-1", "-f", "mp4", str(path)]


def decode_args(ffmpeg: str, path: str | os.PathLike) -> list[str]:
    """ffmpeg arguments that decode every frame of ``path`` to raw rgb24 on stdout."""
    return [ffmpeg, "-hide_banner", "-loglevel", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24",
            "pipe:1"]


class Mp4Writer:
    """Pipe uint8 ``(B, H, W, 3)`` frames into ffmpeg; the file appears under its name only when complete."""

    def __init__(self, path: str | os.PathLike, width: int, height: int, fps: int = FPS, crf: int = 18):
        self.path, self.size = Path(path), (height, width)
        self.tmp = self.path.with_name(f".{self.path.stem}.{os.getpid()}.tmp.mp4")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(encode_args(ffmpeg_exe(), self.tmp, width, height, fps, crf),
                                     stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        self.frames = 0

    def write(self, frames: np.ndarray) -> None:
        if frames.dtype != np.uint8 or frames.shape[1:] != (*self.size, 3):
            raise ValueError(f"expected uint8 frames (B, {self.size[0]}, {self.size[1]}, 3), got "
                             f"{frames.dtype} {frames.shape}")
        try:
            self.proc.stdin.write(np.ascontiguousarray(frames).tobytes())
        except BrokenPipeError as err:
            self.proc.wait()
            raise RuntimeError(f"ffmpeg stopped while writing {self.path}: "
                               f"{self.proc.stderr.read().decode(errors='replace').strip()}") from err
        self.frames += frames.shape[0]

    def close(self) -> None:
        self.proc.stdin.close()
        err = self.proc.stderr.read().decode(errors="replace")
        if self.proc.wait() != 0:
            self.tmp.unlink(missing_ok=True)
            raise RuntimeError(f"ffmpeg failed writing {self.path}: {err.strip()}")
        os.replace(self.tmp, self.path)

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.close()
        else:
            self.proc.kill()
            self.proc.wait()
            self.tmp.unlink(missing_ok=True)


def read_video(path: str | os.PathLike, width: int, height: int) -> np.ndarray:
    """Decode every frame of a video of known size: uint8 ``(T, H, W, 3)``."""
    proc = subprocess.run(decode_args(ffmpeg_exe(), path), capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg could not decode {path}: {proc.stderr.decode(errors='replace').strip()}")
    frame_bytes = width * height * 3
    if len(proc.stdout) % frame_bytes:
        raise RuntimeError(f"{path}: decoded {len(proc.stdout)} bytes, not a multiple of {width}x{height}x3")
    return np.frombuffer(proc.stdout, np.uint8).reshape(-1, height, width, 3)  # T x H x W x 3


# ---------------------------------------------------------------------------------------------------- truth
@dataclass(frozen=True)
class FrameTruth:
    """Per-frame ground truth of a sequence: landmarks ``(T, 68, 2)`` and face_bbox ``(T, 4)`` in source pixels."""

    landmarks: np.ndarray
    face_bbox: np.ndarray


@contextmanager
def single_thread():
    """Run torch on one thread: competing intra-op threads render slower on a busy 2-core machine, and results
    must not depend on the caller's thread count. Parallelism comes from worker processes instead."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@lru_cache(maxsize=2)
def _double(model: MorphableModel) -> MorphableModel:
    return replace(model, mean_shape=model.mean_shape.double(), id_base=model.id_base.double(),
                   exp_base=model.exp_base.double())


def frame_truth(model: MorphableModel, coeffs: np.ndarray, camera: PerspectiveCamera, batch: int = 32
                ) -> FrameTruth:
    """Landmarks and face bbox of ``coeffs (T, 257)`` under ``camera``, in float64."""
    model64 = _double(model)
    landmarks, boxes = [], []
    with single_thread(), torch.no_grad():
        for start in range(0, coeffs.shape[0], batch):
            c = torch.from_numpy(coeffs[start:start + batch].astype(np.float64))
            rest = model64.shape(c[:, ID], c[:, EXP])                              # b x V x 3
            screen = camera.project(rigid_transform(rest, euler_to_matrix(c[:, ANGLE]), c[:, TRANS]))[..., :2]
            landmarks.append(model.landmarks(screen).numpy())
            boxes.append(torch.cat([screen.amin(1), screen.amax(1)], -1).numpy())  # b x 4: l, t, r, b
    return FrameTruth(landmarks=np.concatenate(landmarks), face_bbox=np.concatenate(boxes))


def chunk_of(seq: Sequence, frame: int) -> tuple[int, int] | None:
    return next(((s, e) for s, e in seq.chunks if s <= frame < e), None)


def check_face_in_chunks(seq: Sequence, truth: FrameTruth) -> None:
    """Raise if the face leaves the chunk bbox in a chunk frame (the metadata would promise what it does not hold)."""
    left, top, right, bottom = seq.bbox
    for start, end in seq.chunks:
        box = truth.face_bbox[start:end]
        outside = (box[:, 0] < left) | (box[:, 1] < top) | (box[:, 2] > right) | (box[:, 3] > bottom)
        if outside.any():
            raise RuntimeError(f"synthetic video {seq.video_id}: the face leaves bbox {seq.bbox} at frames "
                               f"{(np.flatnonzero(outside) + start).tolist()}; adjust the pose ranges")


def truth_rows(seq: Sequence, truth: FrameTruth) -> list[dict]:
    """SYNTH_TRUTH rows of one sequence (vox: every source frame; celebv: every image)."""
    ident, cam, rows = seq.identity, seq.camera, []
    for i in range(seq.num_frames):
        row = {"video_id": seq.video_id, "person_id": ident.person_id, "source_frame": i,
               "coeffs": seq.coeffs[i].tolist(), "landmarks": truth.landmarks[i].reshape(-1).tolist(),
               "face_bbox": truth.face_bbox[i].tolist(), "dataset": seq.dataset, "partition": ident.partition,
               "width": cam.width, "height": cam.height, "focal": cam.focal, "cx": cam.cx, "cy": cam.cy}
        if seq.dataset == "vox":
            chunk = chunk_of(seq, i)
            left, top, right, _ = seq.bbox
            crop_lm = (truth.landmarks[i] - np.array([left, top])) * (CROP_SIZE / (right - left))
            row.update(chunk_id=str(ChunkId(ident.person_id, seq.video_id, *chunk)) if chunk else None,
                       frame_index=i - chunk[0] if chunk else None, path=f"videos/{seq.video_id}.mp4",
                       crop_box=list(seq.bbox), crop_coeffs=seq.coeffs[i].tolist(),
                       crop_landmarks=crop_lm.reshape(-1).tolist())
        else:
            row.update(chunk_id=str(ChunkId(seq.video_id, seq.video_id, 0, seq.num_frames)), frame_index=i,
                       path=celebv_image_path(seq.video_id, i))
        rows.append(row)
    return rows


def truth_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SYNTH_TRUTH)


def write_parquet(table: pa.Table, path: str | os.PathLike) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def read_truth(path: str | os.PathLike) -> pa.Table:
    return pq.read_table(path, schema=SYNTH_TRUTH)


# ---------------------------------------------------------------------------------------------------- metadata
def metadata_rows(videos: tuple[Sequence, ...] | list[Sequence]) -> list[str]:
    """One ``vox-metadata.csv`` line per chunk (bbox as l-t-r-b in the video's own width x height)."""
    lines = []
    for seq in videos:
        bbox = "-".join(str(int(v)) for v in seq.bbox)
        for start, end in seq.chunks:
            lines.append(f"{seq.video_id},{start},{end},{bbox},{FPS},{seq.camera.width},{seq.camera.height},"
                         f"{seq.identity.partition},{seq.identity.person_id}")
    return lines


def write_vox_metadata(videos, path: str | os.PathLike) -> None:
    atomic_write_bytes(path, ("\n".join([VOX_HEADER, *metadata_rows(videos)]) + "\n").encode())


def celebv_image_path(name: str, index: int) -> str:
    return f"{name}/Image/{index:06d}.jpg"


# ---------------------------------------------------------------------------------------------------- rendering
def _identity_scene(model: MorphableModel, seq: Sequence):
    from reenact.synth.scene import background, body_mesh

    ident = seq.identity
    body = body_mesh(model, torch.from_numpy(ident.id_coeffs).float(), torch.from_numpy(ident.tex_coeffs).float(),
                     ident.hair_rgb, ident.cloth_rgb, ident.hairline, ident.hair_length, ident.hair_volume, seq.seed)
    return body, background(np.random.default_rng(seq.seed), seq.camera.height, seq.camera.width)


def render_sequence(model: MorphableModel, seq: Sequence, batch: int = RENDER_BATCH):
    """Yield uint8 frames ``(b, H, W, 3)`` of ``seq`` in order."""
    from reenact.synth.scene import render_frames, to_uint8

    body, backdrop = _identity_scene(model, seq)
    with single_thread(), torch.no_grad():
        for start in range(0, seq.num_frames, batch):
            coeffs = torch.from_numpy(seq.coeffs[start:start + batch])
            yield to_uint8(render_frames(model, coeffs, seq.camera, body, backdrop).images)


def write_vox_video(model: MorphableModel, seq: Sequence, root: SynthLayout, crf: int = 18) -> list[dict]:
    truth = frame_truth(model, seq.coeffs, seq.camera)
    check_face_in_chunks(seq, truth)
    with Mp4Writer(root.video(seq.video_id), seq.camera.width, seq.camera.height, FPS, crf) as out:
        for frames in render_sequence(model, seq):
            out.write(frames)
    return truth_rows(seq, truth)


def write_celebv_sequence(model: MorphableModel, seq: Sequence, root: SynthLayout, quality: int = 95
                          ) -> list[dict]:
    from PIL import Image

    index = 0
    for frames in render_sequence(model, seq):
        for frame in frames:
            buffer = io.BytesIO()
            Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
            atomic_write_bytes(root.celebv / celebv_image_path(seq.video_id, index), buffer.getvalue())
            index += 1
    return truth_rows(seq, frame_truth(model, seq.coeffs, seq.camera))


def _model(size: str) -> MorphableModel:
    from reenact.face3d.procedural import procedural_model

    return procedural_model(size)


def _render_job(job: tuple[str, Sequence, str, str]) -> tuple[int, list[dict]]:
    kind, seq, root, size = job
    model = _model(size)
    if kind == "vox":
        return seq.num_frames, write_vox_video(model, seq, layout(root))
    return seq.num_frames, write_celebv_sequence(model, seq, layout(root))


def _init_worker() -> None:
    torch.set_num_threads(1)


def _pool(workers: int, size: str):
    """A process pool; with ``fork`` (Linux) the workers inherit the imported modules and the built model."""
    import multiprocessing as mp

    ray = sys.modules.get("ray")
    ray_running = ray is not None and getattr(ray, "is_initialized", lambda: False)()
    if "fork" in mp.get_all_start_methods() and not ray_running:   # never fork a process holding Ray's threads
        _model(size).shape(torch.zeros(NUM_ID), torch.zeros(NUM_EXP))   # warm torch's lazy imports before forking
        return mp.get_context("fork").Pool(workers, initializer=_init_worker)
    return mp.get_context("spawn").Pool(workers, initializer=_init_worker)


def write_world(world: World, out: str | os.PathLike, workers: int = 1, model_size: str | None = None,
                progress: bool = True) -> dict:
    """Render and write every video, image, metadata row and truth row of ``world``; returns a summary."""
    from tqdm import tqdm

    root, size = layout(out), model_size or world.preset.model
    jobs = [("vox", seq, str(root.root), size) for seq in world.videos] + \
           [("celebv", seq, str(root.root), size) for seq in world.celebv]
    total = sum(seq.num_frames for _, seq, _, _ in jobs)
    started = time.perf_counter()
    rows: list[list[dict]] = []
    with tqdm(total=total, unit="frame", desc=f"synth {world.preset.name}", disable=not progress) as bar:
        if workers <= 1:
            rows = [r for n, r in _tick(map(_render_job, jobs), bar)]
        else:
            with _pool(workers, size) as pool:
                rows = [r for n, r in _tick(pool.imap(_render_job, jobs), bar)]
    vox_rows = [r for rs in rows[:len(world.videos)] for r in rs]
    celebv_rows = [r for rs in rows[len(world.videos):] for r in rs]
    write_vox_metadata(world.videos, root.vox_metadata)
    write_parquet(truth_table(vox_rows), root.vox_truth)
    write_parquet(truth_table(celebv_rows), root.celebv_truth)
    return {"videos": len(world.videos), "chunks": sum(len(s.chunks) for s in world.videos),
            "vox_frames": len(vox_rows), "celebv_images": len(celebv_rows), "model": f"procedural-{size}",
            "seconds": round(time.perf_counter() - started, 2)}


def _tick(results, bar):
    for n, r in results:
        bar.update(n)
        yield n, r


def generate(preset: str = "tiny", out: str | os.PathLike = "data/synth", seed: int = 0, workers: int = 1,
             model_size: str | None = None, progress: bool = True, config=None) -> dict:
    """Sample the world of ``preset`` for ``seed`` and write it under ``out``; ``config.json`` records the config,
    the provenance, the layout and the summary. Returns the summary."""
    from reenact.config import save_run_config
    from reenact.synth.world import sample_world

    world = sample_world(preset, seed)
    summary = write_world(world, out, workers=workers, model_size=model_size, progress=progress)
    root = layout(out)
    paths = {"vox_videos": "vox/videos", "vox_metadata": "vox/vox-metadata.csv", "vox_truth": "vox/truth.parquet",
             "celebv": "CelebV", "celebv_truth": "CelebV/truth.parquet", "url_template": root.url_template}
    config = config if config is not None else {"preset": preset, "out": str(out), "seed": seed, "workers": workers,
                                                "model": model_size}
    save_run_config(config, root.root, preset=world.preset.__dict__, layout=paths, summary=summary)
    return summary
