"""``reenact train``: train the paper's model (or one of its Table 3 ablations) and write a resumable run folder.

Presets: ``paper`` (256^2, 100 epochs, batch 8, Adam 1e-4 -> 1e-5 after 60 epochs, VGG-19 perceptual + style loss)
and ``tiny`` (64^2 small widths, a few epochs on rendered synthetic pairs: a CPU smoke run). Options given on the
command line override the preset's values.

Loss: ``--loss vgg19-perceptual`` needs torchvision's ``vgg19-dcbb9e9d.pth`` in the asset folder
(``<assets>/torch/hub/checkpoints/``) or torchvision's cache; without it training stops and says where to put it.
``--loss l1-msssim`` is the explicit weight-free fallback (multi-scale L1 + MS-SSIM). The choice is recorded in
``config.json``, the checkpoint and every log row.

Run folder: ``config.json``, ``checkpoint.pt`` (rerun the same command to resume), ``log.csv``, ``tensorboard/``.
``--ray-workers N`` runs the same loop on N Ray Train workers (``--gpu``: one GPU each).

Examples:
  reenact train --preset tiny --loss l1-msssim --run-dir runs/tiny
  reenact train --data prepared/vox --run-dir runs/paper --ray-workers 4 --gpu
"""
from __future__ import annotations

import argparse
import dataclasses
import json

from reenact.config import add_dataclass_arguments, dump


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from reenact.model.train import PRESETS, TrainConfig

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("--preset", choices=sorted(PRESETS), default="paper", help="starting values (default: paper)")
    parser.add_argument("--ray-workers", type=int, default=0, help="train on N Ray Train workers (0: in this process)")
    parser.add_argument("--gpu", action="store_true", help="with --ray-workers: one GPU per worker")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and stop")
    add_dataclass_arguments(parser, TrainConfig)


def config_from_args(args: argparse.Namespace):
    """The preset's config with every option that differs from the dataclass default applied on top."""
    from reenact.model.train import TrainConfig, train_config

    changed = {}
    for f in dataclasses.fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        value = getattr(args, f.name, default)
        if (tuple(value) if isinstance(value, list) else value) != default:
            changed[f.name] = value
    return train_config(args.preset, **changed)


def run(args: argparse.Namespace) -> int:
    from reenact.model.train import training_loop

    cfg = config_from_args(args)
    print(dump(cfg))
    if args.dry_run:
        return 0
    if args.ray_workers > 0:
        from reenact.model.ray_train import train_on_ray

        result = train_on_ray(cfg, num_workers=args.ray_workers, use_gpu=args.gpu)
        print(json.dumps({"run_dir": cfg.run_dir, "metrics": result.metrics}, default=str))
        return 0 if result.error is None else 1
    result = training_loop(cfg)
    print(json.dumps({"run_dir": cfg.run_dir, "steps": result.steps, "checkpoint": str(result.checkpoint),
                      "last_loss": result.losses[-1] if result.losses else None, "loss": cfg.loss}))
    return 0
