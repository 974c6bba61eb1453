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
    "demo": ("reenact.demo", "render guidance maps (F_c, O_c, I_r) for a few coefficient pairs and write images"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reenact",
        description="Preprocessing, guidance and benchmark suite for 'Exploiting Multiple Guidance from 3DMM for "
                    "Face Reenactment' (AAAI 2023). Run `reenact <command> --help` for a command's options.")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, (module, helptext) in COMMANDS.items():
        p = sub.add_parser(name, help=helptext, description=helptext)
        p.set_defaults(_module=module)
        if "--help" in sys.argv or "-h" in sys.argv or (len(sys.argv) > 1 and sys.argv[1] == name):
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
