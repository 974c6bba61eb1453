"""The pipeline engine (pipelines/engine.py) running ``prepare vox`` (pipelines/prepare.py), and ``reenact
inspect``: plan, end to end on a tiny world, kill and resume.

Two tests use Ray (the shared ``ray_session``, which a killed driver subprocess joins); the rest are pure.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.engine import Stage, check_fingerprint, remove_stale_temps
from pipelines.inspect import collect, render
from pipelines.metadata import VideoJob
from pipelines.prepare import FramewiseStage, VoxConfig, prepare_vox, shard_plan
from reenact.data.schema import FRAMES
from reenact.data.shards import part_paths, read_stage, write_part
from tests.conftest import REPO, make_testsrc_clip
from tests.http_server import LocalServer

VIDEOS = [f"vid{k}" for k in range(6)]
FRAMES_PER_VIDEO = 40


# ---------------------------------------------------------------- a tiny world served over HTTP

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Six 160x120 clips of 40 frames, a metadata CSV (good, bad and unsafe rows) and a local server."""
    root = tmp_path_factory.mktemp("world")
    files = {}
    for k, vid in enumerate(VIDEOS):
        path = root / f"{vid}.mp4"
        make_testsrc_clip(path, FRAMES_PER_VIDEO, hue=60 * k)
        files[path.name] = path.read_bytes()
    lines = ["video_id,start,end,bbox,fps,width,height,partition,person_id"]
    for k, vid in enumerate(VIDEOS):
        part = "test" if k == 5 else "train"
        lines += [f"{vid},0,20,{10 + k}-5-{110 + k}-105,25,160,120,{part},id{k:05d}",
                  f"{vid},15,40,20-10-120-110,25,160,120,{part},id{k:05d}"]
    lines += ["vid1,30,60,0-0-100-100,25,160,120,train,id00001",      # beyond the 40 frames: too_short
              "vid2,0,10,200-150-300-250,25,160,120,train,id00002",   # outside the frame: out_of_frame
              "gone,0,10,0-0-100-100,25,160,120,train,id00099",       # 404: unavailable
              "vid3,5,1,0-0-100-100,25,160,120,train,id00003",        # end < start: bad_metadata
              "../../etc/passwd,0,10,0-0-10-10,25,160,120,train,id1"]  # rejected
    metadata = root / "vox-metadata.csv"
    metadata.write_text("\n".join(lines) + "\n")
    with LocalServer(files) as server:
        yield {"root": root, "metadata": metadata, "server": server}


def config(world, out: Path, **kw) -> VoxConfig:
    return VoxConfig(metadata=str(world["metadata"]), out=str(out),
                         url_template=world["server"].template("good"), videos_per_shard=2, num_cpus=2,
                         retries=0, backoff=0.0, socket_timeout=10.0, download_concurrency=2, progress=False,
                         **{"extractor": "none", **kw})


class MeanBrightness:
    """A toy frame-row stage for the append hook: one row per frame with its mean grey level."""

    def __call__(self, batch):
        from reenact.data.codec import decode_image

        means = [float(decode_image(b).mean()) if b is not None else None for b in batch["image"]]
        return {"chunk_id": batch["chunk_id"], "frame_index": batch["frame_index"], "mean": means,
                "status": batch["status"], "error": batch["error"]}


BRIGHTNESS = pa.schema([("chunk_id", pa.string()), ("frame_index", pa.int32()), ("mean", pa.float64()),
                        ("status", pa.string()), ("error", pa.string())])


def brightness_stage(out: Path) -> Stage:
    return Stage("brightness", FramewiseStage, BRIGHTNESS, num_cpus=1, concurrency=1,
                 kwargs={"name": "brightness", "schema": BRIGHTNESS, "make_fn": MeanBrightness})


