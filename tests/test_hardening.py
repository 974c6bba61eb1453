"""Hardening of the engine and its parsers (issue 13): one run per folder, resume only with the same settings,
parsers that never hang or crash, deterministic error texts, leftovers removed, clear user errors.

Every test here failed before its fix. Engine tests use the local executor (no Ray); the property tests run a
bounded number of examples, each under a deadline.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reenact.config import UserError
from reenact.data.schema import ChunkId, is_safe_id
from tests.conftest import REPO

PROPERTY = settings(max_examples=200, deadline=500, derandomize=True)


# ---------------------------------------------------------------- ids

def test_an_id_with_a_final_newline_is_unsafe():
    assert not is_safe_id("Jack_Ma\n") and is_safe_id("Jack_Ma")
    with pytest.raises(ValueError):
        ChunkId.parse("p#v#000000#000010\n")


@PROPERTY
@given(st.text(max_size=80))
def test_safe_ids_are_matched_whole(text):
    """Brute-force reference: every character in [A-Za-z0-9_-], 1 to 64 of them."""
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
    assert is_safe_id(text) == (1 <= len(text) <= 64 and set(text) <= allowed)


# ---------------------------------------------------------------- user mistakes on the command line

def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reenact.app.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})


def _one_line_error(res: subprocess.CompletedProcess) -> bool:
    return res.returncode == 2 and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_cli_user_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    from reenact.app import cli

    (tmp_path / "empty.csv").write_text("")
    args = ["prepare", "vox", "--out", str(tmp_path / "out"), "--metadata", str(tmp_path / "empty.csv"),
            "--extractor", "none", "--executor", "local"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a vox-metadata.csv" in err and "an empty file" in err
    with pytest.raises(UserError):
        cli.main(["--debug", *args])
    assert cli.main(["prepare", "vox", "--out", "o", "--metadata", "m", "--url-template", "https://x/{id}"]) == 2
    assert "single field" in capsys.readouterr().err


def test_cli_one_line_in_a_subprocess(tmp_path):
    res = _cli("prepare", "vox", "--out", str(tmp_path / "o"), "--metadata", str(tmp_path / "missing.csv"),
               "--extractor", "none", "--executor", "local")
    assert _one_line_error(res) and "missing.csv" in res.stderr, res.stderr
