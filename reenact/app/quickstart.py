"""``reenact quickstart``: the whole suite on the embedded synthetic world, in one command: data in, a trained
model, a leaderboard and a pose-discrepancy report out.

Steps (each one a function below; each reuses what an earlier run into the same ``--out`` finished):

1. ``world/``: the synthetic world (``reenact synth --preset demo``), or ``--world DIR`` to use one already written.
2. ``prepared/``: ``reenact prepare synth`` on Ray: download (file:// URLs) -> crop (FOMM protocol, 256^2) -> 3DMM
   coefficients (oracle by default) into Parquet shards.
3. ``manifests/``: the synthetic protocols ``synth-vox-self`` and ``synth-vox-cross``, sampled from the world's test
   chunks with the VoxCeleb rules (``reenact.data.pairs``), marked by the prepared frames, with the pose
   discrepancy of every pair.
4. ``guidance/<protocol>/``: ``reenact prepare guidance``: F_c, O_c, I_r of every pair, precomputed; a few of them
   drawn as pictures in ``guidance/pictures/`` (source | driving | I_r | F_c | O_c | source warped by F_c).
5. ``train/paper/``, ``train/paper-base/``: the paper's model (+FG+OG+SG) and Table 3's Base, ``reenact train``'s
   ``tiny`` preset on the world's train chunks, the same fixed number of steps each.
6. ``bench/<protocol>/``: ``reenact bench`` of both against copy-source, copy-driving, render and every baseline
   whose checkpoint is in the asset folder (the others are listed as skipped, with the reason).
7. ``leaderboard/``: ``leaderboard.md`` / ``.csv`` / ``.tex``, ``ablation.md`` (full model vs Base: CSIM, AED,
   APD with bootstrap intervals of each and of the paired difference), ``report-<protocol>.html`` (performance
   versus pose discrepancy).

The end: the leaderboard, the ablation, where everything is, and each step's wall time (``summary.json`` too).
The budget (pairs per test chunk, training steps) comes from ``--preset`` (``demo``: the quickstart, ``tiny``: a
smoke run); any of its values can be given as an option.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

from reenact.config import add_dataclass_arguments, from_namespace, save_run_config

PROTOCOLS = ("synth-vox-self", "synth-vox-cross")
#: the two trained models: registry name -> Table 3 row (``reenact.model.networks.ABLATIONS``)
TRAINED = {"paper": "fg-og-sg", "paper-base": "base"}
REFERENCES = ("copy-source", "copy-driving", "render")
#: the metrics of the ablation comparison (registry keys)
ABLATION_METRICS = ("csim", "aed", "apd")


@dataclass(frozen=True)
class Budget:
    """How much work the quickstart does: what ``--preset`` sets."""

    world: Literal["tiny", "demo"]      # synthetic world preset
    pairs_per_chunk: int                # pairs per test chunk in each synthetic protocol
    train_steps: int                    # optimisation steps per trained model (the same for both)
    train_batch: int                    # pairs per step


BUDGETS = {
    # 15 minutes on 2 CPU cores, world included (see the README's table of stage times)
    "demo": Budget(world="demo", pairs_per_chunk=2, train_steps=250, train_batch=4),
    # a smoke run: every step, a few items each (the end-to-end test)
    "tiny": Budget(world="tiny", pairs_per_chunk=1, train_steps=2, train_batch=2),
}


@dataclass(frozen=True)
class QuickstartConfig:
    out: str = field(default="runs/quickstart", metadata={"help": "output folder (rerun to resume)"})
    preset: Literal["tiny", "demo"] = field(default="demo", metadata={
        "help": "budget: demo (the quickstart, ~15 min on 2 cores) or tiny (a smoke run)"})
    world: str | None = field(default=None, metadata={
        "help": "an existing synthetic world folder (written by `reenact synth`) instead of <out>/world"})
    seed: int = field(default=0, metadata={"help": "seed of the world, the training and the bootstrap"})
    extractor: Literal["oracle", "landmarks"] = field(default="oracle", metadata={
        "help": "coefficient extractor of the preparation: oracle (ground truth) or landmarks (dlib 68 + fit)"})
    pairs_per_chunk: int | None = field(default=None, metadata={
        "help": "pairs per test chunk in each synthetic protocol (default: the preset's)"})
    train_steps: int | None = field(default=None, metadata={
        "help": "training steps of each model (default: the preset's)"})
    train_batch: int | None = field(default=None, metadata={"help": "training pairs per step (default: the preset's)"})
    pictures: int = field(default=4, metadata={"help": "guidance pictures to draw"})
    assets: str | None = field(default=None, metadata={
        "help": "asset folder (baseline checkpoints, VGG-19); default $REENACT_ASSETS or ~/.cache/reenact/assets"})
    executor: Literal["ray", "local"] = field(default="ray", metadata={
        "help": "where preparation and guidance run: ray (local Ray, or a cluster with --address) or local (this "
                "process, no Ray)"})
    address: str | None = field(default=None, metadata={"help": "Ray cluster address (default: a local Ray)"})
    num_cpus: int | None = field(default=None, metadata={"help": "CPUs of the local Ray (default: all)"})
    progress: bool = field(default=True, metadata={"help": "progress bars"})

    def __post_init__(self):
        if self.preset not in BUDGETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose from {sorted(BUDGETS)}")
        for name in ("pairs_per_chunk", "train_steps", "train_batch"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")

    def budget(self) -> Budget:
        """The preset's budget with the values given as options on top."""
        given = {k: getattr(self, k) for k in ("pairs_per_chunk", "train_steps", "train_batch")
                 if getattr(self, k) is not None}
        return replace(BUDGETS[self.preset], **given)


