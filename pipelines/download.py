"""The download stage: one source video per item through yt-dlp's Python API (never a shell), one ledger row each.

* The URL comes from a template (default ``https://www.youtube.com/watch?v={video_id}``); mirrors and
  ``file://`` templates work (file URLs are enabled only for a ``file:`` template).
* Format: the smallest video format at least as tall as the metadata's reference height (mp4 first), else the
  best video there is; a download below the needed height is kept and the ledger's ``error`` says so
  (``note: ...``, status stays ok). Audio is never needed.
* Each attempt downloads into ``<root>/.partial/<video_id>/``, is probed and its tail decoded
  (:func:`pipelines.media.check_decodable`), then renamed to ``<root>/<video_id>.<ext>``.
* Failures are diagnosed from yt-dlp's message, its warnings and the HTTP status codes along the exception chain
  (:func:`diagnose`): *permanent* (private, removed, copyright, terminated account, not a video: ``private`` /
  ``unavailable``) or *transient* (network, DNS, timeout, HTTP 5xx, 429, bot check, expired cookies, a download
  that does not decode: ``download_error`` / ``timeout`` / ``decode_error``); the class is the ledger's
  ``failure`` column. Transient failures are retried with exponential backoff (``backoff * 2**k`` seconds,
  capped), permanent ones are final. yt-dlp's own retries are off, so ``attempts`` counts real attempts. A rerun
  with ``--retry-failed`` downloads the transient failures of finished shards again (:func:`shards_to_retry`).
* Politeness: one :class:`Limiter` per run shared by every download task (a named Ray actor when Ray is
  initialised, else one per process): every HTTP request yt-dlp makes waits for it, at most
  ``requests_per_second`` for all tasks together; a 429 or a bot check pauses *every* task for ``throttle_pause``
  seconds, doubling while the site keeps refusing (capped at ``max_throttle_pause``), reset by a success;
  :func:`show_pauses` logs the pauses in the driver. Also ``rate_limit`` (bytes/s per download) and
  ``sleep_interval`` before each video; the engine caps how many downloads run at once.
* Cookies file and proxy are passed through; each attempt reads a fresh copy of the cookies file
  (:func:`private_cookies`), so it can be replaced mid-run.
* Rerun: a video whose ledger part says ok and whose file exists is not downloaded again, nor a permanent
  failure (unless ``--retry-failed=all``); a transient failure of an unfinished shard is.

Ledger rows follow :data:`reenact.data.schema.LEDGER`; ``path`` is relative to the download root.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import shutil
import string
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.media import MediaError, check_decodable, ffmpeg_exe
from pipelines.metadata import VideoJob
from reenact.data.schema import LEDGER, Failure, Status, clean_error, is_safe_id
from reenact.data.shards import done_shards, part_done, part_paths, shard_paths, write_part

STAGE = "ledger"
DEFAULT_URL_TEMPLATE = "https://www.youtube.com/watch?v={video_id}"
RETRY_MODES = ("none", "transient", "all")    # which recorded failures a rerun fetches again
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
    requests_per_second: float = 0.0  # cap on all HTTP requests of the run's download tasks together (0: none)
    throttle_pause: float = 30.0    # seconds every download pauses after a 429 / bot check, doubling while it lasts
    max_throttle_pause: float = 1800.0
    limiter: str = "reenact-download"  # name of the run's shared rate limiter (one per run: see limiter_name)
    retry_failed: str = "none"      # none, transient, all: "all" also fetches permanent failures of parts again

    def __post_init__(self):
        if self.retry_failed not in RETRY_MODES:
            raise ValueError(f"retry_failed must be one of {RETRY_MODES}, got {self.retry_failed!r}")


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


@dataclass(frozen=True)
class Diagnosis:
    """What a failed attempt means: the ledger ``status``, its ``failure`` class, and whether the site asked us to
    slow down (HTTP 429, bot check), which pauses every download of the run."""

    status: str
    failure: str
    throttled: bool = False


_T, _P = Failure.TRANSIENT.value, Failure.PERMANENT.value
#: (pattern, status, failure, throttled), first match wins. Anything unmatched is a transient ``download_error``:
#: a wrong "transient" costs one more attempt on a rerun, a wrong "permanent" loses a video.
_RULES: list[tuple[re.Pattern, str, str, bool]] = [
    (re.compile(r"not a bot|http error 429|too many requests|unusual traffic", re.I),
     Status.DOWNLOAD_ERROR.value, _T, True),
    (re.compile(r"cookies are no longer valid|cookies? (have|has) expired", re.I), Status.DOWNLOAD_ERROR.value, _T,
     False),
    (re.compile(r"http error 5\d\d|service unavailable|bad gateway|internal server error", re.I),
     Status.DOWNLOAD_ERROR.value, _T, False),
    (re.compile(r"private video|video is private|members[- ]only|join this channel|"
                r"confirm your age|age[- ]restricted|inappropriate for some users", re.I), Status.PRIVATE.value, _P,
     False),
    (re.compile(r"video unavailable|is not available|no longer available|has been removed|been terminated|"
                r"does not exist|http error 404|http error 410|404: not found|\bnot found\b|copyright|"
                r"no such file|unsupported url|is not a valid url|blocked it in your country", re.I),
     Status.UNAVAILABLE.value, _P, False),
    (re.compile(r"timed out|timeout", re.I), Status.TIMEOUT.value, _T, False),
]


def diagnose(message: str) -> Diagnosis:
    """A yt-dlp error message (plus its warnings) -> :class:`Diagnosis` (first matching rule)."""
    for pattern, status, failure, throttled in _RULES:
        if pattern.search(message):
            return Diagnosis(status, failure, throttled)
    return Diagnosis(Status.DOWNLOAD_ERROR.value, _T)


def classify_error(message: str) -> str:
    """A yt-dlp error message -> ledger status."""
    return diagnose(message).status


def failure_class(status: str) -> str:
    """The :class:`reenact.data.schema.Failure` of a ledger status ("" for ok): derived from the status alone, so
    ledgers written before the ``failure`` column are read the same way."""
    if status == Status.OK.value:
        return Failure.NONE.value
    return _T if status in RETRYABLE else _P


def backoff_seconds(attempt: int, settings: DownloadSettings) -> float:
    """Wait before attempt ``attempt`` (0-based; none before the first)."""
    return 0.0 if attempt == 0 else min(settings.max_backoff, settings.backoff * 2 ** (attempt - 1))


# ---------------------------------------------------------------- the shared rate limiter

@dataclass(frozen=True)
class LimiterState:
    """What the limiter is doing: ``paused`` seconds left of the current pause (0 when none), ``level`` pauses in a
    row (the next one lasts ``throttle_pause * 2**level``), ``reason`` of the last one, ``requests`` granted."""

    paused: float
    level: int
    reason: str
    requests: int


class RateLimit:
    """The limiter's rule, with the clock passed in (pure, so it is tested without waiting).

    Requests start at least ``1 / rate`` seconds apart (no burst); :meth:`throttled` starts a pause of
    ``pause * 2**level`` seconds (capped) during which nothing starts, and raises the level; a throttle reported
    while a pause runs belongs to the same episode and changes nothing; a success after a pause resets the level.
    """

    def __init__(self, rate: float, pause: float, max_pause: float):
        if rate < 0 or pause < 0 or max_pause < pause:
            raise ValueError(f"need rate >= 0 and 0 <= pause <= max_pause, got {rate}, {pause}, {max_pause}")
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.pause, self.max_pause = pause, max_pause
        self.next_start = self.paused_until = float("-inf")
        self.level, self.reason, self.requests = 0, "", 0

    def reserve(self, now: float) -> float:
        """0.0 when a request may start at ``now`` (its slot is taken), else the seconds to wait before asking again."""
        start = max(self.next_start, self.paused_until)
        if start > now:
            return start - now
        self.next_start, self.requests = now + self.interval, self.requests + 1
        return 0.0

    def throttled(self, now: float, reason: str) -> float:
        """The site asked us to slow down: pause everyone (unless a pause runs); return the seconds left of it."""
        if now >= self.paused_until:
            self.paused_until = now + min(self.max_pause, self.pause * 2 ** self.level)
            self.level, self.reason = self.level + 1, reason
        return self.paused_until - now

    def succeeded(self, now: float) -> None:
        if now >= self.paused_until:
            self.level = 0

    def state(self, now: float) -> LimiterState:
        return LimiterState(max(0.0, self.paused_until - now), self.level, self.reason, self.requests)


class Limiter:
    """A :class:`RateLimit` that blocks: ``acquire()`` before every HTTP request; subclasses say where it lives."""

    def __init__(self, sleep: Callable[[float], None] = time.sleep):
        self.sleep = sleep

    def acquire(self) -> None:
        while (wait := self._call("reserve")) > 0:
            self.sleep(wait)

    def throttled(self, reason: str) -> float:
        return self._call("throttled", reason)

    def succeeded(self) -> None:
        self._call("succeeded")

    def state(self) -> LimiterState:
        return self._call("state")

    def _call(self, method: str, *args: Any) -> Any:
        raise NotImplementedError


class LocalLimiter(Limiter):
    """In this process (threads share it): the fallback when Ray is not initialised."""

    def __init__(self, rule: RateLimit, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        super().__init__(sleep)
        self.rule, self.clock, self.lock = rule, clock, threading.Lock()

    def _call(self, method: str, *args: Any) -> Any:
        with self.lock:
            return getattr(self.rule, method)(self.clock(), *args)


class _LimiterActor:
    """The Ray actor holding the run's :class:`RateLimit` (its own clock: callers get durations, not times)."""

    def __init__(self, rate: float, pause: float, max_pause: float):
        self.rule = RateLimit(rate, pause, max_pause)

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self.rule, method)(time.monotonic(), *args)


