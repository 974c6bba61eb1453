"""Hardening of the engine and its parsers (issue 13): one run per folder, resume only with the same settings,
parsers that never hang or crash, deterministic error texts, leftovers removed, clear user errors.

Every test here failed before its fix. Engine tests use the local executor (no Ray); the property tests run a
bounded number of examples, each under a deadline.
"""
from __future__ import annotations

import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.crop import _first_index, frame_range
from pipelines.engine import (
    LOCK_FILE,
    FolderInUse,
    FolderLock,
    Plan,
    RunConfig,
    SettingsChanged,
    Stage,
    WorkItem,
    ensure_part,
    fingerprint,
    run_plan,
    shard_items,
)
from pipelines.inspect import folder_state
from pipelines.metadata import COLUMNS, metadata_table, parse_csv_text, parse_row, video_jobs
from reenact.config import UserError
from reenact.data.schema import METADATA, ChunkId, clean_error, is_safe_id
from reenact.data.shards import read_stage, write_part
from tests.conftest import REPO

PROPERTY = settings(max_examples=200, deadline=500, derandomize=True)


# ---------------------------------------------------------------- ids

def test_an_id_with_a_final_newline_is_unsafe():
    assert not is_safe_id("Jack_Ma\n") and is_safe_id("Jack_Ma")
    with pytest.raises(ValueError):
        ChunkId.parse("p#v#000000#000010\n")


@PROPERTY
@given(st.text(max_size=80))
def test_safe_ids_are_matched_whole(text):
    """Brute-force reference: every character in [A-Za-z0-9_-], 1 to 64 of them."""
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
    assert is_safe_id(text) == (1 <= len(text) <= 64 and set(text) <= allowed)


# ---------------------------------------------------------------- user mistakes on the command line

def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reenact.app.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})


