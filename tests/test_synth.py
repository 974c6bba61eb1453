"""The embedded synthetic world (issue 3): layouts, camera contract, ground truth, determinism.

Most tests read the ``tiny`` world that ``tests/conftest.py::synth_tiny`` generates once per session, and check it
against independent computations: the 3D face core (build_face, project_landmarks, rasterize) with the truth
coefficients, ffmpeg decoding, and the real ``vox-metadata.csv`` header.
"""
from __future__ import annotations

import argparse
import csv
import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from reenact.data.schema import SYNTH_TRUTH, ChunkId, is_safe_id
from reenact.face3d.camera import PerspectiveCamera
from reenact.face3d.coeffs import ANGLE, EXP, TRANS
from reenact.face3d.face import build_face, project_landmarks
from reenact.face3d.procedural import procedural_model
from reenact.face3d.raster import RasterSettings, rasterize
from reenact.face3d.transforms import matrix_to_euler
from reenact.synth import scene, world, writer
from tests.conftest import fixture_path

MODEL = procedural_model(world.PRESETS["tiny"].model)


@pytest.fixture(scope="module")
def vox_truth(synth_tiny):
    return pq.read_table(synth_tiny.vox_truth).to_pandas()


@pytest.fixture(scope="module")
def celebv_truth(synth_tiny):
    return pq.read_table(synth_tiny.celebv_truth).to_pandas()


@pytest.fixture(scope="module")
def metadata(synth_tiny):
    with open(synth_tiny.vox_metadata, newline="") as f:
        return list(csv.DictReader(f))


def _camera(row) -> PerspectiveCamera:
    return PerspectiveCamera(width=int(row.width), height=int(row.height), focal=row.focal, cx=row.cx, cy=row.cy)


def _coeffs(rows) -> torch.Tensor:
    return torch.tensor(np.stack(rows.coeffs.values), dtype=torch.float32)


# ---------------------------------------------------------------------------------------------------- contract
@pytest.mark.parametrize("bbox", [(100, 10, 380, 290), (37, 0, 277, 240), (300, 25, 631, 356)])
def test_convention_vox_crop_camera_is_deep3d(bbox):
    left, top, right, _ = bbox
    crop = world.vox_camera(bbox).crop(left, top, right - left, 256)
    ref = PerspectiveCamera.deep3d(256)
    for name in ("width", "height", "focal", "cx", "cy", "distance"):
        assert getattr(crop, name) == pytest.approx(getattr(ref, name), abs=1e-9), name


def test_vox_camera_rejects_non_square_bbox():
    with pytest.raises(ValueError, match="square"):
        world.vox_camera((0, 0, 100, 120))


def test_truth_coeffs_project_onto_source_and_crop_pixels(vox_truth):
    rows = vox_truth.iloc[::7]
    for (_, row) in rows.iterrows():
        c = torch.tensor(np.asarray(row.coeffs), dtype=torch.float32)[None]
        source = project_landmarks(MODEL, c, _camera(row))[0].numpy()
        np.testing.assert_allclose(source, np.asarray(row.landmarks).reshape(68, 2), atol=0.02)
        crop_c = torch.tensor(np.asarray(row.crop_coeffs), dtype=torch.float32)[None]
        crop = project_landmarks(MODEL, crop_c, PerspectiveCamera.deep3d(256))[0].numpy()
        np.testing.assert_allclose(crop, np.asarray(row.crop_landmarks).reshape(68, 2), atol=0.02)
        left, top, right, _ = row.crop_box
        np.testing.assert_allclose(crop, (source - [left, top]) * 256 / (right - left), atol=0.02)


def test_face_bbox_is_the_projected_face_and_inside_the_chunk_bbox(vox_truth):
    chunked = vox_truth[vox_truth.chunk_id.notna()]
    assert len(chunked) > 0
    face = np.stack(chunked.face_bbox.values)
    box = np.stack(chunked.crop_box.values)
    inside = (face[:, :2] >= box[:, :2]).all(1) & (face[:, 2:] <= box[:, 2:]).all(1)
    assert inside.all(), chunked[~inside][["chunk_id", "source_frame"]]
    width = (face[:, 2] - face[:, 0]) / (box[:, 2] - box[:, 0])
    assert 0.35 < width.min() and width.max() < 0.65         # like real VoxCeleb crops, hair and shoulders around
    for vid, rows in chunked.groupby("video_id"):
        screen = build_face(MODEL, _coeffs(rows), _camera(rows.iloc[0]), with_colors=False).screen[..., :2]
        ref = torch.cat([screen.amin(1), screen.amax(1)], -1).numpy()
        np.testing.assert_allclose(np.stack(rows.face_bbox.values), ref, atol=0.02, err_msg=vid)


