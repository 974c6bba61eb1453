"""The ``reenact`` command line.

The entry point sits above every package of the suite: it names subcommand modules as strings only, so that
``reenact --help`` is instant and each subcommand imports just what it needs. Each module exposes
``add_arguments(parser)`` and ``run(args) -> int``.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import sys

from reenact.config import UserError

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
    "pairs": ("reenact.app.pairs", "write, import, filter and pose-annotate the benchmark's versioned pair manifests"),
    "inspect": ("pipelines.inspect", "print counts per stage, status histogram and throughput of a prepare folder"),
    "train": ("reenact.app.train", "train the paper's model or a Table 3 ablation (resumable; Ray Train with --ray-workers)"),
    "animate": ("reenact.app.animate", "animate a source face with a driving video using a trained paper model -> mp4"),
    "bench": ("reenact.app.bench", "run models over a protocol's pairs and score them into results JSON; rerun to resume"),
    "leaderboard": ("reenact.app.leaderboard", "render the seed's Tables 1-3 (markdown, CSV, LaTeX) from results JSON"),
    "report": ("reenact.app.report", "write a self-contained HTML pose-discrepancy report (Fig. 6) from results JSON"),
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the ``selected`` subcommand's module is imported to add its options."""
    parser = argparse.ArgumentParser(
        prog="reenact",
        description="Preprocessing, guidance and benchmark suite for 'Exploiting Multiple Guidance from 3DMM for "
                    "Face Reenactment' (AAAI 2023). Run `reenact <command> --help` for a command's options.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, (module, helptext) in COMMANDS.items():
        p = sub.add_parser(name, help=helptext, description=helptext)
        p.set_defaults(_module=module)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        if name == selected:
            importlib.import_module(module).add_arguments(p)
    return parser


#: OSError numbers that are the user's to fix (a path, permissions, a full disk), reported in one line
USER_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ENOSPC,
               errno.EROFS, errno.EDQUOT, errno.ENAMETOOLONG}


def is_user_mistake(err: BaseException) -> bool:
    """A :class:`reenact.config.UserError`, or an OSError about a path, permissions or a full disk."""
    return isinstance(err, UserError) or (isinstance(err, OSError) and err.errno in USER_ERRNOS)


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _command_of(argv: list[str]) -> str | None:
    """The subcommand named on the command line (the first word that is not an option)."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand. A user mistake ends with one line on stderr and exit code 2 (``--debug``: the traceback);
    Ctrl-C ends with exit code 130."""
    argv = sys.argv[1:] if argv is None else list(argv)
    selected = _command_of(argv)
    parser = build_parser(selected=selected if selected in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"reenact {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug or not is_user_mistake(err):
            raise
        print(f"reenact {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
