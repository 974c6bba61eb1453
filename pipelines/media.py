"""Media tools of the pipelines: locating ffmpeg, probing a video, checking that it decodes.

Frames are encoded by the data layer's codec (:mod:`reenact.data.codec`).

Conventions: a frame is an RGB ``uint8`` array ``(H, W, 3)``; sizes are ``(width, height)``; ``fps`` is the rate
ffmpeg prints for the stream (what imageio, and therefore video-preprocessing's ``load_videos.py``, reads).
ffmpeg is the system ``ffmpeg`` when one is on ``PATH``, else imageio-ffmpeg's bundled binary, so a pip-only
install works. ffprobe is not needed (imageio-ffmpeg ships none): probing parses ffmpeg's stream header.
Every command is an argument list run without a shell.
"""
from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass

from reenact.data.schema import clean_error
from reenact.ffmpeg import MediaToolError, ffmpeg_exe  # noqa: F401  (re-exported for the stages)


class MediaError(ValueError):
    """A file that is not a decodable video (a bad item: the caller turns it into a ``decode_error`` row)."""


# ---------------------------------------------------------------- probing

@dataclass(frozen=True)
class VideoInfo:
    """The first video stream of a file."""

    width: int
    height: int
    fps: float
    duration: float | None      # seconds, None when the container does not say
    codec: str

    @property
    def frames_estimate(self) -> int | None:
        """``round(duration * fps)``: an estimate only; decoding is the truth."""
        return None if self.duration is None else int(round(self.duration * self.fps))


_STREAM = re.compile(r"Stream #\d+:\d+.*?: Video: (?P<codec>[\w-]+)(?P<rest>.*)")
_SIZE = re.compile(r",\s(?P<w>\d{1,5})x(?P<h>\d{1,5})[\s,]")
_FPS = re.compile(r"(?P<fps>[\d.]+)\s(?P<k>k?)fps\b")
_TBR = re.compile(r"(?P<fps>[\d.]+)\s(?P<k>k?)tbr\b")
_DURATION = re.compile(r"Duration: (?P<h>\d+):(?P<m>\d+):(?P<s>[\d.]+)")


def _rate(match: re.Match) -> float:
    return float(match["fps"]) * (1000.0 if match["k"] else 1.0)


def parse_ffmpeg_header(text: str) -> VideoInfo:
    """ffmpeg's ``-i`` stream report (stderr) -> :class:`VideoInfo` of the first video stream.

    fps is the ``fps`` field, else ``tbr`` (imageio's rule). Raises :class:`MediaError` when there is no video
    stream with a size and a rate.
    """
    stream = _STREAM.search(text)
    if stream is None:
        raise MediaError("no video stream found" + _tail(text))
    rest = stream["rest"] + " "
    size, rate = _SIZE.search(rest), _FPS.search(rest) or _TBR.search(rest)
    if size is None or rate is None or _rate(rate) <= 0:
        raise MediaError(f"video stream without size or frame rate: {stream.group(0)!r}")
    dur = _DURATION.search(text)
    duration = int(dur["h"]) * 3600 + int(dur["m"]) * 60 + float(dur["s"]) if dur else None
    return VideoInfo(int(size["w"]), int(size["h"]), _rate(rate), duration, stream["codec"])


def _tail(text: str, lines: int = 3, chars: int = 300) -> str:
    """The last few lines of an ffmpeg log, for an error message."""
    kept = " | ".join(line.strip() for line in clean_error(text).strip().splitlines()[-lines:])
    return f": {kept[-chars:]}" if kept else ""


def probe_command(path: str | os.PathLike, exe: str | None = None) -> list[str]:
    return [exe or ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", os.fspath(path)]


def probe(path: str | os.PathLike, timeout: float = 60.0) -> VideoInfo:
    """:class:`VideoInfo` of ``path``; :class:`MediaError` when it is missing or not a video."""
    if not os.path.isfile(path):
        raise MediaError(f"no such file: {path}")
    try:
        res = subprocess.run(probe_command(path), capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise MediaError(f"probing {path} took over {timeout:.0f} s") from e
    return parse_ffmpeg_header(res.stderr.decode("utf-8", "replace"))


def tail_check_command(path: str | os.PathLike, seconds: float = 2.0, exe: str | None = None) -> list[str]:
    """Decode the last ``seconds`` of the first video stream, discarding frames, and stop at the first error."""
    return [exe or ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-xerror", "-sseof", f"-{seconds:g}",
            "-i", os.fspath(path), "-map", "0:v:0", "-f", "null", "-"]


def check_decodable(path: str | os.PathLike, timeout: float = 120.0) -> VideoInfo:
    """Probe ``path`` and decode its tail (a truncated or corrupt file fails here); :class:`MediaError` if not."""
    info = probe(path, timeout)
    try:
        res = subprocess.run(tail_check_command(path), capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise MediaError(f"decoding the end of {path} took over {timeout:.0f} s") from e
    errors = res.stderr.decode("utf-8", "replace").strip()
    if res.returncode != 0 or errors:
        raise MediaError(f"{path} does not decode to the end (ffmpeg exit {res.returncode})" + _tail(errors))
    return info
