"""``reenact pairs``: write, import, filter and annotate the benchmark's pair manifests.

  reenact pairs vox --metadata vox-metadata.csv            vox-self + vox-cross, 20 per test chunk (10,500 each
                                                           on the published file), from the metadata alone
  reenact pairs celebv --prepared DIR                      celebv-cross, 5 identities x 1,000, from prepared
                                                           CelebV frames (+ pose discrepancy when DIR has coeffs)
  reenact pairs dagan --csv-dir DIR [--celebv DIR]         DaGAN's three published lists as dagan-* protocols
  reenact pairs filter --manifest M --prepared DIR --out O mark pairs whose frames are not prepared (status
                                                           unavailable), optionally keep only the available ones
  reenact pairs pose --manifest M --coeffs DIR --out O     fill the pose discrepancy (geodesic angle, yaw / pitch /
                                                           roll differences, bin) from prepared coefficients

Manifests are written through reenact.data.manifests as <out>/<protocol>/v<version>/{pairs.parquet,manifest.json};
the sampling rules are in reenact.data.pairs. The same inputs give byte-identical files.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

PROTOCOL_HELP = "protocol name of the written manifest"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    sub = parser.add_subparsers(dest="action", metavar="<action>", required=True)
    vox = sub.add_parser("vox", help="vox-self and vox-cross from vox-metadata.csv")
    vox.add_argument("--metadata", required=True, help="vox-metadata.csv (video_id,start,end,bbox,...)")
    celebv = sub.add_parser("celebv", help="celebv-cross from prepared CelebV frames")
    celebv.add_argument("--prepared", required=True, help="folder with finished CelebV frame shards")
    celebv.add_argument("--coeffs", help="folder with coefficient shards (default: --prepared, when it has them)")
    celebv.add_argument("--protocol", default="celebv-cross", help=PROTOCOL_HELP)
    celebv.add_argument("--per-block", type=int, default=1000, help="pairs per source identity")
    celebv.add_argument("--source-name", default=None, help="what the frames were prepared from, for the record")
    dagan = sub.add_parser("dagan", help="import DaGAN's published pair CSVs")
    dagan.add_argument("--csv-dir", required=True, help="folder with vox_evaluation.csv, vox_cross_id_evaluation.csv,"
                                                        " celeV_cross_id_evaluation.csv")
    dagan.add_argument("--celebv", help="your CelebV folder, to map CelebV image files to frame indices")
    flt = sub.add_parser("filter", help="mark (and optionally drop) pairs whose frames are not prepared")
    flt.add_argument("--manifest", required=True, help="manifest folder (<protocol>/v<N>)")
    flt.add_argument("--prepared", required=True, help="folder with finished frame shards")
    flt.add_argument("--drop", action="store_true", help="keep only available pairs (pair ids unchanged)")
    pose = sub.add_parser("pose", help="fill the pose discrepancy of a manifest from coefficients")
    pose.add_argument("--manifest", required=True, help="manifest folder (<protocol>/v<N>)")
    pose.add_argument("--coeffs", required=True, help="folder with finished coefficient shards")
    pose.add_argument("--bins", default="0,10,20,30", help="bin edges in degrees; the last bin is open")
    for p in (vox, celebv, dagan, flt, pose):
        p.add_argument("--out", default=None, help="manifests root (default: the repository's manifests/ for "
                                                   "vox/celebv/dagan; required for filter and pose)")
        p.add_argument("--version", type=int, default=1, help="manifest version to write")


def _root(args) -> Path:
    from reenact.data.manifests import MANIFEST_ROOT

    if args.out is None and args.action in ("filter", "pose"):
        raise SystemExit(f"reenact pairs {args.action}: --out is required (a user's run, not the committed manifests)")
    return Path(args.out) if args.out else MANIFEST_ROOT


def write_vox(metadata: str, root: Path, version: int) -> list[Path]:
    from pipelines.pairs import vox_test_chunks
    from reenact.data.manifests import SampledFrom, sha256_file, write_manifest
    from reenact.data.pairs import vox_cross_pairs, vox_self_pairs

    chunks = vox_test_chunks(metadata)
    origin = Path(metadata).name, sha256_file(metadata)
    rules = {"vox-self": "20 per test chunk (rows with partition test), frames within end - start at the reference "
                         "fps; reenact.data.pairs (vox-self)",
             "vox-cross": "20 per test chunk, driving chunk of another person_id by rendezvous hashing; "
                          "reenact.data.pairs (vox-cross)"}
    tables = {"vox-self": vox_self_pairs(chunks), "vox-cross": vox_cross_pairs(chunks)}
    return [write_manifest(t, p, version, SampledFrom(*origin, rules[p], "sha256(protocol|chunk_id|attempt|...)"),
                           root) for p, t in tables.items()]


def write_celebv(args, root: Path) -> list[Path]:
    from pipelines.pairs import annotate_pose, prepared_frames, read_coeff_table
    from reenact.data.manifests import SampledFrom, write_manifest
    from reenact.data.pairs import celebv_cross_pairs
    from reenact.data.shards import done_shards, read_stats

    frames = prepared_frames(args.prepared)
    pairs = celebv_cross_pairs(frames, args.protocol, args.per_block)
    coeff_root = args.coeffs or args.prepared
    notes = ""
    if done_shards(coeff_root, "coeffs"):
        coeffs, extractor = read_coeff_table(coeff_root)
        pairs = annotate_pose(pairs, coeffs, extractor)
    else:
        notes = "no coefficients: pose discrepancy not filled"
    listing = json.dumps(frames, sort_keys=True).encode()
    rows = sum(s["rows"] for s in read_stats(args.prepared, "frames"))
    origin = SampledFrom(args.source_name or "prepared CelebV frame shards (ok frames by chunk)",
                         hashlib.sha256(listing).hexdigest(),
                         f"{args.per_block} per identity, driving from the others in turn; reenact.data.pairs "
                         "(celebv-cross)", "sha256(protocol|identity chunk_id|k|attempt|...)")
    return [write_manifest(pairs, args.protocol, args.version, origin, root,
                           notes=notes or f"{len(frames)} identities, {rows} frame rows")]


def write_dagan(args, root: Path) -> list[Path]:
    from pipelines.pairs import read_dagan_csv
    from reenact.data.manifests import SampledFrom, sha256_file, write_manifest
    from reenact.data.pairs import DAGAN_PROTOCOLS, celebv_frame_keys, dagan_pairs

    keys = None
    if args.celebv:
        from pipelines.celebv import list_identities

        keys = celebv_frame_keys({j.name: [Path(i.path).name for i in j.images] for j in list_identities(args.celebv)
                                  if j.status == "ok"})
    written = []
    for name, protocol in DAGAN_PROTOCOLS.items():
        path = Path(args.csv_dir) / name
        if protocol == "dagan-celebv-cross" and keys is None:
            print(f"skipping {name}: give --celebv DIR to map its image files to frame indices", file=sys.stderr)
            continue
        pairs = dagan_pairs(read_dagan_csv(path), protocol, keys)
        origin = SampledFrom(name, sha256_file(path), "imported as published (harlanhong/CVPR2022-DaGAN data/), "
                             "file order; reenact.data.pairs.dagan_pairs", "none")
        written.append(write_manifest(pairs, protocol, args.version, origin, root, allow_repeats=True,
                                      notes="imported; the published list may repeat a pair"))
    return written


def write_filtered(args, root: Path) -> list[Path]:
    from pipelines.pairs import prepared_frames
    from reenact.data.manifests import SampledFrom, read_manifest_dir, write_manifest
    from reenact.data.pairs import filter_available, mark_available
    from reenact.data.schema import frame_key

    m = read_manifest_dir(args.manifest)
    have = [frame_key(c, i) for c, indices in prepared_frames(args.prepared).items() for i in indices]
    pairs = mark_available(m.pairs, have)
    pairs = filter_available(pairs) if args.drop else pairs
    origin = SampledFrom(f"{m.protocol}/v{m.version}/pairs.parquet", m.info["sha256"],
                         "filtered to prepared frames" if args.drop else "marked by prepared frames", "none")
    return [write_manifest(pairs, m.protocol, args.version, origin, root, allow_repeats=True)]


def write_pose(args, root: Path) -> list[Path]:
    from pipelines.pairs import annotate_pose, read_coeff_table
    from reenact.data.manifests import SampledFrom, read_manifest_dir, write_manifest

    m = read_manifest_dir(args.manifest)
    coeffs, extractor = read_coeff_table(args.coeffs)
    edges = [float(x) for x in args.bins.split(",")]
    pairs = annotate_pose(m.pairs, coeffs, extractor, edges)
    origin = SampledFrom(f"{m.protocol}/v{m.version}/pairs.parquet", m.info["sha256"],
                         f"pose discrepancy from {extractor} coefficients, bins {args.bins} degrees", "none")
    return [write_manifest(pairs, m.protocol, args.version, origin, root, allow_repeats=True)]


def run(args: argparse.Namespace) -> int:
    root = _root(args)
    action = {"vox": lambda: write_vox(args.metadata, root, args.version), "celebv": lambda: write_celebv(args, root),
              "dagan": lambda: write_dagan(args, root), "filter": lambda: write_filtered(args, root),
              "pose": lambda: write_pose(args, root)}[args.action]
    for folder in action():
        info = json.loads((folder / "manifest.json").read_text())
        print(f"{folder}: {json.dumps(info['counts'])}")
    return 0
