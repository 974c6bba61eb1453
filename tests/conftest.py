"""Shared test fixtures. Golden data lives in ../shared/fixtures (relative to the repo root) and is never copied."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"


def fixture_path(*parts: str) -> Path:
    """Path under ../shared/fixtures, or skip the test with the reason when it is absent."""
    path = FIXTURES.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"fixture {path} is absent (the golden fixtures live in ../shared/fixtures beside the repo)")
    return path


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray session for the whole test run (2 CPUs, as on CI)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray


@pytest.fixture(scope="session")
def synth_tiny(tmp_path_factory):
    """The tiny synthetic world (``reenact synth --preset tiny --seed 0``), generated once per test session.

    Returns its :class:`reenact.synth.SynthLayout` (paths of the videos, vox-metadata.csv, CelebV tree and truth).
    """
    from reenact.synth import generate, layout

    out = tmp_path_factory.mktemp("synth") / "tiny"
    generate("tiny", out, seed=0, workers=2, progress=False)
    return layout(out)


def state_dict_entries(state) -> list[list]:
    """``[[key, shape, dtype], ...]`` of a module or state dict, in order: the layout of the fixtures' keys JSON."""
    state = state.state_dict() if hasattr(state, "state_dict") else state
    return [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in state.items()]
