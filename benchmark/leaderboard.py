"""Leaderboard tables in the seed's layout, rendered from results JSON only (markdown, CSV, LaTeX).

* Table 1 (VoxCeleb): self-reenactment | cross-reenactment, CSIM / AED / APD / FID each, one row per model; built
  from a ``vox-self`` and a ``vox-cross`` result (the synthetic world's ``synth-self`` / ``synth-cross`` get the
  same layout, labelled as such).
* Table 2 (CelebV): cross-reenactment CSIM / AED / APD / FID from a ``celebv-cross`` result.
* Table 3 (ablation): the same columns from a ``celebv-cross`` result whose models are the ablation variants.

Cells: the value with the seed's decimals, ``± half-width`` of the bootstrap interval, ``n=`` when some pairs had no
value; the best value per column in bold; ↑/↓ in the header. A metric that is unavailable shows ``n/a`` and the
reason in the notes. Rows whose metric backend or extractor differs from the paper's carry ``†`` and a note names
the difference. The paper's reported rows follow as a separate block, labelled as such.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from benchmark.metrics import PAPER_METRICS
from benchmark.paper import (
    DECIMALS,
    PAPER_BACKENDS,
    PAPER_DESCRIPTION,
    TABLE1,
    TABLE2,
    TABLE3,
)
from benchmark.results import Aggregate, BenchResult

ARROW = {True: "↑", False: "↓"}
LATEX_ARROW = {True: r"$\uparrow$", False: r"$\downarrow$"}


@dataclass(frozen=True)
class Column:
    key: str                  # metric registry key
    label: str
    higher_is_better: bool
    decimals: int = 3


PAPER_COLUMNS = tuple(Column(k, k.upper(), k == "csim", DECIMALS[k]) for k in PAPER_METRICS)


@dataclass(frozen=True)
class Cell:
    value: float | None
    half_width: float | None = None
    n: int | None = None                  # shown when some pairs had no value
    bold: bool = False
    decimals: int = 3

    def text(self) -> str:
        if self.value is None:
            return "n/a"
        out = f"{self.value:.{self.decimals}f}"
        if self.half_width is not None:
            out += f" ± {self.half_width:.{self.decimals}f}"
        return out + (f" (n={self.n})" if self.n is not None else "")


@dataclass
class Table:
    """A rendered table: ``groups`` of ``(label, metric keys)`` columns, rows of (name, mark, cells)."""

    title: str
    groups: list[tuple[str, tuple[Column, ...]]]
    rows: list[tuple[str, str, list[Cell]]] = field(default_factory=list)
    counts: list[str] = field(default_factory=list)       # per group: pairs per model, one line
    notes: list[str] = field(default_factory=list)

    def header(self) -> list[str]:
        return [f"{g + ' ' if len(self.groups) > 1 else ''}{c.label}{ARROW[c.higher_is_better]}"
                for g, columns in self.groups for c in columns]

    def columns(self) -> list[tuple[str, Column]]:
        return [(g, c) for g, columns in self.groups for c in columns]


# ---------------------------------------------------------------------------------------------------- building
def _half_width(a: Aggregate) -> float | None:
    return None if a.interval is None else (a.interval.high - a.interval.low) / 2


def metric_backend(result: BenchResult, aggregate: Aggregate) -> str | None:
    options = result.metrics.get(aggregate.metric, {}).get("options", {})
    return options.get("backend") or options.get("extractor") or options.get("backbone")


def differs_from_paper(result: BenchResult, aggregate: Aggregate) -> str | None:
    """A note when ``aggregate`` was computed with another backend than the paper's, else None."""
    if aggregate.unavailable or aggregate.key not in PAPER_BACKENDS:
        return None
    backend = metric_backend(result, aggregate)
    if backend in PAPER_BACKENDS[aggregate.key]:
        return None
    return f"{aggregate.metric}: {backend} (paper: {PAPER_DESCRIPTION[aggregate.key]})"