def _one_line_error(res: subprocess.CompletedProcess) -> bool:
    return res.returncode == 2 and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_cli_user_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    from reenact.app import cli

    (tmp_path / "empty.csv").write_text("")
    args = ["prepare", "vox", "--out", str(tmp_path / "out"), "--metadata", str(tmp_path / "empty.csv"),
            "--extractor", "none", "--executor", "local"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a vox-metadata.csv" in err and "an empty file" in err
    with pytest.raises(UserError):
        cli.main(["--debug", *args])
    assert cli.main(["prepare", "vox", "--out", "o", "--metadata", "m", "--url-template", "https://x/{id}"]) == 2
    assert "single field" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_one_line_in_a_subprocess(tmp_path):
    res = _cli("prepare", "vox", "--out", str(tmp_path / "o"), "--metadata", str(tmp_path / "missing.csv"),
               "--extractor", "none", "--executor", "local")
    assert _one_line_error(res) and "missing.csv" in res.stderr, res.stderr


# ---------------------------------------------------------------- the metadata parser and frame arithmetic

ROW = ["v1", "0", "10", "0-0-10-10", "25", "100", "100", "train", "p1"]


def _with(index: int, value: str) -> list[str]:
    fields = list(ROW)
    fields[index] = value
    return fields


@pytest.mark.parametrize("index,value", [(4, "1e-300"), (4, "1e300"), (4, "nan"), (4, "0.5"), (2, "99999999999"),
                                         (5, "3000000000"), (3, "0-0-9999999999-10"), (1, "--5"), (6, "1e3")])
def test_out_of_range_numbers_are_bad_rows(index, value):
    row = parse_row(_with(index, value), 2)
    assert row.status == "bad_metadata" and row.error, (value, row)
    assert parse_row(ROW, 2).status == "ok"


def test_numbers_at_the_bounds_are_kept():
    row = parse_row(_with(2, str(2**31 - 1)), 2)
    assert row.status == "ok" and row.end == 2**31 - 1
    assert parse_row(_with(4, "1000"), 2).status == "ok" and parse_row(_with(4, "1"), 2).status == "ok"
    metadata_table([row], video_jobs([row])).cast(METADATA)               # fits the int32 columns


def test_an_over_long_field_is_a_bad_row_and_parsing_goes_on():
    text = ",".join(COLUMNS) + "\n" + ",".join(_with(8, "x" * 200_000)) + "\n" + ",".join(ROW) + "\n"
    rows = parse_csv_text(text)
    assert [r.status for r in rows] == ["bad_metadata", "ok"] and "longer than" in rows[0].error
    assert len(rows[0].video_id) < 100


def test_first_index_never_loops_on_floats():
    """fps 1e-300 once made ``i * ref_fps`` stop changing; now the rate is refused and the loop is bounded."""
    with pytest.raises(ValueError, match="within"):
        frame_range(0, 10, 25.0, 1e-300)
    with pytest.raises(ValueError, match="does not settle"):
        _first_index(10, 25.0, 1e-300)
    # brute force: the smallest i with i * ref >= bound * fps
    for bound, fps, ref in [(0, 25.0, 25.0), (10, 30.0, 25.0), (7, 29.97, 30.0), (2**31 - 1, 1000.0, 1.0)]:
        i = _first_index(bound, fps, ref)
        assert i * ref >= bound * fps and (i == 0 or (i - 1) * ref < bound * fps)


_field = st.one_of(st.text(max_size=12), st.integers(-2**40, 2**40).map(str),
                   st.floats(allow_nan=True, allow_infinity=True).map(repr),
                   st.sampled_from(["", "0-0-1-1", "25", "3-4-1-2", "0-0-99999999999-1"]))


@PROPERTY
@given(st.lists(st.lists(_field, min_size=0, max_size=11), max_size=6))
def test_metadata_parser_gives_rows_for_any_input(records):
    """Any CSV body gives one row per record with a status; every row fits the METADATA table's column types."""
    buf = io.StringIO()
    csv.writer(buf).writerows([list(COLUMNS), *records])
    rows = parse_csv_text(buf.getvalue())
    assert len(rows) == sum(1 for r in records if r)
    for row in rows:
        assert row.status in ("ok", "bad_metadata", "rejected")
        if row.status == "ok":
            assert 1 <= row.fps <= 1000 and 0 <= row.start < row.end < 2**31
    metadata_table(rows, video_jobs(rows)).cast(METADATA)


# ---------------------------------------------------------------- deterministic error texts

def test_error_texts_drop_addresses_and_temporary_names():
    a = "[in#0 @ 0x55fb3c2a9e40] Error opening input; /tmp/tmpab12cd_9/x.mp4; .v.parquet.4242.tmp <Image at 0x7f00aa>"
    b = "[in#0 @ 0x5612aa010203] Error opening input; /tmp/tmpzz99yy_1/x.mp4; .v.parquet.77.tmp <Image at 0x7f11bb>"
    assert clean_error(a) == clean_error(b) == ("[in#0 @ 0xADDR] Error opening input; /tmp/tmpXXXXXXXX/x.mp4; "
                                                ".v.parquet.PID.tmp")


def test_two_crops_of_a_corrupt_video_write_identical_rows(tmp_path):
    """ffmpeg prints a pointer address that changes with every process: the rows must not carry it."""
    from pipelines.crop import CropSettings, crop_video
    from reenact.data.shards import part_paths

    bad = tmp_path / "v1.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    (job,) = video_jobs([parse_row(ROW, 2)])
    tables = []
    for name in ("a", "b"):
        crop_video(job, bad, tmp_path / name, CropSettings())
        tables.append(pq.read_table(part_paths(tmp_path / name, "frames", "v1")[0]))
    assert tables[0].column("status").to_pylist() == ["decode_error"]
    assert "0x" not in tables[0].column("error")[0].as_py().replace("0xADDR", "")
    assert tables[0].equals(tables[1])


# ---------------------------------------------------------------- a toy stage on the engine (local executor)

ITEM = pa.schema([("key", pa.string()), ("value", pa.int64()), ("status", pa.string()), ("error", pa.string())])


def square_stage(batch, *, out, power: int = 2, delay: float = 0.0):
    """Writes one row per item, ``int(job) ** power``; the part's input token is the job and the power."""
    for key, job in zip(batch["key"], batch["job"]):
        token = f"{job}|{power}"

        def write(key=key, job=job, token=token):
            time.sleep(delay)
            table = pa.table({"key": [key], "value": [int(job) ** power], "status": ["ok"], "error": [""]},
                             schema=ITEM)
            write_part(out, "squares", key, table, extra_stats={"input": token})

        ensure_part(out, "squares", key, token, write)
    return batch


def toy_plan(n: int = 5, per_shard: int = 2) -> Plan:
    return Plan("toy", shard_items([WorkItem(f"k{i}", str(i)) for i in range(n)], per_shard),
                {"items": n, "per_shard": per_shard})


def run_toy(out, power: int = 2, delay: float = 0.0, **cfg):
    stages = [Stage("squares", square_stage, ITEM, kwargs={"power": power, "delay": delay}, settings={"power": power})]
    return run_plan(RunConfig(**{"out": str(out), "executor": "local", "progress": False, **cfg}), toy_plan(), stages,
                    report="squares")


# ---------------------------------------------------------------- one run per folder

def test_lock_names_the_holder_and_is_released(tmp_path):
    with FolderLock(tmp_path):
        with pytest.raises(FolderInUse, match=rf"pid {os.getpid()}, started 20") as err:
            FolderLock(tmp_path).acquire()
        assert socket.gethostname() in str(err.value)
    assert not (tmp_path / LOCK_FILE).exists()
    with FolderLock(tmp_path):                                      # released on exit: free again
        pass


def test_a_crashed_runs_lock_is_stale(tmp_path):
    code = f"import os; from pipelines.engine import FolderLock; FolderLock({str(tmp_path)!r}).acquire(); os._exit(9)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          timeout=60).returncode == 9                # died holding the lock
    lock = FolderLock(tmp_path)
    stale = lock.acquire()                                          # taken over; the dead holder is reported
    assert stale is not None and stale["pid"] != os.getpid()
    lock.release()


@pytest.mark.slow
def test_two_concurrent_runs_the_second_refuses_naming_the_first(tmp_path):
    out = tmp_path / "out"
    code = f"from tests.test_hardening import run_toy; run_toy({str(out)!r}, delay=0.4)"
    first = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.time() + 60
        while not (out / "config.json").exists():
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.05)
        with pytest.raises(FolderInUse, match=rf"pid {first.pid}, started 20"):
            run_toy(out)
    finally:
        assert first.wait(60) == 0
    run_toy(tmp_path / "solo")
    for shard in range(3):
        assert (out / f"squares-{shard:05d}.parquet").read_bytes() == \
            (tmp_path / "solo" / f"squares-{shard:05d}.parquet").read_bytes()


