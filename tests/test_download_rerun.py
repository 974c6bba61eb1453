"""Retrying failed downloads on a rerun (``reenact prepare vox --retry-failed``), end to end through the engine
against the local HTTP server failing on purpose: 503 on the first requests for some videos, 429 for a while, a
permanent 404 for one. The reference is a run in which nothing failed (same server, same URLs).

The local executor keeps these fast; the Ray variant is marked slow.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.availability import availability, read_chunk_list, report
from pipelines.engine import Stage
from pipelines.prepare import FramewiseStage, VoxConfig, prepare_vox
from reenact.data.shards import done_shards, read_stage, shard_paths
from tests.conftest import REPO, make_testsrc_clip
from tests.http_server import LocalServer

VIDEOS = [f"vid{k}" for k in range(6)]
#: shard 0: vid0 (first: 429 for a while) vid1 (503 twice), shard 1: vid2 vid3 (429 three times), shard 2: gone
#: (404) vid4, shard 3: vid5
ORDER = ["vid0", "vid1", "vid2", "vid3", "gone", "vid4", "vid5"]
FAILURES = {"vid1.mp4": [503, 503], "vid3.mp4": [429, 429, 429]}
VOLATILE = ("seconds", "attempts")          # differ between runs by nature


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Six 160x120 videos of 12 frames, one clip each (vid4, vid5 and gone in the test split), a local server."""
    root = tmp_path_factory.mktemp("world")
    files = {}
    for k, vid in enumerate(VIDEOS):
        path = root / f"{vid}.mp4"
        make_testsrc_clip(path, 12, hue=60 * k)
        files[path.name] = path.read_bytes()
    lines = ["video_id,start,end,bbox,fps,width,height,partition,person_id"]
    for k, vid in enumerate(ORDER):
        split = "test" if vid in ("gone", "vid4", "vid5") else "train"
        lines.append(f"{vid},0,8,{10 + k}-5-{110 + k}-105,25,160,120,{split},id{k:05d}")
    metadata = root / "vox-metadata.csv"
    metadata.write_text("\n".join(lines) + "\n")
    with LocalServer(files) as server:
        yield {"metadata": metadata, "server": server}


#: chunk ids the toy coefficient stage computed, in this process (the local executor runs stages here)
COMPUTED: list[str] = []
MEANS = pa.schema([("chunk_id", pa.string()), ("frame_index", pa.int32()), ("mean", pa.float64()),
                   ("status", pa.string()), ("error", pa.string())])


class MeanLevel:
    """A toy per-frame stage standing in for coefficients (mean grey level); records what it computed."""

    def __call__(self, batch):
        from reenact.data.codec import decode_image

        COMPUTED.extend(sorted(set(batch["chunk_id"])))
        means = [float(decode_image(b).mean()) if b is not None else None for b in batch["image"]]
        return {"chunk_id": batch["chunk_id"], "frame_index": batch["frame_index"], "mean": means,
                "status": batch["status"], "error": batch["error"]}


def downstream(out: Path) -> list[Stage]:
    return [Stage("means", FramewiseStage, MEANS, kwargs={"out": str(out.resolve()), "name": "means",
                                                           "schema": MEANS, "make_fn": MeanLevel})]


def run(world, out: Path, **kw):
    return prepare_vox(config(world, out, **kw), extra_stages=downstream(out))


def config(world, out: Path, **kw) -> VoxConfig:
    return VoxConfig(**settings(world, out, **kw))


def settings(world, out: Path, **kw) -> dict:
    return {"metadata": str(world["metadata"]), "out": str(out), "url_template": world["server"].template("good"),
            "videos_per_shard": 2, "executor": "local", "retries": 0, "backoff": 0.0, "socket_timeout": 10.0,
            "extractor": "none", "progress": False, "requests_per_second": 0.0, "throttle_pause": 0.2,
            "max_throttle_pause": 0.4, **kw}