class RayLimiter(Limiter):
    """One named, detached actor per run, shared by every download task on the cluster (created by the first)."""

    NAMESPACE = "reenact"

    def __init__(self, name: str, rule_args: tuple[float, float, float] | None, actor: Any = None):
        super().__init__()
        self.name, self.rule_args = name, rule_args
        self.actor = actor if actor is not None else self._actor()

    def _actor(self):
        import ray

        return ray.remote(num_cpus=0, max_restarts=-1)(_LimiterActor).options(
            name=self.name, namespace=self.NAMESPACE, lifetime="detached", get_if_exists=True).remote(*self.rule_args)

    def _call(self, method: str, *args: Any) -> Any:
        import ray

        try:
            return ray.get(self.actor.call.remote(method, *args))
        except ray.exceptions.RayActorError:        # killed (e.g. by close_limiter): a fresh one, state lost
            if self.rule_args is None:               # only watching (find_limiter): never create one
                raise
            self.actor = self._actor()
            return ray.get(self.actor.call.remote(method, *args))


def _ray_up() -> bool:
    """Ray initialised in this process (never imports Ray: a process without it has no cluster to share)."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


_LIMITERS: dict[str, Limiter] = {}
_LIMITERS_LOCK = threading.Lock()


def limiter_name(out: str | os.PathLike) -> str:
    """The limiter name of the run writing into ``out`` (one per output folder)."""
    digest = hashlib.sha256(str(Path(out).resolve()).encode()).hexdigest()[:16]
    return f"reenact-download-{digest}"


def get_limiter(settings: DownloadSettings) -> Limiter:
    """The run's shared limiter: the Ray actor ``settings.limiter`` when Ray is initialised, else one per process."""
    kind = "ray" if _ray_up() else "local"
    with _LIMITERS_LOCK:
        key = f"{kind}:{settings.limiter}"
        if key not in _LIMITERS:
            args = (settings.requests_per_second, settings.throttle_pause, settings.max_throttle_pause)
            _LIMITERS[key] = RayLimiter(settings.limiter, args) if kind == "ray" else LocalLimiter(RateLimit(*args))
        return _LIMITERS[key]


