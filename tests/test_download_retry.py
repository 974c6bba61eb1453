"""Failure classes, the shared rate limiter and the retry selection of the download stage (pipelines/download.py),
against the local HTTP server failing on purpose (503 first, 429 for a while, a permanent 404).
"""
from __future__ import annotations

import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pytest

from pipelines.download import (
    DownloadSettings,
    LocalLimiter,
    RateLimit,
    diagnose,
    download_video,
    failure_class,
    ledger_table,
    retry_keys,
    show_pauses,
)
from pipelines.media import ffmpeg_exe
from reenact.data.schema import LEDGER
from tests.http_server import LocalServer

HEIGHT = 120
VIDEOS = [f"v{k}" for k in range(12)]


@pytest.fixture(scope="module")
def video_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("src") / "v.mp4"
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i", f"testsrc=size=160x{HEIGHT}:rate=25",
                    "-frames:v", "10", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)], check=True)
    return path.read_bytes()


@pytest.fixture
def server(video_bytes):
    with LocalServer({f"{v}.mp4": video_bytes for v in VIDEOS}) as srv:
        yield srv


def fast(template: str, **kw) -> DownloadSettings:
    return DownloadSettings(url_template=template, **{"retries": 0, "backoff": 0.0, "socket_timeout": 5.0,
                                                      "verify": False} | kw)


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


# ---------------------------------------------------------------- failure classes

@pytest.mark.parametrize("message, status, failure, throttled", [
    ("Unable to download webpage: HTTP Error 429: Too Many Requests", "download_error", "transient", True),
    ("[youtube] abc: Sign in to confirm you're not a bot. Use --cookies-from-browser", "download_error", "transient",
     True),
    ("[youtube] abc: Sign in to confirm your age; The provided YouTube account cookies are no longer valid.",
     "download_error", "transient", False),                   # expired cookies, not an age gate
    ("Unable to download webpage: HTTP Error 503: Service Unavailable", "download_error", "transient", False),
    ("Unable to download webpage: <urlopen error [Errno -3] Temporary failure in name resolution>",
     "download_error", "transient", False),
    ("Failed to resolve 'www.youtube.com' ([Errno -2] Name or service not known)", "download_error", "transient",
     False),
    ("Read timed out. (read timeout=30.0)", "timeout", "transient", False),
    ("[youtube] abc: Private video. Sign in if you've been granted access", "private", "permanent", False),
    ("[youtube] abc: Video unavailable. This video has been removed by the uploader", "unavailable", "permanent",
     False),
    ("[youtube] abc: This video is no longer available because the YouTube account has been terminated.",
     "unavailable", "permanent", False),
    ("[youtube] abc: Video unavailable. This video contains content from X, who has blocked it on copyright grounds",
     "unavailable", "permanent", False),
    ("[generic] abc: Unable to download webpage: HTTP Error 404: Not Found", "unavailable", "permanent", False),
    ("Unsupported URL: https://example.com/not-a-video", "unavailable", "permanent", False),
    ("something nobody has seen before", "download_error", "transient", False),
])
def test_diagnose(message, status, failure, throttled):
    d = diagnose(message)
    assert (d.status, d.failure, d.throttled) == (status, failure, throttled)
    assert failure_class(status) == failure                   # the class follows from the status alone


def test_failure_class_of_every_download_status():
    assert [failure_class(s) for s in ("ok", "download_error", "timeout", "decode_error", "unavailable", "private")] \
        == ["", "transient", "transient", "transient", "permanent", "permanent"]


def test_retry_keys():
    statuses = ["ok", "download_error", "unavailable", "timeout", "private", "decode_error"]
    ledger = pa.Table.from_pydict({"video_id": [f"v{k}" for k in range(6)], "status": statuses})
    assert retry_keys(ledger, "none") == []
    assert retry_keys(ledger, "transient") == ["v1", "v3", "v5"]
    assert retry_keys(ledger, "all") == ["v1", "v2", "v3", "v4", "v5"]
    with pytest.raises(ValueError, match="retry mode"):
        retry_keys(ledger, "some")


