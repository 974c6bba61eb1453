"""Shared test fixtures and the CI policy.

Golden data lives in ../shared/fixtures (relative to the repo root; ``REENACT_FIXTURES`` points elsewhere) and is never
copied. Locally a missing fixture skips its tests with the reason. When the ``CI`` environment variable is set (any
value but empty, 0, false or no), a run is meant to be complete: a missing fixture is a failure naming it, and any
skip not listed in :data:`ALLOWED_CI_SKIPS` (hardware or platform genuinely absent) is a failure too.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("REENACT_FIXTURES") or REPO.parent / "shared" / "fixtures")

#: skips a CI run accepts, as (node id pattern, skip reason pattern): only what the machine cannot provide
ALLOWED_CI_SKIPS: tuple[tuple[str, str], ...] = (
    (r"^tests/test_raster\.py::test_cuda_matches_cpu$", r"no CUDA device"),
    (r"^tests/test_raster\.py::test_auto_backend_falls_back_to_torch_without_pytorch3d$", r"pytorch3d is importable"),
    (r"^tests/test_layers\.py::", r"lint-imports is run through the venv"),          # Windows only
)

#: fixture paths found absent during this run, read from the test reports (reported at the end). The reports are
#: the one shared place: test modules import this file as ``tests.conftest``, a second module object.
MISSING_FIXTURES: set[str] = set()
_ABSENT = re.compile(r"fixture (\S+) is absent")


def in_ci() -> bool:
    """True when the ``CI`` environment variable asks for a complete run."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def fixture_path(*parts: str) -> Path:
    """Path under the fixtures folder; when absent, skip the test with the reason (fail it under CI)."""
    path = FIXTURES.joinpath(*parts)
    if not path.exists():
        message = (f"fixture {path} is absent (the golden fixtures live in ../shared/fixtures beside the repo, "
                   "or where REENACT_FIXTURES points)")
        if in_ci():
            pytest.fail(f"CI: {message}", pytrace=False)
        pytest.skip(message)
    return path


def skip_reason(report: pytest.TestReport) -> str:
    """The reason text of a skipped report."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def is_allowed_ci_skip(nodeid: str, reason: str) -> bool:
    return any(re.search(node, nodeid) and re.search(why, reason) for node, why in ALLOWED_CI_SKIPS)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    """Under CI, turn a skip that :data:`ALLOWED_CI_SKIPS` does not list into a failure that says why."""
    report = yield
    if report.failed or report.skipped:
        MISSING_FIXTURES.update(_ABSENT.findall(str(report.longrepr)))
    if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        reason = skip_reason(report)
        if not is_allowed_ci_skip(report.nodeid, reason):
            report.outcome = "failed"
            report.longrepr = (f"unexpected skip under CI={os.environ['CI']!r}: {reason}\n"
                               "(a complete run allows only the skips in tests/conftest.py ALLOWED_CI_SKIPS)")
    return report


def pytest_report_header(config: pytest.Config) -> str:
    state = "present" if FIXTURES.is_dir() else "ABSENT"
    mode = "CI: missing fixtures and unexpected skips fail" if in_ci() else "local: missing fixtures skip"
    return f"fixtures: {FIXTURES} ({state}); {mode}"


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if MISSING_FIXTURES:
        terminalreporter.section("missing fixtures", red=in_ci(), yellow=not in_ci())
        for path in sorted(MISSING_FIXTURES):
            terminalreporter.write_line(path)
        terminalreporter.write_line(f"(fixtures folder: {FIXTURES}; set REENACT_FIXTURES to use another)")


@pytest.fixture(params=["numba", "torch"])
def face3d_kernels(request, monkeypatch) -> str:
    """Run a 3D-core test with the numba CPU kernels (what CPU tensors get) and again with the torch code they stand
    in for (what CUDA runs, and CPU without numba), so that both are held to it."""
    if request.param == "torch":
        from reenact.face3d import raster

        monkeypatch.setattr(raster, "numba_kernels", lambda *args: None)
    return request.param


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


def make_testsrc_clip(path: Path, frames: int, hue: int = 0, size: str = "160x120", rate: int = 25) -> Path:
    """An H.264 clip of ffmpeg's moving test source, tinted by ``hue`` degrees (so videos differ)."""
    import subprocess

    from pipelines.media import ffmpeg_exe

    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                    f"testsrc=size={size}:rate={rate},hue=h={hue}", "-frames:v", str(frames), "-c:v", "libx264",
                    "-preset", "veryfast", "-pix_fmt", "yuv420p", str(path)], check=True)
    return path
