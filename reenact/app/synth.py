"""``reenact synth``: generate the embedded synthetic world (see :mod:`reenact.synth` for the layout).

Presets (25 fps; videos are 640x360 H.264, CelebV images 256-400 px JPEG):

  tiny   4 identities (2 train / 2 test), 6 videos of 27-36 frames (one chunk, or two), 5 CelebV identities x 8
         images, procedural model 'full'; under a minute. Used by the tests.
  demo   16 identities (11 train / 5 test), 40 videos of 64-150 frames (one chunk, or two), 5 x 40 CelebV images,
         procedural model 'full'; a few minutes on 2 cores. Used by the quickstart.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from typing import Literal

from reenact.config import add_dataclass_arguments, from_namespace, to_jsonable


@dataclass(frozen=True)
class SynthConfig:
    out: str | None = field(default=None, metadata={"help": "output folder (DIR)", "required": True})
    preset: Literal["tiny", "demo"] = field(default="tiny", metadata={"help": "world size (see below)"})
    seed: int = field(default=0, metadata={"help": "random seed; the same seed gives the same world"})
    workers: int = field(default=2, metadata={"help": "rendering processes"})
    model: str | None = field(default=None, metadata={
        "help": "procedural model size full | small | tiny (default: the preset's)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    add_dataclass_arguments(parser, SynthConfig)


def run(args: argparse.Namespace) -> int:
    from reenact.synth.writer import generate

    cfg = from_namespace(SynthConfig, args)
    if cfg.model not in (None, "full", "small", "tiny"):
        raise ValueError(f"--model must be full, small or tiny, got {cfg.model!r}")
    summary = generate(cfg.preset, cfg.out, seed=cfg.seed, workers=cfg.workers, model_size=cfg.model,
                       progress=cfg.progress, config=to_jsonable(cfg))
    print(json.dumps(summary, indent=2))
    return 0
