"""``reenact inspect DIR``: counts per stage, status histogram and throughput of a prepare folder.

Everything comes from ``config.json`` (the planned shards and stages) and the stats files
(``<stage>-<shard:05d>.stats.json``, the shards' done-markers, and the ``parts/<stage>/<key>.stats.json`` of items
finished in a run still going or interrupted); no Parquet is read. The report says whether the folder is
**complete**, **incomplete** (which shards are missing, which stats files are unreadable, whether a run holds
the folder) or **not a prepare folder** (a user error: one line, no traceback).
Throughput: ``frames / cpu_seconds`` is frames per second per core of the crop stage (its CPU seconds include
ffmpeg); the wall rate is items over the time from the run's start to its last finished shard.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines import availability
from pipelines.engine import LOCK_FILE, describe_holder
from reenact.config import UserError

_SHARD_STATS = re.compile(r"^(?P<stage>.+)-(?P<shard>\d{5})\.stats\.json$")


@dataclass
class StageSummary:
    """Totals of one stage over its finished shards, plus the parts of unfinished shards."""

    shards: int = 0
    items: int = 0
    rows: int = 0
    status: Counter = field(default_factory=Counter)
    sums: Counter = field(default_factory=Counter)      # numeric stats summed: frames, seconds, cpu_seconds, ...
    first_start: float | None = None
    last_finish: float | None = None
    parts_done: int = 0                                  # items finished in shards not yet merged

    def add_shard(self, stats: dict) -> None:
        self.shards += 1
        self.items += int(stats.get("items", 0))
        self.rows += int(stats.get("rows", 0))
        self.status.update(stats.get("status", {}))
        self.sums.update({k: v for k, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                          and k not in ("shard", "rows", "items", "finished_at", "run_started_at")})
        start, finish = stats.get("run_started_at"), stats.get("finished_at")
        if start is not None:
            self.first_start = start if self.first_start is None else min(self.first_start, start)
        if finish is not None:
            self.last_finish = finish if self.last_finish is None else max(self.last_finish, finish)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None when it cannot be read or is not an object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def shard_stats(root: Path) -> dict[tuple[str, int], dict[str, Any] | None]:
    """``(stage, shard) -> stats`` of every done-marker under ``root`` (None when unreadable)."""
    found = {}
    for path in sorted(root.glob("*.stats.json")):
        m = _SHARD_STATS.match(path.name)
        if m:
            found[m["stage"], int(m["shard"])] = read_json(path)
    return found


def collect(root: str | Path) -> dict[str, StageSummary]:
    """Per-stage summaries of the prepare folder ``root`` (unreadable stats files are left out)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"not a folder: {root}")
    summaries: dict[str, StageSummary] = {}
    for (stage, _), stats in shard_stats(root).items():
        summary = summaries.setdefault(stage, StageSummary())
        if stats is not None:
            try:
                summary.add_shard(stats)
            except (TypeError, ValueError, AttributeError):   # well-formed JSON with garbage inside
                pass
    for stage_dir in sorted(p for p in (root / "parts").glob("*") if p.is_dir()):
        summaries.setdefault(stage_dir.name, StageSummary()).parts_done = len(list(stage_dir.glob("*.stats.json")))
    return summaries


@dataclass(frozen=True)
class FolderState:
    """Whether a prepare folder is complete: planned shards and stages against the done-markers found."""

    root: Path
    stages: tuple[str, ...]
    shards: int | None                      # planned shards (None: no config.json to tell)
    done: dict[str, frozenset[int]]         # stage -> shards with a readable done-marker
    unreadable: tuple[str, ...]             # stats files that do not parse
    in_flight: int                          # item parts present (a run going, interrupted, or leftovers)
    holder: dict[str, Any] | None           # the run holding the folder's lock, if any

    @property
    def missing(self) -> list[str]:
        if self.shards is None:
            return []
        return [f"{stage}-{s:05d}" for stage in self.stages for s in range(self.shards)
                if s not in self.done.get(stage, frozenset())]

    @property
    def complete(self) -> bool:
        return self.shards is not None and not self.missing and not self.unreadable

    def describe(self) -> str:
        held = f"; a run holds the folder: {describe_holder(self.holder)}" if self.holder is not None else ""
        if self.complete:
            line = f"complete: {self.shards} shards of {', '.join(self.stages)}"
            return line + (f" ({self.in_flight} leftover parts; a rerun removes them)" if self.in_flight else "") + held
        why = []
        if self.shards is None:
            why.append("no readable config.json, so the planned shards are unknown")
        if self.missing:
            more = len(self.missing) - 6
            shown = ", ".join(self.missing[:6]) + (f" and {more} more" if more > 0 else "")
            why.append(f"missing {len(self.missing)} shards: {shown}")
        if self.unreadable:
            why.append(f"unreadable stats files: {', '.join(self.unreadable)}")
        if self.in_flight:
            why.append(f"{self.in_flight} items in flight")
        return "incomplete: " + "; ".join(why) + " (rerun the same prepare command to finish)" + held