# ---------------------------------------------------------------- the rate limit rule (fake clock)

def test_rate_limit_spaces_requests_and_pauses_with_exponential_backoff():
    rule = RateLimit(rate=4.0, pause=1.0, max_pause=3.0)
    assert rule.reserve(0.0) == 0.0 and rule.reserve(0.1) == pytest.approx(0.15)   # 0.25 s apart
    assert rule.reserve(0.25) == 0.0
    assert rule.throttled(1.0, "429") == 1.0 and rule.reserve(1.5) == pytest.approx(0.5)   # nothing starts
    assert rule.throttled(1.5, "429 again") == pytest.approx(0.5)          # same episode: unchanged
    assert rule.reserve(2.0) == 0.0
    assert rule.throttled(2.1, "429") == pytest.approx(2.0)                 # next one doubles
    assert rule.throttled(4.2, "429") == pytest.approx(3.0)                 # capped
    rule.succeeded(7.3)
    assert rule.state(7.3).level == 0 and rule.throttled(7.3, "429") == pytest.approx(1.0)   # a success resets the backoff
    state = rule.state(7.8)
    assert (state.paused, state.level, state.reason, state.requests) == (pytest.approx(0.5), 1, "429", 3)
    with pytest.raises(ValueError):
        RateLimit(rate=-1, pause=1, max_pause=2)


def test_local_limiter_blocks_until_its_slot():
    clock = FakeClock()
    limiter = LocalLimiter(RateLimit(rate=2.0, pause=5.0, max_pause=5.0), clock=clock, sleep=clock.sleep)
    starts = []
    for _ in range(3):
        limiter.acquire()
        starts.append(clock.now)
    limiter.throttled("bot check")
    limiter.acquire()
    starts.append(clock.now)
    assert starts == pytest.approx([100.0, 100.5, 101.0, 106.0])


# ---------------------------------------------------------------- real downloads from the failing server

def test_first_run_records_transient_and_permanent_failures(server, tmp_path):
    server.script = {"v1.mp4": [503], "v2.mp4": [429]}
    s = fast(server.template("good"), throttle_pause=0.2, max_throttle_pause=0.2)
    limiter = LocalLimiter(RateLimit(0.0, 0.2, 0.2))
    rows = [download_video(v, HEIGHT, tmp_path, s, limiter=limiter) for v in ("v0", "v1", "v2", "gone")]
    assert [(r["status"], r["failure"]) for r in rows] == [
        ("ok", ""), ("download_error", "transient"), ("download_error", "transient"), ("unavailable", "permanent")]
    assert "503" in rows[1]["error"] and "429" in rows[2]["error"] and "404" in rows[3]["error"]
    assert limiter.state().reason == rows[2]["error"]                       # the 429 paused the limiter
    assert ledger_table(rows).schema.equals(LEDGER)


def test_transient_failure_is_retried_within_the_run_after_the_pause(server, tmp_path):
    server.script = {"v0.mp4": [429, 503]}
    sleeps = []
    s = fast(server.template("good"), retries=3, backoff=0.01)
    row = download_video("v0", HEIGHT, tmp_path, s, sleep=sleeps.append, limiter=LocalLimiter(RateLimit(0, .1, .1)))
    assert (row["status"], row["failure"], row["attempts"]) == ("ok", "", 3)
    assert sleeps == [0.0, 0.01, 0.02]                                      # the video's own backoff


def _download_all(server, tmp_path, settings, limiter, workers=4, videos=VIDEOS):
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda v: download_video(v, HEIGHT, tmp_path, settings, limiter=limiter), videos))


class RecordingLimiter(LocalLimiter):
    """A local limiter that records when it granted each request and when it was told of a throttle."""

    def __init__(self, rule: RateLimit):
        super().__init__(rule)
        self.grants: list[float] = []
        self.throttles: list[float] = []

    def _call(self, method: str, *args):
        with self.lock:                          # the time the rule saw, not a later one a thread switch delays
            now = self.clock()
            result = getattr(self.rule, method)(now, *args)
            if method == "reserve" and result == 0.0:
                self.grants.append(now)
            if method == "throttled":
                self.throttles.append(now)
            return result