def test_output_path_that_is_a_file_is_a_user_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        run_toy(tmp_path / "file")


# ---------------------------------------------------------------- resume only with the same settings

def test_resume_with_a_changed_setting_refuses_and_names_it(tmp_path):
    first = run_toy(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.glob("*.parquet")}
    with pytest.raises(SettingsChanged, match=r"squares\.power: 2 there, 3 now"):
        run_toy(tmp_path, power=3)
    again = run_toy(tmp_path)                                       # the same settings: a no-op
    assert again.shards_skipped == again.shards == first.shards
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.parquet")} == before
    record = json.loads((tmp_path / "config.json").read_text())
    assert len(record["history"]) == 1 and record["history"][0]["provenance"]["plan"]["squares.power"] == 2


def test_new_folder_when_asked(tmp_path):
    run_toy(tmp_path / "out")
    result = run_toy(tmp_path / "out", power=3, new_folder=True)
    assert Path(result.out) == tmp_path / "out-2"
    assert read_stage(result.out, "squares").column("value").to_pylist() == [i ** 3 for i in range(5)]
    assert run_toy(tmp_path / "out", power=3, new_folder=True).shards_skipped == 3     # finds its folder again


def test_every_output_setting_is_in_the_fingerprint(tmp_path):
    """Resuming a PNG/oracle folder with --extractor landmarks --image-format jpeg once skipped everything."""
    from pipelines.prepare import CelebVConfig, VoxConfig, prepare_celebv, prepare_vox, vox_stages

    (tmp_path / "m.csv").write_text(",".join(COLUMNS) + "\n")
    base = {"metadata": str(tmp_path / "m.csv"), "extractor": "none", "executor": "local", "progress": False}
    prepare_vox(VoxConfig(out=str(tmp_path / "o"), **base))
    for change, name in ((dict(image_format="jpeg"), "frames.image_format"), (dict(write_mp4=True), "frames.write_mp4"),
                         (dict(url_template="http://x/{video_id}"), "ledger.url_template"),
                         (dict(extractor="landmarks"), "coeffs.extractor"),
                         (dict(videos_per_shard=3), "videos_per_shard")):
        with pytest.raises(SettingsChanged, match=rf"{name}: "):
            prepare_vox(VoxConfig(out=str(tmp_path / "o"), **{**base, **change}))
    fp = fingerprint(Plan("vox", (), {}), vox_stages(VoxConfig(out="o", **{**base, "extractor": "landmarks"})))
    assert fp["coeffs.morphable_model"] == "procedural-full" and fp["frames.size"] == 256
    (tmp_path / "c" / "A" / "Image").mkdir(parents=True)
    celebv = {"celebv": str(tmp_path / "c"), "extractor": "none", "executor": "local", "progress": False}
    prepare_celebv(CelebVConfig(out=str(tmp_path / "co"), **celebv))
    with pytest.raises(SettingsChanged, match="frames.image_format: 'png' there, 'jpeg' now"):
        prepare_celebv(CelebVConfig(out=str(tmp_path / "co"), image_format="jpeg", **celebv))