def test_generator_refuses_a_bbox_that_cuts_the_face():
    from dataclasses import replace

    seq = world.sample_world("tiny", 0).videos[0]
    truth = writer.frame_truth(MODEL, seq.coeffs, seq.camera)
    writer.check_face_in_chunks(seq, truth)
    left, top, right, bottom = seq.bbox
    with pytest.raises(RuntimeError, match="leaves bbox"):
        writer.check_face_in_chunks(replace(seq, bbox=(left + 60, top, right, bottom - 60)), truth)


# ---------------------------------------------------------------------------------------------------- vox layout
def test_metadata_has_the_real_header_and_format(synth_tiny, metadata):
    real = fixture_path("manifests", "vox-metadata.csv").read_text().splitlines()[0]
    ours = synth_tiny.vox_metadata.read_text().splitlines()
    assert ours[0] == real == writer.VOX_HEADER
    assert len(ours) == len(metadata) + 1 >= 8
    for row in metadata:
        assert len(row["video_id"]) == 11 and is_safe_id(row["video_id"]) and not row["video_id"].startswith("-")
        assert re.fullmatch(r"id1\d{4}", row["person_id"])
        assert row["partition"] in ("train", "test")
        assert (row["fps"], row["width"], row["height"]) == ("25", "640", "360")
        left, top, right, bottom = map(int, row["bbox"].split("-"))
        assert right - left == bottom - top > 0 and left >= 0 and top >= 0 and right <= 640 and bottom <= 360
        assert 0 <= int(row["start"]) < int(row["end"])


def test_partitions_and_chunks(metadata):
    people = {p: {r["person_id"] for r in metadata if r["partition"] == p} for p in ("train", "test")}
    assert people["train"] and people["test"] and not people["train"] & people["test"]
    by_video: dict[str, list[dict]] = {}
    for row in metadata:
        by_video.setdefault(row["video_id"], []).append(row)
    assert any(len(rows) > 1 for rows in by_video.values())   # some videos hold two chunks
    for rows in by_video.values():
        assert len({(r["bbox"], r["person_id"], r["partition"]) for r in rows}) == 1   # one bbox per video
        spans = sorted((int(r["start"]), int(r["end"])) for r in rows)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))                    # chunks do not overlap


def test_videos_decode_with_frame_counts_matching_metadata_and_truth(synth_tiny, metadata, vox_truth):
    videos = sorted(p.stem for p in synth_tiny.vox_videos.glob("*.mp4"))
    assert videos == sorted({r["video_id"] for r in metadata})
    for vid in videos:
        frames = writer.read_video(synth_tiny.video(vid), 640, 360)
        rows = vox_truth[vox_truth.video_id == vid]
        assert len(frames) == len(rows) == rows.source_frame.max() + 1
        assert max(int(r["end"]) for r in metadata if r["video_id"] == vid) <= len(frames)
        chunk_rows = rows[rows.chunk_id.notna()]
        for chunk_id, part in chunk_rows.groupby("chunk_id"):
            chunk = ChunkId.parse(chunk_id)
            assert (chunk.video_id, chunk.end - chunk.start) == (vid, len(part))
            assert part.frame_index.tolist() == list(range(len(part)))
            assert any(r["start"] == str(chunk.start) and r["end"] == str(chunk.end) and
                       r["person_id"] == chunk.person_id for r in metadata)


def _face_only(coeffs: torch.Tensor, camera: PerspectiveCamera):
    """The face alone, by the 3D core: (mask (B, H, W), lit colour (B, H, W, 3))."""
    from reenact.face3d.raster import interpolate

    with writer.single_thread():
        face = build_face(MODEL, coeffs, camera)
        frags = rasterize(face.screen, MODEL.triangles, RasterSettings(image_size=(camera.height, camera.width)))
        return frags.mask, interpolate(frags, MODEL.triangles, face.colors).clamp(0, 1)