@dataclass(frozen=True)
class Layout:
    """Where each step writes, under ``--out``."""

    root: Path
    world: Path

    @classmethod
    def of(cls, cfg: QuickstartConfig) -> Layout:
        root = Path(cfg.out)
        return cls(root, Path(cfg.world) if cfg.world else root / "world")

    prepared = property(lambda self: self.root / "prepared")
    manifests = property(lambda self: self.root / "manifests")
    pictures = property(lambda self: self.root / "guidance" / "pictures")
    leaderboard = property(lambda self: self.root / "leaderboard")

    def guidance(self, protocol: str) -> Path:
        return self.root / "guidance" / protocol

    def manifest(self, protocol: str) -> Path:
        return self.manifests / protocol / "v1"

    def train(self, model: str) -> Path:
        return self.root / "train" / model

    def bench(self, protocol: str) -> Path:
        return self.root / "bench" / protocol


class Stopwatch:
    """Wall seconds per named step, announced as ``[k/n] name: what``."""

    def __init__(self, total: int):
        self.total, self.seconds = total, {}

    @contextmanager
    def step(self, name: str, what: str):
        print(f"[{len(self.seconds) + 1}/{self.total}] {name}: {what}", flush=True)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - start, 1)


# ---------------------------------------------------------------------------------------------------- steps
def make_world(cfg: QuickstartConfig, root: Path, preset: str) -> dict:
    """Step 1: generate the synthetic world unless one of this preset and seed is there (or ``--world`` names one)."""
    from reenact.synth import generate

    done = root / "config.json"
    if done.is_file():
        earlier = json.loads(done.read_text())
        if cfg.world or (earlier["config"].get("preset"), earlier["config"].get("seed")) == (preset, cfg.seed):
            print(f"  reusing the world in {root}")
            return earlier["provenance"].get("summary", {})
    if cfg.world:
        raise FileNotFoundError(f"--world {root}: no synthetic world there (no config.json); write one with "
                                "`reenact synth` or leave --world out")
    return generate(preset, root, seed=cfg.seed, workers=1, progress=cfg.progress)


