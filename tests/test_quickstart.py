"""The quickstart: its budget, which baselines it benchmarks, the ablation comparison, and the tiny run end to end."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from reenact.app.quickstart import BUDGETS, QuickstartConfig, baseline_models


def test_budget_is_the_presets_with_the_given_values_on_top():
    assert QuickstartConfig(preset="tiny").budget() == BUDGETS["tiny"]
    cfg = QuickstartConfig(preset="demo", train_steps=7)
    assert cfg.budget().train_steps == 7
    assert cfg.budget().pairs_per_chunk == BUDGETS["demo"].pairs_per_chunk
    with pytest.raises(ValueError, match="train_steps must be >= 1, got 0"):
        QuickstartConfig(train_steps=0)


def test_baselines_are_benchmarked_only_with_every_checkpoint_file(tmp_path):
    from reenact.assets import ASSETS

    for key in ("fomm", "dagan"):                              # DaGAN without its depth network
        path = tmp_path / ASSETS[key].relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"weights")
    present, skipped = baseline_models(str(tmp_path))
    assert present == ["fomm"]
    assert sorted(skipped) == ["dagan", "pirender", "x2face"]
    assert ASSETS["dagan_depth_encoder"].relpath in skipped["dagan"]
    assert ASSETS["x2face"].relpath in skipped["x2face"]


def _result(full: np.ndarray, base: np.ndarray, path: Path) -> Path:
    """A results JSON with per-pair CSIM of the two trained models (aggregates as the runner computes them)."""
    results = pytest.importorskip("benchmark.results")
    metric = "CSIM[toy]"
    models, records = [], []
    for name, values in (("paper", full), ("paper-base", base)):
        a = results.Aggregate(metric, "csim", True, float(values.mean()), results.mean_interval(values), len(values), 0)
        models.append(results.ModelResult(name, "no weights", len(values), {"ok": len(values)}, [a]))
        records += [results.PairRecord(name, i, str(i), "s", "d", "ok", "", 5.0, {metric: float(v)})
                    for i, v in enumerate(values)]
    result = results.BenchResult("synth-vox-cross", "cross", "sha", models,
                                 {metric: {"key": "csim", "higher_is_better": True, "per_pair": True}}, records, {},
                                 [0.0, 180.0])
    return result.save(path)


def test_the_ablation_compares_paired_differences(tmp_path):
    from reenact.app.quickstart import compare_ablation

    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.8, 40)
    full = base + rng.normal(0.05, 0.01, 40)                 # better on every pair, by far less than the spread
    (c,) = compare_ablation(_result(full, base, tmp_path / "r.json"))
    assert c.metric == "CSIM[toy]" and c.pairs == 40
    assert c.difference[0] == pytest.approx((full - base).mean())
    assert c.difference[1] > 0 and c.verdict == "full model better"
    assert c.full[0] == pytest.approx(full.mean()) and c.base[0] == pytest.approx(base.mean())
    assert c.full[1] < c.base[2]                             # the unpaired intervals overlap; the paired one does not
    (c,) = compare_ablation(_result(base, full, tmp_path / "r2.json"))
    assert c.verdict == "Base better"
    (c,) = compare_ablation(_result(base + rng.normal(0, 0.05, 40), base, tmp_path / "r3.json"))
    assert c.verdict == "no clear difference"


@pytest.mark.slow
def test_tiny_quickstart_end_to_end(synth_tiny, tmp_path, capsys):
    """`reenact quickstart --preset tiny` on the tiny world: every output, the closing note, and a rerun that
    reuses every step (same results, no training step). In this process (--executor local): the Ray path of each
    stage has its own tests."""
    pytest.importorskip("reenact.model.train")
    pytest.importorskip("benchmark.runner")
    from reenact.app.cli import main

    out = tmp_path / "qs"
    argv = ["quickstart", "--preset", "tiny", "--world", str(synth_tiny.root), "--out", str(out), "--no-progress",
            "--executor", "local", "--assets", str(tmp_path / "no-assets")]
    assert main(argv) == 0
    note = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["seconds"]) == {"world", "prepare", "pairs+guidance", "train", "bench", "leaderboard",
                                       "ablation", "total"}
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.tex", "ablation.md",
                 "report-synth-vox-self.html", "report-synth-vox-cross.html"):
        assert (out / "leaderboard" / name).stat().st_size > 0, name
    board = (out / "leaderboard" / "leaderboard.md").read_text()
    for model in ("copy-source", "copy-driving", "render", "paper", "paper-base"):
        assert f"| {model}" in board and f"| {model}" in note
    assert sorted(summary["skipped"]) == ["dagan", "fomm", "pirender", "x2face"]
    assert {c["protocol"] for c in summary["ablation"]} == {"synth-vox-self", "synth-vox-cross"}
    assert "wall time per step" in note and "ablation.md" in note
    for model in ("paper", "paper-base"):
        log = (out / "train" / model / "log.csv").read_text().splitlines()
        assert len(log) == 1 + BUDGETS["tiny"].train_steps
    results = {p: (out / "bench" / p / "results.json").read_text() for p in ("synth-vox-self", "synth-vox-cross")}
    for text in results.values():
        statuses = [m["statuses"] for m in json.loads(text)["models"]]
        assert all(set(s) == {"ok"} for s in statuses), statuses

    assert main(argv) == 0                                  # a rerun: everything reused
    for model in ("paper", "paper-base"):
        assert len((out / "train" / model / "log.csv").read_text().splitlines()) == 1 + BUDGETS["tiny"].train_steps
    for p, text in results.items():
        again = json.loads((out / "bench" / p / "results.json").read_text())
        assert [m["aggregates"] for m in again["models"]] == [m["aggregates"] for m in json.loads(text)["models"]]
