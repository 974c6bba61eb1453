"""The download stage: one source video per item through yt-dlp's Python API (never a shell), one ledger row each.

* The URL comes from a template (default ``https://www.youtube.com/watch?v={video_id}``); mirrors and
  ``file://`` templates work (file URLs are enabled only for a ``file:`` template).
* Format: the smallest video format at least as tall as the metadata's reference height (mp4 first), else the
  best video there is; a download below the needed height is kept and the ledger's ``error`` says so
  (``note: ...``, status stays ok). Audio is never needed.
* Each attempt downloads into ``<root>/.partial/<video_id>/``, is probed and its tail decoded
  (:func:`pipelines.media.check_decodable`), then renamed to ``<root>/<video_id>.<ext>``.
* Retryable failures (``timeout``, ``download_error``, ``decode_error``) are retried with exponential backoff
  (``backoff * 2**k`` seconds, capped); ``unavailable`` and ``private`` are final. yt-dlp's own retries are
  off, so the ledger's ``attempts`` counts real attempts.
* Politeness: ``rate_limit`` (bytes/s per download, e.g. ``2M``) and ``sleep_interval`` seconds before each video;
  the runner caps how many downloads run at once. Cookies file and proxy are passed through.
* Rerun: a video whose ledger part says ok and whose file exists is not downloaded again.

Ledger rows follow :data:`reenact.data.schema.LEDGER`; ``path`` is relative to the download root.
"""
from __future__ import annotations

import os
import re
import shutil
import string
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.media import MediaError, check_decodable, ffmpeg_exe
from pipelines.metadata import VideoJob
from reenact.data.schema import LEDGER, Status, clean_error, is_safe_id
from reenact.data.shards import part_done, part_paths, write_part

STAGE = "ledger"
DEFAULT_URL_TEMPLATE = "https://www.youtube.com/watch?v={video_id}"
RETRYABLE = frozenset({Status.TIMEOUT.value, Status.DOWNLOAD_ERROR.value, Status.DECODE_ERROR.value})


@dataclass(frozen=True)
class DownloadSettings:
    """How videos are fetched."""

    url_template: str = DEFAULT_URL_TEMPLATE
    retries: int = 3                # further attempts after the first, for retryable failures
    backoff: float = 2.0            # seconds before retry k (1-based): backoff * 2**(k-1)
    max_backoff: float = 120.0
    socket_timeout: float = 30.0
    rate_limit: str | None = None   # bytes/s per download, yt-dlp syntax ("500K", "2M")
    sleep_interval: float = 0.0     # seconds to wait before each video
    cookies: str | None = None      # Netscape cookies.txt
    proxy: str | None = None
    verify: bool = True             # probe and decode the tail of every download


# ---------------------------------------------------------------- pure helpers

def check_url_template(template: str) -> str:
    """``template`` if it has exactly the one field ``{video_id}``; ValueError naming what it has otherwise."""
    fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    if fields != {"video_id"}:
        raise ValueError(f"url template must contain the single field {{video_id}}, got {template!r} "
                         f"(fields: {sorted(fields)})")
    return template


def video_url(template: str, video_id: str) -> str:
    if not is_safe_id(video_id):
        raise ValueError(f"unsafe video id {video_id!r}")
    return check_url_template(template).format(video_id=video_id)


def format_selector(min_height: int) -> str:
    """yt-dlp format spec: the smallest video at least ``min_height`` tall (mp4 first), else the best video."""
    if min_height <= 0:
        raise ValueError(f"min_height must be positive, got {min_height}")
    return f"wv*[height>={min_height}][ext=mp4]/wv*[height>={min_height}]/bv*/b"


