"""``reenact inspect DIR``: counts per stage, status histogram and throughput of a prepare folder.

Everything comes from the stats files (``<stage>-<shard:05d>.stats.json``, the shards' done-markers, and the
``parts/<stage>/<key>.stats.json`` of items finished in a run still going or interrupted); no Parquet is read.
Throughput: ``frames / cpu_seconds`` is frames per second per core of the crop stage (its CPU seconds include
ffmpeg); the wall rate is items over the time from the run's start to its last finished shard.
"""
from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pipelines import availability

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


def collect(root: str | Path) -> dict[str, StageSummary]:
    """Per-stage summaries of the prepare folder ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"not a folder: {root}")
    summaries: dict[str, StageSummary] = {}
    for path in sorted(root.glob("*.stats.json")):
        m = _SHARD_STATS.match(path.name)
        if m:
            summaries.setdefault(m["stage"], StageSummary()).add_shard(json.loads(path.read_text()))
    for stage_dir in sorted(p for p in (root / "parts").glob("*") if p.is_dir()):
        summaries.setdefault(stage_dir.name, StageSummary()).parts_done = len(list(stage_dir.glob("*.stats.json")))
    return summaries


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
    summaries = collect(args.dir)
    if args.json:
        print(json.dumps({k: {"shards": s.shards, "items": s.items, "rows": s.rows, "status": dict(s.status),
                              "sums": dict(s.sums), "in_flight": s.parts_done} for k, s in summaries.items()},
                         indent=2, sort_keys=True))
    else:
        print(render(args.dir, summaries))
        print(availability.report(args.dir), end="")    # vox folders: per split and failure class, test chunk list
    return 0
