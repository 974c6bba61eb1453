"""``reenact prepare vox``: the preprocessing stages on Ray Data, resumable at any point.

Work unit: one source video per Ray task, with all its clips. Videos are grouped in metadata order into shards of
``videos_per_shard``: shard ``s`` holds videos ``[s * N, (s + 1) * N)``.

A **stage** is a function from a batch dict to a batch dict (Ray runs it as tasks) or a small class with
``__init__``/``__call__`` when it holds state such as weights (Ray runs it as actors). Each row of a batch is one
video: ``video_id``, ``shard``, ``job`` (a :class:`pipelines.metadata.VideoJob` as JSON), plus the columns earlier
stages added. A stage writes the video's rows as its *part* (``reenact.data.shards.write_part`` / ``ParquetStream``
under ``parts/<stage>/<video_id>``) and may add columns for later stages. The runner owns the resources
(:class:`Stage` ``num_cpus`` / ``num_gpus`` / ``concurrency``) and, as soon as every video of a shard has passed
the last stage, merges each stage's parts into ``<stage>-<shard:05d>.parquet`` plus its stats (the done-marker)
and removes the parts.

Appending a stage (coefficients, guidance): add a :class:`Stage` to the list :func:`vox_stages` returns, or pass
``extra_stages`` to :func:`prepare_vox`. :class:`FramewiseStage` adapts a frame-row callable (a batch of FRAMES
rows in, a batch of rows of its own schema out, e.g. a coefficient extractor) into a per-video stage.

Output folder::

    config.json                 config + provenance + the shard plan (a rerun must match it)
    metadata-00000.parquet      every CSV row with its status (reenact.data.schema.METADATA)
    ledger-<shard>.parquet      one row per video (reenact.data.schema.LEDGER)
    frames-<shard>.parquet      256^2 crops plus a status row per failed clip (reenact.data.schema.FRAMES)
    *.stats.json                done-markers with row counts, status histograms, seconds
    videos/                     downloads (unless --download-dir), clips/ (--write-mp4), parts/ (in flight)

Resume: run the same command again. Shards whose stats exist for every stage are skipped; inside unfinished
shards, videos whose parts are done are skipped, and a download whose ledger says ok is not fetched again.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.crop import CropSettings, crop_video
from pipelines.download import DEFAULT_URL_TEMPLATE, DownloadSettings, check_url_template, download_stage
from pipelines.metadata import VideoJob, metadata_table, read_metadata, video_jobs
from reenact.config import add_dataclass_arguments, from_namespace, save_run_config
from reenact.data.schema import CELEBV_FRAMES, COEFFS, FRAMES, LEDGER, Status
from reenact.data.shards import (ParquetStream, check_plan, finish_part, is_done, merge_parts, part_is_current, part_paths,
                            read_stats, remove_parts, write_shard)


# ---------------------------------------------------------------- configuration

@dataclass
class PrepareConfig:
    """Options of ``reenact prepare vox``."""

    out: str | None = field(default=None, metadata={"help": "output folder (rerun to resume)", "required": True})
    dataset: Literal["vox", "synth", "celebv"] = field(default="vox", metadata={"cli": False})
    celebv: str | None = field(default=None, metadata={
        "help": "CelebV folder or zip (celebv; default <world>/CelebV)"})
    metadata: str | None = field(default=None, metadata={"help": "vox-metadata.csv (vox; synth takes it from --world)"})
    world: str | None = field(default=None, metadata={
        "help": "synthetic world folder (synth): metadata, file:// video URLs and ground truth come from it"})
    extractor: Literal["auto", "none", "oracle", "landmarks", "deep3d"] = field(default="auto", metadata={
        "help": "3DMM coefficient extractor: oracle (synthetic ground truth), landmarks (dlib 68 + model fit, "
                "offline), deep3d (needs epoch_20.pth), none; auto = oracle for synth, landmarks otherwise"})
    morphable_model: str = field(default="procedural-full", metadata={
        "help": "morphable model of the landmarks extractor: procedural-full, bfm or a BFM_model_front.mat"})
    extractor_cpus: float = field(default=1.0, metadata={"help": "Ray CPUs per extractor actor"})
    extractor_gpus: float = field(default=0.0, metadata={"help": "Ray GPUs per extractor actor (deep3d)"})
    extractor_actors: int = field(default=1, metadata={"help": "extractor actors running at once"})
    url_template: str = field(default=DEFAULT_URL_TEMPLATE,
                              metadata={"help": "video URL with {video_id}; mirrors and file:// work"})
    download_dir: str | None = field(default=None, metadata={"help": "where videos go (default <out>/videos)"})
    address: str | None = field(default=None, metadata={"help": "Ray cluster address (default: a local Ray)"})
    num_cpus: int | None = field(default=None, metadata={"help": "CPUs of the local Ray (default: all)"})
    videos_per_shard: int = field(default=16, metadata={"help": "source videos per output shard"})
    limit: int | None = field(default=None, metadata={"help": "only the first N videos of the metadata"})
    download_concurrency: int = field(default=4, metadata={"help": "downloads running at once"})
    download_cpus: float = field(default=0.5, metadata={"help": "Ray CPUs reserved per download task"})
    crop_cpus: float = field(default=1.0, metadata={"help": "Ray CPUs reserved per crop task"})
    retries: int = field(default=3, metadata={"help": "download retries after the first attempt"})
    backoff: float = field(default=2.0, metadata={"help": "seconds before the first retry, doubling after"})
    socket_timeout: float = field(default=30.0, metadata={"help": "download socket timeout, seconds"})
    rate_limit: str | None = field(default=None, metadata={"help": "bytes/s per download, e.g. 2M"})
    sleep_interval: float = field(default=0.0, metadata={"help": "seconds to wait before each download"})
    cookies: str | None = field(default=None, metadata={"help": "cookies.txt for yt-dlp"})
    proxy: str | None = field(default=None, metadata={"help": "proxy URL for yt-dlp"})
    image_format: Literal["png", "jpeg"] = field(default="png", metadata={"help": "frame encoding"})
    write_mp4: bool = field(default=False, metadata={"help": "also write <out>/clips/<partition>/<chunk>.mp4"})
    keep_parts: bool = field(default=False, metadata={"help": "keep per-video parts after merging"})
    progress: bool = field(default=True, metadata={"help": "Ray Data progress bars"})
    dry_run: bool = field(default=False, metadata={"help": "print the config and plan, run nothing"})

    def __post_init__(self):
        if self.world is not None:
            world = Path(self.world).resolve()
            self.metadata = self.metadata or str(world / "vox" / "vox-metadata.csv")
            self.celebv = self.celebv or str(world / "CelebV")
            if self.url_template == DEFAULT_URL_TEMPLATE:
                self.url_template = (world / "vox" / "videos").as_uri() + "/{video_id}.mp4"
        if self.dataset == "synth" and self.world is None:
            raise ValueError("prepare synth needs --world DIR (a folder written by `reenact synth`)")
        if self.dataset == "celebv" and self.celebv is None:
            raise ValueError("prepare celebv needs --celebv DIR (or --world of a synthetic world)")
        if self.dataset != "celebv" and self.metadata is None:
            raise ValueError("--metadata is required (or --world for a synthetic world)")
        if self.extractor == "auto":
            self.extractor = "oracle" if self.world is not None else "landmarks"
        if self.extractor == "oracle" and self.world is None:
            raise ValueError("--extractor oracle needs --world (the synthetic world's ground truth)")
        if self.videos_per_shard < 1:
            raise ValueError(f"videos_per_shard must be >= 1, got {self.videos_per_shard}")
        check_url_template(self.url_template)

    def download_settings(self) -> DownloadSettings:
        return DownloadSettings(url_template=self.url_template, retries=self.retries, backoff=self.backoff,
                                socket_timeout=self.socket_timeout, rate_limit=self.rate_limit,
                                sleep_interval=self.sleep_interval, cookies=self.cookies, proxy=self.proxy)

    def crop_settings(self) -> CropSettings:
        return CropSettings(image_format=self.image_format, write_mp4=self.write_mp4)

    def download_root(self) -> Path:
        return Path(self.download_dir) if self.download_dir else Path(self.out) / "videos"


# ---------------------------------------------------------------- stages

@dataclass(frozen=True)
class Stage:
    """One per-video stage: writes ``parts/<name>/<video_id>`` for every video and shards ``<name>-*.parquet``."""

    name: str
    fn: Callable | type             # batch dict -> batch dict; a class is built once per Ray actor
    schema: pa.Schema
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    concurrency: int | None = None  # at most this many tasks (actors for a class) at once
    kwargs: dict[str, Any] = field(default_factory=dict)   # fn keywords, or constructor keywords for a class

    def apply(self, ds):
        """``ds.map_batches`` with this stage's function and resources, one video per batch."""
        import ray.data

        args: dict[str, Any] = {"batch_size": 1, "num_cpus": self.num_cpus, "batch_format": "numpy"}
        if self.num_gpus:
            args["num_gpus"] = self.num_gpus
        if isinstance(self.fn, type):
            return ds.map_batches(self.fn, fn_constructor_kwargs=self.kwargs,
                                  compute=ray.data.ActorPoolStrategy(size=self.concurrency or 1), **args)
        compute = ray.data.TaskPoolStrategy(size=self.concurrency) if self.concurrency else None
        return ds.map_batches(self.fn, fn_kwargs=self.kwargs, compute=compute, **args)


