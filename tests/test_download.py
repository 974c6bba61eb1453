"""The download stage (pipelines/download.py): yt-dlp options, error classes, and real downloads from a local
HTTP server and file URLs (never the internet): a good file, a 404, a truncated body, a corrupt file, a slow
server hitting the socket timeout, a flaky one needing a retry.
"""
from __future__ import annotations

import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.download import (
    DownloadSettings,
    backoff_seconds,
    check_url_template,
    classify_error,
    download_stage,
    download_video,
    format_selector,
    ledger_table,
    video_url,
    ydl_options,
)
from pipelines.media import ffmpeg_exe
from pipelines.metadata import Clip, VideoJob
from reenact.data.schema import LEDGER
from reenact.data.shards import part_paths
from tests.http_server import LocalServer

HEIGHT = 120


@pytest.fixture(scope="module")
def video_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("src") / "v.mp4"
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i", f"testsrc=size=160x{HEIGHT}:rate=25",
                    "-frames:v", "25", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)], check=True)
    return path.read_bytes()


@pytest.fixture(scope="module")
def server(video_bytes):
    with LocalServer({"vid1.mp4": video_bytes, "vid2.mp4": video_bytes}, slow_seconds=5.0) as srv:
        yield srv


def settings(template: str, **kw) -> DownloadSettings:
    return DownloadSettings(url_template=template, **{"retries": 1, "backoff": 0.0, "socket_timeout": 1.0} | kw)


# ---------------------------------------------------------------- pure functions

def test_ydl_options_are_built_from_settings():
    s = DownloadSettings(url_template="https://mirror.example/{video_id}.mp4", socket_timeout=7.0, rate_limit="2M",
                         cookies="/c/cookies.txt", proxy="socks5://127.0.0.1:1080")
    opts = ydl_options(s, "/dl/.partial/x/x.%(ext)s", 720)
    assert opts["format"] == format_selector(720)
    assert opts["outtmpl"] == {"default": "/dl/.partial/x/x.%(ext)s"}
    assert (opts["socket_timeout"], opts["ratelimit"], opts["cookiefile"], opts["proxy"]) == (
        7.0, 2 * 1024 * 1024, "/c/cookies.txt", "socks5://127.0.0.1:1080")
    assert opts["retries"] == opts["fragment_retries"] == opts["extractor_retries"] == 0   # ours, with backoff
    assert opts["enable_file_urls"] is False and opts["noplaylist"] and opts["quiet"]
    assert ydl_options(DownloadSettings(url_template="file:///m/{video_id}.mp4"), "o", 1)["enable_file_urls"]
    bare = ydl_options(DownloadSettings(), "o", 360)
    assert not {"ratelimit", "cookiefile", "proxy"} & set(bare)
    with pytest.raises(ValueError, match="rate_limit"):
        ydl_options(DownloadSettings(rate_limit="fast"), "o", 1)


def test_format_selector_takes_the_smallest_tall_enough_video_else_the_best():
    from yt_dlp import YoutubeDL

    formats = [dict(format_id=i, height=h, width=h * 16 // 9, ext=e, vcodec=v, acodec="none", url=f"http://x/{i}",
                    protocol="https", tbr=t)
               for i, h, e, v, t in [("18", 360, "mp4", "avc1.42001E", 500), ("136", 720, "mp4", "avc1.4d401f", 1500),
                                     ("247", 720, "webm", "vp9", 1200), ("137", 1080, "mp4", "avc1.640028", 3000),
                                     ("248", 1080, "webm", "vp9", 2500)]]
    ydl = YoutubeDL({"quiet": True})

    def pick(height: int) -> list[str]:
        ctx = {"formats": formats, "has_merged_format": False, "incomplete_formats": False}
        return [f["format_id"] for f in ydl.build_format_selector(format_selector(height))(ctx)]

    assert pick(720) == ["136"] and pick(361) == ["136"] and pick(1000) == ["137"]
    assert pick(1440) == ["248"]                      # nothing tall enough: the best video there is
    with pytest.raises(ValueError):
        format_selector(0)


@pytest.mark.parametrize("message, status", [
    ("[youtube] abc: Video unavailable. This video has been removed by the uploader", "unavailable"),
    ("[youtube] abc: Private video. Sign in if you've been granted access to this video", "private"),
    ("[youtube] abc: Sign in to confirm your age. This video may be inappropriate for some users.", "private"),
    ("[youtube] abc: Sign in to confirm you're not a bot", "download_error"),
    ("[generic] abc: Unable to download webpage: HTTP Error 404: Not Found", "unavailable"),
    ("Unable to download webpage: HTTP Error 429: Too Many Requests", "download_error"),
    ("Read timed out. (read timeout=1.0)", "timeout"),
    ("[download] Got error: 3242 bytes read, 3242 more expected", "download_error"),
    ("This video is not available in your country", "unavailable"),
])
def test_classify_error(message, status):
    assert classify_error(message) == status


def test_url_template_and_backoff():
    assert video_url("https://www.youtube.com/watch?v={video_id}", "Zbz058o9j6s").endswith("v=Zbz058o9j6s")
    for bad in ("https://x/{id}", "https://x/", "https://x/{video_id}/{other}"):
        with pytest.raises(ValueError, match="single field"):
            check_url_template(bad)
    with pytest.raises(ValueError, match="unsafe"):
        video_url("https://x/{video_id}", "../x")
    s = DownloadSettings(backoff=2.0, max_backoff=5.0)
    assert [backoff_seconds(k, s) for k in range(5)] == [0.0, 2.0, 4.0, 5.0, 5.0]


