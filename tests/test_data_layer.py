"""The data layer: guidance packing, the Hugging Face image layout of shards, manifests and the torch datasets."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from reenact.data.codec import decode_image, encode_png, pack_flow, pack_mask, tensor_to_bytes, unpack_flow, unpack_mask
from reenact.data.datasets import FrameDataset, PairDataset, SelfPairDataset
from reenact.data.manifests import SampledFrom, pairs_table, read_manifest, write_manifest
from reenact.data.schema import COEFFS, FRAMES, GUIDANCE, frame_key, pair_key
from reenact.data.shards import merge_parts, read_stage, read_table, write_part, write_shard

SIZE = 16
CHUNKS = ["id1#vidA#000000#000005", "id2#vidB#000010#000014", "id3#vidC#000000#000003"]


def frame_rows(chunk_id: str, n: int, rng: np.random.Generator, bad: int | None = None) -> list[dict]:
    person, video = chunk_id.split("#")[:2]
    rows = []
    for i in range(n):
        ok = i != bad
        image = encode_png(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)) if ok else None
        rows.append({"chunk_id": chunk_id, "video_id": video, "person_id": person, "partition": "test",
                     "frame_index": i, "source_frame": i, "image": image, "image_format": "png" if ok else None,
                     "height": SIZE, "width": SIZE, "status": "ok" if ok else "decode_error",
                     "error": "" if ok else "corrupt"})
    return rows


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A prepared folder: two frame shards (one via parts), one coefficient shard; frame 2 of chunk 0 is bad."""
    root = tmp_path_factory.mktemp("prepared")
    rng = np.random.default_rng(0)
    rows = {c: frame_rows(c, int(c[-2:]) - int(c.split("#")[2][-2:]), rng, bad=2 if k == 0 else None)
            for k, c in enumerate(CHUNKS)}
    write_shard(root, "frames", 0, pa.Table.from_pylist(rows[CHUNKS[0]], schema=FRAMES))
    for c in CHUNKS[1:]:
        write_part(root, "frames", c.split("#")[1], pa.Table.from_pylist(rows[c], schema=FRAMES))
    merge_parts(root, "frames", 1, [c.split("#")[1] for c in CHUNKS[1:]], FRAMES)
    all_rows = [r for c in CHUNKS for r in rows[c]]
    coeffs = rng.normal(size=(len(all_rows), 257)).astype(np.float32)
    write_shard(root, "coeffs", 0, pa.Table.from_pylist([
        {"chunk_id": r["chunk_id"], "frame_index": r["frame_index"], "coeffs": list(v), "landmarks": None,
         "extractor": "oracle", "fit_error": 0.0, "status": "ok", "error": "", "align": None}
        for r, v in zip(all_rows, coeffs)], schema=COEFFS))
    truth = {frame_key(r["chunk_id"], r["frame_index"]): (r["image"], v) for r, v in zip(all_rows, coeffs)
             if r["status"] == "ok"}
    return root, truth


# ---------------------------------------------------------------- guidance packing

def test_flow_pack_is_float16_rounding():
    flow = torch.randn(2, 8, 8) * 30
    back = unpack_flow(pack_flow(flow), 8)
    assert back.dtype == torch.float32 and back.shape == (2, 8, 8)
    torch.testing.assert_close(back, flow.half().float(), rtol=0, atol=0)
    assert len(pack_flow(flow)) == 2 * 8 * 8 * 2


def test_mask_pack_is_exact_and_refuses_soft_masks():
    mask = (torch.rand(1, 8, 8) > 0.5).float()
    assert torch.equal(unpack_mask(pack_mask(mask), 8), mask)
    assert torch.equal(unpack_mask(pack_mask(mask[0]), 8), mask)           # (H, W) accepted
    with pytest.raises(ValueError, match="values in"):
        pack_mask(mask * 0.5)
    with pytest.raises(ValueError, match=r"expected \(2, H, W\)"):
        pack_flow(torch.zeros(3, 4, 4))


# ---------------------------------------------------------------- shards in the Hugging Face image layout

def test_shards_read_back_as_written(prepared):
    root, truth = prepared
    frames = read_stage(root, "frames")
    assert frames.schema.field("image").type == pa.binary()
    assert frames.num_rows == 12
    got = {frame_key(r["chunk_id"], r["frame_index"]): r["image"] for r in frames.to_pylist()}
    assert {k: v for k, v in got.items() if v is not None} == {k: v[0] for k, v in truth.items()}
    assert got[frame_key(CHUNKS[0], 2)] is None