def final_rows(out: Path) -> dict[str, list[dict]]:
    """Every stage's rows over its done shards, the volatile ledger columns dropped."""
    ledger = read_stage(out, "ledger").drop_columns(list(VOLATILE)).to_pylist()
    return {"ledger": ledger, "frames": read_stage(out, "frames").to_pylist(),
            "means": read_stage(out, "means").to_pylist()}


def ledger_classes(out: Path) -> dict[str, str]:
    table = read_stage(out, "ledger", columns=["video_id", "status", "failure"]).to_pylist()
    return {r["video_id"]: f"{r['status']}/{r['failure'] or 'ok'}" for r in table}


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    """A run in which nothing failed (the 404 is a 404 everywhere)."""
    world["server"].script = {}
    out = tmp_path_factory.mktemp("reference")
    run(world, out)
    return final_rows(out)


@pytest.fixture
def failed_run(world, reference, tmp_path):
    """A first run against the failing server: transient failures recorded as such. The server answers 429 to
    everything for 0.1 s from the first request (vid0's) on; the pause it causes (0.2 s) outlasts that."""
    world["server"].script = {name: list(codes) for name, codes in FAILURES.items()}
    world["server"].throttle(0.1)
    out = tmp_path / "out"
    run(world, out)
    return out


def test_first_run_records_failure_classes(failed_run):
    assert ledger_classes(failed_run) == {
        "vid0": "download_error/transient", "vid1": "download_error/transient", "vid2": "ok/ok", "vid3": "download_error/transient",
        "gone": "unavailable/permanent", "vid4": "ok/ok", "vid5": "ok/ok"}
    found = availability(failed_run)
    assert found.splits["train"].videos == {"ok": 1, "transient": 3, "permanent": 0, "pending": 0}
    assert found.splits["test"].videos == {"ok": 2, "transient": 0, "permanent": 1, "pending": 0}


def test_rerun_without_the_option_changes_nothing(world, failed_run):
    before = {p.name: p.read_bytes() for p in failed_run.glob("*-0000*.parquet")}
    hits = dict(world["server"].hits)
    run(world, failed_run)
    assert world["server"].hits == hits
    assert {p.name: p.read_bytes() for p in failed_run.glob("*-0000*.parquet")} == before


def test_retry_rerun_ends_like_a_run_without_failures(world, reference, failed_run):
    hits = dict(world["server"].hits)
    world["server"].script = {}                                            # the site is fine again
    COMPUTED.clear()
    result = run(world, failed_run, retry_failed="transient")
    assert COMPUTED == [f"id0000{k}#vid{k}#000000#000008" for k in (0, 1, 3)]       # the rest reused
    assert world["server"].hits["/good/gone.mp4"] == hits["/good/gone.mp4"]  # the 404 is not retried
    fetched = {p.split("/")[-1] for p in world["server"].hits if world["server"].hits[p] > hits.get(p, 0)}
    assert fetched == {"vid0.mp4", "vid1.mp4", "vid3.mp4"}                   # nothing else fetched again
    assert set(ledger_classes(failed_run).values()) == {"ok/ok", "unavailable/permanent"}
    assert final_rows(failed_run) == reference and result.shards == 4
    assert not list((failed_run / "parts").rglob("*.parquet"))              # parts merged and gone
    for shard in done_shards(failed_run, "frames"):                          # markers match their shards
        stats = json.loads(shard_paths(failed_run, "frames", shard)[1].read_text())
        assert stats["rows"] == pq.read_metadata(shard_paths(failed_run, "frames", shard)[0]).num_rows
    text = report(failed_run)
    assert "test chunks available: 2 of 3" in text
    assert read_chunk_list(failed_run / "available-test-chunks.txt") == ["id00005#vid4#000000#000008",
                                                                        "id00006#vid5#000000#000008"]


@pytest.mark.slow
def test_retry_all_also_tries_the_permanent_failure(world, failed_run):
    hits = world["server"].hits["/good/gone.mp4"]
    run(world, failed_run, retry_failed="all")
    assert world["server"].hits["/good/gone.mp4"] == hits + 1
    assert ledger_classes(failed_run)["gone"] == "unavailable/permanent"


