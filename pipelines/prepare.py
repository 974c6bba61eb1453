"""``reenact prepare vox|synth|celebv``: each dataset's config, plan and stages, run by :mod:`pipelines.engine`.

* **vox** (and **synth**, the synthetic world's VoxCeleb-style videos): one work item per source video with all its
  clips, in metadata order, ``videos_per_shard`` per shard; stages download -> ``ledger``, crop -> ``frames``
  (-> ``coeffs``), plus the plan-wide ``metadata-00000`` shard (every CSV row with its status).
* **celebv**: one work item per identity folder (:mod:`pipelines.celebv`); stages MTCNN crops -> ``frames``
  (-> ``coeffs``).

Appending a stage (coefficients, guidance): pass ``extra_stages`` to :func:`prepare_vox`.
:class:`FramewiseStage` adapts a frame-row callable (a batch of FRAMES rows in, a batch of rows of its own schema
out, e.g. a coefficient extractor) into a per-item stage.

Output folder::

    config.json                 config + provenance + the plan's fingerprint (a rerun must match it)
    metadata-00000.parquet      every CSV row with its status (vox, synth; reenact.data.schema.METADATA)
    ledger-<shard>.parquet      one row per video (vox, synth; reenact.data.schema.LEDGER)
    frames-<shard>.parquet      256^2 crops plus a status row per failed clip or image (FRAMES, CELEBV_FRAMES)
    coeffs-<shard>.parquet      3DMM coefficients per frame row (COEFFS)
    *.stats.json                done-markers with row counts, status histograms, seconds
    videos/                     downloads (unless --download-dir), clips/ (--write-mp4), parts/ (in flight)

Resume: run the same command again. Shards whose stats exist for every stage are skipped; inside unfinished
shards, items whose parts are current are skipped, and a download whose ledger says ok is not fetched again.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.crop import CropSettings, crop_video
from pipelines.download import (
    DEFAULT_URL_TEMPLATE,
    DownloadSettings,
    check_url_template,
    download_stage,
    limiter_name,
    shards_to_retry,
    show_pauses,
)
from pipelines.engine import Plan, RunConfig, RunResult, Stage, WorkItem, ensure_part, log, run_plan, shard_items
from pipelines.guidance import GuidanceConfig, prepare_guidance
from pipelines.metadata import VideoJob, metadata_table, read_metadata, video_jobs
from reenact.config import UserError, add_dataclass_arguments, from_namespace
from reenact.data.schema import CELEBV_FRAMES, COEFFS, FRAMES, LEDGER, Status
from reenact.data.shards import ParquetStream, finish_part, is_done, part_paths, write_shard

# ---------------------------------------------------------------- configuration

@dataclass
class ExtractorConfig(RunConfig):
    """The coefficient stage's options (shared by every dataset)."""

    extractor: Literal["auto", "none", "oracle", "landmarks", "deep3d"] = field(default="auto", metadata={
        "help": "3DMM coefficient extractor: oracle (synthetic ground truth), landmarks (dlib 68 + model fit, "
                "offline), deep3d (needs epoch_20.pth), none; auto = oracle for synth, landmarks otherwise"})
    morphable_model: str = field(default="procedural-full", metadata={
        "help": "morphable model of the landmarks extractor: procedural-full, bfm or a BFM_model_front.mat"})
    extractor_cpus: float = field(default=1.0, metadata={"help": "Ray CPUs per extractor actor"})
    extractor_gpus: float = field(default=0.0, metadata={"help": "Ray GPUs per extractor actor (deep3d)"})
    extractor_actors: int = field(default=1, metadata={"help": "extractor actors running at once"})
    image_format: Literal["png", "jpeg"] = field(default="png", metadata={"help": "frame encoding"})
    crop_cpus: float = field(default=1.0, metadata={"help": "Ray CPUs reserved per crop task"})

    dataset: ClassVar[str] = ""

    def truth(self) -> str | None:
        """The synthetic world's ground truth for the oracle extractor, or None."""
        return None

    def check_extractor(self) -> None:
        if self.extractor == "auto":
            self.extractor = "oracle" if self.truth() is not None else "landmarks"
        if self.extractor == "oracle" and self.truth() is None:
            raise ValueError("--extractor oracle needs --world (the synthetic world's ground truth)")


