"""Run every speed benchmark in turn and print their tables (``make perf``).

Each script is also runnable alone with its own ``--help``. ``bench_synth.py`` (minutes: it generates the demo world
and runs the face detectors) runs only with ``--with-synth``.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["bench_raster.py", "bench_guidance.py", "bench_crop.py", "bench_landmark_fit.py", "bench_baselines.py"]


def main() -> int:
    scripts = SCRIPTS + (["bench_synth.py"] if "--with-synth" in sys.argv else [])
    failed = []
    for name in scripts:
        print(f"\n== {name}", flush=True)
        if subprocess.run([sys.executable, str(HERE / name)], cwd=HERE.parent).returncode != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