def ydl_options(settings: DownloadSettings, outtmpl: str, min_height: int, logger: Any = None) -> dict[str, Any]:
    """The ``yt_dlp.YoutubeDL`` options for one attempt (pure: tested directly)."""
    from yt_dlp.utils import parse_bytes

    opts: dict[str, Any] = {
        "format": format_selector(min_height),
        "outtmpl": {"default": outtmpl},
        "noplaylist": True,
        "quiet": True,
        "no_warnings": True,
        "noprogress": True,
        "socket_timeout": settings.socket_timeout,
        "retries": 0,                   # the stage retries with backoff itself
        "fragment_retries": 0,
        "extractor_retries": 0,
        "file_access_retries": 0,
        "continuedl": False,
        "overwrites": True,
        "cachedir": False,
        "fixup": "warn",
        "ffmpeg_location": ffmpeg_exe(),
        "writesubtitles": False,
        "writeautomaticsub": False,
        "enable_file_urls": settings.url_template.startswith("file:"),
    }
    if settings.rate_limit:
        rate = parse_bytes(settings.rate_limit)
        if rate is None:
            raise ValueError(f"rate_limit must look like 500K or 2M (bytes/s), got {settings.rate_limit!r}")
        opts["ratelimit"] = rate
    if settings.cookies:
        opts["cookiefile"] = settings.cookies
    if settings.proxy:
        opts["proxy"] = settings.proxy
    if logger is not None:
        opts["logger"] = logger
    return opts


_CLASSES: list[tuple[str, re.Pattern]] = [
    (Status.DOWNLOAD_ERROR.value, re.compile(r"not a bot|http error 429|too many requests", re.I)),
    (Status.PRIVATE.value, re.compile(r"private video|video is private|members[- ]only|join this channel|"
                                      r"confirm your age|age[- ]restricted|inappropriate for some users", re.I)),
    (Status.UNAVAILABLE.value, re.compile(r"video unavailable|is not available|no longer available|"
                                          r"has been removed|been terminated|does not exist|http error 40[34]|"
                                          r"http error 410|404: not found|not found|copyright|"
                                          r"no such file|unsupported url|blocked it in your country", re.I)),
    (Status.TIMEOUT.value, re.compile(r"timed out|timeout", re.I)),
]


def classify_error(message: str) -> str:
    """A yt-dlp error message -> ledger status (first matching class; ``download_error`` otherwise)."""
    for status, pattern in _CLASSES:
        if pattern.search(message):
            return status
    return Status.DOWNLOAD_ERROR.value


def backoff_seconds(attempt: int, settings: DownloadSettings) -> float:
    """Wait before attempt ``attempt`` (0-based; none before the first)."""
    return 0.0 if attempt == 0 else min(settings.max_backoff, settings.backoff * 2 ** (attempt - 1))


# ---------------------------------------------------------------- one video

class _Log:
    """yt-dlp logger that keeps error and warning lines (yt-dlp prints nothing itself: quiet)."""

    def __init__(self):
        self.lines: list[str] = []

    def debug(self, msg: str) -> None:
        pass

    def info(self, msg: str) -> None:
        pass

    def warning(self, msg: str) -> None:
        self.lines.append(msg)

    def error(self, msg: str) -> None:
        self.lines.append(msg)


def _ledger_row(video_id: str, url: str, **fields: Any) -> dict[str, Any]:
    row = {name: None for name in LEDGER.names}
    return row | {"video_id": video_id, "url": url, "error": ""} | fields


def _attempt(video_id: str, url: str, min_height: int, settings: DownloadSettings,
             root: Path) -> tuple[str, str, dict[str, Any]]:
    """One download attempt: (status, error, ledger fields)."""
    import yt_dlp

    partial = root / ".partial" / video_id
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    log = _Log()
    try:
        with yt_dlp.YoutubeDL(ydl_options(settings, str(partial / f"{video_id}.%(ext)s"), min_height, log)) as ydl:
            info = ydl.extract_info(url, download=True)
    except Exception as e:                          # any yt-dlp failure is this video's row, never a crash
        message = _clean(str(e)) or "; ".join(log.lines) or type(e).__name__
        return classify_error(message), message, {}
    files = [p for p in partial.iterdir() if p.is_file() and not p.name.endswith((".part", ".ytdl"))]
    if len(files) != 1:
        return Status.DOWNLOAD_ERROR.value, f"expected one downloaded file, found {sorted(p.name for p in files)}", {}
    return _finish(video_id, files[0], min_height, settings, root, info or {})