def _cells(result: BenchResult | None, model: str, columns: tuple[Column, ...]
           ) -> tuple[list[Cell], list[str], list[str]]:
    """Cells of ``model`` in ``result`` plus backend notes and unavailable reasons."""
    cells, differs, unavailable = [], [], []
    names = [m.model for m in result.models] if result else []
    for column in columns:
        a = result.model(model).aggregate(column.key) if model in names else None
        if a is None:
            cells.append(Cell(None, decimals=column.decimals))
            continue
        if a.unavailable:
            unavailable.append(f"{a.metric}: {a.unavailable.split('. ')[0]}")
        if note := differs_from_paper(result, a):
            differs.append(note)
        pairs = result.model(model).pairs
        cells.append(Cell(a.value, _half_width(a), a.n if a.value is not None and a.n < pairs else None,
                          decimals=column.decimals))
    return cells, differs, unavailable


def _bold_best(rows: list[tuple[str, str, list[Cell]]], columns: list[Column]) -> list[tuple[str, str, list[Cell]]]:
    cells_by_column = list(zip(*[cells for _, _, cells in rows])) if rows else []
    best = []
    for spec, column in zip(columns, cells_by_column):
        values = [c.value for c in column if c.value is not None]
        best.append(None if not values else (max(values) if spec.higher_is_better else min(values)))
    return [(name, mark, [Cell(c.value, c.half_width, c.n, c.value is not None and c.value == b, c.decimals)
                          for c, b in zip(cells, best)]) for name, mark, cells in rows]


def build_table(title: str, groups: list[tuple[str, BenchResult | None]],
                columns: tuple[Column, ...] = PAPER_COLUMNS) -> Table:
    """One table from results (one per column group, e.g. self and cross), rows = every model, in order."""
    table = Table(title, [(label, columns) for label, _ in groups])
    models = list(dict.fromkeys(m.model for _, r in groups if r for m in r.models))
    rows, differs, unavailable = [], {}, {}
    for model in models:
        cells, marks = [], []
        for _, result in groups:
            c, d, u = _cells(result, model, columns)
            cells += c
            marks += d
            unavailable.update(dict.fromkeys(u))
        differs.update(dict.fromkeys(marks))
        rows.append((model, "†" if marks else "", cells))
    table.rows = _bold_best(rows, [c for _, c in table.columns()])
    for label, result in groups:
        if result:
            table.counts.append(f"{label + ': ' if label else ''}{result.protocol}, "
                                + ", ".join(f"{m.model} {m.statuses.get('ok', 0)}/{m.pairs} pairs" for m in result.models)
                                + f" (manifest sha256 {result.manifest_sha256[:12]})")
    table.notes += [f"† {d}" for d in differs] + [f"unavailable: {u}" for u in unavailable]
    level = next((a.interval.level for _, r in groups if r for m in r.models for a in m.aggregates if a.interval), None)
    if level:
        table.notes.append(f"± half-width of the {level:.0%} percentile bootstrap interval over pairs")
    return table


def paper_table(title: str, rows: dict[str, tuple[float, ...]], group_labels: list[str]) -> Table:
    table = Table(title, [(label, PAPER_COLUMNS) for label in group_labels])
    columns = [c for _, c in table.columns()]
    body = [(name, "", [Cell(v, decimals=c.decimals) for v, c in zip(values, columns)]) for name, values in rows.items()]
    table.rows = _bold_best(body, columns)
    table.notes.append("as reported in the seed paper; not computed by this suite")
    return table


def extras_table(result: BenchResult) -> Table | None:
    """The result's metrics beyond the seed's four (Frechet distances on other backbones, L1, PSNR, SSIM, AKD)."""
    columns = tuple(Column(info["key"], name, info["higher_is_better"], 4) for name, info in result.metrics.items()
                    if info["key"] not in PAPER_METRICS)
    if not columns:
        return None
    return build_table(f"Additional metrics: {result.protocol}", [("", result)], columns)


