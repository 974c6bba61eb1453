"""vox-metadata.csv parsing (pipelines/metadata.py): the published file, bad rows, load_videos.py's rules."""
from __future__ import annotations

from collections import Counter

import pytest

from pipelines.metadata import (
    COLUMNS,
    Clip,
    VideoJob,
    metadata_table,
    parse_bbox,
    parse_csv_text,
    read_metadata,
    superseded_lines,
    video_jobs,
)
from reenact.data.schema import METADATA, ChunkId
from tests.conftest import fixture_path

HEADER = ",".join(COLUMNS)


@pytest.fixture(scope="module")
def published():
    rows = read_metadata(fixture_path("manifests", "vox-metadata.csv"))
    return rows, video_jobs(rows)


def test_published_file_parses_completely(published):
    rows, jobs = published
    assert len(rows) == 20_075 and all(r.ok for r in rows)
    assert Counter(r.partition for r in rows) == {"train": 19_550, "test": 525}
    assert len({r.video_id for r in rows}) == 3_442 == len(jobs)
    assert len({r.person_id for r in rows}) == 435
    assert all(64 <= r.end - r.start <= 1024 for r in rows)


def test_published_file_distinct_clips_follow_load_videos(published):
    rows, jobs = published
    clips = Counter(job.partition for job in jobs for _ in job.clips)
    assert sum(clips.values()) == 19_764
    assert clips == {"train": 19_242, "test": 522}
    assert len(superseded_lines(rows)) == 20_075 - 19_764
    # the three clips listed under both partitions land in train, with the person of the video's first row
    first = {}
    for r in rows:
        first.setdefault(r.video_id, r)
    by_id = {j.video_id: j for j in jobs}
    for vid in ("ST2JZXcyYkE", "hgB5ziAudzU"):
        assert by_id[vid].partition == first[vid].partition == "train"
        assert by_id[vid].person_id == first[vid].person_id
    names = {str(job.chunk_id(c)) for job in jobs for c in job.clips}
    assert "id10306#ST2JZXcyYkE#018239#018675" in names and len(names) == 19_764
    assert all(ChunkId.parse(n) for n in list(names)[:100])


def test_metadata_table_has_one_row_per_record(published):
    rows, jobs = published
    table = metadata_table(rows, jobs)
    assert table.schema.equals(METADATA) and table.num_rows == 20_075
    assert sum(table.column("duplicate").to_pylist()) == 311
    assert table.column("chunk_id").null_count == 0


def test_malformed_rows_become_bad_metadata_rows():
    text = "\n".join([HEADER,
                      "aaaaaaaaaaa,10,20,1-2-30-40,25,1280,720,train,id1",            # ok
                      "bbbbbbbbbbb,10,20,1-2-30,25,1280,720,train,id1",               # bbox with 3 parts
                      "ccccccccccc,x,20,1-2-30-40,25,1280,720,train,id1",             # start not an int
                      "ddddddddddd,20,10,1-2-30-40,25,1280,720,train,id1",            # end before start
                      "eeeeeeeeeee,10,20,30-2-30-40,25,1280,720,train,id1",           # empty box
                      "fffffffffff,10,20,1-2-30-40,0,1280,720,train,id1",             # fps 0
                      "ggggggggggg,10,20,1-2-30-40,25,-5,720,train,id1",              # negative width
                      "hhhhhhhhhhh,10,20",                                            # too few fields
                      "iiiiiiiiiii,10,20,1-2-30-40,nan,1280,720,train,id1",           # fps NaN
                      ""])
    rows = parse_csv_text(text)
    assert [r.line for r in rows] == list(range(2, 11))
    assert rows[0].ok and rows[0].bbox == (1, 2, 30, 40) and rows[0].fps == 25.0
    bad = rows[1:]
    assert all(r.status == "bad_metadata" and r.error for r in bad)
    assert "bbox" in bad[0].error and "'x'" in bad[1].error and "start < end" in bad[2].error
    assert "empty" in bad[3].error and "fps" in bad[4].error and "width" in bad[5].error
    assert "expected 9 fields, got 3" in bad[6].error and "fps" in bad[7].error
    assert [j.video_id for j in video_jobs(rows)] == ["aaaaaaaaaaa"]


@pytest.mark.parametrize("video_id", ["../../etc/passwd", "a/b", "..", "x" * 65, "id with space", ""])
def test_unsafe_video_ids_are_rejected(video_id):
    (row,) = parse_csv_text(f"{HEADER}\n\"{video_id}\",0,10,0-0-10-10,25,640,360,train,id1\n")
    assert row.status == "rejected" and "unsafe video_id" in row.error
    assert video_jobs([row]) == []


def test_unsafe_person_id_is_rejected():
    (row,) = parse_csv_text(f"{HEADER}\nabc,0,10,0-0-10-10,25,640,360,train,../id1\n")
    assert row.status == "rejected" and "person_id" in row.error


def test_wrong_header_raises_naming_it():
    with pytest.raises(ValueError, match="expected header"):
        parse_csv_text("video,start\nabc,0\n")


def test_first_row_of_a_video_sets_partition_person_and_geometry_and_last_duplicate_wins():
    rows = parse_csv_text("\n".join([
        HEADER,
        "vid,100,200,1-1-50-50,25,1280,720,test,idA",
        "vid,0,50,2-2-60-60,30,640,360,train,idB",       # later rows: their partition/person/fps are ignored
        "vid,100,200,5-5-55-55,25,1280,720,train,idB",   # same clip as line 2: this bbox wins
        "other,0,70,0-0-9-9,25,1280,720,train,idC", ""]))
    jobs = video_jobs(rows)
    vid = jobs[0]
    assert (vid.person_id, vid.partition, vid.ref_fps, vid.ref_width, vid.ref_height) == ("idA", "test", 25.0, 1280, 720)
    assert vid.clips == (Clip(0, 50, (2, 2, 60, 60), 3), Clip(100, 200, (5, 5, 55, 55), 4))
    assert [str(vid.chunk_id(c)) for c in vid.clips] == ["idA#vid#000000#000050", "idA#vid#000100#000200"]
    assert superseded_lines(rows) == {2}
    table = metadata_table(rows, jobs).to_pylist()
    assert [r["duplicate"] for r in table] == [True, False, False, False]
    assert {r["out_partition"] for r in table[:3]} == {"test"}


def test_video_job_json_round_trip():
    job = VideoJob("vid", "idA", "train", 25.0, 1280, 720, (Clip(0, 10, (1, 2, 3, 4), 2),))
    assert VideoJob.from_json(job.to_json()) == job


def test_parse_bbox():
    assert parse_bbox("624-48-1018-553") == (624, 48, 1018, 553)
    for text in ("1-2-3", "a-b-c-d", "-1-2-3-4", "10-10-5-20"):
        with pytest.raises(ValueError):
            parse_bbox(text)
