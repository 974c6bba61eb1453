"""The paper's model behind the contract (issue 10): registry, checkpoint loading, disentangled modes, resizing."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import baselines
from reenact.assets import MissingAssetError
from reenact.contract import ReenactInputs
from reenact.face3d.coeffs import ANGLE, EXP, ID, TRANS
from reenact.model.reenactor import PaperBaseReenactor, PaperReenactor, driving_for_mode
from reenact.model.synthetic_pairs import SyntheticPairs, SyntheticSpec
from reenact.model.train import save_checkpoint, train_config


@pytest.fixture(scope="module")
def inputs():
    pairs = SyntheticPairs(SyntheticSpec(size=64, videos=1, frames=3, seed=1))
    items = [pairs[0], pairs[3]]
    return ReenactInputs(source=torch.stack([i["source"] for i in items]),
                         driving=torch.stack([i["driving"] for i in items]),
                         source_coeffs=torch.stack([i["source_coeffs"] for i in items]),
                         driving_coeffs=torch.stack([i["driving_coeffs"] for i in items]))


def test_registry_names_the_paper_models():
    assert baselines.get_class("paper") is PaperReenactor and baselines.get_class("paper-base") is PaperBaseReenactor
    assert baselines.create("paper-base", random_weights=True).config.ablation == "base"


def test_driving_for_mode_takes_only_its_parts():
    src, drv = torch.randn(2, 257), torch.randn(2, 257)
    assert torch.equal(driving_for_mode(src, drv, "full"), drv)
    expr, pose = driving_for_mode(src, drv, "expression"), driving_for_mode(src, drv, "pose")
    assert torch.equal(expr[:, EXP], drv[:, EXP]) and torch.equal(expr[:, ANGLE], src[:, ANGLE])
    assert torch.equal(expr[:, TRANS], src[:, TRANS]) and torch.equal(expr[:, ID], src[:, ID])
    assert torch.equal(pose[:, EXP], src[:, EXP]) and torch.equal(pose[:, ANGLE], drv[:, ANGLE])
    assert torch.equal(pose[:, TRANS], drv[:, TRANS])
    with pytest.raises(ValueError, match="mode"):
        driving_for_mode(src, drv, "gaze")


def test_modes_drive_the_network_with_their_coefficients(inputs):
    full = PaperReenactor.random(seed=0).eval()
    with torch.no_grad():
        for mode in ("expression", "pose"):
            model = PaperReenactor.random(seed=0, mode=mode).eval()
            got = model.reenact(inputs)
            swapped = dataclasses.replace(inputs, driving_coeffs=driving_for_mode(inputs.source_coeffs,
                                                                                  inputs.driving_coeffs, mode))
            assert torch.equal(got, full.reenact(swapped))
            assert not torch.equal(got, full.reenact(inputs))


def test_other_input_sizes_are_resized(inputs):
    model = PaperReenactor.random().eval()
    big = dataclasses.replace(inputs, source=torch.nn.functional.interpolate(inputs.source, size=(128, 128)),
                              driving=torch.nn.functional.interpolate(inputs.driving, size=(128, 128)))
    with torch.no_grad():
        out = model.reenact(big)
    assert out.shape == (2, 3, 128, 128) and 0 <= out.min() and out.max() <= 1
    with pytest.raises(ValueError, match="source_coeffs"):
        model.reenact(dataclasses.replace(inputs, source_coeffs=None))


def test_checkpoint_round_trip(tmp_path, inputs):
    trained = PaperReenactor.random(seed=3).eval()
    cfg = train_config("tiny", loss="l1-msssim")
    optimizer = torch.optim.Adam(trained.network.parameters())
    save_checkpoint(tmp_path / "checkpoint.pt", trained.network, optimizer, torch.amp.GradScaler("cpu", enabled=False),
                    7, cfg)
    loaded = baselines.create("paper", str(tmp_path / "checkpoint.pt"))
    assert loaded.config == trained.config and not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded.reenact(inputs), trained.reenact(inputs))
    with pytest.raises(ValueError, match="'fg-og-sg' model"):
        PaperBaseReenactor.from_checkpoint(str(tmp_path / "checkpoint.pt"))
    with pytest.raises(MissingAssetError, match="reenact train"):
        PaperReenactor.from_checkpoint(None)
