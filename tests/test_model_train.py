"""Training the paper's model (issue 10): overfitting a few synthetic pairs, resume equivalence, the four Table 3
presets, the loss choice recorded everywhere, VGG refusal, guidance on the fly, and Ray Train with 2 CPU workers."""
from __future__ import annotations

import csv
import json

import pytest
import torch
from torch.utils.data import Subset, default_collate

from reenact.assets import MissingAssetError
from reenact.face3d.guidance import compute_guidance
from reenact.face3d.io import load_morphable_model
from reenact.model.networks import ABLATIONS
from reenact.model.synthetic_pairs import SyntheticPairs, SyntheticSpec
from reenact.model.train import (
    CHECKPOINT,
    EpochResampled,
    learning_rate,
    load_checkpoint,
    prepare_batch,
    train_config,
    training_loop,
)

#: Overfitting bound: the tiny preset on 4 pairs lowers the (weight-free) loss at least this much in OVERFIT_STEPS.
OVERFIT_FACTOR, OVERFIT_STEPS = 2.0, 16
#: Resume equivalence tolerance on every weight (float32, same machine, same op order: exact in practice).
RESUME_ATOL = 1e-6


@pytest.fixture(scope="module")
def pairs():
    """12 ordered self pairs: 2 synthetic videos x 3 frames at 64^2."""
    return SyntheticPairs(SyntheticSpec(size=64, videos=2, frames=3, seed=0))


def _cfg(tmp_path, name="run", **overrides):
    base = {"run_dir": str(tmp_path / name), "loss": "l1-msssim", "progress": False, "tensorboard": False,
            "batch_size": 2}
    return train_config("tiny", **{**base, **overrides})


def test_synthetic_pairs_follow_the_item_contract(pairs):
    item = pairs[0]
    assert item["source"].shape == item["driving"].shape == (3, 64, 64) and item["source"].dtype == torch.float32
    assert 0 <= float(item["source"].min()) and float(item["source"].max()) <= 1
    assert item["source_coeffs"].shape == item["driving_coeffs"].shape == (257,)
    assert not torch.equal(item["source"], item["driving"])
    assert len(pairs) == 2 * 3 * 2


def test_guidance_is_computed_on_the_fly_unless_the_item_carries_it(pairs):
    items = [pairs[i] for i in range(3)]
    morphable = load_morphable_model("procedural-small")
    batch = prepare_batch(default_collate(items), morphable, 64, torch.device("cpu"))
    ref = compute_guidance(morphable, torch.stack([i["source_coeffs"] for i in items]),
                           torch.stack([i["driving_coeffs"] for i in items]), 64, with_source_render=False)
    assert torch.equal(batch.flow, ref.flow) and torch.equal(batch.occlusion, ref.occlusion)
    assert torch.equal(batch.render, ref.render) and batch.motion.shape == (3, 70)
    given = [{**i, "flow": torch.ones(2, 64, 64), "occlusion": torch.zeros(1, 64, 64),
              "rendered": torch.full((3, 64, 64), 0.5)} for i in items]
    batch = prepare_batch(default_collate(given), morphable, 64, torch.device("cpu"))
    assert torch.all(batch.flow == 1) and torch.all(batch.occlusion == 0) and torch.all(batch.render == 0.5)


def test_items_of_another_size_are_resized_and_their_guidance_recomputed(pairs):
    items = [{**pairs[i], "source": torch.rand(3, 128, 128), "driving": torch.rand(3, 128, 128),
              "flow": torch.ones(2, 128, 128), "occlusion": torch.zeros(1, 128, 128),
              "rendered": torch.zeros(3, 128, 128)} for i in range(2)]
    morphable = load_morphable_model("procedural-small")
    batch = prepare_batch(default_collate(items), morphable, 64, torch.device("cpu"))
    assert batch.source.shape == batch.driving.shape == (2, 3, 64, 64)
    ref = compute_guidance(morphable, torch.stack([i["source_coeffs"] for i in items]),
                           torch.stack([i["driving_coeffs"] for i in items]), 64, with_source_render=False)
    assert torch.equal(batch.flow, ref.flow) and torch.equal(batch.render, ref.render)


def test_epoch_resampled_reads_a_fresh_slice_each_epoch():
    view = EpochResampled(list(range(12)), 4)
    assert len(view) == 4 and [view[i] for i in range(4)] == [0, 1, 2, 3]
    view.set_epoch(2)
    assert [view[i] for i in range(4)] == [8, 9, 10, 11]