@dataclass
class VoxConfig(ExtractorConfig):
    """Options of ``reenact prepare vox``."""

    metadata: str | None = field(default=None, metadata={"help": "vox-metadata.csv", "required": True})
    url_template: str = field(default=DEFAULT_URL_TEMPLATE,
                              metadata={"help": "video URL with {video_id}; mirrors and file:// work"})
    download_dir: str | None = field(default=None, metadata={"help": "where videos go (default <out>/videos)"})
    videos_per_shard: int = field(default=16, metadata={"help": "source videos per output shard"})
    limit: int | None = field(default=None, metadata={"help": "only the first N videos of the metadata"})
    download_concurrency: int = field(default=4, metadata={"help": "downloads running at once"})
    download_cpus: float = field(default=0.5, metadata={"help": "Ray CPUs reserved per download task"})
    retries: int = field(default=3, metadata={"help": "download retries after the first attempt"})
    backoff: float = field(default=2.0, metadata={"help": "seconds before the first retry, doubling after"})
    socket_timeout: float = field(default=30.0, metadata={"help": "download socket timeout, seconds"})
    rate_limit: str | None = field(default=None, metadata={"help": "bytes/s per download, e.g. 2M"})
    sleep_interval: float = field(default=0.0, metadata={"help": "seconds to wait before each download"})
    cookies: str | None = field(default=None, metadata={
        "help": "cookies.txt for yt-dlp (read afresh by every attempt: replace it to refresh cookies mid-run)"})
    proxy: str | None = field(default=None, metadata={"help": "proxy URL for yt-dlp"})
    write_mp4: bool = field(default=False, metadata={"help": "also write <out>/clips/<partition>/<chunk>.mp4"})
    retry_failed: Literal["none", "transient", "all"] = field(default="none", metadata={"const": "transient", "help": (
        "download again the failed videos of earlier runs: --retry-failed the transient failures (network, 5xx, "
        "429, bot check, ...), --retry-failed=all also the permanent ones (private, removed, ...); their shards "
        "are rewritten with crops and coefficients")})
    requests_per_second: float = field(default=2.0, metadata={
        "help": "HTTP requests per second of all downloads together (one limiter per run, across the cluster)"})
    throttle_pause: float = field(default=30.0, metadata={
        "help": "seconds all downloads pause after an HTTP 429 or a bot check, doubling while it lasts"})
    max_throttle_pause: float = field(default=1800.0, metadata={"help": "longest such pause, seconds"})

    dataset: ClassVar[str] = "vox"

    def __post_init__(self):
        if self.metadata is None:
            raise ValueError("--metadata is required")
        self.check_extractor()
        if self.videos_per_shard < 1:
            raise ValueError(f"videos_per_shard must be >= 1, got {self.videos_per_shard}")
        check_url_template(self.url_template)

    def download_settings(self) -> DownloadSettings:
        return DownloadSettings(url_template=self.url_template, retries=self.retries, backoff=self.backoff,
                                socket_timeout=self.socket_timeout, rate_limit=self.rate_limit,
                                sleep_interval=self.sleep_interval, cookies=self.cookies, proxy=self.proxy,
                                requests_per_second=self.requests_per_second, throttle_pause=self.throttle_pause,
                                max_throttle_pause=self.max_throttle_pause, limiter=limiter_name(self.out),
                                retry_failed=self.retry_failed)

    def crop_settings(self) -> CropSettings:
        return CropSettings(image_format=self.image_format, write_mp4=self.write_mp4)



