"""``reenact report``: a self-contained HTML page (images inlined) on performance versus pose discrepancy, as in
the seed's Fig. 6: per metric and model, the value per pose-discrepancy bin with bootstrap intervals and counts,
a table of the same numbers, and a grid of example pairs (source | driving | each model) per bin.

Give the folder of a ``reenact bench`` run; ``--check`` loads the page in headless Chromium and writes a
screenshot next to it.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="folder of a `reenact bench` run (holds results.json)")
    parser.add_argument("--out", default=None, help="HTML file to write (default: <run>/report.html)")
    parser.add_argument("--check", action=argparse.BooleanOptionalAction, default=False,
                        help="load the page in headless Chromium, report problems, write <out>.png")


def run(args: argparse.Namespace) -> int:
    from benchmark.report import check_in_browser, write_report

    path = write_report(args.run, args.out)
    print(f"report: {path}")
    if args.check:
        check = check_in_browser(path, path.with_suffix(".png"))
        print(f"browser: {check.images_decoded}/{check.images_total} images decoded, {check.script_errors} script "
              f"errors, {len(check.console)} console messages; screenshot {check.screenshot}")
        return 0 if check.ok else 1
    return 0