def _erode(mask: torch.Tensor, k: int = 2) -> torch.Tensor:
    return -torch.nn.functional.max_pool2d(-mask.float()[:, None], 2 * k + 1, 1, k)[:, 0] > 0.5


def test_video_face_pixels_and_landmarks_match_the_truth(synth_tiny, vox_truth):
    """The face the truth describes is the face in the decoded video, unoccluded, and the landmarks lie on it (up to
    the silhouette's pixel: at ~35 deg yaw the far brow's outer points can sit on the silhouette)."""
    for vid in vox_truth.video_id.unique()[:3]:
        rows = vox_truth[vox_truth.video_id == vid].iloc[::8]
        decoded = torch.from_numpy(writer.read_video(synth_tiny.video(vid), 640, 360)[rows.source_frame.values])
        mask, colour = _face_only(_coeffs(rows), _camera(rows.iloc[0]))
        inner = _erode(mask)
        error = (decoded.float() / 255 - colour).abs().amax(-1)[inner]
        assert error.mean() < 0.03 and (error > 0.15).float().mean() < 0.01, vid
        near = torch.nn.functional.max_pool2d(mask.float()[:, None], 3, 1, 1)[:, 0] > 0.5   # up to 1 px outside
        for k, (_, row) in enumerate(rows.iterrows()):
            xy = np.floor(np.asarray(row.landmarks).reshape(68, 2)).astype(int)
            on_face = near[k, xy[:, 1].clip(0, 359), xy[:, 0].clip(0, 639)].numpy()
            assert on_face[17:].all() and on_face.mean() >= 0.9, (vid, row.source_frame)


def test_frames_are_the_rendered_scene(synth_tiny, vox_truth):
    """Decoding the mp4 gives the renderer's frames (face, body and background) up to H.264 error."""
    seq = next(s for s in world.sample_world("tiny", 0).videos if s.video_id == vox_truth.video_id.iloc[0])
    decoded = writer.read_video(synth_tiny.video(seq.video_id), 640, 360)[:8].astype(np.float32)
    rendered = next(writer.render_sequence(MODEL, seq)).astype(np.float32)
    assert 20 * np.log10(255 / np.sqrt(((decoded - rendered) ** 2).mean())) > 33


# ---------------------------------------------------------------------------------------------------- scene
def test_body_moves_rigidly_with_the_head():
    ident = world.sample_world("tiny", 0).identities[0]
    body = scene.body_mesh(MODEL, torch.from_numpy(ident.id_coeffs).float(),
                           torch.from_numpy(ident.tex_coeffs).float(), ident.hair_rgb, ident.cloth_rgb,
                           ident.hairline, ident.hair_length, ident.hair_volume, seed=0)
    c = torch.zeros(2, 257)
    c[:, ANGLE] = torch.tensor([[0.1, -0.6, 0.05], [-0.2, 0.7, -0.1]])
    c[:, TRANS] = torch.tensor([[0.1, -0.1, -3.0], [-0.2, 0.05, -4.0]])
    _, face, body_posed, _ = scene.posed_scene(MODEL, c, body)
    # the rigid motion taking face 0 onto face 1 (Kabsch) takes body 0 onto body 1
    a, b = face[0].double(), face[1].double()
    u, _, vt = torch.linalg.svd((a - a.mean(0)).T @ (b - b.mean(0)))
    rot = (u @ vt).T
    moved = (body_posed[0].double() - a.mean(0)) @ rot.T + b.mean(0)
    assert torch.allclose(moved, body_posed[1].double(), atol=1e-4)
    assert (body_posed[1] - body_posed[0]).norm(dim=-1).min() > 0.05    # and it did move


def test_head_shell_stays_behind_the_face():
    """Hair / head shell never covers the face: the face mask with the body equals the face alone."""
    seq = world.sample_world("tiny", 0).videos[0]
    body, backdrop = writer._identity_scene(MODEL, seq)
    c = torch.from_numpy(seq.coeffs[:4]).clone()
    c[:, ANGLE.start + 1] = torch.tensor([-0.8, -0.3, 0.3, 0.8])            # up to +-46 degrees of yaw
    frames = scene.render_frames(MODEL, c, seq.camera, body, backdrop)
    alone, _ = _face_only(c, seq.camera)
    assert (frames.face_mask != alone).float().sum() / alone.float().sum() < 0.002
    assert (frames.foreground & ~frames.face_mask).float().mean() > 0.05       # hair, neck, shoulders are there