@pytest.fixture(scope="module")
def reference(world, ray_session, tmp_path_factory):
    """An uninterrupted run, with an appended toy stage (pickled by value: workers cannot import tests)."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    out = tmp_path_factory.mktemp("reference")
    result = prepare_vox(config(world, out), extra_stages=[brightness_stage(out)])
    return out, result


# ---------------------------------------------------------------- pure parts

def test_shard_plan_groups_videos_in_metadata_order():
    jobs = [VideoJob(f"v{k}", "p", "train", 25.0, 10, 10, ()) for k in range(5)]
    plan = shard_plan(jobs, 2)
    assert [[j.key for j in s] for s in plan] == [["v0", "v1"], ["v2", "v3"], ["v4"]]


def test_rerun_with_another_plan_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"provenance": {"plan": {"videos_per_shard": 2}}}))
    check_fingerprint(tmp_path, {"videos_per_shard": 2})
    with pytest.raises(ValueError, match="another plan .*videos_per_shard: 2 there, 3 now"):
        check_fingerprint(tmp_path, {"videos_per_shard": 3})


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="videos_per_shard"):
        VoxConfig(metadata="m", out="o", videos_per_shard=0)
    with pytest.raises(ValueError, match="single field"):
        VoxConfig(metadata="m", out="o", url_template="https://x/{id}")


def test_remove_stale_temps(tmp_path):
    (tmp_path / "parts" / "frames").mkdir(parents=True)
    stale = [tmp_path / ".frames-00000.parquet.123.tmp", tmp_path / "parts" / "frames" / ".v.parquet.9.tmp.old"]
    for p in stale + [tmp_path / "frames-00000.parquet"]:
        p.write_bytes(b"x")
    assert remove_stale_temps(tmp_path) == 2
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["frames-00000.parquet"]


def test_framewise_stage_writes_one_row_per_frame(tmp_path):
    frames = pa.Table.from_pylist([
        {"chunk_id": "p#v#000000#000002", "video_id": "v", "person_id": "p", "partition": "train", "frame_index": i,
         "source_frame": i, "image": None, "image_format": None, "height": None, "width": None,
         "status": "no_face", "error": "x"} for i in range(3)], schema=FRAMES)
    write_part(tmp_path, "frames", "v", frames)
    stage = FramewiseStage(str(tmp_path), "brightness", BRIGHTNESS, MeanBrightness)
    stage({"key": np.array(["v"], dtype=object)})
    got = pq.read_table(part_paths(tmp_path, "brightness", "v")[0])
    assert got.column("frame_index").to_pylist() == [0, 1, 2] and got.column("status").to_pylist() == ["no_face"] * 3


def test_inspect_reports_counts_status_and_throughput(tmp_path, capsys):
    for shard, (frames, cpu) in enumerate([(100, 0.5), (50, 0.25)]):
        (tmp_path / f"frames-{shard:05d}.stats.json").write_text(json.dumps({
            "stage": "frames", "shard": shard, "rows": frames + 1, "items": 2, "frames": frames, "cpu_seconds": cpu,
            "status": {"ok": frames, "too_short": 1}, "run_started_at": 1000.0, "finished_at": 1010.0 + shard}))
    (tmp_path / "parts" / "frames").mkdir(parents=True)
    (tmp_path / "parts" / "frames" / "v9.stats.json").write_text("{}")
    summary = collect(tmp_path)["frames"]
    assert (summary.shards, summary.items, summary.rows, summary.parts_done) == (2, 4, 152, 1)
    assert summary.status == {"ok": 150, "too_short": 2}
    text = render(tmp_path, collect(tmp_path))
    assert "150 frames in 0.8 cpu-s = 200 frames/s per core" in text and "4 items in 11.0 s wall" in text
    import argparse

    from pipelines.inspect import run

    run(argparse.Namespace(dir=str(tmp_path), json=True))
    assert json.loads(capsys.readouterr().out)["frames"]["status"] == {"ok": 150, "too_short": 2}


# ---------------------------------------------------------------- Ray: end to end, then kill and resume

@pytest.mark.slow
def test_end_to_end_on_a_tiny_world(reference, world):
    out, result = reference
    assert result.shards == 4 and result.shards_skipped == 0
    frames = read_stage(out, "frames").to_pylist()
    ok = [r for r in frames if r["status"] == "ok"]
    # every complete clip has end - start frames (fps equals the reference fps)
    per_chunk = {}
    for r in ok:
        per_chunk[r["chunk_id"]] = per_chunk.get(r["chunk_id"], 0) + 1
    assert len(per_chunk) == 12 and all(n == int(k[-6:]) - int(k[-13:-7]) for k, n in per_chunk.items())
    failed = {r["chunk_id"]: r["status"] for r in frames if r["status"] != "ok"}
    assert failed == {"id00001#vid1#000030#000060": "too_short", "id00002#vid2#000000#000010": "out_of_frame",
                      "id00099#gone#000000#000010": "unavailable"}
    ledger = {r["video_id"]: r["status"] for r in read_stage(out, "ledger").to_pylist()}
    assert ledger == {**{v: "ok" for v in VIDEOS}, "gone": "unavailable"}
    meta = read_stage(out, "metadata").to_pylist()
    assert sorted(r["status"] for r in meta if r["status"] != "ok") == ["bad_metadata", "rejected"]
    assert {r["out_partition"] for r in meta if r["video_id"] == "vid5"} == {"test"}
    brightness = read_stage(out, "brightness")
    assert brightness.num_rows == len(frames)                       # the appended stage saw every row
    assert not list((out / "parts").rglob("*.parquet"))             # parts merged and removed
    assert json.loads((out / "config.json").read_text())["provenance"]["plan"]["videos"] == 7
    text = render(out, collect(out))
    assert "frames/s per core" in text and "unavailable 1" in text


def _parent_pid() -> int:
    return os.getppid()


def _start_time(pid: int) -> int:
    """Start time of a process in clock ticks since boot (/proc/<pid>/stat field 22)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def _children_started_after(parent: int, ticks: int) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            if name.isdigit() and int(stat[1]) == parent and int(stat[19]) >= ticks:
                pids.append(int(name))
        except (OSError, IndexError, ValueError):
            pass
    return pids