#: Stated tolerance of the rate test: a request reaches the server at most JITTER seconds after it took its slot
#: (the server shares this process, and the 2 cores, with 4 downloading threads and everything else running).
JITTER = 1.0


def rate_stats(times: list[float]) -> tuple[int, float]:
    """(most requests in any 1 s window, mean rate from first to last request)."""
    times = sorted(times)
    return (max(sum(1 for u in times if t <= u < t + 1.0) for t in times),
            (len(times) - 1) / (times[-1] - times[0]))


def test_rate_limiter_holds_the_request_rate_across_parallel_tasks(server, tmp_path):
    """4 threads, 2 requests per video, RATE requests/s for all. The limiter grants slots >= 1/RATE apart (exact);
    the server then sees at most floor(RATE * (1 + JITTER)) + 1 requests in any 1 s window and a mean rate of at most
    (n - 1) / ((n - 1) / RATE - JITTER). Unlimited, the same threads make ~8 requests/s here (mean and busiest)."""
    rate = 4.0
    s = fast(server.template("good"), requests_per_second=rate)
    limiter = RecordingLimiter(RateLimit(rate, 1.0, 1.0))
    rows = _download_all(server, tmp_path, s, limiter, videos=VIDEOS[:8])
    assert all(r["status"] == "ok" for r in rows)
    assert min(b - a for a, b in zip(limiter.grants, limiter.grants[1:])) >= 1 / rate - 1e-9
    times = [t for t, _, _ in server.log]
    n = len(times)
    busiest, mean_rate = rate_stats(times)
    assert n == 16 and busiest <= int(rate * (1 + JITTER)) + 1, (busiest, mean_rate)
    assert 0.6 * rate <= mean_rate <= (n - 1) / ((n - 1) / rate - JITTER), (busiest, mean_rate)


def test_a_429_pauses_every_task(server, tmp_path):
    """v0's first request gets 429: from then on no thread's request starts until the pause is over. At the server,
    only requests already granted when the 429 came (at most one per other thread) arrive during the pause."""
    pause, workers = 1.5, 4
    server.script = {"v0.mp4": [429]}
    limiter = RecordingLimiter(RateLimit(0.0, pause, pause))
    lines = []
    with show_pauses("test-pause", every=0.05, log=lines.append):
        import pipelines.download as dl

        dl._LIMITERS["local:test-pause"] = limiter
        rows = _download_all(server, tmp_path, fast(server.template("good"), retries=1), limiter, workers=workers)
        dl._LIMITERS.pop("local:test-pause")
    assert [r["status"] for r in rows] == ["ok"] * len(VIDEOS) and rows[0]["attempts"] == 2
    (reported,) = limiter.throttles
    assert not [t for t in limiter.grants if reported < t < reported + pause - 0.01]       # nothing started
    assert len([t for t in limiter.grants if t >= reported + pause - 0.01]) >= 2            # then all resumed
    (t429,) = [t for t, _, code in server.log if code == 429]
    during = [t - t429 for t, _, _ in server.log if reported + 0.01 < t < reported + pause - 0.01]
    assert len(during) <= workers - 1, during
    assert any(line.startswith("downloads paused") and "429" in line for line in lines), lines
    assert any(line.startswith("downloads resumed") for line in lines), lines