def leaderboard_tables(results: list[BenchResult], ablation: BenchResult | None = None) -> list[Table]:
    """Our tables (Tables 1-3 for whichever protocols are present), then the paper's reported block."""
    by_protocol = {r.protocol: r for r in results}
    tables = []
    for prefix, name in (("vox", "Table 1: VoxCeleb"), ("synth", "Table 1 layout: synthetic world")):
        self_, cross = by_protocol.get(f"{prefix}-self"), by_protocol.get(f"{prefix}-cross")
        if self_ or cross:
            tables.append(build_table(name, [("Self", self_), ("Cross", cross)]))
    if "celebv-cross" in by_protocol:
        tables.append(build_table("Table 2: CelebV cross-reenactment", [("", by_protocol["celebv-cross"])]))
    if ablation is not None:
        tables.append(build_table("Table 3: ablation, CelebV cross-reenactment", [("", ablation)]))
    others = [r for r in results if r.protocol not in {"vox-self", "vox-cross", "synth-self", "synth-cross",
                                                       "celebv-cross"}]
    tables += [build_table(f"{r.protocol}", [("", r)]) for r in others]
    tables += [t for r in results if (t := extras_table(r)) is not None]
    return tables + [paper_table("Reported in the paper: Table 1 (VoxCeleb)", TABLE1, ["Self", "Cross"]),
                     paper_table("Reported in the paper: Table 2 (CelebV)", TABLE2, [""]),
                     paper_table("Reported in the paper: Table 3 (ablation, CelebV)", TABLE3, [""])]


# ---------------------------------------------------------------------------------------------------- rendering
def _bold_md(cell: Cell) -> str:
    return f"**{cell.text()}**" if cell.bold else cell.text()


def to_markdown(tables: list[Table]) -> str:
    out = []
    for t in tables:
        out += [f"### {t.title}", "", "| Model | " + " | ".join(t.header()) + " |",
                "|---|" + "---:|" * len(t.header())]
        out += [f"| {name}{mark} | " + " | ".join(_bold_md(c) for c in cells) + " |" for name, mark, cells in t.rows]
        out += [""] + [f"- pairs: {c}" for c in t.counts] + [f"- {n}" for n in t.notes] + [""]
    return "\n".join(out)


def to_csv(tables: list[Table]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["table", "model", "marked", "group", "metric", "value", "ci_half_width", "n", "best"])
    for t in tables:
        for name, mark, cells in t.rows:
            for (group, column), c in zip(t.columns(), cells):
                writer.writerow([t.title, name, bool(mark), group, column.label, "" if c.value is None else c.value,
                                 "" if c.half_width is None else c.half_width, "" if c.n is None else c.n, c.bold])
    return buffer.getvalue()


def _latex_escape(text: str) -> str:
    for char in "\\{}$&%_#^~":
        text = text.replace(char, {"\\": r"\textbackslash ", "^": r"\^{}", "~": r"\~{}"}.get(char, "\\" + char))
    return text.replace("±", r"$\pm$").replace("†", r"$^\dagger$").replace("↑", r"$\uparrow$").replace(
        "↓", r"$\downarrow$")


def to_latex(tables: list[Table]) -> str:
    out = []
    for t in tables:
        width = len(t.columns())
        out += [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{l" + "c" * width + "}", r"\toprule"]
        if len(t.groups) > 1:
            out.append(" & " + " & ".join(rf"\multicolumn{{{len(k)}}}{{c}}{{{g}}}" for g, k in t.groups) + r" \\")
        out.append(" & " + " & ".join(f"{_latex_escape(c.label)}{LATEX_ARROW[c.higher_is_better]}"
                                      for _, c in t.columns()) + r" \\")
        out.append(r"\midrule")
        for name, mark, cells in t.rows:
            text = [rf"\textbf{{{_latex_escape(c.text())}}}" if c.bold else _latex_escape(c.text()) for c in cells]
            out.append(_latex_escape(name + mark) + " & " + " & ".join(text) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{_latex_escape(t.title)}. "
                + _latex_escape(" ".join(t.notes)) + "}", r"\end{table}", ""]
    return "\n".join(out)


def write_leaderboard(results: list[str | Path], out: str | Path, ablation: str | Path | None = None,
                      formats: tuple[str, ...] = ("md", "csv", "tex")) -> dict[str, Path]:
    """Render the tables of the results JSON files ``results`` into ``out/leaderboard.<fmt>``."""
    from reenact.data.shards import atomic_write_bytes

    tables = leaderboard_tables([BenchResult.load(p) for p in results],
                                BenchResult.load(ablation) if ablation else None)
    renderers = {"md": to_markdown, "csv": to_csv, "tex": to_latex}
    unknown = [f for f in formats if f not in renderers]
    if unknown:
        raise ValueError(f"unknown formats {unknown}; choose from {sorted(renderers)}")
    paths = {}
    for fmt in formats:
        paths[fmt] = Path(out) / f"leaderboard.{fmt}"
        atomic_write_bytes(paths[fmt], renderers[fmt](tables).encode())
    return paths