@pytest.mark.parametrize("lat_range, lon_range", [((-90.0, 90.0), (-180.0, 180.0)), ((-25.0, 90.0), (-145.0, 145.0))])
def test_superellipsoid_surface_normals_and_spacing(lat_range, lon_range):
    centre, radii = np.array([0.1, -0.2, 0.3]), np.array([1.0, 0.5, 0.7])
    verts, normals, faces, _ = scene.superellipsoid(centre, radii, 3.0, 0.05, lat_range, lon_range)
    assert np.allclose((np.abs((verts - centre) / radii) ** 3).sum(1), 1.0)          # on the surface
    faces = scene.orient_outward(verts, faces, normals)
    v0, v1, v2 = (verts[faces[:, k]] for k in range(3))
    assert ((np.cross(v1 - v0, v2 - v0) * ((v0 + v1 + v2) / 3 - centre)).sum(1) > 0).all()   # outwards
    assert np.unique(faces).size == len(verts)                                         # no stray vertex
    edges = np.linalg.norm(np.concatenate([v1 - v0, v2 - v1, v0 - v2]), axis=1)
    assert edges.max() < 0.05 * 1.6                                                    # about the spacing
    if lat_range == (-90.0, 90.0):                                                     # closed: each edge twice
        undirected = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
        assert (np.unique(undirected, axis=0, return_counts=True)[1] == 2).all()


# ---------------------------------------------------------------------------------------------------- celebv
def test_celebv_layout_and_truth(synth_tiny, celebv_truth):
    names = sorted(p.name for p in synth_tiny.celebv.iterdir() if p.is_dir())
    assert names == sorted(world.CELEBV_NAMES)
    offsets = []
    for name in names:
        files = sorted((synth_tiny.celebv / name / "Image").glob("*.jpg"))
        rows = celebv_truth[celebv_truth.video_id == name]
        assert len(files) == len(rows) == world.PRESETS["tiny"].celebv_images
        assert [synth_tiny.celebv / p for p in rows.path] == files
        image = Image.open(files[0])
        assert image.size == (rows.width.iloc[0], rows.height.iloc[0])
        assert 256 <= min(image.size) <= max(image.size) <= 400
        landmarks = project_landmarks(MODEL, _coeffs(rows), _camera(rows.iloc[0])).numpy()
        np.testing.assert_allclose(landmarks.reshape(len(rows), -1), np.stack(rows.landmarks.values), atol=0.02)
        face = np.stack(rows.face_bbox.values)
        assert (face[:, :2] >= 0).all() and (face[:, 2] <= image.size[0]).all() and (face[:, 3] <= image.size[1]).all()
        offsets.append(np.abs((face[:, :2] + face[:, 2:]) / 2 - np.array(image.size) / 2).max())
    assert max(offsets) > 15                                                   # faces are not all centred


# ---------------------------------------------------------------------------------------------------- determinism
def test_same_seed_gives_byte_identical_metadata_and_truth(synth_tiny, tmp_path):
    """Re-derive metadata and truth from a fresh sample of the world (no rendering) and compare bytes."""
    again = world.sample_world("tiny", 0)
    writer.write_vox_metadata(again.videos, tmp_path / "vox-metadata.csv")
    assert (tmp_path / "vox-metadata.csv").read_bytes() == synth_tiny.vox_metadata.read_bytes()
    for seqs, path in ((again.videos, synth_tiny.vox_truth), (again.celebv, synth_tiny.celebv_truth)):
        rows = [r for s in seqs for r in writer.truth_rows(s, writer.frame_truth(MODEL, s.coeffs, s.camera))]
        writer.write_parquet(writer.truth_table(rows), tmp_path / "truth.parquet")
        assert (tmp_path / "truth.parquet").read_bytes() == path.read_bytes(), path
        assert pq.read_schema(path).equals(SYNTH_TRUTH, check_metadata=False)
    other = world.sample_world("tiny", 1)
    assert writer.metadata_rows(other.videos) != writer.metadata_rows(again.videos)


def test_same_seed_gives_identical_decoded_frames(synth_tiny, vox_truth, tmp_path):
    seq = min(world.sample_world("tiny", 0).videos, key=lambda s: s.num_frames)
    root = writer.layout(tmp_path)
    writer.write_vox_video(MODEL, seq, root)
    first = writer.read_video(synth_tiny.video(seq.video_id), 640, 360)
    assert np.array_equal(writer.read_video(root.video(seq.video_id), 640, 360), first)


