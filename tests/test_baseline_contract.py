"""One contract test over every registered model: random weights, small size, output in [0, 1], no NaNs."""
from __future__ import annotations

import pytest
import torch

import baselines
from reenact.contract import ReenactInputs
from reenact.face3d.coeffs import ANGLE, GAMMA, TRANS


def _inputs(size: int, batch: int = 2) -> ReenactInputs:
    g = torch.Generator().manual_seed(0)
    coeffs = torch.randn(batch, 257, generator=g) * 0.3
    coeffs[:, ANGLE] = torch.tensor([0.0, 0.3, 0.0])
    coeffs[:, TRANS] = torch.tensor([0.0, 0.0, -1.0])
    coeffs[:, GAMMA.start::9] = 0.3
    src, drv = torch.rand(batch, 3, size, size, generator=g), torch.rand(batch, 3, size, size, generator=g)
    return ReenactInputs(source=src, driving=drv, source_coeffs=coeffs, driving_coeffs=coeffs.flip(0),
                         driving_initial=drv.flip(0))


@pytest.mark.parametrize("name", baselines.available())
def test_registered_model_honours_the_contract(name):
    model = baselines.create(name, random_weights=True, small=True)   # an unimportable registered model fails
    model.eval()
    size = getattr(model, "test_image_size", 64)
    inputs = _inputs(size)
    with torch.no_grad():
        out = model.reenact(inputs)
    assert out.shape == inputs.source.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0
    if model.supports_relative:
        with torch.no_grad():
            assert torch.isfinite(model.reenact(inputs, motion="relative")).all()
    else:
        with pytest.raises(ValueError, match="relative"):
            model.reenact(inputs, motion="relative")


def test_trivial_references_return_what_they_say():
    inputs = _inputs(32)
    assert torch.equal(baselines.create("copy-source").reenact(inputs), inputs.source)
    assert torch.equal(baselines.create("copy-driving").reenact(inputs), inputs.driving)


def test_unknown_model_names_the_registered_ones():
    with pytest.raises(KeyError, match="copy-source"):
        baselines.get_class("no-such-model")


def test_contract_rejects_bad_inputs():
    model = baselines.create("copy-source")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model.reenact(ReenactInputs(source=torch.rand(3, 8, 8), driving=torch.rand(3, 8, 8)))