@pytest.mark.slow
def test_kill_during_a_retry_rerun_then_rerun(world, reference, failed_run):
    """The retry rerun (a subprocess) is killed while vid3 is being fetched again (shard 0 already rewritten,
    shard 1 reopened); the same command again ends with the reference's rows, nothing twice."""
    server = world["server"]
    server.script, server.hold = {}, {"vid3.mp4"}
    server.gate.clear()
    code = ("import json, sys; from pathlib import Path; from pipelines.prepare import VoxConfig, prepare_vox; "
            "from tests.test_download_rerun import downstream; cfg = VoxConfig(**json.loads(sys.argv[1])); "
            "prepare_vox(cfg, extra_stages=downstream(Path(cfg.out)))")
    args = json.dumps(settings(world, failed_run, retry_failed="transient"))
    seen = server.hits["/good/vid3.mp4"]
    proc = subprocess.Popen([sys.executable, "-c", code, args], cwd=REPO, start_new_session=True,
                            env=os.environ | {"PYTHONPATH": str(REPO)}, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while server.hits["/good/vid3.mp4"] == seen and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the retry rerun ended before it was killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        server.hold = set()
        server.gate.set()
    assert shard_paths(failed_run, "frames", 0)[1].is_file() and not shard_paths(failed_run, "frames", 1)[1].is_file()
    run(world, failed_run, retry_failed="transient")
    rows = final_rows(failed_run)
    assert rows == reference
    assert len({r["video_id"] for r in rows["ledger"]}) == len(rows["ledger"]) == len(ORDER)
    assert len({(r["chunk_id"], r["frame_index"]) for r in rows["frames"]}) == len(rows["frames"])


@pytest.mark.slow
def test_retry_rerun_on_ray(world, reference, failed_run, ray_session):
    """The same retry rerun on the Ray executor (tasks share the run's limiter actor)."""
    world["server"].script = {}
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    run(world, failed_run, retry_failed="transient", executor="ray", download_concurrency=2)
    assert final_rows(failed_run) == reference


def test_retry_failed_option():
    import argparse

    from pipelines.prepare import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["vox", "--out", "o", "--metadata", "m"]
    assert [parser.parse_args(base + extra).retry_failed for extra in
            ([], ["--retry-failed"], ["--retry-failed=all"], ["--retry-failed", "none"])] == [
        "none", "transient", "all", "none"]
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--retry-failed=some"])


def test_split_shard_restores_the_parts_it_was_merged_from(tmp_path):
    """Parts of 30, 0 and 20 rows merged into a shard come back byte for byte (rows and stats) in batches of 7 that
    straddle them; a skipped key's part is removed."""
    from pipelines.engine import split_shard
    from reenact.data.shards import merge_parts, part_paths, write_part

    schema = pa.schema([("key", pa.string()), ("i", pa.int32()), ("status", pa.string())])
    sizes = {"a": 30, "b": 0, "c": 20}
    tables = {k: pa.table({"key": [k] * n, "i": list(range(n)), "status": ["ok"] * n}, schema=schema)
              for k, n in sizes.items()}
    stats = {k: write_part(tmp_path, "toy", k, t, extra_stats={"seconds": 0.5, "input": f"token-{k}"})
             for k, t in tables.items()}
    merge_parts(tmp_path, "toy", 0, list(sizes), schema)
    for k in sizes:
        for path in part_paths(tmp_path, "toy", k):
            path.unlink()
    write_part(tmp_path, "toy", "c", tables["c"].slice(0, 1))               # a stale part of the skipped key
    split_shard(tmp_path, Stage("toy", lambda b: b, schema), 0, [stats[k] for k in sizes], {"c"}, batch_size=7)
    for k in ("a", "b"):
        assert pq.read_table(part_paths(tmp_path, "toy", k)[0]).equals(tables[k])
        assert json.loads(part_paths(tmp_path, "toy", k)[1].read_text()) == stats[k]
    assert not any(p.exists() for p in part_paths(tmp_path, "toy", "c"))
