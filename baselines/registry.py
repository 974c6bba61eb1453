"""Lazy registry: names map to ``"module:Class"`` strings, so a model's dependencies load only when picked."""
from __future__ import annotations

import importlib
from typing import Any

from reenact.contract import Reenactor

REGISTRY: dict[str, str] = {
    "copy-source": "baselines.trivial:CopySource",
    "copy-driving": "baselines.trivial:CopyDriving",
    "render": "baselines.trivial:RenderGuidance",
    "x2face": "baselines.x2face:X2Face",
    "fomm": "baselines.fomm:FOMM",
    "pirender": "baselines.pirender:PIRenderer",
    "dagan": "baselines.dagan:DaGAN",
    "paper": "reenact.model.reenactor:PaperReenactor",
    "paper-base": "reenact.model.reenactor:PaperBaseReenactor",
}


def available() -> list[str]:
    return sorted(REGISTRY)


def get_class(name: str) -> type[Reenactor]:
    """Import and return the class registered as ``name``."""
    if name not in REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(available())}")
    module_name, class_name = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def create(name: str, checkpoint: str | None = None, *, random_weights: bool = False, **kwargs: Any) -> Reenactor:
    """Build ``name`` from its official checkpoint, or with random weights when ``random_weights``."""
    cls = get_class(name)
    if random_weights:
        return cls.random(**kwargs)
    return cls.from_checkpoint(checkpoint, **kwargs)
