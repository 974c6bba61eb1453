"""The benchmark harness: runner (cache, resume, failure rows, results schema), leaderboard, report, and the
orderings of the trivial models on the synthetic world."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark import generate, runner
from benchmark.leaderboard import leaderboard_tables, to_csv, to_latex, to_markdown
from benchmark.metrics import Backends
from benchmark.results import BenchResult, comparable
from benchmark.runner import BenchConfig, run_bench

REPO = Path(__file__).resolve().parents[1]


class MeanColour:
    name = "mean-colour"

    def __call__(self, images):
        return torch.cat([images.mean((2, 3)), images.std((2, 3))], 1).double()


class PixelCoeffs:
    name = "pixels"

    def __call__(self, images):
        return images[:, :, :16, :16].flatten(1)[:, :257].double()


def toy_backends() -> Backends:
    return Backends(embedder=MeanColour(), extractor=PixelCoeffs(), landmarks=lambda x: torch.zeros(len(x), 68, 2))


def toy_pairs(count: int = 6, size: int = 32) -> list[dict]:
    """Random uint8-valued images (as decoded frames are), yaw differences 2.5, 7.5, ... degrees."""
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(count):
        coeffs = torch.zeros(2, 257)
        coeffs[1, 225] = np.radians(5.0 * i + 2.5)                 # yaw difference 2.5, 7.5, 12.5, ... degrees
        source, driving = (torch.randint(0, 256, (3, size, size), generator=g) / 255.0 for _ in range(2))
        items.append({"pair_id": i, "source": source, "driving": driving, "source_coeffs": coeffs[0],
                      "driving_coeffs": coeffs[1], "source_key": f"s#v#000000#000010/{i:07d}",
                      "driving_key": f"d#v#000000#000010/{i:07d}"})
    return items


@pytest.fixture
def toy_world(monkeypatch):
    pairs = toy_pairs()
    monkeypatch.setattr(runner, "load_pairs", lambda cfg: (pairs[:cfg.limit] if cfg.limit else pairs, "f" * 64))
    return pairs


def toy_config(out: Path, **kwargs) -> BenchConfig:
    base = {"models": ["copy-source", "copy-driving"], "protocol": "toy-cross", "out": str(out), "shard_size": 2,
                "batch_size": 2, "bootstrap": 100, "bins": [0.0, 10.0], "progress": False,
                "metrics": ["csim", "aed", "apd", "fd-dlib", "fid"]}
    return BenchConfig(**{**base, **kwargs})


# ---------------------------------------------------------------------------------------------------- runner
def test_results_schema_round_trips_and_records_provenance(tmp_path, toy_world):
    result = run_bench(toy_config(tmp_path), toy_backends())
    loaded = BenchResult.load(tmp_path / "results.json")
    assert loaded == result
    assert result.kind == "cross" and len(result.records) == 2 * len(toy_world)
    prov = result.provenance
    assert prov["manifest_sha256"] == "f" * 64 and "git_commit" in prov and "torch" in prov["packages"]
    assert result.model("copy-source").checkpoint == "no weights"
    assert result.metrics["CSIM[mean-colour]"]["options"] == {"backend": "mean-colour", "reference": "source"}
    assert result.metrics["APD[pixels]"]["options"]["pose"] == "angles+trans"
    fid = result.model("copy-source").aggregate("fid")
    assert fid.value is None and fid.unavailable          # no standard weights here: no number under that name
    # per-pair values and the bin split agree with the aggregate
    csim = [r.values["CSIM[mean-colour]"] for r in result.records if r.model == "copy-driving"]
    assert result.model("copy-driving").aggregate("csim").value == pytest.approx(np.mean(csim))
    assert [b.count for b in result.model("copy-source").bins] == [2, 4]      # yaw 2.5, 7.5 | 12.5 ... 27.5 degrees


def test_rerun_computes_only_missing_shards(tmp_path, toy_world):
    cfg = toy_config(tmp_path)
    first = run_bench(cfg, toy_backends())
    marker = tmp_path / "generated" / "copy-source" / "generated-00001.stats.json"
    marker.unlink()                                         # as if killed while writing shard 1
    stamp = (tmp_path / "generated" / "copy-source" / "generated-00000.stats.json").stat().st_mtime_ns
    second = run_bench(cfg, toy_backends())
    assert marker.is_file()
    assert (tmp_path / "generated" / "copy-source" / "generated-00000.stats.json").stat().st_mtime_ns == stamp
    assert comparable(json.loads(first.to_json())) == comparable(json.loads(second.to_json()))
    with pytest.raises(ValueError, match="another plan"):
        run_bench(toy_config(tmp_path, shard_size=3), toy_backends())


def test_a_rerun_measures_only_shards_without_kept_scores(tmp_path, toy_world, monkeypatch):
    """Scores are kept per generated shard: a rerun absorbs them (no metric measures anything) and gives the same
    results; a shard whose kept scores are gone or were measured under other settings is measured again, alone."""
    cfg = toy_config(tmp_path)
    first = run_bench(cfg, toy_backends())
    kept = sorted((tmp_path / "scores" / "copy-source").glob("scores-*.npz"))
    assert [p.name for p in kept] == ["scores-00000.npz", "scores-00001.npz", "scores-00002.npz"]

    measured = []
    for cls in {type(m) for m in runner.create_metrics(cfg.metrics, "cross", toy_backends()).values()}:
        def counting(self, batch, _measure=cls.measure):
            measured.append((type(self).__name__, len(batch)))
            return _measure(self, batch)
        monkeypatch.setattr(cls, "measure", counting)
    second = run_bench(cfg, toy_backends())
    assert measured == []                                   # everything absorbed from the kept scores
    assert comparable(json.loads(first.to_json())) == comparable(json.loads(second.to_json()))

    kept[1].unlink()                                        # as if killed while scoring shard 1 of copy-source
    kept[2].write_bytes(b"not an npz")                     # a file that does not read is measured again
    third = run_bench(cfg, toy_backends())
    assert len(measured) == 2 * len(cfg.metrics) and {n for _, n in measured} == {2}   # one batch of 2 pairs each
    assert comparable(json.loads(first.to_json())) == comparable(json.loads(third.to_json()))

    measured.clear()                                        # another metric setting: every shard is measured again
    other = dataclasses.replace(cfg, metrics=["csim", "aed"])
    fourth = run_bench(other, toy_backends())
    assert len(measured) == 2 * 2 * 3                       # 2 metrics x 2 models x 3 shards
    csim = "CSIM[mean-colour]"
    assert [r.values[csim] for r in fourth.records] == [r.values[csim] for r in first.records]


def test_scoring_progress_counts_pairs_measured_and_kept(tmp_path, toy_world, capsys):
    cfg = toy_config(tmp_path, models=["copy-source"], metrics=["csim"], progress=True)
    for _ in range(2):                                      # measured, then absorbed from the kept scores
        run_bench(cfg, toy_backends())
        err = capsys.readouterr().err
        assert "score copy-source: 100%" in err and f"{len(toy_world)}/{len(toy_world)} [" in err


def test_a_failing_model_leaves_status_rows(tmp_path, toy_world, monkeypatch):
    from baselines.trivial import CopySource

    class Flaky(CopySource):
        def reenact(self, inputs, motion="absolute"):
            if inputs.source.shape[0] > 1 or inputs.source[0, 0, 0, 0] > 0.5:
                raise RuntimeError("flaky failure")
            return inputs.source.clone()

    monkeypatch.setattr(generate, "build_model", lambda *args: Flaky())
    result = run_bench(toy_config(tmp_path, models=["copy-source"]), toy_backends())
    failed = [r for r in result.records if r.status == generate.MODEL_ERROR]
    expected = sum(float(p["source"][0, 0, 0]) > 0.5 for p in toy_world)
    assert len(failed) == expected > 0
    assert all("flaky failure" in r.error and r.values == {} for r in failed)
    csim = result.model("copy-source").aggregate("csim")
    assert csim.n == len(toy_world) - expected and csim.n_missing == expected
    assert result.model("copy-source").statuses == {"ok": len(toy_world) - expected, generate.MODEL_ERROR: expected}


# ---------------------------------------------------------------------------------------------------- leaderboard
def test_leaderboard_renders_every_format_with_marks_and_paper_block(tmp_path, toy_world):
    result = run_bench(toy_config(tmp_path), toy_backends())
    tables = leaderboard_tables([result])
    md = to_markdown(tables)
    assert "CSIM↑" in md and "AED↓" in md and "Reported in the paper: Table 1 (VoxCeleb)" in md
    assert "| Ours | 0.761 | **1.255** |" in md                 # the seed's rows, best in bold
    row = next(line for line in md.splitlines() if line.startswith("| copy-driving†"))
    assert "**0.000 ± 0.000**" in row                          # copy-driving: AED 0, best
    assert "unavailable: FID" in md and "† CSIM[mean-colour]" in md and "± half-width" in md
    assert "copy-source 6/6 pairs" in md
    assert r"\textbf{" in to_latex(tables) and r"$\pm$" in to_latex(tables)
    assert "Table 1 layout" not in to_csv(tables) and "toy-cross,copy-source,True,,CSIM" in to_csv(tables)


def test_leaderboard_cli_writes_three_formats(tmp_path, toy_world):
    from reenact.app.cli import main

    run_bench(toy_config(tmp_path / "run"), toy_backends())
    assert main(["leaderboard", str(tmp_path / "run" / "results.json"), "--out", str(tmp_path / "lb")]) == 0
    assert {p.name for p in (tmp_path / "lb").iterdir()} == {"leaderboard.md", "leaderboard.csv", "leaderboard.tex"}


# ---------------------------------------------------------------------------------------------------- report
def _chromium_or_skip():
    from benchmark.report import find_chromium

    binary = find_chromium()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing on CI (apt-get install -y chromium)")
        pytest.skip("no Chromium here (apt-get install -y chromium); CI installs it")
    return binary


def test_report_is_self_contained_and_renders_in_headless_chromium(tmp_path, toy_world):
    from benchmark.report import check_in_browser, write_report

    binary = _chromium_or_skip()
    run_bench(toy_config(tmp_path), toy_backends())
    page = write_report(tmp_path)
    text = page.read_text()
    assert "src=\"http" not in text and "<img" in text and "n=2" in text
    check = check_in_browser(page, tmp_path / "report.png", binary)
    assert check.console == [] and check.script_errors == 0
    assert check.images_total > 4 and check.images_decoded == check.images_total
    assert check.screenshot.stat().st_size > 10_000


# ---------------------------------------------------------------------------------------------------- synthetic world
SYNTH = {"protocol": "synth-cross", "synth_pairs": 8, "synth_size": 160, "shard_size": 4, "batch_size": 4, "bootstrap": 200,
             "progress": False}


@pytest.fixture(scope="module")
def synth_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "synth"
    cfg = BenchConfig(models=["copy-source", "copy-driving", "render"], out=str(out),
                      metrics=["csim", "aed", "apd"], **SYNTH)
    return cfg, run_bench(cfg)


@pytest.mark.slow
def test_trivial_models_order_sensibly_on_the_synthetic_world(synth_run):
    _, result = synth_run
    value = {(m.model, a.key): a.value for m in result.models for a in m.aggregates}
    assert None not in value.values(), (value, [m.statuses for m in result.models])
    models = [m.model for m in result.models]
    assert max(models, key=lambda m: value[m, "csim"]) == "copy-source"
    assert value["copy-source", "csim"] == pytest.approx(1.0)
    assert value["copy-driving", "csim"] < value["copy-source", "csim"] - 0.01
    for key in ("aed", "apd"):
        assert min(models, key=lambda m: value[m, key]) == "copy-driving"
        assert value["copy-driving", key] == 0.0
    assert max(models, key=lambda m: value[m, "apd"]) == "copy-source"
    assert value["render", "apd"] < value["copy-source", "apd"]        # render carries the driving pose
    table = next(t for t in leaderboard_tables([result]) if t.title.startswith("Table 1 layout"))
    bold = {(name, col.key) for name, _, cells in table.rows for (_, col), c in zip(table.columns(), cells) if c.bold}
    assert {("copy-source", "csim"), ("copy-driving", "aed"), ("copy-driving", "apd")} <= bold


@pytest.mark.slow
def test_killed_and_resumed_bench_gives_identical_results(synth_run, tmp_path):
    cfg, _ = synth_run
    reference_dir = tmp_path / "reference"
    killed_dir = tmp_path / "killed"
    kwargs = dict(models=["render", "copy-source"], metrics=["csim"], **{**SYNTH, "shard_size": 1, "batch_size": 1})
    for folder in (reference_dir, killed_dir):
        shutil.copytree(Path(cfg.out) / "pairs", folder / "pairs")        # the rendered pairs, not re-rendered
    reference = run_bench(BenchConfig(out=str(reference_dir), **kwargs))
    command = [sys.executable, "-m", "reenact.app.cli", "bench", "--out", str(killed_dir), "--models", "render",
               "copy-source", "--metrics", "csim", "--protocol", "synth-cross", "--synth-pairs", "8",
               "--synth-size", "160", "--shard-size", "1", "--batch-size", "1", "--bootstrap", "200",
               "--no-progress"]
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    first_shard = killed_dir / "generated" / "render" / "generated-00000.stats.json"
    deadline = time.time() + 300
    while not first_shard.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.002)                                # a render shard takes ~25 ms now: kill right after one
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert first_shard.exists() and not (killed_dir / "results.json").exists()
    done = len(list((killed_dir / "generated" / "render").glob("*.stats.json")))
    assert done < 8                                                  # interrupted mid-generation
    resumed = run_bench(BenchConfig(out=str(killed_dir), **kwargs))
    assert comparable(json.loads(resumed.to_json())) == comparable(json.loads(reference.to_json()))


@pytest.mark.slow
def test_ray_executor_gives_the_local_results(tmp_path, ray_session):
    """Generation on Ray actors (pairs loaded in the worker from the run's pair cache) equals the local run."""
    from benchmark.runner import _to_uint8

    results = {}
    for executor in ("local", "ray"):
        out = tmp_path / executor
        cfg = toy_config(out, protocol="synth-cross", synth_pairs=6, synth_size=32, executor=executor,
                         models=["copy-driving"], metrics=["csim", "aed"])
        spec = {"preset": cfg.synth_preset, "seed": cfg.seed, "size": cfg.synth_size, "pairs": cfg.synth_pairs}
        (out / "pairs").mkdir(parents=True)
        torch.save({"spec": spec, "items": [_to_uint8(i) for i in toy_pairs()]}, out / "pairs" / "synth-cross.pt")
        results[executor] = json.loads(run_bench(cfg, toy_backends()).to_json())
    assert results["ray"]["records"] == results["local"]["records"]
    assert results["ray"]["models"] == results["local"]["models"]
