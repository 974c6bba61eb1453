"""``reenact quickstart``: the main job on the embedded default, end to end, in one command.

1. ``world/``: the synthetic world (``reenact synth --preset demo``): talking-head videos, vox-metadata.csv, CelebV
   images and exact ground truth. Skipped when already written with the same preset and seed.
2. ``prepared/``: ``reenact prepare synth`` on Ray: download (file:// URLs) -> crop (FOMM protocol, 256^2) ->
   3DMM coefficients (oracle by default) into Parquet shards. Resumable: a rerun skips finished shards.
3. ``guidance/``: for a few (source, driving) pairs of test frames, the guidance maps of the paper computed from the
   prepared coefficients, next to the real crops: source, driving, I_r, F_c, O_c, and the source crop warped by F_c.

Everything lands under ``--out`` with each step's ``config.json``. Later stages of the suite (pair manifests, the
paper's model, the benchmark) extend this command.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from reenact.config import add_dataclass_arguments, from_namespace, save_run_config


@dataclass(frozen=True)
class QuickstartConfig:
    out: str = field(default="runs/quickstart", metadata={"help": "output folder (rerun to resume)"})
    preset: Literal["tiny", "demo"] = field(default="demo", metadata={"help": "synthetic world size"})
    seed: int = field(default=0, metadata={"help": "world seed"})
    extractor: Literal["oracle", "landmarks"] = field(default="oracle", metadata={
        "help": "coefficient extractor: oracle (ground truth) or landmarks (dlib 68 + model fit)"})
    pairs: int = field(default=6, metadata={"help": "guidance pictures to write"})
    num_cpus: int | None = field(default=None, metadata={"help": "CPUs of the local Ray (default: all)"})
    progress: bool = field(default=True, metadata={"help": "progress bars"})


def make_world(cfg: QuickstartConfig, root: Path) -> dict:
    """Step 1: generate the synthetic world unless an identical one is there."""
    from reenact.synth import generate

    done = root / "config.json"
    if done.is_file():
        earlier = json.loads(done.read_text())["config"]
        if (earlier.get("preset"), earlier.get("seed")) == (cfg.preset, cfg.seed):
            print(f"[1/3] world: reusing {root}")
            return json.loads(done.read_text())["provenance"].get("summary", {})
    print(f"[1/3] world: generating the '{cfg.preset}' synthetic world in {root}")
    return generate(cfg.preset, root, seed=cfg.seed, workers=1, progress=cfg.progress)


def prepare(cfg: QuickstartConfig, world: Path, out: Path):
    """Step 2: download -> crop -> coefficients on Ray."""
    from pipelines.prepare import SynthConfig, prepare_vox

    print(f"[2/3] prepare: download -> crop -> {cfg.extractor} coefficients into {out}")
    return prepare_vox(SynthConfig(out=str(out), world=str(world), extractor=cfg.extractor,
                                   num_cpus=cfg.num_cpus, progress=cfg.progress))


def sample_pairs(keys: list[str], count: int, seed: int) -> list[tuple[str, str]]:
    """(source, driving) frame keys of different chunks, ``count`` of them, drawn with ``seed``."""
    import random

    rng = random.Random(seed)
    pairs = []
    for _ in range(20 * count):
        s, d = rng.sample(keys, 2)
        if s.rsplit("/", 1)[0] != d.rsplit("/", 1)[0]:
            pairs.append((s, d))
        if len(pairs) == count:
            break
    return pairs


def test_keys(frames, prepared: Path) -> list[str]:
    """Usable frame keys of test chunks (all usable keys when there are none)."""
    from reenact.data.shards import read_stage

    table = read_stage(prepared, "frames", ["chunk_id", "partition"]).to_pydict()
    test = {c for c, p in zip(table["chunk_id"], table["partition"]) if p == "test"}
    return [k for k in frames.keys if k.rsplit("/", 1)[0] in test] or list(frames.keys)


def guidance_pictures(cfg: QuickstartConfig, prepared: Path, out: Path) -> list[str]:
    """Step 3: guidance maps of sampled pairs next to the real crops."""
    from reenact.data.datasets import FrameDataset
    from reenact.face3d.guidance import compute_guidance, warp_with_flow
    from reenact.face3d.procedural import procedural_model
    from reenact.synth import world_model_size
    from reenact.viz import flow_to_rgb, grid_image, save_png

    frames = FrameDataset(prepared)
    world = json.loads((prepared / "config.json").read_text())["config"]["world"]
    model = procedural_model(world_model_size(world))
    written = []
    for k, (s, d) in enumerate(sample_pairs(test_keys(frames, prepared), cfg.pairs, cfg.seed)):
        pair = frames.pair_item(f"quickstart/{k}", s, d)
        src, drv = pair["source"], pair["driving"]
        g = compute_guidance(model, pair["source_coeffs"][None], pair["driving_coeffs"][None], src.shape[-1],
                             with_source_render=False)
        warped = warp_with_flow(src[None], g.flow)[0] * g.face_mask[0] + src * (1 - g.face_mask[0])
        row = [src, drv, g.render[0].clamp(0, 1), flow_to_rgb(g.flow[0]), g.occlusion[0], warped]
        path = out / f"pair-{k:03d}.png"
        save_png(grid_image([row]), path)
        written.append(str(path))
    print(f"[3/3] guidance: {len(written)} pictures (source | driving | I_r | F_c | O_c | source warped by F_c) "
          f"in {out}")
    return written


def run_quickstart(cfg: QuickstartConfig) -> dict:
    root = Path(cfg.out)
    root.mkdir(parents=True, exist_ok=True)
    save_run_config(cfg, root)
    t0 = time.time()
    world = make_world(cfg, root / "world")
    result = prepare(cfg, root / "world", root / "prepared")
    pictures = guidance_pictures(cfg, root / "prepared", root / "guidance")
    summary = {"world": world, "prepared": {"frames": result.frames, "status": result.status,
                                            "shards": result.shards}, "guidance": pictures,
               "seconds": round(time.time() - t0, 1)}
    (root / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    add_dataclass_arguments(parser, QuickstartConfig)


def run(args: argparse.Namespace) -> int:
    summary = run_quickstart(from_namespace(QuickstartConfig, args))
    print(json.dumps({k: v for k, v in summary.items() if k != "guidance"}, indent=2, default=str))
    return 0