# ---------------------------------------------------------------- leftovers and inspect

def _part(out: Path, key: str) -> None:
    write_part(out, "squares", key, pa.table({"key": [key], "value": [0], "status": ["ok"], "error": [""]},
                                             schema=ITEM))


def test_rerun_removes_leftover_parts_and_temps(tmp_path):
    """A kill inside part removal once left parts for good, and inspect said "in flight" on a finished run."""
    run_toy(tmp_path)
    _part(tmp_path, "k0")                                           # shard 0 is done: this part is a leftover
    (tmp_path / "parts" / "squares" / ".k9.parquet.123.tmp").write_bytes(b"x")
    (tmp_path / ".squares-00001.parquet.77.tmp").write_bytes(b"x")
    (tmp_path / "videos" / ".partial" / "v1").mkdir(parents=True)
    state = folder_state(tmp_path)
    assert state.complete and "1 leftover parts" in state.describe()
    run_toy(tmp_path)
    assert not [p for p in (tmp_path / "parts").rglob("*") if p.is_file()]
    assert not list(tmp_path.glob(".*.tmp")) and not (tmp_path / "videos" / ".partial").exists()
    assert folder_state(tmp_path).describe() == "complete: 3 shards of squares"


def test_inspect_says_complete_incomplete_or_not_a_prepare_folder(tmp_path, capsys):
    from pipelines import inspect

    run_toy(tmp_path / "done")
    assert folder_state(tmp_path / "done").complete
    (tmp_path / "done" / "squares-00001.stats.json").unlink()
    state = folder_state(tmp_path / "done")
    assert not state.complete and state.missing == ["squares-00001"] and "missing 1 shards" in state.describe()
    (tmp_path / "done" / "squares-00000.stats.json").write_text("{not json")
    (tmp_path / "done" / "squares-00002.stats.json").write_text('{"rows": "many", "status": 3}')
    assert "unreadable stats files: squares-00000.stats.json" in folder_state(tmp_path / "done").describe()
    assert inspect.render(tmp_path / "done", inspect.collect(tmp_path / "done")).startswith(str(tmp_path))
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    for name, why in (("missing", "no such folder"), ("file", "not a folder"), ("empty", "not a prepare folder")):
        with pytest.raises(UserError, match=why):
            folder_state(tmp_path / name)


def test_inspect_names_the_run_holding_the_folder(tmp_path):
    run_toy(tmp_path)
    with FolderLock(tmp_path):
        assert f"pid {os.getpid()}" in folder_state(tmp_path).describe()
    assert folder_state(tmp_path).holder is None


@pytest.mark.parametrize("target", ["missing", "file", "empty"])
def test_cli_inspect_user_mistakes_are_one_line(tmp_path, target):
    from reenact.app import cli

    path = tmp_path / target
    if target == "file":
        path.write_text("x")
    if target == "empty":
        path.mkdir()
    assert cli.main(["inspect", str(path)]) == 2
    with pytest.raises(UserError):
        cli.main(["--debug", "inspect", str(path)])


# ---------------------------------------------------------------- signals

