"""Face-reenactment baselines behind one interface (:class:`baselines.base.Reenactor`) and a lazy registry.

``baselines.create("fomm", checkpoint=...)`` imports only the chosen model's module.
"""
from baselines.base import ReenactInputs, Reenactor
from baselines.registry import REGISTRY, available, create, get_class

__all__ = ["REGISTRY", "ReenactInputs", "Reenactor", "available", "create", "get_class"]
