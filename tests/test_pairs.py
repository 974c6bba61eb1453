"""Pair protocols: the seeded sampler, the committed manifests, DaGAN import, availability marks, pose discrepancy."""
from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from pipelines.pairs import annotate_pose, pose_discrepancy, read_dagan_csv, vox_test_chunks
from reenact.data.manifests import MANIFEST_ROOT, pairs_bytes, read_manifest
from reenact.data.pairs import (
    DAGAN_PROTOCOLS,
    Chunk,
    bin_labels,
    celebv_cross_pairs,
    dagan_pairs,
    filter_available,
    mark_available,
    pose_bin,
    self_pairs_of,
    vox_cross_pairs,
    vox_self_pairs,
)
from reenact.data.schema import ChunkId, parse_frame_key
from reenact.face3d.coeffs import ANGLE
from reenact.face3d.transforms import matrix_to_euler
from tests.conftest import fixture_path


def toy_chunks(n: int = 40, persons: int = 5, seed: int = 0) -> list[Chunk]:
    rng = random.Random(seed)
    return [Chunk(str(ChunkId(f"id{k % persons:05d}", f"vid{k:03d}", 100 * k, 100 * k + rng.randint(64, 300))), 0)
            for k in range(n)]


def chunks_of(n: int = 40, persons: int = 5) -> list[Chunk]:
    return [Chunk.from_id(c.chunk_id) for c in toy_chunks(n, persons)]


def person(key: str) -> str:
    return ChunkId.parse(parse_frame_key(key)[0]).person_id


def by_source_chunk(table) -> dict[str, set]:
    out: dict[str, set] = {}
    for s, d in zip(table.column("source").to_pylist(), table.column("driving").to_pylist()):
        out.setdefault(parse_frame_key(s)[0], set()).add((s, d))
    return out


# ---------------------------------------------------------------- sampler rules

def test_self_pairs_count_range_and_no_repeats():
    chunks = chunks_of()
    t = vox_self_pairs(chunks)
    assert t.num_rows == 20 * len(chunks) and t.column("pair_id").to_pylist() == list(range(t.num_rows))
    pairs = list(zip(t.column("source").to_pylist(), t.column("driving").to_pylist()))
    assert len(set(pairs)) == len(pairs) and all(s != d for s, d in pairs)
    length = {c.chunk_id: c.frames for c in chunks}
    for s, d in pairs:
        (cs, i), (cd, j) = parse_frame_key(s), parse_frame_key(d)
        assert cs == cd and 0 <= i < length[cs] and 0 <= j < length[cs]


def test_cross_pairs_have_different_persons():
    chunks = chunks_of()
    t = vox_cross_pairs(chunks)
    assert t.num_rows == 20 * len(chunks)
    pairs = list(zip(t.column("source").to_pylist(), t.column("driving").to_pylist()))
    assert len(set(pairs)) == len(pairs) and all(person(s) != person(d) for s, d in pairs)
    length = {c.chunk_id: c.frames for c in chunks}
    assert all(parse_frame_key(d)[1] < length[parse_frame_key(d)[0]] for _, d in pairs)


def test_removing_videos_leaves_the_other_pairs_unchanged():
    chunks = chunks_of(60)
    full_self, full_cross = by_source_chunk(vox_self_pairs(chunks)), by_source_chunk(vox_cross_pairs(chunks))
    for seed in range(3):
        rng = random.Random(seed)
        kept = rng.sample(chunks, 35)
        kept_ids = {c.chunk_id for c in kept}
        part_self, part_cross = by_source_chunk(vox_self_pairs(kept)), by_source_chunk(vox_cross_pairs(kept))
        assert part_self == {c: p for c, p in full_self.items() if c in kept_ids}
        for c in kept_ids:
            survivors = {(s, d) for s, d in full_cross[c] if parse_frame_key(d)[0] in kept_ids}
            assert survivors <= part_cross[c]                       # pairs whose driving video remains: unchanged
            assert len(part_cross[c]) == 20
            assert all(parse_frame_key(d)[0] in kept_ids for _, d in part_cross[c])


