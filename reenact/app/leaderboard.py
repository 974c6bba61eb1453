"""``reenact leaderboard``: the seed's Tables 1-3 as markdown, CSV and LaTeX, from results JSON files only.

Give the results of ``reenact bench`` runs: ``vox-self`` + ``vox-cross`` make Table 1, ``celebv-cross`` Table 2
(``synth-self`` / ``synth-cross`` get Table 1's layout); ``--ablation`` names a ``celebv-cross`` result whose models
are the ablation variants (Table 3). The paper's reported numbers follow as a separate, labelled block; rows whose
metric backend or extractor differs from the paper's are marked with a dagger and explained.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("results", nargs="+", help="results.json files written by `reenact bench`")
    parser.add_argument("--out", required=True, help="folder for leaderboard.md / .csv / .tex")
    parser.add_argument("--ablation", default=None, help="results.json of the ablation variants (Table 3)")
    parser.add_argument("--formats", nargs="+", default=["md", "csv", "tex"], choices=["md", "csv", "tex"],
                        help="formats to write (default: all)")


def run(args: argparse.Namespace) -> int:
    from benchmark.leaderboard import write_leaderboard

    paths = write_leaderboard(args.results, args.out, args.ablation, tuple(args.formats))
    if "md" in paths:
        print(paths["md"].read_text())
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0