def test_config_records_the_preset_and_provenance(synth_tiny):
    saved = json.loads((synth_tiny.root / "config.json").read_text())
    assert saved["config"]["preset"] == "tiny" and saved["config"]["seed"] == 0
    assert saved["provenance"]["preset"]["model"] == world.PRESETS["tiny"].model
    assert saved["provenance"]["layout"]["url_template"].startswith("file://")
    assert saved["provenance"]["summary"]["vox_frames"] > 0


# ---------------------------------------------------------------------------------------------------- world
def test_demo_trajectories_cover_pose_and_expression_ranges():
    demo = world.sample_world("demo", 0)
    yaw = np.concatenate([world.yaw_degrees(s) for s in demo.videos])
    assert yaw.min() < -40 and yaw.max() > 40 and np.abs(yaw).max() <= 45.001
    for seq in demo.videos:
        angles = np.rad2deg(seq.coeffs[:, ANGLE].astype(np.float64))
        assert np.abs(np.diff(angles, axis=0)).max() < 5.0             # under 125 deg/s at 25 fps
        assert np.abs(np.diff(angles, 2, axis=0)).max() < 0.5          # and smooth: no jumps
        exp = seq.coeffs[:, EXP]
        assert exp[:, 2].max() > 1.0 and exp[:, 0].max() > 0.5 and exp[:, 0].min() >= 0   # blinks, mouth opening
        assert all(64 <= e - s <= 150 for s, e in seq.chunks) and 64 <= seq.num_frames <= 150
    assert len(demo.videos) == 40 and sum(i.partition == "test" for i in demo.identities) == 5
    assert len({s.video_id for s in demo.videos}) == 40


def test_truth_pose_matches_rotation_convention():
    seq = world.sample_world("tiny", 0).videos[1]
    from reenact.face3d.transforms import euler_to_matrix

    angles = torch.from_numpy(seq.coeffs[:, ANGLE]).double()
    assert torch.allclose(matrix_to_euler(euler_to_matrix(angles)), angles, atol=1e-9)


def test_ffmpeg_argument_lists():
    enc = writer.encode_args("ffmpeg", "out.mp4", 640, 360, 25, 18)
    assert enc[0] == "ffmpeg" and enc[-1] == "out.mp4"
    joined = " ".join(enc)
    for part in ("-f rawvideo -pix_fmt rgb24 -s 640x360 -r 25 -i pipe:0", "-c:v libx264", "-pix_fmt yuv420p", "-an"):
        assert part in joined
    dec = writer.decode_args("ffmpeg", "in.mp4")
    assert dec[dec.index("-i") + 1] == "in.mp4" and " ".join(dec).endswith("-f rawvideo -pix_fmt rgb24 pipe:1")


def test_mp4_writer_round_trip_and_errors(tmp_path):
    frames = np.zeros((5, 48, 64, 3), np.uint8)
    frames[..., 0] = np.arange(5)[:, None, None] * 50            # one flat colour per frame
    with writer.Mp4Writer(tmp_path / "clip.mp4", 64, 48) as out:
        with pytest.raises(ValueError, match="uint8 frames"):
            out.write(frames[:, :32])
        out.write(frames)
    decoded = writer.read_video(tmp_path / "clip.mp4", 64, 48)
    assert decoded.shape == frames.shape and np.abs(decoded.astype(int) - frames).max() <= 6
    assert not list(tmp_path.glob(".*tmp*"))                      # the temporary file was renamed
    with pytest.raises(RuntimeError, match="could not decode"):
        writer.read_video(tmp_path / "missing.mp4", 64, 48)


def test_cli_help_documents_the_presets():
    from reenact.app import synth as cli

    parser = argparse.ArgumentParser(prog="reenact synth")
    cli.add_arguments(parser)
    text = parser.format_help()
    assert "--preset" in text and "tiny" in text and "demo" in text and "40 videos" in text
    args = parser.parse_args(["--out", "x", "--preset", "demo", "--seed", "3"])
    assert (args.out, args.preset, args.seed) == ("x", "demo", 3)
    with pytest.raises(SystemExit):
        parser.parse_args(["--preset", "huge", "--out", "x"])
    with pytest.raises(ValueError, match="unknown synth preset"):
        world.get_preset("huge")
