"""Draw the suite's dataflow (the README's picture): ``python -m reenact.app.diagram docs/dataflow.png``.

Each box is a stage with the command that runs it and the files it writes; arrows follow the data.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Box:
    name: str
    detail: str
    x: float
    y: float
    colour: str


DATA, STAGE, MODEL, RESULT = "#dbe9f6", "#fde9c9", "#e2f0d9", "#f3dcdc"
WIDTH, HEIGHT = 0.205, 0.12

BOXES = [
    Box("vox-metadata.csv", "VoxCeleb ids, or the synthetic\nworld (reenact synth)", 0.11, 0.88, DATA),
    Box("download", "yt-dlp, retries, shared rate limit\nledger rows {status, error}", 0.11, 0.66, STAGE),
    Box("crop", "ffmpeg, FOMM protocol, 256²\nframe shards (Parquet)", 0.11, 0.44, STAGE),
    Box("CelebV tree", "MTCNN ingest\nframe shards (Parquet)", 0.37, 0.88, DATA),
    Box("3DMM coefficients", "deep3d | landmarks | oracle\n257 per frame", 0.37, 0.44, STAGE),
    Box("pair manifests", "manifests/<protocol>/v<N>/\n+ pose discrepancy", 0.63, 0.88, DATA),
    Box("guidance", "F_c (Eq. 3), O_c (Eq. 4), I_r\nguidance shards", 0.63, 0.66, STAGE),
    Box("training", "completion + reenactment nets\nRay Train, checkpoints", 0.63, 0.44, MODEL),
    Box("generation", "every registered model\nover a protocol's pairs", 0.89, 0.66, MODEL),
    Box("metrics", "CSIM, AED, APD, FID, ...\nresults JSON + provenance", 0.89, 0.44, RESULT),
    Box("leaderboard + report", "Tables 1-3 (md/csv/tex)\npose-discrepancy HTML", 0.89, 0.22, RESULT),
]

ARROWS = [("vox-metadata.csv", "download"), ("download", "crop"), ("crop", "3DMM coefficients"),
          ("CelebV tree", "3DMM coefficients"), ("3DMM coefficients", "pair manifests"),
          ("pair manifests", "guidance"), ("guidance", "training"), ("guidance", "generation"),
          ("training", "generation"), ("generation", "metrics"), ("metrics", "leaderboard + report")]


def draw(path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    boxes = {b.name: b for b in BOXES}
    fig, ax = plt.subplots(figsize=(12, 6), dpi=100)
    ax.set_axis_off()
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(0.11, 0.97)
    patches = {}
    for b in BOXES:
        patches[b.name] = ax.add_patch(FancyBboxPatch((b.x - WIDTH / 2, b.y - HEIGHT / 2), WIDTH, HEIGHT, zorder=2,
                                                      boxstyle="round,pad=0.01", fc=b.colour, ec="#444444"))
        ax.text(b.x, b.y + 0.03, b.name, ha="center", va="center", fontsize=10.5, weight="bold", zorder=3)
        ax.text(b.x, b.y - 0.018, b.detail, ha="center", va="center", fontsize=8.5, zorder=3)
    for a, b in ARROWS:                  # clipped to the two boxes' outlines
        ax.annotate("", xy=(boxes[b].x, boxes[b].y), xytext=(boxes[a].x, boxes[a].y), zorder=4,
                    arrowprops={"arrowstyle": "-|>", "color": "#555555", "lw": 1.4, "patchA": patches[a],
                                "patchB": patches[b], "shrinkA": 2, "shrinkB": 2})
    ax.set_title("reenact-suite dataflow (Parquet shards between stages; every stage resumable)", fontsize=12)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


if __name__ == "__main__":
    print(draw(sys.argv[1] if len(sys.argv) > 1 else "docs/dataflow.png"))
