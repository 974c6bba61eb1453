"""``reenact bench``: run registered models over a protocol's pairs and score them (:mod:`benchmark.runner`).

Writes ``<out>/results.json`` (per-pair records, aggregates with bootstrap intervals, provenance) and prints the
leaderboard. Generated images are cached in ``<out>/generated/<model>/``: rerun the same command to resume or to
add models; only missing shards are computed.

Metric definitions (every choice is recorded with each number):
  CSIM  cosine of identity embeddings, source vs generated (cross) or driving vs generated (self); --embedder
  AED   L1 of the 64 expression coefficients, generated vs driving; --extractor, --aed-reduce
  APD   L1 of the pose, generated vs driving; --apd-pose angles|angles+trans, --apd-reduce
  FID   pytorch-fid Inception with its standard weights; reported unavailable without them
  FD[dlib-resnet]  a Frechet distance on the dlib identity embedding (not FID)
  self-reenactment adds L1, PSNR, SSIM and AKD against the driving frame

Examples:
  reenact bench --protocol synth-cross --models copy-source copy-driving render --out runs/bench-synth
  reenact bench --protocol vox-cross --data data/vox --models fomm pirender --out runs/bench-vox
"""
from __future__ import annotations

import argparse

from reenact.config import add_dataclass_arguments, dump, from_namespace


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from benchmark.runner import BenchConfig

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    add_dataclass_arguments(parser, BenchConfig)


def run(args: argparse.Namespace) -> int:
    from benchmark.leaderboard import leaderboard_tables, to_markdown
    from benchmark.runner import BenchConfig, run_bench

    cfg = from_namespace(BenchConfig, args)
    if cfg.dry_run:
        print(dump(cfg))
        return 0
    result = run_bench(cfg)
    print(to_markdown(leaderboard_tables([result])[:-3]))
    print(f"results: {cfg.out}/results.json")
    return 0