@dataclass
class SynthConfig(VoxConfig):
    """Options of ``reenact prepare synth``: the VoxCeleb stages on a synthetic world (metadata, file:// video URLs
    and ground truth come from ``--world``)."""

    world: str | None = field(default=None, metadata={
        "help": "synthetic world folder (written by `reenact synth`)", "required": True})
    metadata: str | None = field(default=None, metadata={"cli": False})
    url_template: str = field(default=DEFAULT_URL_TEMPLATE, metadata={"cli": False})

    dataset: ClassVar[str] = "synth"

    def __post_init__(self):
        if self.world is None:
            raise ValueError("prepare synth needs --world DIR (a folder written by `reenact synth`)")
        world = Path(self.world).resolve()
        self.metadata = self.metadata or str(world / "vox" / "vox-metadata.csv")
        if self.url_template == DEFAULT_URL_TEMPLATE:
            self.url_template = (world / "vox" / "videos").as_uri() + "/{video_id}.mp4"
        super().__post_init__()

    def truth(self) -> str | None:
        return str(Path(self.world).resolve() / "vox" / "truth.parquet")


@dataclass
class CelebVConfig(ExtractorConfig):
    """Options of ``reenact prepare celebv``."""

    celebv: str | None = field(default=None, metadata={
        "help": "CelebV folder or zip (default <world>/CelebV)"})
    world: str | None = field(default=None, metadata={
        "help": "synthetic world folder: its CelebV images and ground truth (oracle extractor)"})
    identities_per_shard: int = field(default=1, metadata={"help": "identities per output shard"})

    dataset: ClassVar[str] = "celebv"

    def __post_init__(self):
        if self.world is not None:
            self.celebv = self.celebv or str(Path(self.world).resolve() / "CelebV")
        if self.celebv is None:
            raise ValueError("prepare celebv needs --celebv DIR (or --world of a synthetic world)")
        if self.identities_per_shard < 1:
            raise ValueError(f"identities_per_shard must be >= 1, got {self.identities_per_shard}")
        self.check_extractor()

    def truth(self) -> str | None:
        return None if self.world is None else str(Path(self.world).resolve() / "CelebV" / "truth.parquet")


# ---------------------------------------------------------------- stages

