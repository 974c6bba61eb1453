"""Face-reenactment baselines behind the suite's model contract (:mod:`reenact.contract`) and the lazy registry of
every model the benchmark can run (:mod:`baselines.registry`).

``baselines.create("fomm", checkpoint=...)`` imports only the chosen model's module.
"""
from baselines.registry import REGISTRY, available, create, get_class
from reenact.contract import ReenactInputs, Reenactor

__all__ = ["REGISTRY", "ReenactInputs", "Reenactor", "available", "create", "get_class"]
