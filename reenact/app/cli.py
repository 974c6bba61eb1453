"""The ``reenact`` command line.

The entry point sits above every package of the suite: it names subcommand modules as strings only, so that
``reenact --help`` is instant and each subcommand imports just what it needs. Each module exposes
``add_arguments(parser)`` and ``run(args) -> int``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "quickstart": ("reenact.app.quickstart", "the main job on the embedded default: synthetic world -> prepare on Ray -> "
                                           "guidance pictures, in one command"),
    "demo": ("reenact.app.demo", "render guidance maps (F_c, O_c, I_r) for a few coefficient pairs and write images"),
    "synth": ("reenact.app.synth", "generate the synthetic world: talking-head videos, vox-metadata.csv, CelebV "
                                   "images and exact ground truth"),
    "convert-bfm": ("reenact.app.convert_bfm", "convert the licensed BFM09 files into Deep3DFaceRecon's BFM_model_front.mat"),
    "prepare": ("pipelines.prepare", "run the preprocessing stages on Ray (download, crop, ...) into Parquet shards; "
                                    "rerun to resume"),
    "inspect": ("pipelines.inspect", "print counts per stage, status histogram and throughput of a prepare folder"),
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the ``selected`` subcommand's module is imported to add its options."""
    parser = argparse.ArgumentParser(
        prog="reenact",
        description="Preprocessing, guidance and benchmark suite for 'Exploiting Multiple Guidance from 3DMM for "
                    "Face Reenactment' (AAAI 2023). Run `reenact <command> --help` for a command's options.")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, (module, helptext) in COMMANDS.items():
        p = sub.add_parser(name, help=helptext, description=helptext)
        p.set_defaults(_module=module)
        if name == selected:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(selected=argv[0] if argv and argv[0] in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