def test_seed_is_the_chunk_id():
    a, b = Chunk.from_id("id1#v#000000#000100"), Chunk.from_id("id1#w#000000#000100")
    assert self_pairs_of(a) == self_pairs_of(a)
    assert [parse_frame_key(s)[1] for s, _ in self_pairs_of(a)] != [parse_frame_key(s)[1] for s, _ in self_pairs_of(b)]


def test_celebv_blocks():
    frames = {str(ChunkId(n, n, 0, 40)): list(range(0, 40, 1 + k % 2)) for k, n in
              enumerate(["Donald_Trump", "Emmanuel_Macron", "Jack_Ma", "Kathleen", "Theresa_May"])}
    t = celebv_cross_pairs(frames)
    assert t.num_rows == 5000
    src, drv = t.column("source").to_pylist(), t.column("driving").to_pylist()
    assert len(set(zip(src, drv))) == 5000
    blocks = Counter(parse_frame_key(s)[0] for s in src)
    assert sorted(blocks.values()) == [1000] * 5
    for b in range(5):
        block_src = {parse_frame_key(s)[0] for s in src[1000 * b:1000 * (b + 1)]}
        block_drv = Counter(parse_frame_key(d)[0] for d in drv[1000 * b:1000 * (b + 1)])
        assert len(block_src) == 1 and block_src.isdisjoint(block_drv) and sorted(block_drv.values()) == [250] * 4
    assert all(parse_frame_key(k)[1] in frames[parse_frame_key(k)[0]] for k in src + drv)
    with pytest.raises(ValueError, match="too few frames"):
        celebv_cross_pairs({c: v[:3] for c, v in frames.items()})


def test_mark_and_filter_keep_pair_ids():
    t = vox_self_pairs(chunks_of(3))
    have = {k for k in t.column("source").to_pylist() + t.column("driving").to_pylist()
            if parse_frame_key(k)[0] != chunks_of(3)[1].chunk_id}
    marked = mark_available(t, have)
    assert Counter(marked.column("status").to_pylist()) == {"ok": 40, "unavailable": 20}
    kept = filter_available(marked)
    assert kept.num_rows == 40 and kept.column("pair_id").to_pylist() == list(range(20)) + list(range(40, 60))


# ---------------------------------------------------------------- committed manifests (real vox-metadata.csv)

@pytest.fixture(scope="module")
def real_chunks():
    return vox_test_chunks(fixture_path("manifests", "vox-metadata.csv"))


@pytest.mark.slow
def test_committed_vox_manifests_regenerate_byte_identically(real_chunks):
    assert len(real_chunks) == 525
    for protocol, sample in (("vox-self", vox_self_pairs), ("vox-cross", vox_cross_pairs)):
        m = read_manifest(protocol, 1)                              # checks the sha256
        assert (MANIFEST_ROOT / protocol / "v1" / "pairs.parquet").read_bytes() == pairs_bytes(sample(real_chunks))
        assert m.pairs.num_rows == 10500 and m.info["counts"]["source_chunks"] == 525
        pairs = list(zip(m.pairs.column("source").to_pylist(), m.pairs.column("driving").to_pylist()))
        assert len(set(pairs)) == 10500
        if protocol == "vox-cross":
            assert all(person(s) != person(d) for s, d in pairs)


def test_dagan_import():
    folder = fixture_path("manifests", "dagan")
    for name, protocol in DAGAN_PROTOCOLS.items():
        t = dagan_pairs(read_dagan_csv(folder / name), protocol)
        assert t.num_rows == 2083
        keys = t.column("source").to_pylist() + t.column("driving").to_pylist()
        parsed = [parse_frame_key(k) for k in keys]                 # raises on an unparseable key
        if protocol == "dagan-vox-cross":
            assert all(person(s) != person(d) for s, d in zip(keys[:2083], keys[2083:]))
        if protocol == "dagan-vox-self":
            assert all(a[0] == b[0] for a, b in zip(parsed[:2083], parsed[2083:]))
    committed = read_manifest("dagan-vox-self", 1)
    assert committed.pairs.num_rows == 2083


