"""The one pipeline engine: a plan of work items in shards, stages that write one *part* per item, done markers,
resume, and a local or a Ray (Ray Data) executor.

Work item. A :class:`WorkItem` is one unit of work with a ``key`` (a safe id: it names the item's part files) and
its input ``job`` (JSON text: a video's clips, an identity folder's images, a block of pairs, ...). A
:class:`Plan` groups the items into shards (shard ``s`` becomes ``<stage>-<s:05d>.parquet``) and carries a
``fingerprint``: what its shards depend on (a rerun into the same folder must have the same one).

Stage. A function from a batch dict to a batch dict (the executors run it task-wise), or a small class with
``__init__``/``__call__`` when it holds state such as weights (actors). Each row of a batch is one item:
``key``, ``shard``, ``job`` plus the columns earlier stages added. For each item a stage writes the item's part
(``parts/<stage>/<key>.parquet`` + ``.stats.json`` done marker, :mod:`reenact.data.shards`) and may add columns
for later stages. :func:`ensure_part` is the resume rule for one item: the part is written again unless it is done
*and* was made from the same input token (the ``input`` its stats recorded).

Engine. :func:`run_plan` skips shards whose done marker exists for every stage, runs the pending items through the
stages, and as soon as every item of a shard has passed the last stage merges each stage's parts into the shard
(stats last, as the done marker) and removes the parts. A killed run loses at most the items in flight.

Guarantees every stage gets (issue 13). One run per output folder (:class:`FolderLock`: names the holder, stale
after a crash). The folder's fingerprint (:func:`fingerprint`: the plan's entries plus every stage's ``settings``
and ``version``) must match on resume, else :class:`SettingsChanged` names each differing setting
(``--new-folder`` writes into ``<out>-2`` instead); ``config.json`` keeps the earlier runs under ``history``. A rerun
removes temporary files and the parts of done shards a killed run left. SIGTERM unwinds like Ctrl-C, so Ray is
shut down and the lock released.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from reenact.config import UserError, save_run_config
from reenact.data.shards import (
    ParquetStream,
    atomic_write_json,
    is_done,
    iter_batches,
    merge_parts,
    part_is_current,
    part_paths,
    read_stats,
    remove_parts,
    shard_paths,
)

# ---------------------------------------------------------------- configuration shared by every dataset

@dataclass
class RunConfig:
    """Where a run writes and what it runs on (shared by every dataset's config)."""

    out: str | None = field(default=None, metadata={"help": "output folder (rerun to resume)", "required": True})
    executor: Literal["ray", "local"] = field(default="ray", metadata={
        "help": "ray: stages on Ray Data with their resources; local: one item after another in this process"})
    address: str | None = field(default=None, metadata={"help": "Ray cluster address (default: a local Ray)"})
    num_cpus: int | None = field(default=None, metadata={"help": "CPUs of the local Ray (default: all)"})
    keep_parts: bool = field(default=False, metadata={"help": "keep per-item parts after merging"})
    new_folder: bool = field(default=False, metadata={
        "help": "when --out holds a run with other settings, write into the first free <out>-2, <out>-3, ... "
                "instead of refusing"})
    progress: bool = field(default=True, metadata={"help": "progress bars"})
    dry_run: bool = field(default=False, metadata={"help": "print the config and plan, run nothing"})


# ---------------------------------------------------------------- one run per output folder

LOCK_FILE = ".reenact-lock.json"


class FolderInUse(UserError):
    """Another run holds the output folder's lock."""


def _holder() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": " ".join(sys.argv)}


def describe_holder(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "a run that is just starting"
    return (f"host {holder.get('host')}, pid {holder.get('pid')}, started {holder.get('started_at')} "
            f"({holder.get('command') or 'no command line'})")


class FolderLock:
    """One run per output folder: ``<root>/.reenact-lock.json`` names the holder (host, pid, start time, command)
    and is ``flock``-ed while held, so the kernel releases it when the holder dies: a crashed run's lock is stale
    and the next run takes it over. A second live run refuses at once (:class:`FolderInUse`, naming the holder).
    Use as a context manager; released (file removed) on exit."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.path = self.root / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> dict[str, Any] | None:
        """Take the lock; returns the record a crashed holder left (stale), or None."""
        self.root.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_record(fd)
                os.close(fd)
                raise FolderInUse(f"{self.root} is in use by another run: {describe_holder(holder)}. Wait for it or "
                                  "stop it (one run per output folder).") from None
            if _same_file(fd, self.path):
                break
            os.close(fd)                                # removed by a holder releasing it meanwhile: try again
        stale = _read_record(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder()).encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return stale

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> FolderLock:
        stale = self.acquire()
        if stale:
            log(f"{self.root}: taking over the lock of a run that ended without releasing it: {describe_holder(stale)}")
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_record(fd: int) -> dict[str, Any] | None:
    try:
        return json.loads(os.pread(fd, 1 << 16, 0).decode()) or None
    except ValueError:
        return None


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == path.stat().st_ino
    except FileNotFoundError:
        return False


# ---------------------------------------------------------------- work items, plans, stages

@dataclass(frozen=True)
class WorkItem:
    """One unit of work: ``key`` names its parts (a safe id), ``job`` is its input as JSON text."""

    key: str
    job: str


@dataclass(frozen=True)
class Plan:
    """Work items in shards, and the fingerprint a rerun into the same folder must match."""

    name: str                                        # what is prepared (logged, saved in config.json)
    shards: tuple[tuple[WorkItem, ...], ...]
    fingerprint: dict[str, Any]

    @property
    def items(self) -> int:
        return sum(map(len, self.shards))


def shard_items(items: Sequence[WorkItem], per_shard: int) -> tuple[tuple[WorkItem, ...], ...]:
    """Items in order, ``per_shard`` per shard (the last one may be smaller)."""
    if per_shard < 1:
        raise ValueError(f"items per shard must be >= 1, got {per_shard}")
    return tuple(tuple(items[i:i + per_shard]) for i in range(0, len(items), per_shard))


@dataclass(frozen=True)
class Stage:
    """One per-item stage: writes ``parts/<name>/<key>`` for every item and shards ``<name>-*.parquet``."""

    name: str
    fn: Callable | type             # batch dict -> batch dict; a class is built once per actor (or once locally)
    schema: pa.Schema
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    concurrency: int | None = None  # at most this many tasks (actors for a class) at once
    kwargs: dict[str, Any] = field(default_factory=dict)   # fn keywords, or constructor keywords for a class
    collect: tuple[str, ...] = ()   # part stats gathered, in item order, as lists into the shard's stats
    settings: dict[str, Any] = field(default_factory=dict)  # everything its outputs depend on (the fingerprint)
    version: int = 1                # bump when the stage's code changes its outputs

    def bound(self, out: str) -> dict[str, Any]:
        """The keywords of one run: the stage's own plus ``out``, the folder the engine writes (absolute)."""
        return {**self.kwargs, "out": out}

    def apply(self, ds, out: str):
        """``ds.map_batches`` with this stage's function and resources, one item per batch."""
        import ray.data

        args: dict[str, Any] = {"batch_size": 1, "num_cpus": self.num_cpus, "batch_format": "numpy"}
        if self.num_gpus:
            args["num_gpus"] = self.num_gpus
        if isinstance(self.fn, type):
            return ds.map_batches(self.fn, fn_constructor_kwargs=self.bound(out),
                                  compute=ray.data.ActorPoolStrategy(size=self.concurrency or 1), **args)
        compute = ray.data.TaskPoolStrategy(size=self.concurrency) if self.concurrency else None
        return ds.map_batches(self.fn, fn_kwargs=self.bound(out), compute=compute, **args)

    def local(self, out: str) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        """The batch function for the local executor (a class is built here, once)."""
        kwargs = self.bound(out)
        if isinstance(self.fn, type):
            return self.fn(**kwargs)
        return lambda batch: self.fn(batch, **kwargs)


def read_part_stats(out: str | Path, stage: str, key: str) -> dict[str, Any]:
    return json.loads(part_paths(out, stage, key)[1].read_text())


def ensure_part(out: str | Path, stage: str, key: str, token: str, write: Callable[[], Any]) -> dict[str, Any]:
    """The resume rule for one item: call ``write()`` (which writes the part of ``key`` in ``stage`` with ``token``
    as the ``input`` of its stats) unless that part is done and was made from ``token``; return the part's stats."""
    if not part_is_current(out, stage, key, token):
        write()
    return read_part_stats(out, stage, key)


# ---------------------------------------------------------------- executors

Row = dict[str, Any]


def init_ray(address: str | None, num_cpus: int | None) -> bool:
    """Connect to ``address`` or start a local Ray unless one is running; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"address": address} if address else {"num_cpus": num_cpus}
    ray.init(**kwargs, include_dashboard=False, configure_logging=False, log_to_driver=False)
    return True


def run_ray(items: list[Row], stages: Sequence[Stage], on_item: Callable[[Row], None], cfg: RunConfig,
            out: str) -> None:
    """Stream ``items`` through ``stages`` on Ray Data; call ``on_item`` as each one finishes the last stage."""
    started = init_ray(cfg.address, cfg.num_cpus)
    previous = stop_on_signals()
    try:
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = cfg.progress
        ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
        for stage in stages:
            ds = stage.apply(ds, out)
        for row in ds.iter_rows():
            on_item(row)
    finally:
        if started:
            import ray

            ray.shutdown()                          # also on Ctrl-C and SIGTERM: no Ray processes live on
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _terminate(signum: int, frame) -> None:
    raise SystemExit(128 + signum)


def stop_on_signals() -> Any:
    """Make SIGTERM unwind like Ctrl-C (SIGINT raises KeyboardInterrupt), so ``finally`` blocks shut Ray down and
    release the folder's lock; returns the previous handler (None outside the main thread, where nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _terminate)


def run_local(items: list[Row], stages: Sequence[Stage], on_item: Callable[[Row], None], cfg: RunConfig,
              out: str) -> None:
    """Run ``items`` one after another through ``stages`` in this process (no Ray); same parts, same shards."""
    fns = [stage.local(out) for stage in stages]
    for item in items:
        batch = {k: np.array([v], dtype=object) for k, v in item.items()}
        for fn in fns:
            batch = fn(batch)
        on_item({k: v[0] for k, v in batch.items()})


EXECUTORS: dict[str, Callable[[list[Row], Sequence[Stage], Callable[[Row], None], RunConfig, str], None]] = {
    "ray": run_ray, "local": run_local}


# ---------------------------------------------------------------- the engine

@dataclass(frozen=True)
class RunResult:
    """What a run left in its folder (counted over every done shard, skipped ones included)."""

    out: str                        # the folder written (another one than asked with --new-folder)
    shards: int
    shards_skipped: int
    items: int
    frames: int                     # ok frame rows in all shards of the reported stage
    status: dict[str, int]          # status histogram of all rows of the reported stage
    seconds: float


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def shard_done(out: str | Path, stages: Sequence[Stage], shard: int) -> bool:
    return all(is_done(out, stage.name, shard) for stage in stages)


class SettingsChanged(UserError):
    """The folder holds a run whose fingerprint differs from this run's."""


def fingerprint(plan: Plan, stages: Sequence[Stage]) -> dict[str, Any]:
    """Everything the outputs depend on, flat: the plan's entries plus ``<stage>.version`` and ``<stage>.<setting>``
    for every stage; JSON-normalised so that it compares equal to what ``config.json`` holds."""
    flat = dict(plan.fingerprint)
    for stage in stages:
        flat.update({f"{stage.name}.{k}": v for k, v in {"version": stage.version, **stage.settings}.items()})
    return json.loads(json.dumps(flat, sort_keys=True, default=str))


def recorded_fingerprint(out: Path) -> dict[str, Any] | None:
    """The fingerprint of the run recorded in ``out/config.json``, or None when there is none."""
    path = out / "config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("provenance", {}).get("plan")
    except (ValueError, AttributeError):
        raise UserError(f"{path} is not a readable run config; use a new --out") from None


def differences(earlier: dict[str, Any], now: dict[str, Any]) -> list[str]:
    missing = "(not recorded)"
    return [f"{k}: {earlier.get(k, missing)!r} there, {now.get(k, missing)!r} now"
            for k in sorted(set(earlier) | set(now)) if earlier.get(k, missing) != now.get(k, missing)]


def check_fingerprint(out: Path, now: dict[str, Any]) -> None:
    """Refuse to resume into ``out`` when its recorded run had other settings, naming each one that differs."""
    earlier = recorded_fingerprint(out)
    if earlier is not None and earlier != now:
        changed = "; ".join(differences(earlier, now))
        raise SettingsChanged(f"{out} holds a run with another plan or other settings ({changed}). Rerun with the "
                              "same settings, pass --new-folder to write into a new folder, or choose another --out.")


def free_folder(out: Path, now: dict[str, Any]) -> Path:
    """``out`` when it is empty or holds this fingerprint's run, else the first such ``<out>-2``, ``<out>-3``, ..."""
    candidate, n = out, 1
    while recorded_fingerprint(candidate) not in (None, now):
        n += 1
        candidate = out.with_name(f"{out.name}-{n}")
    if candidate != out:
        log(f"{out} holds a run with other settings: writing into {candidate}")
    return candidate


def pending_shards(out: Path, plan: Plan, stages: Sequence[Stage]) -> list[int]:
    """Shards without a done marker for some stage."""
    return [s for s in range(len(plan.shards)) if not shard_done(out, stages, s)]


def remove_stale_temps(out: Path) -> int:
    """Delete temporary files a killed run left (``.<name>.<pid>.tmp`` beside shards and parts, partial downloads
    under ``videos/.partial``); the caller holds the folder's lock."""
    folders = [out, *(out / "parts").glob("*"), *(out / "clips").glob("*")]
    stale = [p for d in folders for p in d.glob(".*.tmp*") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    partial = out / "videos" / ".partial"
    if partial.is_dir():
        shutil.rmtree(partial, ignore_errors=True)
    return len(stale)


def remove_leftover_parts(out: Path, plan: Plan, stages: Sequence[Stage]) -> None:
    """Delete the parts of shards that are already done (a run killed while removing them left them behind)."""
    if not (out / "parts").is_dir():
        return
    for s, items in enumerate(plan.shards):
        if shard_done(out, stages, s):
            for stage in stages:
                remove_parts(out, stage.name, [item.key for item in items])


def run_plan(cfg: RunConfig, plan: Plan, stages: Sequence[Stage], report: str = "frames",
             before: Callable[[Path], None] | None = None, t0: float | None = None,
             redo: Callable[[Path], dict[int, Sequence[str]]] | None = None) -> RunResult:
    """Run (or resume) the pending shards of ``plan`` through ``stages`` into ``cfg.out``.

    ``before(out)`` runs once the folder is checked and ready (e.g. writes a plan-wide shard); ``report`` names the
    stage whose frames and statuses the result and the log count; ``redo(out)`` names items of done shards to run
    again (by shard number, e.g. downloads to retry): those shards are reopened (:func:`reopen_shard`) and run.
    """
    t0 = time.time() if t0 is None else t0
    out, identity = Path(cfg.out), fingerprint(plan, stages)
    if cfg.dry_run:
        pending = pending_shards(out, plan, stages)
        print(json.dumps({"config": dataclasses.asdict(cfg), "plan": identity, "shards": len(plan.shards),
                          "pending_shards": len(pending), "stages": [s.name for s in stages]}, indent=2))
        return RunResult(str(out), len(plan.shards), len(plan.shards) - len(pending), plan.items, 0, {}, 0.0)
    if cfg.new_folder:
        out = free_folder(out, identity)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    with FolderLock(out):
        check_fingerprint(out, identity)
        pending = pending_shards(out, plan, stages)
        remove_stale_temps(out)
        if not cfg.keep_parts:
            remove_leftover_parts(out, plan, stages)
        save_run_config(cfg, out, history=True, plan=identity, shards=len(plan.shards),
                        stages=[s.name for s in stages], dataset=plan.name, out=str(out))
        if before is not None:
            before(out)
        if redo is not None:
            pending = reopen_shards(out, plan, stages, redo(out))
        if pending:
            _run_pending(out, cfg, plan, pending, stages, report, t0)
        return summary(out, plan, len(pending), report, time.time() - t0)


def _run_pending(out: Path, cfg: RunConfig, plan: Plan, pending: list[int], stages: Sequence[Stage], report: str,
                 t0: float) -> None:
    items = [{"key": item.key, "shard": s, "job": item.job} for s in pending for item in plan.shards[s]]
    remaining = {s: {item.key for item in plan.shards[s]} for s in pending}

    def on_item(row: Row) -> None:
        shard = int(row["shard"])
        remaining[shard].discard(row["key"])
        if not remaining[shard]:
            finalize_shard(out, stages, shard, [item.key for item in plan.shards[shard]], cfg.keep_parts, t0, report)

    EXECUTORS[cfg.executor](items, stages, on_item, cfg, str(out.resolve()))


def finalize_shard(out: Path, stages: Sequence[Stage], shard: int, keys: list[str], keep_parts: bool,
                   started_at: float, report: str = "frames") -> None:
    """Merge the parts of one finished shard, stage by stage (stats last), then drop the parts."""
    for stage in stages:
        parts = [read_part_stats(out, stage.name, k) for k in keys]       # kept: reopen_shard splits the shard
        extra: dict[str, Any] = {"run_started_at": started_at, "parts": parts}
        for name in stage.collect:
            extra[name] = [p.get(name) for p in parts]
        stats = merge_parts(out, stage.name, shard, keys, stage.schema, extra_stats=extra)
        if stage.name == report:
            log(f"shard {shard:05d} done: {len(keys)} items, {stats.get('frames', 0)} frames, "
                f"status {stats['status']}")
    if not keep_parts:
        for stage in stages:
            remove_parts(out, stage.name, keys)


def reopen_shard(out: Path, stages: Sequence[Stage], shard: int, keys: list[str], redo: set[str]) -> bool:
    """Make a done shard pending again so that the items ``redo`` run again: every other item's rows go back into
    its part with the stats it had (the stages reuse them), the parts of ``redo`` are removed, then the shard's
    done markers (its Parquet files stay until the shard is merged again). Safe to kill at any point: the shard
    stays done until its markers go. False, and nothing changed, for a shard merged without its items' stats."""
    recorded = {st.name: json.loads(shard_paths(out, st.name, shard)[1].read_text()).get("parts") for st in stages}
    if any(parts is None or [p.get("key") for p in parts] != keys for parts in recorded.values()):
        return False
    for stage in stages:
        split_shard(out, stage, shard, recorded[stage.name], redo)
    for stage in stages:
        shard_paths(out, stage.name, shard)[1].unlink(missing_ok=True)
    return True


def split_shard(out: Path, stage: Stage, shard: int, parts: list[dict[str, Any]], skip: set[str],
                batch_size: int = 256) -> None:
    """Stream one stage's shard back into the parts it was merged from (``parts``: their stats, in order), except
    the keys in ``skip``, whose parts are removed."""
    batches = iter_batches(shard_paths(out, stage.name, shard)[0], batch_size)     # image columns as bytes
    rest = stage.schema.empty_table()
    for stats in parts:
        key, need = stats["key"], stats["rows"]
        stream = None if key in skip else ParquetStream(part_paths(out, stage.name, key)[0], stage.schema)
        while need:
            if rest.num_rows == 0:
                rest = next(batches).cast(stage.schema)
            take = min(need, rest.num_rows)
            if stream is not None:
                stream.write(rest.slice(0, take))
            rest, need = rest.slice(take), need - take
        if stream is None:
            remove_parts(out, stage.name, [key])
        else:
            stream.close()
            atomic_write_json(part_paths(out, stage.name, key)[1], stats)


def reopen_shards(out: Path, plan: Plan, stages: Sequence[Stage], redo: dict[int, Sequence[str]]) -> list[int]:
    """Reopen the done shards of ``redo`` (shard -> item keys); return the pending shards after."""
    for shard, keys in sorted(redo.items()):
        if shard < len(plan.shards) and shard_done(out, stages, shard):
            if reopen_shard(out, stages, shard, [item.key for item in plan.shards[shard]], set(keys)):
                log(f"shard {shard:05d} reopened: {len(keys)} of {len(plan.shards[shard])} items run again")
            else:
                log(f"shard {shard:05d}: merged without its items' stats, cannot run {len(keys)} items again in "
                    "place (delete its files to redo the shard)")
    return pending_shards(out, plan, stages)


def summary(out: Path, plan: Plan, pending: int, report: str, seconds: float) -> RunResult:
    """Totals of the ``report`` stage over every done shard; logged in one line."""
    stats = read_stats(out, report)
    status: dict[str, int] = {}
    for s in stats:
        for k, v in s["status"].items():
            status[k] = status.get(k, 0) + v
    frames = sum(s.get("frames", 0) for s in stats)
    shards = len(plan.shards)
    log(f"prepare {plan.name}: {shards} shards ({shards - pending} skipped), {frames} frames, "
        f"{report} status {status}, {seconds:.1f} s")
    return RunResult(str(out), shards, shards - pending, plan.items, frames, status, seconds)