@pytest.mark.slow
def test_frame_shard_opens_in_hf_datasets_as_pictures(prepared, tmp_path):
    datasets = pytest.importorskip("datasets")
    root, truth = prepared
    for shard in ("frames-00000.parquet", "frames-00001.parquet"):
        ds = datasets.load_dataset("parquet", data_files=str(root / shard), split="train", cache_dir=str(tmp_path))
        assert isinstance(ds.features["image"], datasets.Image)
        for row in ds:
            key = frame_key(row["chunk_id"], row["frame_index"])
            if row["status"] != "ok":
                assert row["image"] is None
                continue
            assert row["image"].size == (SIZE, SIZE)
            np.testing.assert_array_equal(np.asarray(row["image"].convert("RGB")), decode_image(truth[key][0]))


def test_read_table_accepts_both_layouts(prepared, tmp_path):
    root, _ = prepared
    stored = read_table(root / "frames-00000.parquet")
    part = read_table(root / "parts" / "frames" / "vidB.parquet")        # parts keep plain binary
    assert stored.schema.field("image").type == part.schema.field("image").type == pa.binary()


# ---------------------------------------------------------------- manifests

def some_pairs(protocol="toy"):
    keys = [frame_key(CHUNKS[0], i) for i in (0, 1, 3)] + [frame_key(CHUNKS[1], i) for i in (0, 3)]
    src, drv = keys[:4], keys[1:]
    return pairs_table({"pair_id": list(range(4)), "protocol": [protocol] * 4, "source": src, "driving": drv})


def test_manifest_round_trip_is_byte_identical_and_verified(tmp_path):
    origin = SampledFrom("meta.csv", "0" * 64, "toy rule", "sha256(chunk_id)")
    folder = write_manifest(some_pairs(), "toy", 1, origin, root=tmp_path)
    first = {p.name: p.read_bytes() for p in folder.iterdir()}
    write_manifest(some_pairs(), "toy", 1, origin, root=tmp_path)             # same pairs: same bytes
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == first
    m = read_manifest("toy", root=tmp_path)
    assert m.version == 1 and m.pairs.equals(some_pairs())
    info = json.loads((folder / "manifest.json").read_text())
    assert info["counts"]["pairs"] == 4 and info["counts"]["identities"] == 2
    assert info["sampled_from"]["source"] == "meta.csv"
    with pytest.raises(ValueError, match="already holds other pairs"):
        write_manifest(some_pairs().slice(0, 3), "toy", 1, origin, root=tmp_path)
    (folder / "pairs.parquet").write_bytes(first["pairs.parquet"][:-1] + b"x")
    with pytest.raises(ValueError, match="sha256"):
        read_manifest("toy", 1, root=tmp_path)


def test_manifest_refuses_repeats():
    cols = some_pairs().to_pydict()
    dup = pairs_table({k: cols[k] + [9 if k == "pair_id" else cols[k][0]] for k in ("pair_id", "protocol", "source",
                                                                                  "driving")})
    with pytest.raises(ValueError, match="repeats"):
        write_manifest(dup, "toy", 1, SampledFrom("a", "b", "c", "d"), root="/nonexistent")


# ---------------------------------------------------------------- torch datasets

def test_frame_dataset_joins_frames_and_coeffs(prepared):
    root, truth = prepared
    ds = FrameDataset(root)
    assert sorted(ds.keys) == sorted(truth) and len(ds) == 11
    for i in (0, 5, 10):
        item = ds[i]
        image, coeffs = truth[item["key"]]
        assert item["image"].dtype == torch.float32 and item["image"].shape == (3, SIZE, SIZE)
        np.testing.assert_array_equal(np.rint(item["image"].permute(1, 2, 0).numpy() * 255), decode_image(image))
        assert torch.equal(item["coeffs"], torch.from_numpy(coeffs))


def guidance_rows(pairs: pa.Table, rng: np.random.Generator) -> tuple[pa.Table, dict]:
    rows, maps = [], {}
    for r in pairs.to_pylist():
        flow = torch.from_numpy(rng.normal(size=(2, SIZE, SIZE)).astype(np.float32))
        occ, mask = (torch.from_numpy((rng.random((1, SIZE, SIZE)) > 0.5).astype(np.float32)) for _ in range(2))
        render = torch.from_numpy(rng.integers(0, 256, (3, SIZE, SIZE)).astype(np.float32) / 255)
        maps[r["pair_id"]] = {"flow": flow.half().float(), "occlusion": occ, "mask": mask, "rendered": render}
        rows.append({"pair_id": r["pair_id"], "source": r["source"], "driving": r["driving"], "size": SIZE,
                     "flow": pack_flow(flow), "occlusion": pack_mask(occ), "face_mask": pack_mask(mask),
                     "render": tensor_to_bytes(render), "status": "ok", "error": ""})
    return pa.Table.from_pylist(rows, schema=GUIDANCE), maps


