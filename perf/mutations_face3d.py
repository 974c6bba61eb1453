"""Named mutations of the 3D face core, each run against the tests meant to catch it.

    python perf/mutations_face3d.py [--only NAME ...] [--keep]

Each mutation is one plausible bug planted by exact text replacement in a scratch copy of the tracked files; the
named tests then run there (``pytest -x -q``). A mutation is *caught* when they fail. The table at the end is what
the issue's closing note shows; a mutation whose text no longer occurs is reported as ``stale`` (update it).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTATIONS = (
    Mutation("I_r shaded in the source pose", "reenact/face3d/guidance.py",
             "colors = lit_colors(model, rest[shaded], rotation[shaded],",
             "colors = lit_colors(model, rest[shaded], rotation[:b].repeat(2, 1, 1)[shaded],",
             ("tests/test_guidance.py::test_render_is_the_target_mesh_lit_in_the_target_pose",)),
    Mutation("vertex normals rotated by R instead of R^T", "reenact/face3d/face.py",
             "normals @ rotation.transpose(-1, -2), gamma)",
             "normals @ rotation, gamma)",
             ("tests/test_face3d_core.py::test_shading_uses_the_posed_surface_normals",
              "tests/test_guidance.py::test_render_is_the_target_mesh_lit_in_the_target_pose")),
    Mutation("occlusion without the centroid-inside-the-image check", "reenact/face3d/guidance.py",
             "return inside & (centroid[..., 2] <= zbuf + tolerance + slack)",
             "return centroid[..., 2] <= zbuf + tolerance + slack",
             ("tests/test_guidance.py::test_occlusion_of_a_source_face_partly_outside_the_image_matches_brute_force",)),
)


def _scratch_copy() -> Path:
    dest = Path(tempfile.mkdtemp(prefix="mutations-"))
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    return dest


def run(mutation: Mutation, scratch: Path) -> str:
    path = scratch / mutation.path
    original = path.read_text()
    if original.count(mutation.old) != 1:
        return "stale"
    path.write_text(original.replace(mutation.old, mutation.new))
    try:
        result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                                 *mutation.tests], cwd=scratch, capture_output=True, text=True)
    finally:
        path.write_text(original)
    return "caught" if result.returncode == 1 else ("survived" if result.returncode == 0 else
                                                    f"error (pytest exit {result.returncode})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", default=None, help="run only mutations whose name contains one of these")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copy")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if args.only is None or any(s in m.name for s in args.only)]
    scratch = _scratch_copy()
    rows = []
    try:
        for m in chosen:
            rows.append((m.name, run(m, scratch), ", ".join(t.split("::")[-1] for t in m.tests)))
            print(f"{rows[-1][1]:>8}  {m.name}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    print("\n| mutation | result | tests |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    sys.exit(0 if all(r[1] == "caught" for r in rows) else 1)


if __name__ == "__main__":
    main()