def folder_state(root: str | Path) -> FolderState:
    """The state of a prepare folder; UserError when ``root`` is missing, a file, or not a prepare folder."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"no such folder: {root}")
    if not root.is_dir():
        raise UserError(f"not a folder: {root} (give the --out folder of `reenact prepare`)")
    config = read_json(root / "config.json") or {}
    provenance = config.get("provenance") if isinstance(config.get("provenance"), dict) else {}
    stats = shard_stats(root)
    if not stats and "stages" not in provenance:
        raise UserError(f"{root} is not a prepare folder (no config.json of `reenact prepare` and no shard stats)")
    stages = tuple(provenance.get("stages") or sorted({stage for stage, _ in stats}))
    shards = provenance.get("shards") if isinstance(provenance.get("shards"), int) else None
    done: dict[str, set[int]] = {}
    for (stage, shard), value in stats.items():
        if value is not None:
            done.setdefault(stage, set()).add(shard)
    unreadable = tuple(f"{stage}-{shard:05d}.stats.json" for (stage, shard), v in stats.items() if v is None)
    in_flight = sum(1 for _ in (root / "parts").glob("*/*.stats.json"))
    holder = read_json(root / LOCK_FILE) if (root / LOCK_FILE).is_file() and _locked(root / LOCK_FILE) else None
    return FolderState(root, stages, shards, {k: frozenset(v) for k, v in done.items()}, unreadable, in_flight,
                       holder)


def _locked(path: Path) -> bool:
    """True when a live run holds the lock file (a crashed run's file is stale)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def throughput_lines(summaries: dict[str, StageSummary]) -> list[str]:
    lines = []
    for name, s in summaries.items():
        if s.sums.get("cpu_seconds") and s.sums.get("frames"):
            lines.append(f"{name}: {s.sums['frames']:.0f} frames in {s.sums['cpu_seconds']:.1f} cpu-s = "
                         f"{s.sums['frames'] / s.sums['cpu_seconds']:.0f} frames/s per core")
        if s.first_start is not None and s.last_finish is not None and s.last_finish > s.first_start and s.items:
            wall = s.last_finish - s.first_start
            lines.append(f"{name}: {s.items} items in {wall:.1f} s wall = {s.items / wall:.2f} items/s")
    return lines


def render(root: str | Path, summaries: dict[str, StageSummary]) -> str:
    """A plain-text report."""
    out = [f"{root}", f"{'stage':<10} {'shards':>6} {'items':>7} {'rows':>9} {'in flight':>9}  status"]
    for name, s in summaries.items():
        hist = ", ".join(f"{k} {v}" for k, v in s.status.most_common()) or "-"
        out.append(f"{name:<10} {s.shards:>6} {s.items:>7} {s.rows:>9} {s.parts_done:>9}  {hist}")
    lines = throughput_lines(summaries)
    if lines:
        out += ["throughput:"] + [f"  {line}" for line in lines]
    return "\n".join(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="the --out folder of `reenact prepare`")
    parser.add_argument("--json", action="store_true", help="print the summaries as JSON")


def run(args: argparse.Namespace) -> int:
    state = folder_state(args.dir)
    summaries = collect(args.dir)
    if args.json:
        print(json.dumps({k: {"shards": s.shards, "items": s.items, "rows": s.rows, "status": dict(s.status),
                              "sums": dict(s.sums), "in_flight": s.parts_done} for k, s in summaries.items()}
                         | {"state": {"complete": state.complete, "missing": state.missing,
                                      "unreadable": list(state.unreadable), "describe": state.describe()}},
                         indent=2, sort_keys=True))
    else:
        print(render(args.dir, summaries))
        print(state.describe())
        print(availability.report(args.dir), end="")    # vox folders: per split and failure class, test chunk list
    return 0
