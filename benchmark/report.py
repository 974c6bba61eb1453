"""``reenact report``: a self-contained HTML page on performance versus pose discrepancy (the seed's Fig. 6).

From a bench run folder (``results.json`` plus the cached generated images and pairs):

* one matplotlib figure per metric (CSIM, AED, APD, FID when available, the other backbones' Frechet distances):
  the value per pose-discrepancy bin per model, with the bootstrap interval as error bars and the bin's pair count
  on the axis;
* a table of the same numbers (value, interval, n) per bin;
* per bin, a grid of example pairs: source | driving | each model's output.

Every image is inlined as base64 PNG, so the page is one file. :func:`check_in_browser` loads it in headless
Chromium and reports console messages, images that failed to decode, and writes a screenshot.
"""
from __future__ import annotations

import base64
import html
import io
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmark.results import Aggregate, BenchResult, BinResult

THUMB = 128
EXAMPLES_PER_BIN = 3
#: the in-page self-check: counts decoded images and script errors into attributes of <body> after load
SELF_CHECK = """<script>
window.__errors = 0;
window.addEventListener('error', () => { window.__errors += 1; }, true);
window.addEventListener('load', () => {
  const images = Array.from(document.images);
  const decoded = images.filter((img) => img.complete && img.naturalWidth > 0).length;
  document.body.setAttribute('data-images', decoded + '/' + images.length);
  document.body.setAttribute('data-errors', String(window.__errors));
});
</script>"""
STYLE = """<style>
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; } td, th { border: 1px solid #ccc; padding: 3px 8px; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { display: inline-block; margin: 0.5em; } .note { color: #555; font-size: 90%; }
</style>"""


# ---------------------------------------------------------------------------------------------------- figures
def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _bins_of(result: BenchResult) -> list[BinResult]:
    return result.models[0].bins if result.models else []


def metric_names(result: BenchResult) -> list[str]:
    """Recorded names of the metrics that have a value in some bin, paper metrics first."""
    order = {"csim": 0, "aed": 1, "apd": 2, "fid": 3}
    names = {a.metric: a.key for m in result.models for b in m.bins for a in b.aggregates if a.value is not None}
    return sorted(names, key=lambda n: (order.get(names[n], 9), n))


def _aggregate(bin_result: BinResult, metric: str) -> Aggregate | None:
    return next((a for a in bin_result.aggregates if a.metric == metric), None)