def test_limiter_is_thread_safe():
    limiter = LocalLimiter(RateLimit(0.0, 1.0, 1.0))
    threads = [threading.Thread(target=lambda: [limiter.acquire() for _ in range(200)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert limiter.state().requests == 800


@pytest.mark.slow
def test_ray_tasks_share_one_limiter(ray_session, server, tmp_path):
    """Two Ray tasks downloading at once take their slots from the run's one named actor: the rate holds for both
    together, and the driver sees the same actor (its request count) until close_limiter removes it."""
    from pipelines.download import close_limiter, find_limiter

    ray = ray_session
    rate, name = 4.0, f"test-ray-{tmp_path.name}"
    s = fast(server.template("good"), requests_per_second=rate, limiter=name, throttle_pause=0.5,
             max_throttle_pause=0.5)

    @ray.remote(num_cpus=1)
    def download(videos: list[str]) -> list[str]:
        return [download_video(v, HEIGHT, tmp_path, s)["status"] for v in videos]

    statuses = ray.get([download.remote(VIDEOS[:4]), download.remote(VIDEOS[4:8])])
    assert statuses == [["ok"] * 4] * 2
    times = [t for t, _, _ in server.log]
    busiest, mean_rate = rate_stats(times)                 # each slot also waits for an actor call: the mean only
    assert len(times) == 16 and mean_rate <= (len(times) - 1) / ((len(times) - 1) / rate - JITTER), (busiest,
                                                                                                      mean_rate)
    driver_view = find_limiter(name)
    assert driver_view is not None and driver_view.state().requests == 16
    close_limiter(name)
    assert find_limiter(name) is None


def test_cookies_refreshed_mid_run_take_effect_at_the_next_attempt(server, tmp_path):
    """The user's cookies file is only read (yt-dlp's write-back goes to a per-attempt copy); replacing it between
    two downloads changes the Cookie header of the second."""
    cookies = tmp_path / "cookies.txt"

    def write_cookie(value: str) -> bytes:
        text = f"# Netscape HTTP Cookie File\n127.0.0.1\tFALSE\t/\tFALSE\t2000000000\tsession\t{value}\n"
        cookies.write_text(text)
        return text.encode()

    old = write_cookie("old")
    s = fast(server.template("good"), cookies=str(cookies))
    assert download_video("v0", HEIGHT, tmp_path / "dl", s, limiter=LocalLimiter(RateLimit(0, 1, 1)))["status"] == "ok"
    assert cookies.read_bytes() == old                                      # never written back
    write_cookie("new")
    assert download_video("v1", HEIGHT, tmp_path / "dl", s, limiter=LocalLimiter(RateLimit(0, 1, 1)))["status"] == "ok"
    sent = {path: header for path, header in server.cookies}
    assert sent["/good/v0.mp4"] == "session=old" and sent["/good/v1.mp4"] == "session=new"
    assert not list((tmp_path / "dl" / ".partial").glob("*cookies*"))


def test_stage_retries_transient_failures_of_parts_and_permanent_ones_on_request(server, tmp_path):
    import numpy as np

    from pipelines.download import download_stage
    from pipelines.metadata import Clip, VideoJob

    server.script = {"v1.mp4": [503]}
    jobs = [VideoJob(v, "id1", "test", 25.0, 160, HEIGHT, (Clip(0, 5, (0, 0, 10, 10), 2),)) for v in ("v0", "v1", "gone")]
    batch = {"key": np.array([j.video_id for j in jobs], dtype=object),
             "job": np.array([j.to_json() for j in jobs], dtype=object)}

    def run(retry: str) -> list[str]:
        s = fast(server.template("good"), retry_failed=retry, limiter=f"stage-{tmp_path.name}")
        return list(download_stage(dict(batch), out=str(tmp_path / "out"), root=str(tmp_path / "dl"),
                                   settings=s)["download_status"])

    assert run("none") == ["ok", "download_error", "unavailable"]
    hits = dict(server.hits)
    assert run("none") == ["ok", "ok", "unavailable"]                     # a resume retries the transient one
    assert server.hits["/good/v1.mp4"] > hits["/good/v1.mp4"]
    assert server.hits["/good/v0.mp4"] == hits["/good/v0.mp4"] and server.hits["/good/gone.mp4"] == 1
    assert run("transient") == ["ok", "ok", "unavailable"] and server.hits["/good/gone.mp4"] == 1
    assert run("all") == ["ok", "ok", "unavailable"] and server.hits["/good/gone.mp4"] == 2
    with pytest.raises(ValueError, match="retry_failed"):
        fast("x/{video_id}", retry_failed="some")