def prepare(cfg: QuickstartConfig, world: Path, out: Path):
    """Step 2: download -> crop -> coefficients (on Ray unless ``--executor local``)."""
    from pipelines.prepare import SynthConfig, prepare_vox

    return prepare_vox(SynthConfig(out=str(out), world=str(world), extractor=cfg.extractor, executor=cfg.executor,
                                   address=cfg.address, num_cpus=cfg.num_cpus, progress=cfg.progress))


def write_protocols(world: Path, prepared: Path, manifests: Path, per_chunk: int) -> dict[str, Path]:
    """Step 3: the synthetic protocols from the world's test chunks (the VoxCeleb self / cross rules), each pair
    marked by the prepared frames and annotated with its pose discrepancy; ``{protocol: manifest folder}``."""
    from pipelines.pairs import annotate_pose, prepared_frames, read_coeff_table, vox_test_chunks
    from reenact.data.manifests import SampledFrom, sha256_file, write_manifest
    from reenact.data.pairs import mark_available, vox_cross_pairs, vox_self_pairs
    from reenact.data.schema import frame_key

    metadata = world / "vox" / "vox-metadata.csv"
    chunks = vox_test_chunks(metadata)
    have = [frame_key(c, i) for c, indices in prepared_frames(prepared).items() for i in indices]
    coeffs, extractor = read_coeff_table(prepared)
    samplers = {"synth-vox-self": vox_self_pairs, "synth-vox-cross": vox_cross_pairs}
    written = {}
    for protocol, sampler in samplers.items():
        pairs = annotate_pose(mark_available(sampler(chunks, protocol, per_chunk), have), coeffs, extractor)
        origin = SampledFrom(metadata.name, sha256_file(metadata), f"{per_chunk} per test chunk, the VoxCeleb "
                             f"{protocol.rsplit('-', 1)[1]} rule of reenact.data.pairs, marked by the prepared "
                             "frames", "sha256(protocol|chunk_id|attempt|...)")
        written[protocol] = write_manifest(pairs, protocol, 1, origin, manifests, allow_repeats=True,
                                           notes=f"the synthetic world {world.name}, {len(chunks)} test chunks")
    return written


def precompute_guidance(cfg: QuickstartConfig, manifest: Path, prepared: Path, out: Path, model: str):
    """Step 4: ``reenact prepare guidance`` for one protocol's pairs (the world's morphable model)."""
    from pipelines.guidance import GuidanceConfig, prepare_guidance

    return prepare_guidance(GuidanceConfig(out=str(out), pairs=str(manifest), prepared=str(prepared),
                                           morphable_model=model, executor=cfg.executor,
                                           address=cfg.address, num_cpus=cfg.num_cpus,
                                           progress=cfg.progress))


def guidance_pictures(manifest: Path, prepared: Path, guidance: Path, out: Path, count: int) -> list[str]:
    """The first ``count`` usable pairs of a protocol with their precomputed guidance, one picture each."""
    from reenact.data.datasets import PairDataset
    from reenact.data.manifests import read_manifest_dir
    from reenact.face3d.guidance import warp_with_flow
    from reenact.viz import flow_to_rgb, grid_image, save_png

    pairs = PairDataset(read_manifest_dir(manifest), prepared, guidance=guidance)
    written = []
    for k in range(min(count, len(pairs))):
        p = pairs[k]
        src, mask = p["source"], p["mask"]
        warped = warp_with_flow(src[None], p["flow"][None])[0] * mask + src * (1 - mask)
        row = [src, p["driving"], p["rendered"], flow_to_rgb(p["flow"]), p["occlusion"], warped]
        written.append(str(save_png(grid_image([row]), out / f"{p['pair_id'].replace('/', '-')}.png")))
    return written


