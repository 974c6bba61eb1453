"""Typed configuration: a dataclass is the single source of a command's options.

``add_dataclass_arguments`` turns the fields of a config dataclass into argparse options (help text from
``field(metadata={"help": ...})``); ``from_namespace`` builds the config back; ``save_run_config`` writes it,
with provenance, next to the outputs (``<run_dir>/config.json``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import subprocess
import sys
import time
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class UserError(ValueError):
    """A mistake the user can fix (a bad option, a missing or wrong input, a folder in use): the command line
    prints its message as one line and exits non-zero (``reenact --debug`` shows the traceback)."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one ``--option`` per dataclass field (bools become ``--x/--no-x``, Literals become choices)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False:
            continue
        kind = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        helptext = f.metadata.get("help", "") + (f" (default: {default})" if default is not None else "")
        kwargs: dict[str, Any] = {"default": default, "help": helptext, "dest": f.name}
        origin, args = typing.get_origin(kind), typing.get_args(kind)
        if kind is bool:
            parser.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if origin is typing.Literal:
            kwargs["choices"], kind = list(args), type(args[0])
        elif origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            kind = next(a for a in args if a is not type(None))
        if typing.get_origin(kind) in (list, tuple):
            kwargs["nargs"], kind = "+", typing.get_args(kind)[0]
        if "const" in f.metadata:                       # --x alone means const, --x=value a value
            kwargs["nargs"], kwargs["const"] = "?", f.metadata["const"]
        if default is None and f.metadata.get("required"):
            kwargs["required"] = True
        parser.add_argument(_flag(f.name), type=kind, **kwargs)


def from_namespace(cls: type[T], ns: argparse.Namespace) -> T:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(ns).items() if k in names})


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The current git commit (with ``-dirty`` when the tree has changes), or None outside a checkout."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(**extra: Any) -> dict[str, Any]:
    """Where a result came from: git commit, interpreter, key package versions, time, plus ``extra``."""
    versions = {}
    for mod in ("torch", "numpy", "ray", "pyarrow"):
        m = sys.modules.get(mod)
        if m is not None:
            versions[mod] = getattr(m, "__version__", "?")
    return {"git_commit": git_commit(), "python": platform.python_version(), "versions": versions,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra}


def to_jsonable(cfg: Any) -> Any:
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg


def save_run_config(cfg: Any, run_dir: str | Path, history: bool = False, **extra: Any) -> Path:
    """Write ``config.json`` (config + provenance) into ``run_dir`` and return its path.

    ``history``: keep the runs recorded there before, oldest first, under ``"history"`` (each its config and
    provenance) instead of overwriting them.
    """
    from reenact.files import atomic_write_json

    path = Path(run_dir) / "config.json"
    record: dict[str, Any] = {"config": to_jsonable(cfg), "provenance": provenance(**extra)}
    if history:
        record["history"] = earlier_runs(path)
    atomic_write_json(path, record)
    return path


def earlier_runs(path: Path) -> list[dict[str, Any]]:
    """The runs a ``config.json`` records (its history, then itself), or [] when there is none."""
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(earlier, dict):
        return []
    return list(earlier.pop("history", [])) + [earlier]


def dump(cfg: Any) -> str:
    return json.dumps(to_jsonable(cfg), indent=2, sort_keys=True, default=str)
