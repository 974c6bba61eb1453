"""End to end on the tiny synthetic world: download (file:// URLs) -> crop -> coefficients, frame counts = metadata."""
from __future__ import annotations

import collections

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.prepare import CelebVConfig, SynthConfig, prepare_celebv, prepare_vox
from reenact.data.schema import ChunkId
from reenact.data.shards import read_stage
from reenact.face3d.camera import PerspectiveCamera
from reenact.face3d.face import project_landmarks
from reenact.face3d.procedural import procedural_model
from reenact.synth import world_model_size

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prepared(synth_tiny, ray_session, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    cfg = SynthConfig(out=str(out), world=str(synth_tiny.root), extractor="oracle", progress=False)
    return out, prepare_vox(cfg), cfg


def test_frame_counts_equal_the_metadata(prepared, synth_tiny):
    out, result, cfg = prepared
    assert cfg.url_template.startswith("file://")
    metadata = pq.read_table(out / "metadata-00000.parquet").to_pylist()
    expected = {r["chunk_id"]: r["end"] - r["start"] for r in metadata if r["status"] == "ok" and not r["duplicate"]}
    frames = read_stage(out, "frames", ["chunk_id", "status"]).to_pylist()
    got = collections.Counter(r["chunk_id"] for r in frames if r["status"] == "ok")
    assert got == expected and result.frames == sum(expected.values())
    ledger = read_stage(out, "ledger").to_pylist()
    assert {r["status"] for r in ledger} == {"ok"}


def test_oracle_coefficients_cover_every_frame_and_land_on_the_crop(prepared):
    out, _, cfg = prepared
    frames = read_stage(out, "frames", ["chunk_id", "frame_index"]).to_pylist()
    coeffs = read_stage(out, "coeffs").to_pylist()
    assert [(r["chunk_id"], r["frame_index"]) for r in coeffs] == [(r["chunk_id"], r["frame_index"]) for r in frames]
    assert {r["status"] for r in coeffs} == {"ok"} and {r["extractor"] for r in coeffs} == {"oracle"}
    import torch

    model = procedural_model(world_model_size(cfg.world))
    v = torch.tensor([r["coeffs"] for r in coeffs[:20]])
    lm = project_landmarks(model, v, PerspectiveCamera.deep3d(256))
    truth = torch.tensor([r["landmarks"] for r in coeffs[:20]]).reshape(-1, 68, 2)
    assert (lm - truth).norm(dim=-1).max() < 0.05      # pixels: the coefficients are the crop's ground truth
    assert all(ChunkId.parse(r["chunk_id"]) for r in coeffs)


def test_rerun_skips_everything_and_changes_nothing(prepared):
    out, first, cfg = prepared
    before = {p.name: p.read_bytes() for p in out.glob("*.parquet")}
    again = prepare_vox(cfg)
    assert again.shards_skipped == again.shards and again.frames == first.frames
    assert {p.name: p.read_bytes() for p in out.glob("*.parquet")} == before


def test_prepare_celebv_ingests_every_image_with_oracle_coefficients(synth_tiny, ray_session, tmp_path):
    cfg = CelebVConfig(out=str(tmp_path), world=str(synth_tiny.root), progress=False)
    result = prepare_celebv(cfg)
    images = sorted(synth_tiny.root.glob("CelebV/*/Image/*.jpg"))
    assert result.frames == len(images) and result.status == {"ok": len(images)}
    coeffs = read_stage(tmp_path, "coeffs").to_pylist()
    assert len(coeffs) == len(images) and {r["status"] for r in coeffs} == {"ok"}
    points = np.array([r["landmarks"] for r in coeffs]).reshape(len(coeffs), 68, 2)
    assert ((points > 0) & (points < 256)).all()          # re-framed ground truth lands inside every crop
