"""The crop stage (pipelines/crop.py) against load_videos.py's reference loop, plus every bad-input status row.

Tolerances (stated once): a crop that is already 256 x 256 matches the reference loop exactly; upscales match
``skimage.transform.resize(anti_aliasing=True)`` to mean |diff| <= 0.05 grey levels (PSNR >= 55 dB); downscales to
mean |diff| <= 1.0 and PSNR >= 34 dB (swscale's area filter averages where skimage Gaussian-prefilters; the
differences sit on testsrc's sharp edges).
"""
from __future__ import annotations

import random
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.crop import (
    CropSettings,
    aligned_box,
    crop_command,
    crop_video,
    frame_range,
    plan_chunks,
    rescale_bbox,
    segment_lengths,
    visible_box,
)
from pipelines.media import MediaError, VideoInfo, ffmpeg_exe, parse_ffmpeg_header
from pipelines.metadata import Clip, VideoJob
from reenact.data.codec import decode_image, encode_png, png_up_filter
from reenact.data.schema import ChunkId
from reenact.data.shards import part_paths

SIZE = 256


def make_clip(path, width=640, height=360, rate=30, frames=60, pattern="testsrc"):
    """An H.264 clip from ffmpeg's test sources (moving content, so a frame off by one shows)."""
    cmd = [ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
           f"{pattern}=size={width}x{height}:rate={rate}", "-frames:v", str(frames), "-c:v", "libx264",
           "-preset", "veryfast", "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(cmd, check=True)
    return path


@pytest.fixture(scope="module")
def clip30(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("src") / "clip30.mp4")


def reference_loop(path, job: VideoJob) -> dict[str, tuple[list[int], np.ndarray]]:
    """video-preprocessing's load_videos.py loop: imageio decode, numpy crop, skimage resize (no saving)."""
    import imageio.v2 as imageio
    from skimage import img_as_ubyte
    from skimage.transform import resize

    reader = imageio.get_reader(str(path))
    fps = reader.get_meta_data()["fps"]
    out = {str(job.chunk_id(c)): ([], []) for c in job.clips}
    for i, frame in enumerate(reader):
        for clip in job.clips:
            if i * job.ref_fps >= clip.start * fps and i * job.ref_fps < clip.end * fps:
                left, top, right, bot = clip.bbox
                left = int(left / (job.ref_width / frame.shape[1]))
                top = int(top / (job.ref_height / frame.shape[0]))
                right = int(right / (job.ref_width / frame.shape[1]))
                bot = int(bot / (job.ref_height / frame.shape[0]))
                indices, crops = out[str(job.chunk_id(clip))]
                indices.append(i)
                crops.append(img_as_ubyte(resize(frame[top:bot, left:right], (SIZE, SIZE), anti_aliasing=True)))
    reader.close()
    return {k: (idx, np.stack(c) if c else np.zeros((0, SIZE, SIZE, 3), np.uint8)) for k, (idx, c) in out.items()}


def read_part(out, video_id):
    return pq.read_table(part_paths(out, "frames", video_id)[0]).to_pylist()


def frames_by_chunk(rows) -> dict[str, tuple[list[int], np.ndarray]]:
    out: dict[str, tuple[list, list]] = {}
    for r in rows:
        if r["status"] == "ok":
            idx, imgs = out.setdefault(r["chunk_id"], ([], []))
            idx.append(r["source_frame"])
            imgs.append(decode_image(r["image"]))
    return {k: (idx, np.stack(imgs)) for k, (idx, imgs) in out.items()}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


# ---------------------------------------------------------------- the protocol's arithmetic

def test_convention_rescale_bbox_truncates_like_load_videos():
    # 1280x720 -> 640x360 halves; 1270 -> 640 is a non-integer ratio where truncation matters
    assert rescale_bbox((624, 48, 1018, 553), (1280, 720), (640, 360)) == (312, 24, 509, 276)
    l, t, r, b = 333, 77, 901, 655
    got = rescale_bbox((l, t, r, b), (1270, 714), (640, 360))
    assert got == (int(l / (1270 / 640)), int(t / (714 / 360)), int(r / (1270 / 640)), int(b / (714 / 360)))
    assert got == (167, 38, 454, 330)


@pytest.mark.parametrize("fps, ref_fps", [(25.0, 25.0), (30.0, 25.0), (29.97, 25.0), (24.0, 25.0),
                                          (59.94, 25.0), (12.5, 25.0)])
def test_frame_range_equals_brute_force_predicate(fps, ref_fps):
    rng = random.Random(0)
    for _ in range(200):
        start = rng.randrange(0, 5000)
        end = start + rng.randrange(1, 1100)
        brute = [i for i in range(int((end + 2) * fps / ref_fps) + 3)
                 if i * ref_fps >= start * fps and i * ref_fps < end * fps]
        assert list(frame_range(start, end, fps, ref_fps)) == brute


def test_visible_box_rule():
    assert visible_box((10, 10, 20, 20), 100, 100) == ((10, 10, 20, 20), 1.0)
    assert visible_box((90, 0, 110, 10), 100, 100) == ((90, 0, 100, 10), 0.5)      # half outside: kept
    assert visible_box((200, 200, 300, 300), 100, 100)[1] == 0.0                  # fully outside
    assert visible_box((-30, 0, 10, 10), 100, 100)[1] == pytest.approx(0.25)


def test_segment_lengths_equal_brute_force():
    rng = random.Random(1)
    for _ in range(300):
        ranges = sorted((range(a, a + rng.randrange(1, 40)) for a in (rng.randrange(0, 80) for _ in range(4))),
                        key=lambda r: (r.stop, r.start))
        video_len = rng.randrange(0, 130)
        truth = [len([i for i in r if i < video_len]) for r in ranges]
        got = segment_lengths(ranges, sum(truth))
        assert got == truth
    assert segment_lengths([range(0, 10)], 11) is None


def test_crop_command_is_one_decode_with_a_branch_per_clip(tmp_path):
    job = VideoJob("vid", "id1", "train", 25.0, 1280, 720,
                   (Clip(0, 10, (0, 0, 640, 360), 2), Clip(5, 20, (100, 100, 740, 460), 3)))
    plans = plan_chunks(job, VideoInfo(640, 360, 25.0, 2.0, "h264"))
    cmd = crop_command(tmp_path / "v.mp4", plans, CropSettings(), (640, 360), exe="ffmpeg")
    assert cmd[0] == "ffmpeg" and cmd.count("-i") == 1 and cmd[-1] == "pipe:"
    graph = cmd[cmd.index("-filter_complex") + 1]
    assert graph.count("trim=") == 2 and "split=2" in graph and "concat=" in graph
    assert "crop=320:180:0:0" in graph                            # aligned already: the exact crop is a no-op
    assert "crop=324:184:48:48" in graph and "crop=320:180:2:2" in graph   # aligned box, then the exact one
    assert "scale=256:256:flags=area" in graph and graph.count("format=gbrp") == 2
    assert cmd[cmd.index("-pix_fmt") + 1] == "rgb24"


def test_aligned_box_holds_the_box_and_stays_in_the_frame():
    rng = random.Random(2)
    for _ in range(500):
        w, h = rng.randrange(8, 900), rng.randrange(8, 600)
        l, t = rng.randrange(0, w - 1), rng.randrange(0, h - 1)
        box = (l, t, rng.randrange(l + 1, w + 1), rng.randrange(t + 1, h + 1))
        x0, y0, x1, y1 = aligned_box(box, (w, h))
        assert x0 % 4 == 0 and y0 % 4 == 0 and x0 <= box[0] and y0 <= box[1] and box[2] <= x1 <= w and box[3] <= y1 <= h
        assert (x1 - x0) % 4 == 0 or x1 == w
        assert (y1 - y0) % 4 == 0 or y1 == h


# ---------------------------------------------------------------- equivalence with the reference loop

def test_equivalence_with_reference_loop(clip30, tmp_path):
    """30 fps video, 25 fps reference: same frame indices; pixels within the stated tolerances."""
    job = VideoJob("clip30", "id10001", "train", 25.0, 1280, 720, (
        Clip(0, 20, (512, 180, 1024, 692), 2),      # 256x256 at 640x360: exact copy
        Clip(3, 12, (258, 90, 770, 602), 3),        # 256x256 at odd offsets (129, 45): exact copy
        Clip(7, 31, (300, 100, 620, 500), 4),       # 160x200 -> 256: upscale
        Clip(15, 45, (40, 20, 1240, 700), 5),       # 600x340 -> 256: downscale (overlaps the others)
    ))
    crop_video(job, clip30, tmp_path)
    ours, ref = frames_by_chunk(read_part(tmp_path, "clip30")), reference_loop(clip30, job)
    assert set(ours) == set(ref)
    tolerances = [(0.0, float("inf")), (0.0, float("inf")), (0.05, 55.0), (1.0, 34.0)]
    for clip, (mae_max, psnr_min) in zip(job.clips, tolerances):
        key = str(job.chunk_id(clip))
        assert ours[key][0] == ref[key][0], f"{key}: frame indices differ"
        diff = np.abs(ours[key][1].astype(int) - ref[key][1].astype(int))
        assert diff.mean() <= mae_max and psnr(ours[key][1], ref[key][1]) >= psnr_min, \
            f"{key}: mean |diff| {diff.mean():.3f}, PSNR {psnr(ours[key][1], ref[key][1]):.1f}"
    # frame indices of 25 fps clips in a 30 fps video: 6 decoded frames per 5 reference frames
    assert ours[str(job.chunk_id(job.clips[0]))][0] == list(range(0, 24))


def test_frames_schema_and_chunk_naming(clip30, tmp_path):
    job = VideoJob("clip30", "id10001", "test", 30.0, 640, 360, (Clip(3, 9, (0, 0, 320, 360), 2),))
    crop_video(job, clip30, tmp_path)
    rows = read_part(tmp_path, "clip30")
    assert [r["frame_index"] for r in rows] == list(range(6))
    assert [r["source_frame"] for r in rows] == list(range(3, 9))
    r = rows[0]
    assert ChunkId.parse(r["chunk_id"]) == ChunkId("id10001", "clip30", 3, 9)
    assert r["chunk_id"] == "id10001#clip30#000003#000009"
    assert (r["video_id"], r["person_id"], r["partition"], r["image_format"]) == ("clip30", "id10001", "test", "png")
    assert decode_image(r["image"]).shape == (SIZE, SIZE, 3) and (r["height"], r["width"]) == (SIZE, SIZE)
    stats = read_stats_part(tmp_path, "clip30")
    assert stats["frames"] == 6 and stats["status"] == {"ok": 6} and stats["cpu_seconds"] > 0


def read_stats_part(out, key):
    import json

    return json.loads(part_paths(out, "frames", key)[1].read_text())


# ---------------------------------------------------------------- bad input -> status rows

def test_missing_and_corrupt_video_give_decode_error(tmp_path):
    job = VideoJob("gone", "id1", "train", 25.0, 640, 360, (Clip(0, 5, (0, 0, 100, 100), 2),
                                                            Clip(5, 9, (0, 0, 100, 100), 3)))
    crop_video(job, tmp_path / "gone.mp4", tmp_path)
    rows = read_part(tmp_path, "gone")
    assert [r["status"] for r in rows] == ["decode_error"] * 2
    assert all("no such file" in r["error"] and r["frame_index"] == -1 and r["image"] is None for r in rows)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    job = VideoJob("corrupt", "id1", "train", 25.0, 640, 360, (Clip(0, 5, (0, 0, 100, 100), 2),))
    crop_video(job, corrupt, tmp_path)
    (row,) = read_part(tmp_path, "corrupt")
    assert row["status"] == "decode_error" and row["error"]


def test_clip_beyond_the_video_is_too_short_and_the_rest_is_exact(clip30, tmp_path):
    """60 decoded frames. A truncated clip that overlaps a complete one must not steal its frames."""
    box = (0, 0, 256, 256)                           # 256x256: pixels compare exactly with the reference
    job = VideoJob("clip30", "id1", "train", 30.0, 640, 360, (
        Clip(40, 80, box, 2),                        # truncated at 60
        Clip(45, 55, (100, 50, 356, 306), 3),        # nested inside it, complete
        Clip(70, 90, box, 4),                        # entirely beyond the end
        Clip(0, 10, box, 5),
    ))
    result = crop_video(job, clip30, tmp_path)
    rows = read_part(tmp_path, "clip30")
    failed = {r["chunk_id"]: r for r in rows if r["status"] != "ok"}
    assert {k: r["status"] for k, r in failed.items()} == {
        "id1#clip30#000040#000080": "too_short", "id1#clip30#000070#000090": "too_short"}
    assert "has 60 frames" in failed["id1#clip30#000040#000080"]["error"]
    assert "ends before frame 70" in failed["id1#clip30#000070#000090"]["error"]
    ours, ref = frames_by_chunk(rows), reference_loop(clip30, job)
    assert set(ours) == {"id1#clip30#000045#000055", "id1#clip30#000000#000010"}
    for key in ours:
        assert ours[key][0] == ref[key][0] and np.array_equal(ours[key][1], ref[key][1])
    assert (result.chunks_ok, result.chunks_failed, result.frames) == (2, 2, 20)


def test_bbox_outside_the_frame_is_out_of_frame(clip30, tmp_path):
    job = VideoJob("clip30", "id1", "train", 30.0, 640, 360, (
        Clip(0, 5, (700, 400, 900, 600), 2),         # fully outside
        Clip(0, 6, (500, 0, 900, 200), 3),           # 35 % visible
        Clip(5, 10, (540, 0, 740, 200), 4),          # 50 % visible: kept, cropped to the visible part
    ))
    crop_video(job, clip30, tmp_path)
    rows = read_part(tmp_path, "clip30")
    failed = {r["chunk_id"]: r for r in rows if r["frame_index"] == -1}
    assert {k: r["status"] for k, r in failed.items()} == {
        "id1#clip30#000000#000005": "out_of_frame", "id1#clip30#000000#000006": "out_of_frame"}
    assert "keeps 0%" in failed["id1#clip30#000000#000005"]["error"]
    assert "keeps 35%" in failed["id1#clip30#000000#000006"]["error"]
    kept = [r for r in rows if r["status"] == "ok"]
    assert len(kept) == 5 and {r["chunk_id"] for r in kept} == {"id1#clip30#000005#000010"}


def test_optional_mp4_clips(clip30, tmp_path):
    import imageio_ffmpeg

    job = VideoJob("clip30", "id1", "test", 30.0, 640, 360, (Clip(0, 12, (0, 0, 320, 320), 2),
                                                              Clip(50, 70, (0, 0, 320, 320), 3)))
    crop_video(job, clip30, tmp_path, CropSettings(write_mp4=True))
    files = sorted(p.name for p in (tmp_path / "clips" / "test").iterdir())
    assert files == ["id1#clip30#000000#000012.mp4"]              # the too_short clip leaves no file
    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(tmp_path / "clips" / "test" / files[0]))
    assert frames == 12