def find_limiter(name: str) -> Limiter | None:
    """The limiter ``name`` if this process or the Ray cluster has one (never creates one)."""
    with _LIMITERS_LOCK:
        for key in (f"ray:{name}", f"local:{name}"):
            if key in _LIMITERS and (key.startswith("local") or _ray_up()):
                return _LIMITERS[key]
    if _ray_up():
        import ray

        try:
            return RayLimiter(name, None, actor=ray.get_actor(name, namespace=RayLimiter.NAMESPACE))
        except ValueError:
            return None
    return None


def close_limiter(name: str) -> None:
    """Forget the limiter ``name`` in this process and kill its Ray actor if there is one."""
    with _LIMITERS_LOCK:
        for key in (f"ray:{name}", f"local:{name}"):
            _LIMITERS.pop(key, None)
    if _ray_up():
        import ray

        try:
            ray.kill(ray.get_actor(name, namespace=RayLimiter.NAMESPACE))
        except ValueError:
            return
        _wait_until_name_is_free(name, RayLimiter.NAMESPACE)


def _wait_until_name_is_free(name: str, namespace: str, timeout: float = 10.0) -> None:
    """``ray.kill`` returns before the cluster forgets a named actor: wait (bounded) until ``get_actor`` no longer
    finds it, so that a limiter closed here is gone for every later caller."""
    import ray

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ray.get_actor(name, namespace=namespace)
        except ValueError:
            return
        time.sleep(0.05)