def bin_figure(result: BenchResult, metric: str) -> bytes:
    """Grouped bars: ``metric`` per pose-discrepancy bin (x) per model, error bars = bootstrap interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = _bins_of(result)
    width = 0.8 / max(1, len(result.models))
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=90)
    for i, model in enumerate(result.models):
        aggs = [_aggregate(b, metric) for b in model.bins]
        values = np.array([np.nan if a is None or a.value is None else a.value for a in aggs])
        low = np.array([0.0 if a is None or a.interval is None else a.value - a.interval.low for a in aggs])
        high = np.array([0.0 if a is None or a.interval is None else a.interval.high - a.value for a in aggs])
        x = np.arange(len(bins)) + (i - (len(result.models) - 1) / 2) * width
        ax.bar(x, values, width, yerr=np.stack([low, high]), capsize=3, label=model.model)
    ax.set_xticks(np.arange(len(bins)), [f"{b.label}\n(n={b.count})" for b in bins])
    higher = next((a.higher_is_better for m in result.models for a in m.aggregates if a.metric == metric), True)
    ax.set_ylabel(f"{metric} {'↑' if higher else '↓'}")
    ax.set_xlabel("pose discrepancy between source and driving")
    ax.set_title(f"{metric} vs pose discrepancy ({result.protocol})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------- examples
def example_pairs(result: BenchResult, per_bin: int = EXAMPLES_PER_BIN) -> dict[str, list[int]]:
    """Per bin label, the first ``per_bin`` pair indices every model generated."""
    ok: dict[int, int] = {}
    discrepancy: dict[int, float | None] = {}
    for r in result.records:
        ok[r.index] = ok.get(r.index, 0) + (r.status == "ok")
        discrepancy[r.index] = r.pose_discrepancy
    complete = sorted(p for p, count in ok.items() if count == len(result.models))
    return {b.label: [p for p in complete if discrepancy[p] is not None and b.low <= discrepancy[p] < b.high][:per_bin]
            for b in _bins_of(result)}


def _thumbnail(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).resize((THUMB, THUMB), Image.BILINEAR).save(buffer, format="PNG")
    return buffer.getvalue()


def example_images(run_dir: Path, result: BenchResult, indices: set[int]) -> dict[tuple[int, str], bytes]:
    """Thumbnails keyed by (pair index, "source" | "driving" | model name), read from the run folder."""
    import json

    from benchmark.runner import STAGE, BenchConfig, generated_rows, load_pairs
    from reenact.data.codec import decode_image, tensor_to_uint8

    recorded = json.loads((run_dir / "config.json").read_text())["config"]
    cfg = BenchConfig(**{**recorded, "out": str(run_dir), "progress": False, "executor": "local"})
    pairs, _ = load_pairs(cfg)
    out = {}
    for index in sorted(indices):
        for role in ("source", "driving"):
            out[(index, role)] = _thumbnail(tensor_to_uint8(pairs[index][role]))
    for model in result.models:
        for row in generated_rows(run_dir / STAGE / model.model):
            if row["index"] in indices and row["status"] == "ok":
                out[(row["index"], model.model)] = _thumbnail(decode_image(row["image"]))
    return out


# ---------------------------------------------------------------------------------------------------- html
def _fmt(a: Aggregate | None) -> str:
    if a is None or a.value is None:
        return "n/a"
    interval = f" [{a.interval.low:.4g}, {a.interval.high:.4g}]" if a.interval else ""
    return f"{a.value:.4g}{interval} (n={a.n})"


def bin_table(result: BenchResult, metrics: list[str]) -> str:
    rows = ["<table><tr><th>model</th><th>bin</th><th>pairs</th>"
            + "".join(f"<th>{html.escape(m)}</th>" for m in metrics) + "</tr>"]
    for model in result.models:
        for b in model.bins:
            rows.append(f"<tr><td>{html.escape(model.model)}</td><td>{html.escape(b.label)}</td>"
                        f"<td class=num>{b.count}</td>"
                        + "".join(f"<td class=num>{html.escape(_fmt(_aggregate(b, m)))}</td>" for m in metrics)
                        + "</tr>")
    return "\n".join(rows + ["</table>"])


def example_grid(result: BenchResult, label: str, pair_ids: list[int], images: dict[tuple[int, str], bytes]) -> str:
    columns = ["source", "driving"] + [m.model for m in result.models]
    rows = [f"<h3>{html.escape(label)}</h3>", "<table><tr><th>pair</th>"
            + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>"]
    for p in pair_ids:
        cells = [f'<td><img alt="{html.escape(c)} {p}" width={THUMB} height={THUMB} src="{png_data_uri(images[(p, c)])}">'
                 "</td>" if (p, c) in images else "<td>missing</td>" for c in columns]
        rows.append(f"<tr><td class=num>{p}</td>" + "".join(cells) + "</tr>")
    if not pair_ids:
        rows.append(f"<tr><td colspan={len(columns) + 1}>no pair in this bin</td></tr>")
    return "\n".join(rows + ["</table>"])


def render_report(result: BenchResult, images: dict[tuple[int, str], bytes], examples: dict[str, list[int]]) -> str:
    """The report page as one HTML string."""
    from benchmark.leaderboard import leaderboard_tables, to_markdown

    metrics = metric_names(result)
    figures = "\n".join(f'<figure><img alt="{html.escape(m)} per bin" src="{png_data_uri(bin_figure(result, m))}">'
                        f"<figcaption>{html.escape(m)}</figcaption></figure>" for m in metrics)
    unavailable = sorted({f"{a.metric}: {a.unavailable.split('. ')[0]}" for m in result.models for a in m.aggregates
                          if a.unavailable})
    prov = result.provenance
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Pose-discrepancy report: {html.escape(result.protocol)}</title>", STYLE, SELF_CHECK, "</head><body>",
        f"<h1>Performance vs pose discrepancy: {html.escape(result.protocol)} ({html.escape(result.kind)}-reenactment)</h1>",
        (f"<p class=note>git {html.escape(str(prov.get('git_commit')))}, manifest sha256 "
        f"{html.escape(result.manifest_sha256)}, created {html.escape(str(prov.get('created_at')))}. Pose discrepancy: "
        "geodesic angle between the source's and the driving frame's head rotations (3DMM angles). Bars: value per "
        "bin; error bars: percentile bootstrap interval over the bin's pairs.</p>"),
        "<h2>Figures (Fig. 6 layout)</h2>", figures,
        "".join(f"<p class=note>unavailable: {html.escape(u)}</p>" for u in unavailable),
        "<h2>Per-bin values, intervals and counts</h2>", bin_table(result, metrics),
        "<h2>Leaderboard</h2>", f"<pre>{html.escape(to_markdown(leaderboard_tables([result])[:-3]))}</pre>",
        "<h2>Examples per bin (source | driving | models)</h2>",
        *[example_grid(result, label, ids, images) for label, ids in examples.items()],
        "</body></html>"])


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write ``report.html`` for the bench run in ``run_dir`` (default into the run folder)."""
    from reenact.data.shards import atomic_write_bytes

    run_dir = Path(run_dir)
    result = BenchResult.load(run_dir / "results.json")
    examples = example_pairs(result)
    images = example_images(run_dir, result, {p for ids in examples.values() for p in ids})
    path = Path(out) if out else run_dir / "report.html"
    atomic_write_bytes(path, render_report(result, images, examples).encode())
    return path


# ---------------------------------------------------------------------------------------------------- browser check
@dataclass(frozen=True)
class BrowserCheck:
    console: list[str]          # console messages the page logged (the page itself logs none)
    images_decoded: int
    images_total: int
    script_errors: int
    screenshot: Path

    @property
    def ok(self) -> bool:
        return not self.console and self.script_errors == 0 and self.images_decoded == self.images_total > 0


def find_chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def _chromium(binary: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    base = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
            "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000"]
    return subprocess.run(base + list(args), check=False, capture_output=True, text=True, timeout=timeout)


def check_in_browser(page: str | Path, screenshot: str | Path, binary: str | None = None) -> BrowserCheck:
    """Load ``page`` in headless Chromium: console messages, decoded images, script errors; write a screenshot."""
    import re

    binary = binary or find_chromium()
    if binary is None:
        raise FileNotFoundError("no Chromium found (apt-get install -y chromium)")
    url = Path(page).resolve().as_uri()
    dom = _chromium(binary, "--dump-dom", url)
    images = re.search(r'data-images="(\d+)/(\d+)"', dom.stdout)
    errors = re.search(r'data-errors="(\d+)"', dom.stdout)
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    screenshot = Path(screenshot).resolve()
    _chromium(binary, f"--screenshot={screenshot}", "--window-size=1280,2400", url)
    return BrowserCheck(console, int(images[1]) if images else 0, int(images[2]) if images else -1,
                        int(errors[1]) if errors else -1, screenshot)