def file_token(path: str | Path) -> str:
    """Size and modification time of a file: changes when the file is rewritten."""
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"


def crop_stage(batch: dict[str, np.ndarray], *, out: str, settings: CropSettings) -> dict[str, np.ndarray]:
    """Ray Data stage: crop every clip of each video (or write status rows when its download failed).

    A part is reused only when it was made from the same download (status, error, file size and time).
    """
    frames = []
    for job_json, status, error, path in zip(batch["job"], batch["download_status"], batch["download_error"],
                                             batch["download_path"]):
        job = VideoJob.from_json(job_json)
        token = f"{status}|{error}|{file_token(path) if path else ''}"
        if not part_is_current(out, "frames", job.video_id, token):
            failure = None if status == Status.OK.value else (status, f"download: {error}")
            crop_video(job, path or None, out, settings, failure=failure, input_token=token)
        frames.append(json.loads(part_paths(out, "frames", job.video_id)[1].read_text()).get("frames", 0))
    return batch | {"frames": np.array(frames, dtype=np.int64)}


class FramewiseStage:
    """Adapter: run a frame-row callable over each video's ``source`` part and write its rows as stage ``name``.

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

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for video_id in batch["video_id"]:
            token = file_token(part_paths(self.out, self.source, video_id)[1])
            if part_is_current(self.out, self.name, video_id, token):
                continue
            t0 = time.perf_counter()
            stream = ParquetStream(part_paths(self.out, self.name, video_id)[0], self.schema)
            for rows in self._batches(part_paths(self.out, self.source, video_id)[0]):
                result = self.fn({k: v.to_numpy(zero_copy_only=False) for k, v in zip(rows.schema.names,
                                                                                       rows.columns)})
                stream.write(pa.Table.from_pydict(dict(result), schema=self.schema))
            stream.close()
            finish_part(self.out, self.name, video_id,
                        extra_stats={"seconds": time.perf_counter() - t0, "input": token})
        return batch


def build_extractor(name: str, kwargs: dict[str, Any]) -> Callable:
    """Construct a registered coefficient extractor (inside a Ray actor)."""
    from pipelines.extractors import get_class

    return get_class(name)(**kwargs)


def extractor_kwargs(cfg: PrepareConfig) -> dict[str, Any]:
    if cfg.extractor == "oracle":
        subset = "CelebV" if cfg.dataset == "celebv" else "vox"
        return {"truth": str(Path(cfg.world).resolve() / subset / "truth.parquet")}
    if cfg.extractor == "landmarks":
        return {"model": cfg.morphable_model}
    return {}


def coefficient_stage(cfg: PrepareConfig, out: str) -> Stage:
    """frames -> coeffs shards with the configured extractor; whole chunks per call (shared identity)."""
    make_fn = functools.partial(build_extractor, cfg.extractor, extractor_kwargs(cfg))
    return Stage("coeffs", FramewiseStage, COEFFS, num_cpus=cfg.extractor_cpus, num_gpus=cfg.extractor_gpus,
                 concurrency=cfg.extractor_actors,
                 kwargs={"out": out, "name": "coeffs", "schema": COEFFS, "make_fn": make_fn, "by_chunk": True})


def vox_stages(cfg: PrepareConfig) -> list[Stage]:
    """download -> ledger shards, crop -> frames shards (-> coeffs shards)."""
    out = str(Path(cfg.out).resolve())
    stages = [
        Stage("ledger", download_stage, LEDGER, num_cpus=cfg.download_cpus, concurrency=cfg.download_concurrency,
              kwargs={"out": out, "root": str(cfg.download_root().resolve()),
                      "settings": cfg.download_settings()}),
        Stage("frames", crop_stage, FRAMES, num_cpus=cfg.crop_cpus,
              kwargs={"out": out, "settings": cfg.crop_settings()}),
    ]
    if cfg.extractor != "none":
        stages.append(coefficient_stage(cfg, out))
    return stages


# ---------------------------------------------------------------- the plan

def shard_plan(jobs: list[VideoJob], videos_per_shard: int) -> list[list[VideoJob]]:
    """Videos in metadata order, ``videos_per_shard`` per shard (the last one may be smaller)."""
    return [jobs[i:i + videos_per_shard] for i in range(0, len(jobs), videos_per_shard)]


def shard_done(out: str | Path, stages: list[Stage], shard: int) -> bool:
    return all(is_done(out, stage.name, shard) for stage in stages)


def _sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def remove_stale_temps(out: Path) -> int:
    """Delete temporary files a killed run left (``.<name>.<pid>.tmp`` beside shards and parts); one run per folder."""
    folders = [out, *(out / "parts").glob("*"), *(out / "clips").glob("*")]
    stale = [p for d in folders for p in d.glob(".*.tmp*") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


@dataclass(frozen=True)
class PrepareResult:
    shards: int
    shards_skipped: int
    videos: int
    frames: int                     # ok frame rows in all frames shards
    status: dict[str, int]          # status histogram of all frames rows
    seconds: float


# ---------------------------------------------------------------- running

def init_ray(address: str | None, num_cpus: int | None) -> bool:
    """Connect to ``address`` or start a local Ray unless one is running; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"address": address} if address else {"num_cpus": num_cpus}
    ray.init(**kwargs, include_dashboard=False, configure_logging=False, log_to_driver=False)
    return True


