"""Named mutations of the core modules, each run against the tests expected to catch it.

Every mutation is a textual patch of one line (``old`` must occur exactly once in ``path``) applied to a temporary
copy of the repository (the files git knows, tracked or not ignored); then only the tests it names run there, with a
timeout. A mutation is *caught* when those tests fail, *SURVIVED* when they pass (or skip). Before the mutations, the
union of the named tests runs once on the unmutated copy: a test that fails there would make "caught" meaningless,
so it is left out of every mutation's run (and said so in the table).

    PYTHONPATH=. python perf/mutations.py                        # all; table to stdout and perf/mutations.md
    PYTHONPATH=. python perf/mutations.py --only raster. guidance.    # names starting with these prefixes
    PYTHONPATH=. python perf/mutations.py --check                # only check that every patch still applies

Fixtures: the copy lives outside the repository's parent folder, so ``REENACT_FIXTURES`` is set to this checkout's
fixtures folder (``../shared/fixtures``, or ``REENACT_FIXTURES`` when set). ``CI`` is removed from the environment:
under CI a skip fails, which would count as caught.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULT_FILE = REPO / "perf" / "mutations.md"


@dataclass(frozen=True)
class Mutation:
    """Replace ``old`` (one line's text, unique in ``path``) by ``new``; ``tests`` (pytest node ids) should fail."""

    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    note: str = ""


def T(module: str, *names: str) -> tuple[str, ...]:  # noqa: N802 - short constructor for the table below
    return tuple(f"tests/{module}.py::{n}" for n in names)


RASTER = "reenact/face3d/raster_kernel.py"
RASTER_NUMBA = "reenact/face3d/raster_numba.py"
FACE_NUMBA = "reenact/face3d/face_numba.py"
GUIDANCE = "reenact/face3d/guidance.py"

MUTATIONS: tuple[Mutation, ...] = (
    # ---------------------------------------------------------------------------------------------- rasterizer
    Mutation("raster.half_pixel_offset", RASTER, "shifted = flat - 0.5", "shifted = flat",
             T("test_raster", "test_convention_pixel_centres_and_y_down", "test_random_meshes_match_brute_force")),
    Mutation("raster.border_clamp", RASTER, "hi[rows].clamp_(max=size - 1)", "hi[rows].clamp_(max=size - 2)",
             T("test_raster", "test_convention_image_spans_zero_to_size", "test_random_meshes_match_brute_force")),
    Mutation("raster.barycentric_order", RASTER, "    w0, w1, w2 = out\n", "    w0, w2, w1 = out\n",
             T("test_raster", "test_convention_barycentrics_are_screen_space",
               "test_interpolate_matches_brute_force")),
    Mutation("raster.farthest_wins", RASTER, 'zbuf.scatter_reduce_(0, pixel, keys, "amin")',
             'zbuf.scatter_reduce_(0, pixel, keys, "amax")',
             T("test_raster", "test_face_like_mesh_of_subpixel_triangles_matches_brute_force"),
             "the first-pixel pass of small boxes: the convention tests use large triangles (float64 path)"),
    Mutation("raster.cull_front_faces", RASTER, "sign.clamp_(max=0.0)", "sign.clamp_(min=0.0)",
             T("test_raster", "test_convention_front_facing_is_counter_clockwise_as_displayed_and_culling")),
    Mutation("raster.face_id_encoding", RASTER, ".bitwise_left_shift_(32).bitwise_or_(face_id)",
             ".bitwise_left_shift_(32).bitwise_or_(face_id.max() - face_id)",
             T("test_raster", "test_face_like_mesh_of_subpixel_triangles_matches_brute_force"),
             "the first-pixel pass of small boxes, as above"),
    # the numba backend (its tests run over both backends)
    Mutation("raster_numba.border_clamp", RASTER_NUMBA, "np.float32(W - 1)) - lo_x", "np.float32(W - 2)) - lo_x",
             T("test_raster", "test_convention_image_spans_zero_to_size", "test_random_meshes_match_brute_force")),
    Mutation("raster_numba.barycentric_order", RASTER_NUMBA, "bary[1, b, i, j] = w1 * r", "bary[1, b, i, j] = w2 * r",
             T("test_raster", "test_convention_barycentrics_are_screen_space",
               "test_interpolate_matches_brute_force")),
    Mutation("raster_numba.farthest_wins", RASTER_NUMBA, "keys[origin] = k if covered & (k < held) else held",
             "keys[origin] = k if covered & ((k > held) | (held == _EMPTY_KEY)) else held",
             T("test_raster", "test_random_meshes_match_brute_force"),
             "the first-pixel test of boxes; the face-like mesh has no overlapping triangles to tell nearest from "
             "farthest"),
    Mutation("raster_numba.cull_front_faces", RASTER_NUMBA, "(cull and area2 > 0)", "(cull and area2 < 0)",
             T("test_raster", "test_convention_front_facing_is_counter_clockwise_as_displayed_and_culling")),
    # ----------------------------------------------------------------------------------- camera, coefficients
    Mutation("camera.pixel_grid_half_pixel", "reenact/face3d/camera.py",
             "ys = torch.arange(height, device=device, dtype=dtype) + 0.5",
             "ys = torch.arange(height, device=device, dtype=dtype)",
             T("test_face3d_core", "test_convention_pixel_grid_centres_and_grid_sample_coordinates")),
    Mutation("coeffs.angle_slice", "reenact/face3d/coeffs.py", "ANGLE = slice(224, 227)", "ANGLE = slice(225, 228)",
             T("test_face3d_core", "test_coefficient_layout_is_contiguous_and_totals_257")),
    Mutation("coeffs.target_keeps_source_pose", "reenact/face3d/coeffs.py", "for part in (EXP, ANGLE, TRANS):",
             "for part in (EXP,):",
             T("test_face3d_core", "test_coeffs_round_trip_and_target_recombination")),
    # ---------------------------------------------------------------------------------------------- shading, normals
    Mutation("shading.sh_basis_sign", "reenact/face3d/shading.py", "        -a[1] * c[1] * y,\n",
             "        a[1] * c[1] * y,\n",
             T("test_face3d_core", "test_sh_basis_matches_scipy_real_harmonics_times_lambertian_constants")),
    Mutation("face.normals_R_not_RT", "reenact/face3d/face.py", "@ rotation.transpose(-1, -2)", "@ rotation",
             T("test_face3d_core", "test_shading_uses_the_posed_surface_normals"),
             "issue 15: was caught only by a dlib test that skips without dlib's model"),
    # ---------------------------------------------------------------------------------------------- guidance
    Mutation("guidance.flow_sign", GUIDANCE, "return (source_xy - grid) * target.mask.unsqueeze(-1)",
             "return (grid - source_xy) * target.mask.unsqueeze(-1)",
             T("test_guidance", "test_pure_yaw_flow_matches_analytic_reprojection")),
    Mutation("guidance.I_r_in_source_pose", GUIDANCE,
             "lit_colors(model, rest[shaded], rotation[shaded],",
             "lit_colors(model, rest[shaded], rotation[:b].repeat(2, 1, 1)[shaded],",
             T("test_guidance", "test_render_is_the_target_mesh_lit_in_the_target_pose"),
             "issue 15: the target mesh's normals rotated by the source pose"),
    Mutation("guidance.I_r_from_source_colours", GUIDANCE, "screen[:b], colors[-b:])", "screen[:b], colors[:b])",
             T("test_guidance", "test_render_is_the_target_mesh_lit_in_the_target_pose"),
             "I_r interpolates the source mesh's colours; only differs with with_source_render=True (the default), "
             "which the I_r test runs as well as False"),
    Mutation("guidance.occlusion_no_centroid_inside_check", GUIDANCE,
             "return inside & (centroid[..., 2] <= zbuf + tolerance + slack)",
             "return (centroid[..., 2] <= zbuf + tolerance + slack)",
             T("test_guidance", "test_occlusion_of_a_source_face_partly_outside_the_image_matches_brute_force"),
             "issue 15"),
    Mutation("guidance.occlusion_ignores_depth", GUIDANCE,
             "return inside & (centroid[..., 2] <= zbuf + tolerance + slack)", "return inside",
             T("test_guidance", "test_large_yaw_marks_the_self_occluded_cheek_occluded")),
    # the numba kernels that stand in for the torch code above on CPU (those tests run with both)
    Mutation("face_numba.normals_R_not_RT", FACE_NUMBA, "r[0, 1] * y) + r[0, 2] * z", "r[1, 0] * y) + r[2, 0] * z",
             T("test_face3d_core", "test_shading_uses_the_posed_surface_normals")),
    Mutation("face_numba.occlusion_no_centroid_inside_check", FACE_NUMBA, "if inside and cz <=", "if cz <=",
             T("test_guidance", "test_occlusion_of_a_source_face_partly_outside_the_image_matches_brute_force")),
    Mutation("face_numba.flow_sign", FACE_NUMBA, "flow[b, 0, i, j] = x - (np.float32(j) + half)",
             "flow[b, 0, i, j] = (np.float32(j) + half) - x",
             T("test_guidance", "test_pure_yaw_flow_matches_analytic_reprojection")),
    Mutation("face_numba.occlusion_ignores_depth", FACE_NUMBA, "if inside and cz <= (zbuf + tolerance) + slack",
             "if inside", T("test_guidance", "test_large_yaw_marks_the_self_occluded_cheek_occluded")),
    # ---------------------------------------------------------------------------------------------- crop range
    Mutation("crop.frame_range_inclusive_end", "pipelines/crop.py",
             "return range(_first_index(start, fps, ref_fps), _first_index(end, fps, ref_fps))",
             "return range(_first_index(start, fps, ref_fps), _first_index(end, fps, ref_fps) + 1)",
             T("test_crop", "test_frame_range_equals_brute_force_predicate")),
    # ---------------------------------------------------------------------------------------------- landmark fit
    Mutation("landmark_fit.yaw_bias_2deg", "reenact/faces/landmark_fit.py",
             "coeffs[:, ANGLE] = matrix_to_euler(state.rotation)",
             "coeffs[:, ANGLE] = matrix_to_euler(state.rotation) + torch.tensor([0.0, 0.0349066, 0.0], "
             "dtype=torch.float64)",
             T("test_landmark_fit", "test_recovers_head_pose_on_synthetic_sequences",
               "test_recovers_head_pose_on_the_tiny_synthetic_world"),
             "issue 15: the noisy pose tests must catch a constant 2 degree bias (noise-free tests alone did)"),
    Mutation("landmark_fit.pitch_bias_2deg", "reenact/faces/landmark_fit.py",
             "coeffs[:, ANGLE] = matrix_to_euler(state.rotation)",
             "coeffs[:, ANGLE] = matrix_to_euler(state.rotation) + torch.tensor([0.0349066, 0.0, 0.0], "
             "dtype=torch.float64)",
             T("test_landmark_fit", "test_recovers_head_pose_on_synthetic_sequences",
               "test_recovers_head_pose_on_the_tiny_synthetic_world"),
             "issue 15"),
    # ---------------------------------------------------------------------------------------------- baselines
    Mutation("x2face.resize_nearest", "baselines/x2face.py",
             'return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)',
             'return F.interpolate(x, size=size, mode="nearest")',
             T("test_baseline_x2face", "test_wrapper_resizes_bilinearly_to_native_size_and_back"), "issue 15"),
    Mutation("pirender.resize_nearest", "baselines/pirender.py",
             'return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)',
             'return F.interpolate(x, size=size, mode="nearest")',
             T("test_baseline_pirender", "test_wrapper_resizes_bilinearly_to_native_size_and_back"), "issue 15"),
    Mutation("discriminator.leaky_slope_0.1", "baselines/_fomm_blocks.py", "out = F.leaky_relu(out, 0.2)",
             "out = F.leaky_relu(out, 0.1)",
             T("test_baseline_fomm", "test_discriminator_matches_hand_computation")
             + T("test_baseline_dagan", "test_discriminator_with_keypoints_matches_hand_computation"), "issue 15"),
    Mutation("pirender.motion_window_no_clamp", "baselines/pirender.py",
             "center + radius + 1, device=coeffs_sequence.device).clamp(0, num_frames - 1)",
             "center + radius + 1, device=coeffs_sequence.device).clamp(0, num_frames)",
             T("test_baseline_pirender", "test_motion_window_clamps_at_both_ends_of_a_short_video")),
    Mutation("x2face.confidence_offset_dropped", "baselines/x2face.py",
             "embedded, _ = self._embed(sources, offset=0.1)", "embedded, _ = self._embed(sources, offset=0.0)",
             T("test_baseline_x2face", "test_golden_forward_modern_grid_sample")),
    Mutation("fomm.relative_jacobian_order", "baselines/_fomm_blocks.py",
             "jacobian = torch.matmul(torch.matmul(kp_driving.jacobian, torch.inverse(kp_driving_initial.jacobian)),",
             "jacobian = torch.matmul(torch.matmul(torch.inverse(kp_driving_initial.jacobian), kp_driving.jacobian),",
             T("test_baseline_fomm", "test_golden_output")),
    Mutation("dagan.attention_softmax_dim", "baselines/dagan.py",
             "attention = F.softmax(torch.bmm(query, key), dim=-1)",
             "attention = F.softmax(torch.bmm(query, key), dim=1)",
             T("test_baseline_dagan", "test_golden_output")),
)


# ------------------------------------------------------------------------------------------------------ running


def fixtures_folder() -> Path:
    return Path(os.environ.get("REENACT_FIXTURES") or REPO.parent / "shared" / "fixtures")


def repository_files(repo: Path) -> list[str]:
    """Tracked and untracked-but-not-ignored files (what a fresh checkout of this working tree holds)."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=repo, check=True,
                         capture_output=True).stdout.decode()
    return [p for p in out.split("\0") if p and (repo / p).is_file()]


def copy_repository(repo: Path, dest: Path) -> None:
    for rel in repository_files(repo):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / rel, target)


def check_patch(root: Path, m: Mutation) -> str | None:
    """None when ``m`` applies to ``root``, else why not."""
    path = root / m.path
    if not path.is_file():
        return f"{m.path} does not exist"
    count = path.read_text().count(m.old)
    return None if count == 1 else f"{m.old!r} occurs {count} times in {m.path}"


def run_tests(root: Path, tests: tuple[str, ...], timeout: float, *, stop_at_first: bool = True,
              failing: list[str] | None = None) -> tuple[str, float, str]:
    """(outcome, seconds, summary): outcome is 'passed', 'failed', 'error rc=N' or 'timeout'. The node ids of the
    failing tests are appended to ``failing`` when given."""
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(REENACT_FIXTURES=str(fixtures_folder()), PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", *(["-x"] if stop_at_first else []), "-q", "-p", "no:cacheprovider",
           "--no-header", "-rfEs", *tests]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - start, ""
    seconds = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    last = lines[-1] if lines else proc.stderr.strip()[-200:]
    failed = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    if failing is not None:
        failing.extend(line.split()[1].split("[")[0] for line in failed)
    last = "; ".join([*failed[:1], last])
    if proc.returncode == 0:
        return ("skipped" if " skipped" in last and " passed" not in last else "passed"), seconds, last
    return ("failed" if proc.returncode == 1 else f"error rc={proc.returncode}"), seconds, last


def mutate(root: Path, m: Mutation) -> str:
    """Apply ``m`` to the copy; returns the original text for :func:`restore`."""
    path = root / m.path
    original = path.read_text()
    path.write_text(original.replace(m.old, m.new, 1))
    return original


def table(rows: list[tuple[Mutation, str, str, float]]) -> str:
    lines = ["| mutation | file | test(s) expected to catch it | caught? | seconds |", "|---|---|---|---|---|"]
    for m, verdict, detail, seconds in rows:
        tests = "<br>".join(t.removeprefix("tests/") for t in m.tests)
        lines.append(f"| `{m.name}` | `{m.path}` | {tests} | {verdict}{' (' + detail + ')' if detail else ''} "
                     f"| {seconds:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=[], help="run only mutations whose name starts with these")
    parser.add_argument("--check", action="store_true", help="only check that every patch applies, run nothing")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per mutation's test run (600)")
    parser.add_argument("--out", type=Path, default=None,
                        help="markdown result file (default perf/mutations.md, written only by a full run)")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or any(m.name.startswith(p) for p in args.only)]
    stale = {m.name: why for m in chosen if (why := check_patch(REPO, m))}
    for name, why in stale.items():
        print(f"STALE {name}: {why}")
    if args.check:
        print(f"{len(chosen) - len(stale)}/{len(chosen)} mutations apply")
        return 1 if stale else 0
    rows: list[tuple[Mutation, str, str, float]] = []
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True).stdout.strip()
    commit += " + uncommitted changes" if dirty else ""
    with tempfile.TemporaryDirectory(prefix="mutations-") as tmp:
        root = Path(tmp) / "repo"
        copy_repository(REPO, root)
        union = tuple(dict.fromkeys(t for m in chosen if m.name not in stale for t in m.tests))
        broken: list[str] = []
        outcome, seconds, last = run_tests(root, union, args.timeout * 3, stop_at_first=False, failing=broken)
        print(f"unmutated: {outcome} in {seconds:.0f} s: {last}", flush=True)
        if outcome not in ("passed", "failed"):
            print("the named tests do not run on the unmutated code: fix that first")
            return 2
        for m in chosen:
            if m.name in stale:
                rows.append((m, "STALE", stale[m.name], 0.0))
                continue
            tests = tuple(t for t in m.tests if t not in broken)     # a test failing unmutated proves nothing
            excluded = [t.rsplit("::", 1)[-1] for t in m.tests if t in broken]
            note = f"excluded, fails unmutated: {', '.join(excluded)}" if excluded else ""
            if not tests:
                rows.append((m, "n/a", note, 0.0))
                continue
            original = mutate(root, m)
            try:
                outcome, seconds, last = run_tests(root, tests, args.timeout)
            finally:
                (root / m.path).write_text(original)
            verdict = {"failed": "caught", "passed": "SURVIVED", "skipped": "SURVIVED (skipped)"}.get(outcome, outcome)
            detail = "; ".join(filter(None, [note, "" if outcome in ("failed", "passed") else last[:80]]))
            rows.append((m, verdict, detail, seconds))
            print(f"{m.name:45s} {verdict:10s} {seconds:6.0f} s  {last}", flush=True)
    report = table(rows)
    print(report)
    caught = sum(v == "caught" for _, v, _, _ in rows)
    out = args.out or (None if args.only else RESULT_FILE)
    if out is None:
        return 0 if caught == len(rows) else 1
    out.write_text(f"# Mutation run\n\n`PYTHONPATH=. python perf/mutations.py` on {commit} "
                        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}): {caught}/{len(rows)} caught.\n"
                        f"Each row: one-line patch in a temporary copy, only the named tests run.\n\n{report}\n"
                        + "".join(f"\n- `{m.name}`: {m.note}" for m, *_ in rows if m.note) + "\n")
    return 0 if caught == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