# ---------------------------------------------------------------- media helpers

def test_png_encoder_round_trips_exactly():
    rng = np.random.default_rng(0)
    for shape in [(1, 1, 3), (37, 53, 3), (256, 256, 3)]:
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        for level in (1, 6):
            assert np.array_equal(decode_image(encode_png(img, level)), img)
    up = png_up_filter(np.array([[[1, 2, 3]], [[0, 255, 3]]], np.uint8))
    assert up.tolist() == [[2, 1, 2, 3], [2, 255, 253, 0]]                    # modulo-256 differences
    with pytest.raises(ValueError, match="RGB uint8"):
        encode_png(np.zeros((4, 4), np.uint8))


def test_parse_ffmpeg_header():
    text = ("Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'x.mp4':\n  Duration: 00:01:02.50, start: 0.000000, "
            "bitrate: 700 kb/s\n  Stream #0:0[0x1](und): Video: h264 (High) (avc1 / 0x31637661), "
            "yuv420p(progressive), 1280x720 [SAR 1:1 DAR 16:9], 690 kb/s, 29.97 fps, 29.97 tbr, 30k tbn (default)\n")
    assert parse_ffmpeg_header(text) == VideoInfo(1280, 720, 29.97, 62.5, "h264")
    with pytest.raises(MediaError, match="no video stream"):
        parse_ffmpeg_header("  Stream #0:0: Audio: aac, 44100 Hz\n")