def run_stages(items: list[dict[str, Any]], stages: list[Stage], on_video: Callable[[dict[str, Any]], None],
               progress: bool = True) -> None:
    """Stream ``items`` (one per video) through ``stages`` on Ray Data; call ``on_video`` as each one finishes."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    for stage in stages:
        ds = stage.apply(ds)
    for row in ds.iter_rows():
        on_video(row)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def prepare_vox(cfg: PrepareConfig, extra_stages: list[Stage] | None = None) -> PrepareResult:
    """Run (or resume) download -> crop (-> coefficients, ``extra_stages``) over ``cfg.metadata`` into ``cfg.out``."""
    t0 = time.time()
    rows = read_metadata(cfg.metadata)
    jobs = video_jobs(rows)[:cfg.limit] if cfg.limit is not None else video_jobs(rows)
    shards = [[(job.video_id, job.to_json()) for job in shard] for shard in shard_plan(jobs, cfg.videos_per_shard)]
    plan = {"metadata_sha256": _sha256(cfg.metadata), "videos": len(jobs), "videos_per_shard": cfg.videos_per_shard}
    _log(f"prepare {cfg.dataset}: {len(rows)} metadata rows, {len(jobs)} videos, "
         f"{sum(len(j.clips) for j in jobs)} clips, {len(shards)} shards")

    def write_metadata(out: Path) -> None:
        if not is_done(out, "metadata", 0):
            write_shard(out, "metadata", 0, metadata_table(rows, jobs))

    return execute(cfg, shards, vox_stages(cfg) + list(extra_stages or []), plan, t0, before=write_metadata)


def prepare_celebv(cfg: PrepareConfig) -> PrepareResult:
    """Run (or resume) the CelebV ingest (MTCNN crops, one identity per task) -> coefficients into ``cfg.out``."""
    from pipelines.celebv import CelebVSettings, celebv_stage, list_identities
    from pipelines.celebv import shard_plan as identity_shards

    t0 = time.time()
    jobs = list_identities(cfg.celebv)
    shards = [[(job.key, job.to_json()) for job in shard] for shard in identity_shards(jobs)]
    plan = {"celebv": str(Path(cfg.celebv).resolve()), "shards": [[key for key, _ in s] for s in shards]}
    _log(f"prepare celebv: {len(jobs)} identities, {len(shards)} shards")
    out = str(Path(cfg.out).resolve())
    stages = [Stage("frames", celebv_stage, CELEBV_FRAMES, num_cpus=cfg.crop_cpus,
                    kwargs={"out": out, "settings": CelebVSettings(image_format=cfg.image_format)})]
    if cfg.extractor != "none":
        stages.append(coefficient_stage(cfg, out))
    return execute(cfg, shards, stages, plan, t0)


def execute(cfg: PrepareConfig, shards: list[list[tuple[str, str]]], stages: list[Stage], plan: dict[str, Any],
            t0: float, before: Callable[[Path], None] | None = None) -> PrepareResult:
    """Run the pending shards of a plan through ``stages`` on Ray: items are ``(key, job json)`` per shard."""
    out = Path(cfg.out)
    pending = [s for s in range(len(shards)) if not shard_done(out, stages, s)]
    if cfg.dry_run:
        print(json.dumps({"config": dataclasses.asdict(cfg), "plan": plan, "shards": len(shards),
                          "pending_shards": len(pending), "stages": [s.name for s in stages]}, indent=2))
        return PrepareResult(len(shards), len(shards) - len(pending), sum(map(len, shards)), 0, {}, 0.0)
    check_plan(out, plan)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    save_run_config(cfg, out, plan=plan, stages=[s.name for s in stages], dataset=cfg.dataset)
    if before is not None:
        before(out)
    if pending:
        started = init_ray(cfg.address, cfg.num_cpus)
        try:
            _run_pending(out, shards, pending, stages, cfg, t0)
        finally:
            if started:
                import ray

                ray.shutdown()
    return _summary(out, shards, pending, cfg.dataset, time.time() - t0)


def _run_pending(out: Path, shards: list[list[tuple[str, str]]], pending: list[int], stages: list[Stage],
                 cfg: PrepareConfig, t0: float) -> None:
    items = [{"video_id": key, "shard": s, "job": job} for s in pending for key, job in shards[s]]
    remaining = {s: {key for key, _ in shards[s]} for s in pending}

    def on_video(row: dict[str, Any]) -> None:
        shard = int(row["shard"])
        remaining[shard].discard(row["video_id"])
        if not remaining[shard]:
            finalize_shard(out, stages, shard, [key for key, _ in shards[shard]], cfg.keep_parts, t0)

    run_stages(items, stages, on_video, cfg.progress)


def finalize_shard(out: Path, stages: list[Stage], shard: int, video_ids: list[str], keep_parts: bool,
                   started_at: float) -> None:
    """Merge the parts of one finished shard, stage by stage (stats last), then drop the parts."""
    for stage in stages:
        stats = merge_parts(out, stage.name, shard, video_ids, stage.schema, extra_stats={"run_started_at": started_at})
        if stage.name == "frames":
            _log(f"shard {shard:05d} done: {len(video_ids)} videos, {stats.get('frames', 0)} frames, "
                 f"status {stats['status']}")
    if not keep_parts:
        for stage in stages:
            remove_parts(out, stage.name, video_ids)


def _summary(out: Path, shards, pending, dataset: str, seconds: float) -> PrepareResult:
    stats = read_stats(out, "frames")
    status: dict[str, int] = {}
    for s in stats:
        for k, v in s["status"].items():
            status[k] = status.get(k, 0) + v
    frames = sum(s.get("frames", 0) for s in stats)
    _log(f"prepare {dataset}: {len(shards)} shards ({len(shards) - len(pending)} skipped), {frames} frames, "
         f"frames status {status}, {seconds:.1f} s")
    return PrepareResult(len(shards), len(shards) - len(pending), sum(map(len, shards)), frames, status, seconds)


# ---------------------------------------------------------------- command line

DATASETS: dict[str, Callable[[PrepareConfig], PrepareResult]] = {
    "vox": prepare_vox, "synth": prepare_vox, "celebv": prepare_celebv}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=sorted(DATASETS), help="which dataset layout to prepare")
    add_dataclass_arguments(parser, PrepareConfig)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = from_namespace(PrepareConfig, args)
    except ValueError as err:
        raise SystemExit(f"prepare: {err}") from None
    DATASETS[args.dataset](cfg)
    return 0
