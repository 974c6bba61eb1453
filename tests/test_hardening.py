"""Hardening of the engine and its parsers (issue 13): one run per folder, resume only with the same settings,
parsers that never hang or crash, deterministic error texts, leftovers removed, clear user errors.

Every test here failed before its fix. Engine tests use the local executor (no Ray); the property tests run a
bounded number of examples, each under a deadline.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reenact.data.schema import ChunkId, is_safe_id

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
