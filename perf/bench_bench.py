"""Throughput of ``reenact bench``: pairs per second per model, metrics included, and where the time goes.

    python perf/bench_bench.py                                   # synth-cross, 16 pairs, 2 threads
    python perf/bench_bench.py --protocol synth-self --pairs 16 --json-out perf/bench_bench.json

Renders the synthetic pairs once (into ``--out``, not timed), then for each model runs the bench's two phases from
scratch -- generation (model forward + PNG encode + shard write) and scoring (decode + every metric, each metric
including the backend calls it triggers first: the dlib embedding for CSIM, the coefficient extractor for AED) --
and reports pairs/s end to end and the seconds per pair of each part. Weight-free models only (copy-source,
copy-driving, render) unless ``--random-weights`` is given.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark.metrics import Backends
from benchmark.runner import BenchConfig, generate, load_pairs, score
from perf.timing import print_table


def measure(cfg: BenchConfig) -> list[dict]:
    pairs, sha = load_pairs(cfg)                                   # renders once, cached under cfg.out/pairs
    backends = Backends(cfg.metric_options())
    plan = {"protocol": cfg.protocol, "manifest_sha256": sha, "shard_size": cfg.shard_size, "pairs": len(pairs)}
    for what in ("embedder", "extractor"):                         # load the backends before timing
        backends.get(what)
    rows = []
    for name in cfg.models:
        shutil.rmtree(Path(cfg.out) / "generated" / name, ignore_errors=True)
        start = time.perf_counter()
        root = generate(cfg, name, pairs, plan)
        generated = time.perf_counter() - start
        start = time.perf_counter()
        scored = score(cfg, name, root, pairs, backends)
        scoring = time.perf_counter() - start
        n = len(pairs)
        rows.append({"model": name, "pairs": n, "pairs_per_s": n / (generated + scoring),
                     "generate_s_per_pair": generated / n, "score_s_per_pair": scoring / n,
                     **{f"{k}_s_per_pair": v / n for k, v in scored.seconds.items()}})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", default="synth-cross", choices=["synth-cross", "synth-self"])
    parser.add_argument("--models", nargs="+", default=["copy-source", "copy-driving", "render"])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the CI machine has 2 cores)")
    parser.add_argument("--metrics", nargs="+", default=None, help="default: the protocol kind's defaults")
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.out or tempfile.mkdtemp(prefix="bench-perf-")
    cfg = BenchConfig(models=args.models, protocol=args.protocol, out=out, synth_pairs=args.pairs,
                      synth_size=args.size, batch_size=args.batch_size, shard_size=args.pairs,
                      metrics=args.metrics or [], random_weights=args.random_weights, progress=False)
    rows = measure(cfg)
    parts = sorted({k for r in rows for k in r if k.endswith("_s_per_pair")}, key=lambda k: (k[0].islower(), k))
    print(f"{args.protocol}, {args.pairs} pairs at {args.size}^2, batch {args.batch_size}, {args.threads} threads")
    print_table(["model", "pairs/s"] + [p.removesuffix("_s_per_pair") + " s/pair" for p in parts],
                [[r["model"], round(r["pairs_per_s"], 3)] + [round(r.get(p, 0.0), 3) for p in parts] for r in rows])
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"config": vars(args), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