def file_token(path: str | Path) -> str:
    """Size and modification time of a file: changes when the file is rewritten."""
    st = Path(path).stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def content_token(path: str | Path) -> str:
    """Digest of a small file (a part's stats): the same after a byte-identical rewrite (a reopened shard's part)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:32]


def crop_stage(batch: dict[str, np.ndarray], *, out: str, settings: CropSettings) -> dict[str, np.ndarray]:
    """Engine stage: crop every clip of each video (or write status rows when its download failed).

    A part is reused only when it was made from the same download (status, error, file size and time).
    """
    frames = []
    for job_json, status, error, path in zip(batch["job"], batch["download_status"], batch["download_error"],
                                             batch["download_path"]):
        job = VideoJob.from_json(job_json)
        token = f"{status}|{error}|{file_token(path) if path else ''}"
        failure = None if status == Status.OK.value else (status, f"download: {error}")
        stats = ensure_part(out, "frames", job.video_id, token, functools.partial(
            crop_video, job, path or None, out, settings, failure=failure, input_token=token))
        frames.append(stats.get("frames", 0))
    return batch | {"frames": np.array(frames, dtype=np.int64)}


class FramewiseStage:
    """Adapter: run a frame-row callable over each item's ``source`` part and write its rows as stage ``name``.

    ``make_fn()`` builds the callable once per actor (e.g. loads weights); it maps a batch dict of
    :data:`reenact.data.schema.FRAMES` rows (numpy columns) to a batch dict of rows of ``schema``.
    """

    def __init__(self, out: str, name: str, schema: pa.Schema, make_fn: Callable[[], Callable],
                 source: str = "frames", batch_size: int = 64, by_chunk: bool = False):
        self.out, self.name, self.schema, self.source, self.batch_size = out, name, schema, source, batch_size
        self.by_chunk = by_chunk
        self.fn = make_fn()

    def _batches(self, path: Path):
        """Batches of the source part: ``batch_size`` rows, or whole chunks when ``by_chunk``."""
        if not self.by_chunk:
            yield from pq.ParquetFile(path).iter_batches(self.batch_size)
            return
        table = pq.read_table(path)
        chunk_ids = table.column("chunk_id").to_pylist()
        starts = [i for i in range(len(chunk_ids)) if i == 0 or chunk_ids[i] != chunk_ids[i - 1]]
        for start, end in zip(starts, starts[1:] + [len(chunk_ids)]):
            yield table.slice(start, end - start).combine_chunks().to_batches()[0]

    def _write(self, key: str, token: str) -> None:
        t0 = time.perf_counter()
        stream = ParquetStream(part_paths(self.out, self.name, key)[0], self.schema)
        for rows in self._batches(part_paths(self.out, self.source, key)[0]):
            result = self.fn({k: v.to_numpy(zero_copy_only=False) for k, v in zip(rows.schema.names, rows.columns)})
            stream.write(pa.Table.from_pydict(dict(result), schema=self.schema))
        stream.close()
        finish_part(self.out, self.name, key, extra_stats={"seconds": time.perf_counter() - t0, "input": token})

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for key in batch["key"]:
            token = content_token(part_paths(self.out, self.source, key)[1])
            ensure_part(self.out, self.name, key, token, functools.partial(self._write, key, token))
        return batch


def build_extractor(name: str, kwargs: dict[str, Any]) -> Callable:
    """Construct a registered coefficient extractor (inside a Ray actor)."""
    from pipelines.extractors import get_class

    return get_class(name)(**kwargs)


def extractor_kwargs(cfg: ExtractorConfig) -> dict[str, Any]:
    if cfg.extractor == "oracle":
        return {"truth": cfg.truth()}
    if cfg.extractor == "landmarks":
        return {"model": cfg.morphable_model}
    return {}


def extractor_settings(cfg: ExtractorConfig) -> dict[str, Any]:
    """What the coefficients depend on: the extractor, its model, the checksum of the ground truth it reads."""
    settings: dict[str, Any] = {"extractor": cfg.extractor}
    if cfg.extractor == "landmarks":
        settings["morphable_model"] = cfg.morphable_model
    if cfg.extractor == "oracle":
        settings["truth_sha256"] = _sha256(cfg.truth())
    return settings


def coefficient_stage(cfg: ExtractorConfig) -> Stage:
    """frames -> coeffs shards with the configured extractor; whole chunks per call (shared identity)."""
    make_fn = functools.partial(build_extractor, cfg.extractor, extractor_kwargs(cfg))
    return Stage("coeffs", FramewiseStage, COEFFS, num_cpus=cfg.extractor_cpus, num_gpus=cfg.extractor_gpus,
                 concurrency=cfg.extractor_actors, settings=extractor_settings(cfg),
                 kwargs={"name": "coeffs", "schema": COEFFS, "make_fn": make_fn, "by_chunk": True})


def with_coefficients(cfg: ExtractorConfig, stages: list[Stage]) -> list[Stage]:
    return stages + ([coefficient_stage(cfg)] if cfg.extractor != "none" else [])


#: crop settings that do not change the outputs (left out of the fingerprint)
_CROP_RUNTIME = ("threads", "timeout")


def vox_stages(cfg: VoxConfig) -> list[Stage]:
    """download -> ledger shards, crop -> frames shards (-> coeffs shards)."""
    crop = cfg.crop_settings()
    root = str(Path(cfg.download_dir).resolve()) if cfg.download_dir else None
    return with_coefficients(cfg, [
        Stage("ledger", download_stage, LEDGER, num_cpus=cfg.download_cpus, concurrency=cfg.download_concurrency,
              kwargs={"root": root, "settings": cfg.download_settings()},
              settings={"url_template": cfg.url_template}),
        Stage("frames", crop_stage, FRAMES, num_cpus=cfg.crop_cpus, kwargs={"settings": crop},
              settings={k: v for k, v in dataclasses.asdict(crop).items() if k not in _CROP_RUNTIME}),
    ])


# ---------------------------------------------------------------- datasets

def shard_plan(jobs: list[VideoJob], videos_per_shard: int) -> tuple[tuple[WorkItem, ...], ...]:
    """Videos in metadata order, ``videos_per_shard`` per shard (the last one may be smaller)."""
    return shard_items([WorkItem(job.video_id, job.to_json()) for job in jobs], videos_per_shard)


def _sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def prepare_vox(cfg: VoxConfig, extra_stages: list[Stage] | None = None) -> RunResult:
    """Run (or resume) download -> crop (-> coefficients, ``extra_stages``) over ``cfg.metadata`` into ``cfg.out``."""
    t0 = time.time()
    rows = read_metadata(cfg.metadata)
    jobs = video_jobs(rows)[:cfg.limit] if cfg.limit is not None else video_jobs(rows)
    plan = Plan(cfg.dataset, shard_plan(jobs, cfg.videos_per_shard),
                {"metadata_sha256": _sha256(cfg.metadata), "videos": len(jobs),
                 "videos_per_shard": cfg.videos_per_shard})
    log(f"prepare {cfg.dataset}: {len(rows)} metadata rows, {len(jobs)} videos, "
        f"{sum(len(j.clips) for j in jobs)} clips, {len(plan.shards)} shards")

    def write_metadata(out: Path) -> None:
        if not is_done(out, "metadata", 0):
            write_shard(out, "metadata", 0, metadata_table(rows, jobs))

    with show_pauses(limiter_name(cfg.out)):
        return run_plan(cfg, plan, vox_stages(cfg) + list(extra_stages or []), before=write_metadata, t0=t0,
                        redo=functools.partial(shards_to_retry, mode=cfg.retry_failed))


def prepare_celebv(cfg: CelebVConfig) -> RunResult:
    """Run (or resume) the CelebV ingest (MTCNN crops, one identity per item) -> coefficients into ``cfg.out``."""
    from pipelines.celebv import STAGE, CelebVSettings, celebv_stage, identity_items
    from pipelines.celebv_listing import list_identities

    t0 = time.time()
    jobs = list_identities(cfg.celebv)
    shards = identity_items(jobs, cfg.identities_per_shard)
    plan = Plan(cfg.dataset, shards, {"celebv": str(Path(cfg.celebv).resolve()),
                                      "shards": [[item.key for item in s] for s in shards]})
    log(f"prepare celebv: {len(jobs)} identities, {len(shards)} shards")
    settings = CelebVSettings(image_format=cfg.image_format)
    stages = [Stage(STAGE, celebv_stage, CELEBV_FRAMES, num_cpus=cfg.crop_cpus, collect=("crop",),
                    kwargs={"settings": settings}, settings=settings.outputs())]
    return run_plan(cfg, plan, with_coefficients(cfg, stages), t0=t0)


# ---------------------------------------------------------------- command line

#: dataset -> (config, prepare function, one-line help)
DATASETS: dict[str, tuple[type[RunConfig], Callable[[Any], RunResult], str]] = {
    "vox": (VoxConfig, prepare_vox, "VoxCeleb: vox-metadata.csv + video URLs -> ledger, frames (, coeffs) shards"),
    "synth": (SynthConfig, prepare_vox, "the synthetic world's VoxCeleb-style videos (--world), oracle coefficients"),
    "celebv": (CelebVConfig, prepare_celebv, "CelebV identity folders (or a zip) -> MTCNN crops (, coeffs) shards"),
    "guidance": (GuidanceConfig, prepare_guidance, "a pair manifest + prepared coefficients -> guidance shards "
                                                   "(F_c, O_c, I_r, face mask per pair)"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dataset", metavar="<dataset>", required=True)
    for name, (cls, _, helptext) in DATASETS.items():
        add_dataclass_arguments(sub.add_parser(name, help=helptext, description=helptext), cls)


def run(args: argparse.Namespace) -> int:
    cls, prepare, _ = DATASETS[args.dataset]
    try:
        cfg = from_namespace(cls, args)
    except ValueError as err:                       # a bad option: the user's to fix
        raise UserError(str(err)) from None
    prepare(cfg)
    return 0