@contextlib.contextmanager
def show_pauses(name: str, every: float = 1.0, log: Callable[[str], None] | None = None):
    """While the body runs, log a line whenever the limiter ``name`` starts or ends a pause (the driver's view of
    the cluster-wide throttle; download tasks run elsewhere and cannot print to it)."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    stop = threading.Event()

    def watch() -> None:
        limiter, paused = None, False
        while not stop.wait(every):
            try:
                limiter = limiter or find_limiter(name)
                state = limiter.state() if limiter else None
            except Exception:                      # Ray going down under us: nothing to show
                limiter, state = None, None
            if state is not None and (state.paused > 0) != paused:
                paused = state.paused > 0
                log(f"downloads paused {state.paused:.1f} s (pause {state.level} in a row): {state.reason}" if paused
                    else f"downloads resumed ({state.requests} requests so far)")

    thread = threading.Thread(target=watch, daemon=True, name=f"show-pauses-{name}")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


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


def _youtube_dl(limiter: Limiter | None):
    """``yt_dlp.YoutubeDL`` whose every HTTP request (extraction and download) first waits for the limiter."""
    import yt_dlp

    class LimitedYoutubeDL(yt_dlp.YoutubeDL):
        def urlopen(self, req):
            if limiter is not None:
                limiter.acquire()
            return super().urlopen(req)

    return LimitedYoutubeDL


def _http_statuses(exc: BaseException) -> list[int]:
    """HTTP status codes along an exception's chain (yt-dlp wraps the HTTPError in DownloadError/ExtractorError)."""
    seen, codes, todo = set(), [], [exc]
    while todo:
        e = todo.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(getattr(e, "status", None), int):
            codes.append(e.status)
        info = getattr(e, "exc_info", None)
        todo += [info[1] if isinstance(info, tuple) and len(info) > 1 else None, getattr(e, "cause", None),
                 e.__cause__, e.__context__]
    return codes


def private_cookies(settings: DownloadSettings, copy: Path) -> DownloadSettings:
    """``settings`` with the cookies file copied to ``copy`` for one attempt: yt-dlp writes its cookie jar back on
    close, so parallel attempts sharing the user's file would race, and one still running when the user refreshes
    the file would overwrite the fresh cookies. With a copy per attempt the user's file is only ever read, and a new
    one takes effect at the next attempt."""
    if not settings.cookies:
        return settings
    shutil.copyfile(settings.cookies, copy)
    return dataclasses.replace(settings, cookies=str(copy))


def _attempt(video_id: str, url: str, min_height: int, settings: DownloadSettings, root: Path,
             limiter: Limiter | None) -> tuple[Diagnosis, str, dict[str, Any]]:
    """One download attempt: (diagnosis, error, ledger fields)."""
    partial = root / ".partial" / video_id
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    log = _Log()
    try:
        settings = private_cookies(settings, root / ".partial" / f"{video_id}.cookies.txt")
    except OSError as e:                            # being replaced right now (refresh): try again later
        return Diagnosis(Status.DOWNLOAD_ERROR.value, _T), f"cookies file {settings.cookies} unreadable: {e}", {}
    opts = ydl_options(settings, str(partial / f"{video_id}.%(ext)s"), min_height, log)
    try:
        with _youtube_dl(limiter)(opts) as ydl:
            info = ydl.extract_info(url, download=True)
    except Exception as e:                          # any yt-dlp failure is this video's row, never a crash
        message = _clean(str(e)) or "; ".join(log.lines) or type(e).__name__
        evidence = "; ".join([message, *log.lines, *(f"HTTP Error {c}" for c in _http_statuses(e))])
        return diagnose(evidence), message, {}
    files = [p for p in partial.iterdir() if p.is_file() and not p.name.endswith((".part", ".ytdl"))]
    if len(files) != 1:
        return (Diagnosis(Status.DOWNLOAD_ERROR.value, _T),
                f"expected one downloaded file, found {sorted(p.name for p in files)}", {})
    status, error, fields = _finish(video_id, files[0], min_height, settings, root, info or {})
    return Diagnosis(status, failure_class(status)), error, fields


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
                   sleep: Callable[[float], None] = time.sleep, limiter: Limiter | None = None) -> dict[str, Any]:
    """Download one video with retries; return its ledger row (a dict with :data:`LEDGER`'s fields).

    Every HTTP request waits for ``limiter`` (default: the run's shared one, :func:`get_limiter`); a throttled
    attempt (429, bot check) pauses it for everyone before this video's own backoff.
    """
    url = video_url(settings.url_template, video_id)
    root = Path(root)
    limiter = limiter if limiter is not None else get_limiter(settings)
    t0 = time.perf_counter()
    if settings.sleep_interval > 0:
        sleep(settings.sleep_interval)
    diagnosis, error, fields, attempts = Diagnosis(Status.DOWNLOAD_ERROR.value, _T), "", {}, 0
    for attempt in range(settings.retries + 1):
        sleep(backoff_seconds(attempt, settings))
        attempts += 1
        diagnosis, error, fields = _attempt(video_id, url, min_height, settings, root, limiter)
        if diagnosis.throttled:
            limiter.throttled(error)
        elif diagnosis.status == Status.OK.value:
            limiter.succeeded()
        if diagnosis.status == Status.OK.value or diagnosis.failure != _T:
            break
    shutil.rmtree(root / ".partial" / video_id, ignore_errors=True)
    (root / ".partial" / f"{video_id}.cookies.txt").unlink(missing_ok=True)
    return _ledger_row(video_id, url, **fields, attempts=attempts, status=diagnosis.status, error=error,
                       failure=diagnosis.failure, seconds=time.perf_counter() - t0)


