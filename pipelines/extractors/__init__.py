"""Pluggable coefficient extractors: frame rows in, ``reenact.data.schema.COEFFS`` rows out.

Every extractor is a small class whose ``__init__`` loads what it needs once and whose ``__call__(batch) -> batch``
maps a batch dict of frame rows to coefficient rows (one per input row; failures are rows with a status), so Ray
Data runs it as an actor and tests call it directly. Each row names its extractor in the ``extractor`` column.
The registry maps names to ``"module:Class"`` strings, so an extractor's dependencies load only when it is picked.
"""
from __future__ import annotations

import importlib

REGISTRY: dict[str, str] = {
    "deep3d": "pipelines.extractors.deep3d:Deep3DExtractor",
    "landmarks": "pipelines.extractors.landmark_fit:LandmarksExtractor",
    "oracle": "pipelines.extractors.oracle:OracleExtractor",
}


def available() -> list[str]:
    return sorted(REGISTRY)


def get_class(name: str) -> type:
    """Import and return the extractor class registered as ``name``."""
    if name not in REGISTRY:
        raise ValueError(f"unknown extractor {name!r}; registered: {', '.join(available())}")
    module_name, class_name = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)
