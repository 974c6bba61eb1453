"""The integer ``hash_uniform`` weight recipe of the full-size recipe goldens (DaGAN depth nets, Deep3D ``net_recon``).

Networks too large to store in ``../shared/fixtures/baselines`` are stored as a *recipe*: one entry per state-dict
tensor, ``{module, key, shape, dtype, seed, a, b, checksum_sum, checksum_sumsq}``. The tensor is

    float32(a + b * hash_uniform(prod(shape), seed)).reshape(shape)        (int64 entries: zeros)

where ``hash_uniform`` is pure 64-bit integer arithmetic (a 32-bit multiplicative hash, then two xor-shift-multiply
rounds), so it is bit-exact in torch and NumPy on any machine. ``checksum_sum`` / ``checksum_sumsq`` are the float64
sum and sum of squares of the float32 tensor; :func:`recipe_state_dict` checks both before returning anything.

The fixtures also carry the recipe's source text (``golden["recipe_source"]``). It is never executed here: it is only
checked to contain the constants implemented below, so a fixture made with another recipe fails loudly.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

_MOD = 4294967296  # 2**32
_MULT = 2654435761  # Knuth's multiplicative hash constant
_SEED_MULT = 40503
_OFFSET = 12345
_MIX = 73244475
#: the constants every recipe_source must contain (as written in the fixtures)
RECIPE_CONSTANTS = (str(_MULT), str(_SEED_MULT), str(_OFFSET), str(_MIX), str(_MOD))


class RecipeChecksumError(ValueError):
    """A regenerated tensor does not match the checksums stored with its recipe entry."""


@dataclass(frozen=True)
class RecipeEntry:
    """One state-dict tensor of a recipe golden."""

    module: str
    key: str
    shape: tuple[int, ...]
    dtype: str
    seed: int
    a: float
    b: float
    checksum_sum: float
    checksum_sumsq: float

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RecipeEntry":
        return cls(module=str(d["module"]), key=str(d["key"]), shape=tuple(int(s) for s in d["shape"]),
                   dtype=str(d["dtype"]), seed=int(d["seed"]), a=float(d["a"]), b=float(d["b"]),
                   checksum_sum=float(d["checksum_sum"]), checksum_sumsq=float(d["checksum_sumsq"]))


def hash_uniform(n: int, seed: int) -> torch.Tensor:
    """``n`` float64 values in [0, 1) from integer hashing of ``arange(n)`` with ``seed`` (bit-exact everywhere).

    In-place int64 ops; ``& (2**32 - 1)`` is ``% 2**32`` for the non-negative values that occur (all < 2**59).
    """
    x = torch.arange(n, dtype=torch.int64)
    x.mul_(_MULT).add_((seed + 1) * _SEED_MULT + _OFFSET).bitwise_and_(_MOD - 1)
    for _ in range(2):
        x.bitwise_xor_(x >> 16).mul_(_MIX).bitwise_and_(_MOD - 1)
    x.bitwise_xor_(x >> 16)
    return x.to(torch.float64).div_(float(_MOD))


def make_tensor(entry: RecipeEntry) -> torch.Tensor:
    """The tensor of one recipe entry: ``float32(a + b * hash_uniform)`` or int64 zeros."""
    if entry.dtype == "int64":  # BatchNorm num_batches_tracked
        return torch.zeros(entry.shape, dtype=torch.int64)
    if entry.dtype != "float32":
        raise ValueError(f"recipe entry {entry.key}: unsupported dtype {entry.dtype!r}")
    n = math.prod(entry.shape)  # prod(()) == 1 for 0-dim tensors
    return hash_uniform(n, entry.seed).mul_(entry.b).add_(entry.a).reshape(entry.shape).to(torch.float32)


def tensor_checksums(t: torch.Tensor) -> tuple[float, float]:
    """float64 sum and sum of squares of ``t``."""
    t64 = t.to(torch.float64)
    return float(t64.sum()), float((t64 * t64).sum())


def verify_entry(entry: RecipeEntry, t: torch.Tensor, *, rel_tol: float = 1e-9, abs_tol: float = 1e-9) -> None:
    """Raise :class:`RecipeChecksumError` unless ``t`` matches ``entry``'s shape and both checksums."""
    if tuple(t.shape) != entry.shape:
        raise RecipeChecksumError(f"{entry.module}.{entry.key}: shape {tuple(t.shape)} != recipe {entry.shape}")
    s, ss = tensor_checksums(t)
    for name, got, want in (("sum", s, entry.checksum_sum), ("sumsq", ss, entry.checksum_sumsq)):
        if not math.isclose(got, want, rel_tol=rel_tol, abs_tol=abs_tol):
            raise RecipeChecksumError(f"{entry.module}.{entry.key} (seed {entry.seed}): checksum_{name} {got!r} "
                                      f"!= recipe {want!r}")


def check_recipe_source(recipe_source: str) -> None:
    """Raise ``ValueError`` unless the fixture's recipe text uses the constants implemented here (never executed)."""
    missing = [c for c in RECIPE_CONSTANTS if c not in recipe_source]
    if missing or "hash_uniform" not in recipe_source:
        raise ValueError(f"recipe_source does not describe the implemented hash_uniform recipe "
                         f"(missing constants {missing})")


def recipe_modules(recipe: Iterable[Mapping[str, Any]]) -> list[str]:
    """The module names of a recipe, in order of first appearance."""
    return list(dict.fromkeys(str(e["module"]) for e in recipe))


def recipe_state_dict(recipe: Iterable[Mapping[str, Any]], recipe_source: str | None = None, *,
                      module: str | None = None, verify: bool = True) -> dict[str, torch.Tensor]:
    """Regenerate the state dict of a recipe golden, checking every tensor's checksums first.

    Args:
        recipe: the list of entries, e.g. ``golden["recipe"]["resnet18"]`` or ``golden["recipe"]["net_recon"]``.
        recipe_source: ``golden["recipe_source"]``; when given it must name this module's constants.
        module: keep only entries of this module (e.g. ``"depth_encoder"``); ``None`` keeps all of them.
        verify: check ``checksum_sum`` / ``checksum_sumsq`` (on by default; raises :class:`RecipeChecksumError`).

    Returns:
        ``{state-dict key: tensor}`` in recipe order, ready for ``load_state_dict(strict=True)``.
    """
    if recipe_source is not None:
        check_recipe_source(recipe_source)
    entries = [RecipeEntry.from_dict(e) for e in recipe]
    if module is not None:
        entries = [e for e in entries if e.module == module]
        if not entries:
            raise ValueError(f"recipe has no entries for module {module!r}")
    state: dict[str, torch.Tensor] = {}
    for entry in entries:
        if entry.key in state:
            raise ValueError(f"recipe key {entry.key!r} appears twice (pass module= to select one module)")
        t = make_tensor(entry)
        if verify:
            verify_entry(entry, t)
        state[entry.key] = t
    return state
