"""``reenact prepare guidance``: shards equal a direct compute_guidance call, and a killed run resumes to the same rows."""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from pipelines.guidance import GuidanceConfig, GuidanceStage, identity_batches, prepare_guidance
from reenact.app.demo import sample_coeffs
from reenact.data.datasets import guidance_index, guidance_item
from reenact.data.manifests import SampledFrom, write_manifest
from reenact.data.pairs import number_pairs
from reenact.data.schema import COEFFS, frame_key
from reenact.data.shards import read_stage, write_shard
from reenact.face3d.coeffs import ID, TEX
from reenact.face3d.guidance import compute_guidance
from reenact.face3d.io import load_morphable_model

SIZE, MODEL = 64, "procedural-small"
CHUNK = "id1#vid#000000#000008"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Coefficients of 7 frames of one chunk with one identity (alpha, delta), as a shared-identity fit gives them
    (frame 7 has none), and a manifest of 7 pairs (the last uses frame 7)."""
    root = tmp_path_factory.mktemp("guidance_in")
    coeffs = sample_coeffs(7, math.radians(30), torch.Generator().manual_seed(0)).numpy()
    coeffs[:, ID], coeffs[:, TEX] = coeffs[0, ID], coeffs[0, TEX]
    write_shard(root, "coeffs", 0, pa.Table.from_pylist([
        {"chunk_id": CHUNK, "frame_index": i, "coeffs": list(v), "landmarks": None, "extractor": "oracle",
         "fit_error": 0.0, "status": "ok", "error": "", "align": None} for i, v in enumerate(coeffs)], schema=COEFFS))
    pairs = [(frame_key(CHUNK, i), frame_key(CHUNK, (i + 3) % 7)) for i in range(6)]
    pairs.append((frame_key(CHUNK, 0), frame_key(CHUNK, 7)))
    folder = write_manifest(number_pairs(pairs, "toy"), "toy", 1, SampledFrom("t", "0", "toy", "none"), root / "m")
    return root, folder, coeffs, pairs


def config(out, inputs, **kw) -> GuidanceConfig:
    root, folder = inputs[:2]
    return GuidanceConfig(out=str(out), executor="local", progress=False, pairs=str(folder), prepared=str(root),
                          size=SIZE, morphable_model=MODEL, pairs_per_item=2, items_per_shard=2, **kw)


@pytest.fixture(scope="module")
def uninterrupted(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("guidance_out")
    result = prepare_guidance(config(out, inputs))
    return out, result


@pytest.mark.slow
def test_guidance_rows_equal_a_direct_call(inputs, uninterrupted):
    _, _, coeffs, pairs = inputs
    out, result = uninterrupted
    assert result.shards == 2 and result.status == {"ok": 6, "unavailable": 1}
    index = guidance_index(out)
    model = load_morphable_model(MODEL)
    for block in ((0, 1), (2, 3), (4, 5)):                       # the stage's blocks of 2 pairs, one call each
        idx = [int(pairs[i][0][-7:]) for i in block], [int(pairs[i][1][-7:]) for i in block]
        g = compute_guidance(model, torch.from_numpy(coeffs[idx[0]]), torch.from_numpy(coeffs[idx[1]]), SIZE,
                             with_source_render=False)
        for k, pid in enumerate(block):
            got = guidance_item(index.row((pid, *pairs[pid]), ["size", "flow", "occlusion", "face_mask", "render"]))
            flow = g.flow[k]
            assert torch.all((got["flow"] - flow).abs() <= flow.abs() * 2.0 ** -11 + 1e-7)   # float16 rounding
            assert torch.equal(got["occlusion"], g.occlusion[k]) and torch.equal(got["mask"], g.face_mask[k])
            assert (got["rendered"] - g.render[k].clamp(0, 1)).abs().max() <= 0.5 / 255 + 1e-6
            assert got["mask"].sum() > 0
    rows = read_stage(out, "guidance", ["pair_id", "status", "error"]).to_pylist()
    assert [r["pair_id"] for r in rows] == list(range(7))
    assert rows[6]["status"] == "unavailable" and CHUNK + "/0000007" in rows[6]["error"]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_rows(inputs, uninterrupted, tmp_path, monkeypatch):
    out = tmp_path / "killed"
    original, calls = GuidanceStage._write, []

    def dies_on_fourth_block(self, key, job, token):
        calls.append(key)
        if len(calls) == 4:                                     # shard 1's second block: its first part is done
            raise KeyboardInterrupt("killed")
        original(self, key, job, token)

    monkeypatch.setattr(GuidanceStage, "_write", dies_on_fourth_block)
    with pytest.raises(KeyboardInterrupt):
        prepare_guidance(config(out, inputs))
    assert (out / "guidance-00000.stats.json").is_file() and not (out / "guidance-00001.stats.json").exists()
    assert (out / "parts" / "guidance" / "block-000004.stats.json").is_file()
    calls.clear()
    monkeypatch.setattr(GuidanceStage, "_write", lambda *a: (calls.append(a[1]), original(*a)))
    resumed = prepare_guidance(config(out, inputs))
    assert resumed.shards_skipped == 1 and calls == ["block-000006"]
    want, got = read_stage(uninterrupted[0], "guidance"), read_stage(out, "guidance")
    assert got.equals(want)
    assert not list((out / "parts" / "guidance").glob("*.parquet"))          # merged and removed, no duplicates
    again = prepare_guidance(config(out, inputs))
    assert again.shards_skipped == 2 and read_stage(out, "guidance").equals(want)


def test_config_is_checked(inputs, tmp_path):
    with pytest.raises(ValueError, match="pairs_per_item"):
        config(tmp_path, inputs, batch=0)
    assert np.isfinite(inputs[2]).all()


def test_calls_hold_pairs_of_one_source_identity():
    """Pairs are grouped by the source's (alpha, delta) in order of first appearance, then cut into calls."""
    frames = {name: np.zeros(257, np.float32) for name in "abcdefg"}
    for name in "de":
        frames[name][ID.start] = 1.0                            # another identity: alpha differs
    frames["g"][TEX.start] = 1.0                                # another identity: delta differs
    pairs = [[i, source, "x"] for i, source in enumerate("adbecgf")]
    calls = identity_batches(pairs, frames, 2)
    assert [[p[1] for p in call] for call in calls] == [["a", "b"], ["c", "f"], ["d", "e"], ["g"]]