def ledger_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=LEDGER)


# ---------------------------------------------------------------- retrying failures on a rerun

def retry_keys(ledger: pa.Table, mode: str) -> list[str]:
    """Video ids of the ledger rows a rerun downloads again: none, the transient failures, or every failure.

    The class comes from the ``status`` (:func:`failure_class`), so ledgers written before the ``failure`` column
    answer the same.
    """
    if mode not in RETRY_MODES:
        raise ValueError(f"retry mode must be one of {RETRY_MODES}, got {mode!r}")
    wanted = {"none": set(), "transient": {_T}, "all": {_T, _P}}[mode]
    rows = zip(ledger.column("video_id").to_pylist(), ledger.column("status").to_pylist())
    return [video_id for video_id, status in rows if failure_class(status) in wanted]


def shards_to_retry(out: str | os.PathLike, mode: str) -> dict[int, list[str]]:
    """Done ledger shards under ``out`` with videos to download again (:func:`retry_keys`), by shard number."""
    if mode == "none":
        return {}
    found = {}
    for shard in done_shards(out, STAGE):
        keys = retry_keys(pq.read_table(shard_paths(out, STAGE, shard)[0], columns=["video_id", "status"]), mode)
        if keys:
            found[shard] = keys
    return found


# ---------------------------------------------------------------- the stage

def reusable_row(out: str | os.PathLike, root: str | os.PathLike, video_id: str,
                 retry: str = "none") -> dict[str, Any] | None:
    """The ledger part of an earlier run, unless it must be fetched again: ok but its file is gone, a transient
    failure (a resume retries those, as a rerun with ``--retry-failed`` does for finished shards), or a permanent
    one when ``retry`` is ``all``."""
    if not part_done(out, STAGE, video_id):
        return None
    (row,) = pq.read_table(part_paths(out, STAGE, video_id)[0]).to_pylist()
    if row["status"] == Status.OK.value:
        return row if row["path"] and (Path(root) / row["path"]).is_file() else None
    return None if retry_keys(pa.Table.from_pylist([row]), "all" if retry == "all" else "transient") else row


def download_stage(batch: dict[str, np.ndarray], *, out: str, root: str | None,
                   settings: DownloadSettings) -> dict[str, np.ndarray]:
    """Engine stage: for each video row (``job`` JSON) fetch the video into ``root`` (default ``<out>/videos``),
    write its ledger part (reused on a rerun as :func:`reusable_row` says).

    Adds ``download_status``, ``download_error`` and ``download_path`` (absolute, "" when failed).
    """
    root = root or str(Path(out) / "videos")
    status, error, path = [], [], []
    for job_json in batch["job"]:
        job = VideoJob.from_json(job_json)
        row = reusable_row(out, root, job.video_id, settings.retry_failed)
        if row is None:
            row = download_video(job.video_id, job.ref_height, root, settings)
            write_part(out, STAGE, job.video_id, ledger_table([row]),
                       extra_stats={"videos": 1, "seconds": row["seconds"], "bytes": row["bytes"] or 0})
        status.append(row["status"])
        error.append(row["error"])
        path.append(str(Path(root) / row["path"]) if row["status"] == Status.OK.value else "")
    return batch | {"download_status": np.array(status, dtype=object), "download_error": np.array(error, dtype=object),
                    "download_path": np.array(path, dtype=object)}
