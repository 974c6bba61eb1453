"""The availability report (pipelines/availability.py): counts per split and failure class, and the list of
available test chunks, from a metadata table and ledger statuses made here (counted by hand)."""
from __future__ import annotations

from pipelines.availability import (
    CLASSES,
    count_availability,
    read_chunk_list,
    render,
    video_class,
    write_available_chunks,
)
from pipelines.metadata import metadata_table, parse_csv_text, video_jobs

CSV = """video_id,start,end,bbox,fps,width,height,partition,person_id
okA,0,64,0-0-100-100,25,160,120,test,id1
okA,64,128,0-0-100-100,25,160,120,test,id1
okA,64,128,0-0-100-100,25,160,120,test,id1
flaky,0,64,0-0-100-100,25,160,120,test,id2
gone,0,64,0-0-100-100,25,160,120,test,id3
gone,100,200,0-0-100-100,25,160,120,test,id3
later,0,64,0-0-100-100,25,160,120,test,id4
okB,0,64,0-0-100-100,25,160,120,train,id5
priv,0,64,0-0-100-100,25,160,120,train,id6
bad,5,1,0-0-100-100,25,160,120,train,id7
"""
LEDGER = {"okA": "ok", "flaky": "timeout", "gone": "unavailable", "okB": "ok", "priv": "private"}


def metadata():
    rows = parse_csv_text(CSV)
    return metadata_table(rows, video_jobs(rows))


def test_counts_per_split_and_class():
    report = count_availability(metadata(), LEDGER, ledger_time=0.0)
    test, train = report.splits["test"], report.splits["train"]
    assert list(test.videos) == list(CLASSES)
    assert test.videos == {"ok": 1, "transient": 1, "permanent": 1, "pending": 1}
    assert test.chunks == {"ok": 2, "transient": 1, "permanent": 2, "pending": 1}   # the duplicate row counts once
    assert test.failures == {"timeout": 1, "unavailable": 1} and (test.available, test.total) == (2, 6)
    assert train.videos == {"ok": 1, "transient": 0, "permanent": 1, "pending": 0}  # the bad row is no video
    assert report.available == {"test": ["id1#okA#000000#000064", "id1#okA#000064#000128"],
                                "train": ["id5#okB#000000#000064"]}
    assert [video_class(s) for s in (None, "ok", "download_error", "private")] == [
        "pending", "ok", "transient", "permanent"]
    table = render(report)
    assert "test     chunks          2         1         2         1" in table, table


def test_available_test_chunks_file(tmp_path):
    report = count_availability(metadata(), LEDGER, ledger_time=1764633600.0)
    path = write_available_chunks(tmp_path, report, "test")
    assert path == tmp_path / "available-test-chunks.txt"
    header = path.read_text().splitlines()[0]
    assert header == "# 2 of 6 test chunks available (download ok) on 2025-12-02 00:00 UTC; 1 pending"
    assert read_chunk_list(path) == report.available["test"]