def _ray_processes(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes().decode("utf-8", "replace"):
                pids.append(int(entry.name))
        except OSError:
            pass
    return pids


@pytest.mark.slow
def test_sigterm_shuts_ray_down(tmp_path):
    """A driver stopped with SIGTERM shuts its Ray down: none of its Ray processes live on."""
    import tempfile

    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")             # short: Ray's socket paths must stay short
    out = tmp_path / "out"
    code = (f"from tests.test_hardening import run_toy; run_toy({str(out)!r}, delay=5.0, executor='ray', "
            "num_cpus=1)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": ray_tmp})
    try:
        deadline = time.time() + 180
        while not _ray_processes(ray_tmp) or not (out / "parts").is_dir():
            assert proc.poll() is None and time.time() < deadline, "the driver never started Ray"
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 128 + signal.SIGTERM
        deadline = time.time() + 20
        while _ray_processes(ray_tmp) and time.time() < deadline:
            time.sleep(0.5)
        assert not _ray_processes(ray_tmp), "Ray processes of the stopped driver live on"
        assert not (out / LOCK_FILE).exists()                       # the lock was released too
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_kill_and_resume_on_the_engine_equals_a_solo_run(tmp_path):
    """The guarantee every stage on the engine gets: SIGKILL mid-run, rerun, and the shards equal a solo run's."""
    out = tmp_path / "killed"
    code = f"from tests.test_hardening import run_toy; run_toy({str(out)!r}, delay=0.5)"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.time() + 120
    while not (out / "squares-00000.stats.json").exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert not (out / "squares-00002.stats.json").exists()
    resumed = run_toy(out)                                          # the dead run's lock is stale: taken over
    assert resumed.shards_skipped >= 1
    run_toy(tmp_path / "solo")
    for shard in range(3):
        assert (out / f"squares-{shard:05d}.parquet").read_bytes() == \
            (tmp_path / "solo" / f"squares-{shard:05d}.parquet").read_bytes()
    assert folder_state(out).describe() == "complete: 3 shards of squares"


# ---------------------------------------------------------------- CelebV name checks

_names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"), min_size=1, max_size=24)


@settings(max_examples=60, deadline=2000, derandomize=True)
@given(st.lists(_names, min_size=1, max_size=4, unique=True))
def test_celebv_any_folder_names_give_items(names):
    """Any identity folder names give one item each with a status: rejected exactly when the name is unsafe,
    dot folders and __MACOSX skipped, never an exception."""
    import tempfile

    from pipelines.celebv_listing import list_identities

    with tempfile.TemporaryDirectory() as tmp:
        made = []
        for name in names:
            try:
                (Path(tmp) / name / "Image").mkdir(parents=True)
                made.append(name)
            except OSError:                                         # e.g. "." or "..", or too long for the fs
                pass
        jobs = list_identities(tmp)
        expected = sorted(n for n in made if not n.startswith(".") and n != "__MACOSX")
        assert sorted(j.name for j in jobs) == expected
        for job in jobs:
            assert job.status == ("decode_error" if is_safe_id(job.name) else "rejected")  # no images: decode_error
            assert job.key == job.name if is_safe_id(job.name) else job.key.startswith("rejected.")


@settings(max_examples=100, deadline=2000, derandomize=True)
@given(st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1,
                        max_size=40), min_size=1, max_size=5, unique=True))
def test_celebv_any_zip_member_names_give_items(members):
    """Any member names of a zip give items with statuses (unsafe paths rejected), never an exception."""
    import tempfile
    import zipfile

    from pipelines.celebv_listing import list_identities, member_problem

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.zip"
        with zipfile.ZipFile(path, "w") as zf:
            for name in members:
                zf.writestr(name, b"x")
        jobs = list_identities(path)
        for job in jobs:
            assert job.status in ("ok", "rejected", "decode_error")
            assert job.status != "ok" or (is_safe_id(job.name) and job.images)
        with zipfile.ZipFile(path) as zf:
            unsafe = {i.filename for i in zf.infolist() if member_problem(i) is not None}
        assert unsafe <= {j.name for j in jobs if j.status == "rejected"}


def test_disk_full_and_permissions_are_user_mistakes_other_errors_are_not(capsys, monkeypatch):
    import errno

    from pipelines import inspect
    from reenact.app import cli

    for code in (errno.ENOSPC, errno.EACCES, errno.EROFS):
        def fail(args, code=code):
            raise OSError(code, os.strerror(code), "/data/out")
        monkeypatch.setattr(inspect, "run", fail)
        assert cli.main(["inspect", "x"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and os.strerror(code) in err
    monkeypatch.setattr(inspect, "run", lambda args: 1 / 0)       # a bug is not the user's: full traceback
    with pytest.raises(ZeroDivisionError):
        cli.main(["inspect", "x"])