# ---------------------------------------------------------------- real downloads, local server

def test_good_download_is_verified_and_renamed(server, tmp_path):
    row = download_video("vid1", HEIGHT, tmp_path, settings(server.template("good")))
    assert (row["status"], row["error"], row["attempts"], row["path"]) == ("ok", "", 1, "vid1.mp4")
    assert (row["width"], row["height"], row["fps"], row["num_frames"]) == (160, HEIGHT, 25.0, 25)
    assert (tmp_path / "vid1.mp4").read_bytes() == server.files["vid1.mp4"] and row["bytes"] == len(
        server.files["vid1.mp4"])
    assert not (tmp_path / ".partial" / "vid1").exists()
    assert ledger_table([row]).schema.equals(LEDGER)


def test_too_low_resolution_is_kept_with_a_note(server, tmp_path):
    row = download_video("vid1", 2 * HEIGHT, tmp_path, settings(server.template("good")))
    assert row["status"] == "ok" and row["error"].startswith("note:") and "240" in row["error"]


def test_404_is_unavailable_without_retries(server, tmp_path):
    sleeps = []
    row = download_video("vid1", HEIGHT, tmp_path, settings(server.template("missing"), retries=3), sleep=sleeps.append)
    assert (row["status"], row["attempts"]) == ("unavailable", 1) and "404" in row["error"]
    assert row["path"] is None and not list(tmp_path.glob("*.mp4"))


def test_truncated_body_is_a_download_error_after_retries(server, tmp_path):
    sleeps = []
    s = settings(server.template("truncated"), retries=2, backoff=0.5)
    row = download_video("vid1", HEIGHT, tmp_path, s, sleep=sleeps.append)
    assert (row["status"], row["attempts"]) == ("download_error", 3) and "expected" in row["error"]
    assert sleeps == [0.0, 0.5, 1.0]                                   # exponential backoff
    assert not list(tmp_path.rglob("*.mp4"))


def test_corrupt_file_is_a_decode_error(server, tmp_path):
    row = download_video("vid1", HEIGHT, tmp_path, settings(server.template("corrupt"), retries=0))
    assert row["status"] == "decode_error" and row["attempts"] == 1 and row["error"]
    assert not list(tmp_path.rglob("*.mp4"))


def test_slow_server_hits_the_socket_timeout(server, tmp_path):
    row = download_video("vid1", HEIGHT, tmp_path, settings(server.template("slow"), retries=1))
    # status "timeout" proves the client gave up: had it waited out the 5 s stall, the server would have answered
    # and the download succeeded. (No wall-clock bound: on a loaded machine it flaked.)
    assert (row["status"], row["attempts"]) == ("timeout", 2) and "timed out" in row["error"]


def test_flaky_server_succeeds_on_retry(server, tmp_path):
    row = download_video("vid2", HEIGHT, tmp_path, settings(server.template("flaky"), retries=2))
    assert (row["status"], row["attempts"]) == ("ok", 2)


def test_file_urls(video_bytes, tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "vid1.mp4").write_bytes(video_bytes)
    s = settings(f"file://{mirror}/{{video_id}}.mp4", retries=0)
    assert download_video("vid1", HEIGHT, tmp_path / "dl", s)["status"] == "ok"
    assert (tmp_path / "dl" / "vid1.mp4").read_bytes() == video_bytes
    missing = download_video("vid9", HEIGHT, tmp_path / "dl", s)
    assert missing["status"] == "unavailable" and "No such file" in missing["error"]


def test_stage_writes_a_ledger_part_and_skips_done_videos(server, tmp_path):
    jobs = [VideoJob(v, "id1", "train", 25.0, 160, HEIGHT, (Clip(0, 5, (0, 0, 10, 10), 2),)) for v in ("vid1", "gone")]
    batch = {"video_id": np.array([j.video_id for j in jobs], dtype=object),
             "job": np.array([j.to_json() for j in jobs], dtype=object)}
    kwargs = {"out": str(tmp_path / "out"), "root": str(tmp_path / "videos"),
              "settings": settings(server.template("good"), retries=0)}
    first = download_stage(dict(batch), **kwargs)
    assert list(first["download_status"]) == ["ok", "unavailable"]
    assert first["download_path"][0] == str(tmp_path / "videos" / "vid1.mp4") and first["download_path"][1] == ""
    (row,) = pq.read_table(part_paths(tmp_path / "out", "ledger", "vid1")[0]).to_pylist()
    assert row["status"] == "ok"
    hits = server.hits["/good/vid1.mp4"]
    again = download_stage(dict(batch), **kwargs)                       # ok + file present: not fetched again
    assert server.hits["/good/vid1.mp4"] == hits and list(again["download_status"]) == ["ok", "unavailable"]
    (tmp_path / "videos" / "vid1.mp4").unlink()                        # file gone: fetched again
    download_stage(dict(batch), **kwargs)
    assert server.hits["/good/vid1.mp4"] > hits and (tmp_path / "videos" / "vid1.mp4").is_file()