# ---------------------------------------------------------------- pose discrepancy

def test_geodesic_angle_of_known_rotations():
    rng = np.random.default_rng(0)
    base = Rotation.from_euler("xyz", rng.uniform(-0.6, 0.6, (64, 3)))   # R = Rz Ry Rx, as euler_to_matrix
    axes = rng.normal(size=(64, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    theta = rng.uniform(0, 1.2, 64)
    theta[:4] = [0.0, 1e-3, math.pi / 2, 1.0]
    turned = base * Rotation.from_rotvec(axes * theta[:, None])
    src = matrix_to_euler(torch.from_numpy(base.as_matrix()))
    drv = matrix_to_euler(torch.from_numpy(turned.as_matrix()))
    pose = pose_discrepancy(src, drv)
    np.testing.assert_allclose(pose.geodesic.numpy(), theta, atol=1e-4, rtol=0)
    yaw_only = pose_discrepancy(torch.tensor([[0.1, 0.2, 0.0]], dtype=torch.float64), torch.tensor([[0.1, -0.3, 0.0]], dtype=torch.float64))
    assert abs(yaw_only.yaw.item() + 0.5) < 1e-12 and abs(yaw_only.pitch.item()) < 1e-12
    assert abs(yaw_only.geodesic.item() - 0.5) < 1e-9
    wrap = pose_discrepancy(torch.tensor([[0.0, 0.0, 3.0]], dtype=torch.float64), torch.tensor([[0.0, 0.0, -3.0]], dtype=torch.float64))
    assert abs(wrap.roll.item() - (2 * math.pi - 6.0)) < 1e-12


def test_pose_bins_and_annotation():
    assert bin_labels() == ["0-10", "10-20", "20-30", "30+"]
    assert [pose_bin(a) for a in (0.0, 9.99, 10.0, 29.9, 75.0)] == ["0-10", "0-10", "10-20", "20-30", "30+"]
    assert pose_bin(12.0, [0, 5, 15]) == "5-15"
    t = vox_self_pairs(chunks_of(2))
    keys = set(t.column("source").to_pylist() + t.column("driving").to_pylist())
    rng = np.random.default_rng(1)
    coeffs = {k: rng.normal(0, 0.3, 257).astype(np.float32) for k in keys}
    dropped = t.column("source")[0].as_py()
    del coeffs[dropped]
    a = annotate_pose(t, coeffs, "oracle")
    rows = a.to_pylist()
    assert all((r["geodesic_deg"] is None) == (dropped in (r["source"], r["driving"])) for r in rows)
    r = next(r for r in rows if r["geodesic_deg"] is not None)
    want = pose_discrepancy(torch.from_numpy(coeffs[r["source"]][ANGLE].astype(np.float64)),
                            torch.from_numpy(coeffs[r["driving"]][ANGLE].astype(np.float64)))
    assert abs(r["geodesic_deg"] - math.degrees(want.geodesic.item())) < 1e-4
    assert r["pose_bin"] == pose_bin(r["geodesic_deg"]) and r["extractor"] == "oracle"


def test_committed_synthetic_celebv_manifest_spans_three_bins():
    m = read_manifest("synth-celebv-cross", 1)
    assert m.pairs.num_rows == 5000
    bins = Counter(v for v in m.pairs.column("pose_bin").to_pylist() if v is not None)
    assert len(bins) >= 3 and sum(bins.values()) == 5000


def test_committed_synthetic_celebv_pairs_regenerate():
    """The synthetic world's prepared CelebV frames were all ok: 40 per identity (manifest notes: 200 frame rows)."""
    m = read_manifest("synth-celebv-cross", 1)
    chunks = sorted({parse_frame_key(k)[0] for k in m.pairs.column("source").to_pylist()})
    again = celebv_cross_pairs({c: range(ChunkId.parse(c).end) for c in chunks}, "synth-celebv-cross")
    assert again.select(["pair_id", "source", "driving"]).equals(m.pairs.select(["pair_id", "source", "driving"]))