def _finish(video_id: str, file: Path, min_height: int, settings: DownloadSettings, root: Path,
            info: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """Verify the downloaded file and move it into place."""
    try:
        media = check_decodable(file) if settings.verify else None
    except MediaError as e:
        return Status.DECODE_ERROR.value, str(e), {"bytes": file.stat().st_size}
    final = root / f"{video_id}{file.suffix}"
    size = file.stat().st_size
    os.replace(file, final)
    shutil.rmtree(file.parent, ignore_errors=True)
    height = media.height if media else info.get("height")
    note = ""
    if height is not None and height < min_height:
        note = f"note: best available height {height} is below the {min_height} the metadata needs"
    fields = {"path": final.name, "bytes": size, "width": media.width if media else info.get("width"),
              "height": height, "fps": media.fps if media else info.get("fps"),
              "num_frames": media.frames_estimate if media else None}
    return Status.OK.value, note, fields


def _clean(message: str) -> str:
    return clean_error(re.sub(r"\x1b\[[0-9;]*m", "", message).removeprefix("ERROR: ")).strip()


def download_video(video_id: str, min_height: int, root: str | os.PathLike,
                   settings: DownloadSettings = DownloadSettings(),
                   sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Download one video with retries; return its ledger row (a dict with :data:`LEDGER`'s fields)."""
    url = video_url(settings.url_template, video_id)
    root = Path(root)
    t0 = time.perf_counter()
    if settings.sleep_interval > 0:
        sleep(settings.sleep_interval)
    status, error, fields, attempts = Status.DOWNLOAD_ERROR.value, "", {}, 0
    for attempt in range(settings.retries + 1):
        sleep(backoff_seconds(attempt, settings))
        attempts += 1
        status, error, fields = _attempt(video_id, url, min_height, settings, root)
        if status == Status.OK.value or status not in RETRYABLE:
            break
    shutil.rmtree(root / ".partial" / video_id, ignore_errors=True)
    return _ledger_row(video_id, url, **fields, attempts=attempts, status=status, error=error,
                       seconds=time.perf_counter() - t0)


def ledger_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=LEDGER)


# ---------------------------------------------------------------- the stage

def reusable_row(out: str | os.PathLike, root: str | os.PathLike, video_id: str) -> dict[str, Any] | None:
    """The ledger row of an earlier run when it says ok and its file is still there, else None."""
    if not part_done(out, STAGE, video_id):
        return None
    (row,) = pq.read_table(part_paths(out, STAGE, video_id)[0]).to_pylist()
    if row["status"] == Status.OK.value and row["path"] and (Path(root) / row["path"]).is_file():
        return row
    return None


def download_stage(batch: dict[str, np.ndarray], *, out: str, root: str | None,
                   settings: DownloadSettings) -> dict[str, np.ndarray]:
    """Engine stage: for each video row (``job`` JSON) fetch the video into ``root`` (default ``<out>/videos``),
    write its ledger part.

    Adds ``download_status``, ``download_error`` and ``download_path`` (absolute, "" when failed).
    """
    root = root or str(Path(out) / "videos")
    status, error, path = [], [], []
    for job_json in batch["job"]:
        job = VideoJob.from_json(job_json)
        row = reusable_row(out, root, job.video_id)
        if row is None:
            row = download_video(job.video_id, job.ref_height, root, settings)
            write_part(out, STAGE, job.video_id, ledger_table([row]),
                       extra_stats={"videos": 1, "seconds": row["seconds"], "bytes": row["bytes"] or 0})
        status.append(row["status"])
        error.append(row["error"])
        path.append(str(Path(root) / row["path"]) if row["status"] == Status.OK.value else "")
    return batch | {"download_status": np.array(status, dtype=object), "download_error": np.array(error, dtype=object),
                    "download_path": np.array(path, dtype=object)}