def comparable(out: Path, stage: str) -> pa.Table:
    table = read_stage(out, stage)
    if stage == "ledger":                                            # history, not result
        table = table.drop(["attempts", "seconds"])
    return table


@pytest.mark.slow
def test_kill_and_resume_equals_an_uninterrupted_run(reference, world, ray_session, tmp_path):
    """A driver on the same Ray cluster (``--address``) is SIGKILLed with its workers once a shard is done."""
    ref_out, _ = reference
    server = world["server"]
    out = tmp_path / "killed"
    raylet = ray_session.get(ray_session.remote(_parent_pid).remote())   # the raylet: parent of every worker
    server.gate.clear()
    server.hold = {f"{v}.mp4" for v in VIDEOS[3::2]}                # shards 1 and 2 cannot finish before the kill
    # Three download slots for two held videos: one slot is always free for shard 0 (with one slot, a held video often
    # took it first and shard 0 finished only when that request timed out).
    cmd = [sys.executable, "-m", "reenact.app.cli", "prepare", "vox", "--metadata", str(world["metadata"]),
           "--out", str(out), "--url-template", server.template("good"), "--videos-per-shard", "2",
           "--address", ray_session.get_runtime_context().gcs_address, "--retries", "0", "--backoff", "0",
           "--socket-timeout", "60", "--download-concurrency", "3", "--no-progress", "--extractor", "none"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = _start_time(proc.pid)
    try:
        deadline = time.time() + 240
        while not (out / "frames-00000.stats.json").exists():
            assert proc.poll() is None, "the driver exited before it could be killed"
            assert time.time() < deadline, "shard 0 never finished"
            time.sleep(0.5)
        time.sleep(1.0)                                              # let downloads of later shards be in flight
    finally:
        proc.kill()                                                  # SIGKILL the driver ...
        proc.wait()
        for pid in _children_started_after(raylet, started):        # ... and the workers it started
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    assert (out / "parts" / "ledger").is_dir() and not (out / "frames-00002.stats.json").exists()
    server.hold = set()
    server.gate.set()
    result = prepare_vox(config(world, out))
    assert result.shards_skipped >= 1
    for stage in ("metadata", "ledger", "frames"):
        got, want = comparable(out, stage), comparable(ref_out, stage)
        assert got.num_rows == want.num_rows and got.equals(want), f"{stage} differs after kill and resume"
    keys = read_stage(out, "frames", ["chunk_id", "frame_index"])
    assert len(set(zip(*keys.to_pydict().values()))) == keys.num_rows   # no duplicate rows
    assert not list(out.rglob(".*.tmp*"))