def test_pair_dataset_item_contract(prepared, tmp_path):
    root, truth = prepared
    pairs = some_pairs()
    bad = pairs_table({"pair_id": [4], "protocol": ["toy"], "source": [frame_key(CHUNKS[0], 2)],
                       "driving": [frame_key(CHUNKS[0], 0)]})                 # frame 2 is a decode_error
    pairs = pa.concat_tables([pairs, bad])
    table, maps = guidance_rows(pairs.slice(0, 4), np.random.default_rng(1))
    write_shard(tmp_path, "guidance", 0, table)
    ds = PairDataset(pairs, root, guidance=tmp_path)
    assert len(ds) == 4 and ds.missing == [4]
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    batch = next(iter(loader))
    assert batch["source"].shape == batch["driving"].shape == (2, 3, SIZE, SIZE)
    assert batch["source_coeffs"].shape == (2, 257) and batch["pair_id"] == [pair_key("toy", 0), pair_key("toy", 1)]
    for i, pid in enumerate((0, 1)):
        item = ds[i]
        assert item["source_key"] == pairs.column("source")[pid].as_py()
        assert torch.equal(item["driving_coeffs"], torch.from_numpy(truth[item["driving_key"]][1]))
        for name, want in maps[pid].items():
            atol = 0.5 / 255 if name == "rendered" else 0
            torch.testing.assert_close(item[name], want, rtol=0, atol=atol)


def test_self_pairs_are_seeded_and_within_one_chunk(prepared):
    frames = FrameDataset(prepared[0])
    a, b = SelfPairDataset(frames, 50, seed=3), SelfPairDataset(frames, 50, seed=3)
    keys = [a.keys(i) for i in range(50)]
    assert keys == [b.keys(i) for i in reversed(range(50))][::-1]
    assert all(s != d and s.rsplit("/", 1)[0] == d.rsplit("/", 1)[0] for s, d in keys)
    assert keys != [SelfPairDataset(frames, 50, seed=4).keys(i) for i in range(50)]
    assert len({s.rsplit("/", 1)[0] for s, _ in keys}) == 3
    item = a[7]
    assert item["source_key"] == keys[7][0] and item["source"].shape == (3, SIZE, SIZE)


def test_quickstart_samples_pairs_through_the_data_layer(prepared):
    from reenact.app.quickstart import sample_pairs, test_keys

    root, truth = prepared
    frames = FrameDataset(root)
    keys = test_keys(frames, root)
    assert sorted(keys) == sorted(truth)
    pairs = sample_pairs(keys, 4, seed=0)
    assert len(pairs) == 4 and all(s.rsplit("/", 1)[0] != d.rsplit("/", 1)[0] for s, d in pairs)
    assert pairs == sample_pairs(keys, 4, seed=0)


def test_pairs_command_filters_and_annotates(prepared, tmp_path, capsys):
    from reenact.app.cli import main

    root, truth = prepared
    pairs = pa.concat_tables([some_pairs(), pairs_table({"pair_id": [4], "protocol": ["toy"],
                                                         "source": [frame_key(CHUNKS[0], 2)],
                                                         "driving": [frame_key(CHUNKS[0], 0)]})])
    folder = write_manifest(pairs, "toy", 1, SampledFrom("a", "b", "c", "d"), root=tmp_path / "m")
    assert main(["pairs", "filter", "--manifest", str(folder), "--prepared", str(root), "--out",
                 str(tmp_path / "f")]) == 0
    marked = read_manifest("toy", 1, root=tmp_path / "f").pairs
    assert marked.column("status").to_pylist() == ["ok"] * 4 + ["unavailable"]
    assert main(["pairs", "pose", "--manifest", str(tmp_path / "f" / "toy" / "v1"), "--coeffs", str(root),
                 "--out", str(tmp_path / "p")]) == 0
    posed = read_manifest("toy", 1, root=tmp_path / "p").pairs.to_pylist()
    assert all(r["extractor"] == "oracle" and r["pose_bin"] is not None for r in posed)
    assert posed[0]["status"] == "ok" and "toy/v1" in capsys.readouterr().out
