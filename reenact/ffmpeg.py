"""Locating ffmpeg, written once for the synthetic world and the pipelines.

``$REENACT_FFMPEG`` wins, then a system ``ffmpeg`` on ``PATH``, then imageio-ffmpeg's bundled binary, so a
pip-only install works. Every command in the suite is an argument list run without a shell.
"""
from __future__ import annotations

import functools
import os
import shutil


class MediaToolError(RuntimeError):
    """No usable ffmpeg: a broken environment, reported once at setup."""


@functools.lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary: ``$REENACT_FFMPEG``, else ``ffmpeg`` on PATH, else imageio-ffmpeg's binary."""
    exe = os.environ.get("REENACT_FFMPEG") or shutil.which("ffmpeg")
    if exe:
        return exe
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as e:
        raise MediaToolError("no ffmpeg found: install a system ffmpeg or `pip install imageio-ffmpeg` "
                             f"(or set $REENACT_FFMPEG to a binary); {e}") from e