def test_learning_rate_drops_after_60_percent_of_epochs():
    cfg = train_config("paper", loss="l1-msssim")
    assert (cfg.lr, cfg.lr_final, cfg.batch_size, cfg.epochs) == (1e-4, 1e-5, 8, 100)
    assert learning_rate(cfg, 60 * 7 - 1, per_epoch=7) == 1e-4 and learning_rate(cfg, 60 * 7, per_epoch=7) == 1e-5


@pytest.mark.slow
def test_tiny_preset_overfits_a_few_pairs(tmp_path, pairs):
    cfg = _cfg(tmp_path, batch_size=2, epochs=OVERFIT_STEPS // 2, lr_drop_at=1.0)
    result = training_loop(cfg, Subset(pairs, [0, 3, 6, 9]))
    assert result.steps == OVERFIT_STEPS
    first, last = result.losses[0], sum(result.losses[-3:]) / 3
    assert last * OVERFIT_FACTOR < first, f"loss {first:.4f} -> {last:.4f}"


@pytest.mark.slow
def test_resume_equals_an_uninterrupted_run(tmp_path, pairs):
    """4 steps straight == 2 steps, checkpoint, resume, 2 more (3 steps per epoch: resumes mid-epoch, crosses one)."""
    data = Subset(pairs, list(range(6)))
    straight = training_loop(_cfg(tmp_path, "straight", max_steps=4), data)
    half = training_loop(_cfg(tmp_path, "resumed", max_steps=2), data)
    rest = training_loop(_cfg(tmp_path, "resumed", max_steps=4), data)
    assert (straight.steps, half.steps, rest.steps) == (4, 2, 4) and len(rest.losses) == 2
    torch.testing.assert_close(torch.tensor(half.losses + rest.losses), torch.tensor(straight.losses),
                               atol=RESUME_ATOL, rtol=0)
    a, b = load_checkpoint(straight.checkpoint), load_checkpoint(rest.checkpoint)
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, atol=RESUME_ATOL, rtol=0, msg=key)


def test_resume_refuses_other_settings(tmp_path, pairs):
    training_loop(_cfg(tmp_path, max_steps=1), pairs)
    with pytest.raises(ValueError, match="ablation"):
        training_loop(_cfg(tmp_path, max_steps=2, ablation="base"), pairs)


@pytest.mark.parametrize("ablation", sorted(ABLATIONS))
def test_each_ablation_preset_trains_one_step(tmp_path, pairs, ablation):
    result = training_loop(_cfg(tmp_path, ablation=ablation, max_steps=1, tensorboard=True), pairs)
    assert result.steps == 1 and torch.isfinite(torch.tensor(result.losses)).all()
    state = load_checkpoint(result.checkpoint)
    assert state["config"]["ablation"] == ablation and state["loss"] == "l1-msssim"
    fg, og, sg = ABLATIONS[ablation]
    assert (state["model_config"]["flow_guidance"], state["model_config"]["occlusion_guidance"],
            state["model_config"]["synthesis_guidance"]) == (fg, og, sg)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["loss"] == "l1-msssim"
    with open(tmp_path / "run" / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(r["loss_fn"] == "l1-msssim" for r in rows)
    assert any((tmp_path / "run" / "tensorboard").iterdir())


def test_training_refuses_without_vgg_weights(tmp_path, pairs, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cfg = _cfg(tmp_path, loss="vgg19-perceptual", assets=str(tmp_path / "assets"), max_steps=1)
    with pytest.raises(MissingAssetError, match=r"vgg19-dcbb9e9d\.pth.*--loss l1-msssim"):
        training_loop(cfg, pairs)
    assert not (tmp_path / "run" / CHECKPOINT).exists()


@pytest.mark.slow
def test_ray_train_two_cpu_workers(tmp_path, ray_session):
    pytest.importorskip("ray.train.torch", reason="Ray Train needs the ray[train] extra (pydantic)")
    from reenact.model.ray_train import train_on_ray

    cfg = _cfg(tmp_path, max_steps=2, synthetic_videos=2, synthetic_frames=3)
    result = train_on_ray(cfg, num_workers=2)
    assert result.error is None
    state = load_checkpoint(tmp_path / "run" / CHECKPOINT)
    assert state["step"] == 2
    assert json.loads((tmp_path / "run" / "config.json").read_text())["provenance"]["world_size"] == 2
