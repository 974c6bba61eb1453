"""CPU inference time per 256x256 frame for every registered model that can be built with random weights.

    python perf/bench_baselines.py                       # all models, full size, 1 thread, median of 5 runs
    python perf/bench_baselines.py --models fomm dagan --threads 2 --json-out perf/baselines.json

Each model is built with ``cls.random(small=False)`` (the released architecture, random weights: speed does not
depend on weight values), put in eval mode and run on one random (1, 3, size, size) source/driving pair under
``torch.inference_mode`` -- batch 1, so one call is one frame. After ``warmup`` calls, ``runs`` calls are timed and
the median is reported. A model that cannot be built or run is listed as skipped, with the reason.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from baselines.registry import available, get_class  # noqa: E402
from reenact.config import add_dataclass_arguments, from_namespace, provenance  # noqa: E402
from reenact.contract import ReenactInputs, Reenactor  # noqa: E402


@dataclass(frozen=True)
class BenchConfig:
    models: list[str] | None = field(default=None, metadata={"help": "registry names to time (default: all)"})
    threads: int = field(default=1, metadata={"help": "torch.set_num_threads"})
    runs: int = field(default=5, metadata={"help": "timed calls per model (the median is reported)"})
    warmup: int = field(default=1, metadata={"help": "untimed calls first"})
    size: int = field(default=256, metadata={"help": "frame height and width"})
    small: bool = field(default=False, metadata={"help": "time the small test configs instead of full size"})
    motion: Literal["absolute", "relative"] = field(default="absolute", metadata={"help": "motion mode"})
    json_out: str | None = field(default=None, metadata={"help": "also write the results as JSON here"})


@dataclass(frozen=True)
class BenchResult:
    """One model's timing; ``median_s`` / ``min_s`` are seconds per frame (None when skipped)."""

    model: str
    status: Literal["ok", "skipped"]
    reason: str = ""
    params_m: float | None = None
    median_s: float | None = None
    min_s: float | None = None
    runs: int = 0


def bench_inputs(size: int, seed: int = 0) -> ReenactInputs:
    """One random frame pair, plus plausible 3DMM coefficients and a motion window for coefficient-driven models."""
    from reenact.face3d.coeffs import ANGLE, GAMMA, TRANS

    g = torch.Generator().manual_seed(seed)
    coeffs = torch.randn(2, 257, generator=g) * 0.3
    coeffs[:, ANGLE] = torch.tensor([0.0, 0.3, 0.0])
    coeffs[:, TRANS] = torch.tensor([0.0, 0.0, -1.0])
    coeffs[:, GAMMA.start::9] = 0.3
    source, driving = torch.rand(2, 1, 3, size, size, generator=g)
    return ReenactInputs(source=source, driving=driving, source_coeffs=coeffs[:1], driving_coeffs=coeffs[1:],
                         driving_initial=source.clone())


def build(name: str, small: bool) -> Reenactor:
    return get_class(name).random(small=small, seed=0).eval()


def time_calls(model: Reenactor, inputs: ReenactInputs, cfg: BenchConfig) -> list[float]:
    """Wall-clock seconds of ``cfg.runs`` calls after ``cfg.warmup`` untimed ones."""
    seconds = []
    with torch.inference_mode():
        for i in range(cfg.warmup + cfg.runs):
            start = time.perf_counter()
            model.reenact(inputs, motion=cfg.motion)
            if i >= cfg.warmup:
                seconds.append(time.perf_counter() - start)
    return seconds


def bench_model(name: str, inputs: ReenactInputs, cfg: BenchConfig) -> BenchResult:
    try:
        model = build(name, cfg.small)
    except Exception as err:  # noqa: BLE001 - any failure to build is a reason to skip, reported verbatim
        return BenchResult(name, "skipped", reason=f"cannot build with random weights: {type(err).__name__}: {err}")
    try:
        seconds = time_calls(model, inputs, cfg)
    except Exception as err:  # noqa: BLE001
        return BenchResult(name, "skipped", reason=f"forward failed: {type(err).__name__}: {err}")
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return BenchResult(name, "ok", params_m=params, median_s=statistics.median(seconds), min_s=min(seconds),
                       runs=len(seconds))


def format_table(results: list[BenchResult], cfg: BenchConfig) -> str:
    """A Markdown table: model, parameters, median and min ms per frame, or the reason it was skipped."""
    lines = [f"CPU inference per {cfg.size}x{cfg.size} frame ({'small' if cfg.small else 'full-size'} configs, "
             f"random weights, {cfg.threads} thread(s), median of {cfg.runs} after {cfg.warmup} warm-up, "
             f"{cfg.motion} motion)", "",
             "| model | params (M) | median ms/frame | min ms/frame | note |", "|---|---:|---:|---:|---|"]
    for r in results:
        if r.status == "ok":
            lines.append(f"| {r.model} | {r.params_m:.1f} | {1e3 * r.median_s:.0f} | {1e3 * r.min_s:.0f} | |")
        else:
            lines.append(f"| {r.model} | | | | skipped: {r.reason} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dataclass_arguments(parser, BenchConfig)
    cfg = from_namespace(BenchConfig, parser.parse_args(argv))
    if cfg.threads < 1 or cfg.runs < 1 or cfg.warmup < 0:
        raise ValueError(f"threads and runs must be >= 1 and warmup >= 0, got {cfg.threads}, {cfg.runs}, "
                         f"{cfg.warmup}")
    torch.set_num_threads(cfg.threads)
    names = cfg.models or available()
    unknown = sorted(set(names) - set(available()))
    if unknown:
        raise ValueError(f"unknown models {unknown}; registered: {available()}")
    inputs = bench_inputs(cfg.size)
    results = []
    for name in names:
        results.append(bench_model(name, inputs, cfg))
        print(f"{name}: {results[-1].status}", file=sys.stderr, flush=True)
    print(format_table(results, cfg))
    print(f"\ntorch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} thread(s)")
    if cfg.json_out:
        Path(cfg.json_out).write_text(json.dumps({"config": asdict(cfg), "results": [asdict(r) for r in results],
                                                  "provenance": provenance(device="cpu")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