def train_partition_pairs(prepared: Path, steps: int, batch: int, seed: int):
    """Self pairs of the world's *train* chunks only (fresh every epoch), and the epochs that ``steps`` take."""
    from reenact.data.datasets import FrameDataset, SelfPairDataset
    from reenact.data.shards import read_stage
    from reenact.model.train import EpochResampled

    table = read_stage(prepared, "frames", ["chunk_id", "partition"]).to_pydict()
    train = {c for c, p in zip(table["chunk_id"], table["partition"]) if p == "train"}
    frames = FrameDataset(prepared)
    frames.keys = [k for k in frames.keys if k.rsplit("/", 1)[0] in train]
    chunks = len(SelfPairDataset(frames, 1, seed).chunks)
    epochs = math.ceil(steps / max(1, chunks // batch))
    return EpochResampled(SelfPairDataset(frames, chunks * epochs, seed), chunks), epochs


def train_model(cfg: QuickstartConfig, ablation: str, prepared: Path, run_dir: Path, morphable: str, loss: str):
    """Step 5: ``reenact train --preset tiny`` of one Table 3 row for the budget's steps (resumes a checkpoint)."""
    from reenact.model.train import train_config, training_loop

    budget = cfg.budget()
    pairs, epochs = train_partition_pairs(prepared, budget.train_steps, budget.train_batch, cfg.seed)
    tc = train_config("tiny", run_dir=str(run_dir), data=str(prepared), ablation=ablation, loss=loss,
                      morphable=morphable, epochs=epochs, batch_size=budget.train_batch,
                      max_steps=budget.train_steps, seed=cfg.seed, progress=cfg.progress, assets=cfg.assets,
                      checkpoint_every=max(1, budget.train_steps // 4))
    return training_loop(tc, pairs)


def training_loss(assets: str | None) -> str:
    """The paper's VGG-19 loss when its weights are in the asset folder, else the explicit weight-free fallback."""
    from reenact.assets import MissingAssetError, asset_path

    try:
        asset_path("vgg19", assets)
        return "vgg19-perceptual"
    except MissingAssetError:
        return "l1-msssim"


def baseline_models(assets: str | None) -> tuple[list[str], dict[str, str]]:
    """Registered baselines whose checkpoint files are all in the asset folder, and ``{skipped: reason}``."""
    from baselines.registry import available
    from reenact.assets import ASSETS, MissingAssetError, asset_path

    present, skipped = [], {}
    for name in available():
        files = [key for key in ASSETS if key == name or key.startswith(name + "_")]
        if not files or name in REFERENCES or name in TRAINED:
            continue
        try:
            for key in files:
                asset_path(key, assets)
            present.append(name)
        except MissingAssetError as err:
            skipped[name] = str(err)
    return present, skipped


def bench(cfg: QuickstartConfig, protocol: str, layout: Layout, models: list[str], checkpoints: dict[str, Path]):
    """Step 6: ``reenact bench`` of ``models`` over one protocol's prepared pairs."""
    from benchmark.runner import BenchConfig, run_bench

    return run_bench(BenchConfig(out=str(layout.bench(protocol)), protocol=protocol, models=models,
                                 executor="local", data=str(layout.prepared), manifests=str(layout.manifests),
                                 checkpoints=[f"{k}={v}" for k, v in checkpoints.items()], seed=cfg.seed,
                                 assets=cfg.assets, progress=cfg.progress))


def write_tables(layout: Layout, results: dict[str, Path]) -> dict[str, Path]:
    """Step 7: the leaderboard (md / csv / tex) and one HTML pose-discrepancy report per protocol."""
    from benchmark.leaderboard import write_leaderboard
    from benchmark.report import write_report

    paths = {f"leaderboard.{k}": v for k, v in write_leaderboard(list(results.values()), layout.leaderboard).items()}
    for protocol in results:
        paths[f"report {protocol}"] = write_report(layout.bench(protocol), layout.leaderboard / f"report-{protocol}.html")
    return paths


# ---------------------------------------------------------------------------------------------------- the ablation
@dataclass(frozen=True)
class Comparison:
    """Full model vs Base on one metric of one protocol: each mean with its interval, and the paired difference."""

    protocol: str
    metric: str
    higher_is_better: bool
    full: tuple[float | None, float | None, float | None]     # value, interval low, high
    base: tuple[float | None, float | None, float | None]
    difference: tuple[float | None, float | None, float | None]   # full - base over the pairs both scored
    pairs: int

    @property
    def verdict(self) -> str:
        _, low, high = self.difference
        if low is None or high is None:
            return "no interval"
        if low <= 0 <= high:
            return "no clear difference"
        better = (low > 0) == self.higher_is_better
        return "full model better" if better else "Base better"


def compare_ablation(result_path: Path, full: str = "paper", base: str = "paper-base", replicates: int = 1000,
                     seed: int = 0) -> list[Comparison]:
    """The paper's Table 3 direction on one bench result: full vs Base per metric, with bootstrap intervals (the
    difference's over the pairs both models have a value for)."""
    import numpy as np

    from benchmark.results import BenchResult, mean_interval

    result = BenchResult.load(result_path)
    out = []
    for name, info in result.metrics.items():
        if info["key"] not in ABLATION_METRICS or not info.get("per_pair"):
            continue
        values = {m: {r.index: r.values.get(name) for r in result.records if r.model == m} for m in (full, base)}
        both = sorted(i for i in values[full] if values[full][i] is not None and values[base].get(i) is not None)
        diff = np.array([values[full][i] - values[base][i] for i in both], dtype=np.float64)
        interval = mean_interval(diff, replicates, seed=seed)
        cells = []
        for model in (full, base):
            a = result.model(model).aggregate(info["key"])
            cells.append((a.value, a.interval.low if a.interval else None, a.interval.high if a.interval else None))
        out.append(Comparison(result.protocol, name, info["higher_is_better"], cells[0], cells[1],
                              (float(diff.mean()) if diff.size else None, interval.low if interval else None,
                               interval.high if interval else None), len(both)))
    return out


def _fmt(cell: tuple[float | None, float | None, float | None]) -> str:
    value, low, high = cell
    if value is None:
        return "n/a"
    return f"{value:.4f}" + (f" [{low:.4f}, {high:.4f}]" if low is not None else "")


def ablation_markdown(comparisons: list[Comparison]) -> str:
    lines = ["### Ablation on the synthetic world: full model (paper) vs Base (paper-base), same training budget",
             "", "| protocol | metric | full | Base | full - Base (paired) | pairs | verdict |",
             "|---|---|---|---|---|---:|---|"]
    lines += [f"| {c.protocol} | {c.metric}{'↑' if c.higher_is_better else '↓'} | {_fmt(c.full)} | {_fmt(c.base)} | "
              f"{_fmt(c.difference)} | {c.pairs} | {c.verdict} |" for c in comparisons]
    return "\n".join(lines + ["", "- [low, high]: 95% percentile bootstrap interval over pairs (1000 replicates)", ""])


# ---------------------------------------------------------------------------------------------------- the run
def run_quickstart(cfg: QuickstartConfig) -> dict:
    """Every step in order (module docstring); returns the summary also written to ``<out>/summary.json``."""
    from pipelines.engine import init_ray

    budget, layout = cfg.budget(), Layout.of(cfg)
    layout.root.mkdir(parents=True, exist_ok=True)
    save_run_config(cfg, layout.root, budget=asdict(budget))
    clock = Stopwatch(7)
    started_ray = cfg.executor == "ray" and init_ray(cfg.address, cfg.num_cpus)
    try:
        summary = _steps(cfg, budget, layout, clock)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    summary["seconds"] = {**clock.seconds, "total": round(sum(clock.seconds.values()), 1)}
    (layout.root / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _steps(cfg: QuickstartConfig, budget: Budget, layout: Layout, clock: Stopwatch) -> dict:
    from reenact.synth import world_model_size

    with clock.step("world", f"the '{budget.world}' synthetic world in {layout.world}"):
        world = make_world(cfg, layout.world, budget.world)
    with clock.step("prepare", f"download -> crop -> {cfg.extractor} coefficients ({cfg.executor}) into {layout.prepared}"):
        prepared = prepare(cfg, layout.world, layout.prepared)
    morphable = f"procedural-{world_model_size(layout.world)}"
    with clock.step("pairs+guidance", f"{', '.join(PROTOCOLS)}: {budget.pairs_per_chunk} pairs per test chunk, "
                                      "their guidance precomputed"):
        manifests = write_protocols(layout.world, layout.prepared, layout.manifests, budget.pairs_per_chunk)
        for protocol, folder in manifests.items():
            precompute_guidance(cfg, folder, layout.prepared, layout.guidance(protocol), morphable)
        pictures = guidance_pictures(manifests[PROTOCOLS[-1]], layout.prepared, layout.guidance(PROTOCOLS[-1]),
                                     layout.pictures, cfg.pictures)
    loss = training_loss(cfg.assets)
    with clock.step("train", f"paper and paper-base, tiny preset, {budget.train_steps} steps of "
                             f"{budget.train_batch} pairs each, loss {loss}"):
        for name, ablation in TRAINED.items():
            train_model(cfg, ablation, layout.prepared, layout.train(name), morphable, loss)
    baselines, skipped = baseline_models(cfg.assets)
    models = [*REFERENCES, *TRAINED, *baselines]
    with clock.step("bench", f"{', '.join(models)} over {', '.join(PROTOCOLS)}"
                             + (f"; skipped (no checkpoint): {', '.join(skipped)}" if skipped else "")):
        checkpoints = {name: layout.train(name) / "checkpoint.pt" for name in TRAINED}
        results = {}
        for protocol in PROTOCOLS:
            bench(cfg, protocol, layout, models, checkpoints)
            results[protocol] = layout.bench(protocol) / "results.json"
    with clock.step("leaderboard", f"tables and pose-discrepancy reports into {layout.leaderboard}"):
        paths = write_tables(layout, results)
    with clock.step("ablation", "full model vs Base with bootstrap intervals"):
        comparisons = [c for path in results.values() for c in compare_ablation(path, seed=cfg.seed)]
        paths["ablation.md"] = layout.leaderboard / "ablation.md"
        paths["ablation.md"].write_text(ablation_markdown(comparisons))
    return {"world": world, "prepared": {"frames": prepared.frames, "status": prepared.status},
            "manifests": manifests, "guidance": {p: layout.guidance(p) for p in PROTOCOLS}, "pictures": pictures,
            "training": {name: layout.train(name) for name in TRAINED}, "loss": loss, "models": models,
            "skipped": skipped, "results": results, "outputs": paths,
            "ablation": [asdict(c) | {"verdict": c.verdict} for c in comparisons]}


def closing_note(summary: dict) -> str:
    """The leaderboard, the ablation, where everything is and each step's time."""
    from benchmark.leaderboard import leaderboard_tables, to_markdown
    from benchmark.results import BenchResult

    ours = leaderboard_tables([BenchResult.load(p) for p in summary["results"].values()])[:-3]
    lines = [to_markdown(ours), Path(summary["outputs"]["ablation.md"]).read_text()]
    lines += [f"skipped {name}: {reason}" for name, reason in summary["skipped"].items()]
    lines += ["", "where everything is:"] + [f"  {k:<22} {v}" for k, v in summary["outputs"].items()]
    lines += [f"  {'trained ' + k:<22} {v}" for k, v in summary["training"].items()]
    lines += [f"  {'guidance pictures':<22} {Path(summary['pictures'][0]).parent if summary['pictures'] else '-'}",
              "", "wall time per step (s):"] + [f"  {k:<16} {v:>8.1f}" for k, v in summary["seconds"].items()]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    add_dataclass_arguments(parser, QuickstartConfig)


def run(args: argparse.Namespace) -> int:
    summary = run_quickstart(from_namespace(QuickstartConfig, args))
    print(closing_note(summary))
    return 0
