"""The pipeline report: plots and tables a person reads instead of metadata, as Markdown (for the
Dagster UI, images inline) and as one standalone HTML file (to mail or archive).

A report is a list of sections, each some prose, an optional table and an optional plot, so the
two renderings cannot drift apart. Plots are drawn on bare matplotlib Figures (Agg canvas, no
pyplot state), safe in a Dagster step and in threads.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field

import polars as pl
from matplotlib.axes import Axes
from matplotlib.figure import Figure

_DPI = 90


@dataclass(frozen=True)
class Plot:
    name: str  # file name stem: <name>.png
    png: bytes


@dataclass
class Section:
    title: str
    text: str = ""
    columns: list[str] = field(default_factory=list)
    rows: list[Sequence[object]] = field(default_factory=list)
    plot: Plot | None = None


def markdown_table(rows: Sequence[Sequence[object]], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(_markdown_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_markdown_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _format(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _markdown_cell(value: object) -> str:
    return _format(value).replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, sections: Sequence[Section], inline_images: bool) -> str:
    """`inline_images`: PNGs as data URIs (the Dagster UI shows nothing else); otherwise as
    `<name>.png` next to the file."""
    parts = [f"# {title}"]
    for section in sections:
        parts.append(f"## {section.title}")
        if section.text:
            parts.append(section.text)
        if section.plot is not None:
            source = _data_uri(section.plot.png) if inline_images else f"{section.plot.name}.png"
            parts.append(f"![{section.plot.name}]({source})")
        if section.columns:
            parts.append(markdown_table(section.rows, section.columns))
    return "\n\n".join(parts) + "\n"


def render_html(title: str, sections: Sequence[Section]) -> str:
    body = [f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.text:
            body.extend(f"<p>{html.escape(paragraph)}</p>" for paragraph in section.text.split("\n\n"))
        if section.plot is not None:
            body.append(f'<img alt="{section.plot.name}" src="{_data_uri(section.plot.png)}">')
        if section.columns:
            head = "".join(f"<th>{html.escape(c)}</th>" for c in section.columns)
            rows = "".join(
                "<tr>" + "".join(f"<td>{html.escape(_format(v))}</td>" for v in row) + "</tr>" for row in section.rows
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;"
        "text-align:left;vertical-align:top}th{background:#f3f3f3}img{max-width:100%}"
    )
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _plot(name: str, axes: Axes) -> Plot:
    axes.legend(fontsize=8)
    axes.figure.tight_layout()
    buffer = io.BytesIO()
    axes.figure.savefig(buffer, format="png", dpi=_DPI)
    return Plot(name, buffer.getvalue())


# --------------------------------------------------------------------------- plots


def funnel_plot(funnel: pl.DataFrame, stages: Sequence[str]) -> Plot:
    """Documents left after each stage, one line per crawl batch (`crawl_batch, stage, documents`)."""
    axes = Figure(figsize=(7, 3.6)).add_subplot()
    present = [s for s in stages if s in set(funnel.get_column("stage"))]
    for batch in sorted(set(funnel.get_column("crawl_batch"))):
        counts = dict(funnel.filter(pl.col("crawl_batch") == batch).select("stage", "documents").iter_rows())
        axes.plot(range(len(present)), [counts.get(s, 0) for s in present], marker="o", label=batch)
    axes.set_xticks(range(len(present)), [s.replace("_documents", "") for s in present])
    axes.set(ylabel="documents", title="documents after each stage, per crawl batch")
    axes.grid(alpha=0.3)
    return _plot("filter_funnel", axes)


def removed_plot(removed: pl.DataFrame) -> Plot:
    """Documents removed per rule (`stage, rule, crawl_batch, removed`), stacked by crawl batch."""
    rules = removed.group_by("stage", "rule").agg(pl.col("removed").sum()).sort("removed", "stage", "rule")
    labels = [f"{s.replace('_documents', '')}: {r}" for s, r in rules.select("stage", "rule").iter_rows()]
    axes = Figure(figsize=(7, 0.9 + 0.28 * max(len(labels), 1))).add_subplot()
    left = [0] * len(labels)
    for batch in sorted(set(removed.get_column("crawl_batch"))):
        part = removed.filter(pl.col("crawl_batch") == batch)
        counts = {(s, r): n for s, r, n in part.select("stage", "rule", "removed").iter_rows()}
        widths = [counts.get(key, 0) for key in rules.select("stage", "rule").iter_rows()]
        axes.barh(labels, widths, left=left, label=batch)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    axes.set(xlabel="documents removed", title="why documents were removed")
    return _plot("removed_by_rule", axes)


def tokens_plot(sources: dict[str, dict]) -> Plot:
    """Train tokens per source next to the share of training each gets after weighting."""
    names = sorted(sources)
    tokens = [sources[n].get("train_tokens", 0) for n in names]
    total = sum(tokens) or 1
    axes = Figure(figsize=(6, 3.2)).add_subplot()
    positions = range(len(names))
    axes.bar([p - 0.2 for p in positions], [t / total for t in tokens], width=0.4, label="share of tokens")
    axes.bar([p + 0.2 for p in positions], [sources[n].get("weight", 0) for n in names], width=0.4, label="weight")
    for p, t in zip(positions, tokens, strict=True):
        axes.annotate(f"{t:,} tokens", (p - 0.2, t / total), ha="center", va="bottom", fontsize=8)
    axes.set_xticks(list(positions), names)
    axes.set(ylabel="fraction", title="tokens by source and mixture weight", ylim=(0, 1.15))
    return _plot("tokens_by_source", axes)


def loss_plot(curves: dict[str, list[float]]) -> Plot:
    axes = Figure(figsize=(7, 3.6)).add_subplot()
    for label, losses in curves.items():
        axes.plot(range(1, len(losses) + 1), losses, linewidth=1, label=label)
    axes.set(xlabel="step", ylabel="train loss (nats/token)", title="training loss per checkpoint generation")
    axes.grid(alpha=0.3)
    return _plot("loss_curves", axes)


def metrics_plot(results: pl.DataFrame, reference: pl.DataFrame | None = None) -> Plot:
    """Bits-per-byte per eval set over evaluated checkpoints (oldest first), unigram baselines dashed,
    the reference model's score (`eval_set`, `bits_per_byte`, `model`) dotted across."""
    order = results.group_by("evaluation_id").agg(pl.col("evaluated_at").min(), pl.col("checkpoint").first())
    order = order.sort("evaluated_at")
    position = {e: i for i, e in enumerate(order.get_column("evaluation_id"))}
    axes = Figure(figsize=(7, 3.6)).add_subplot()
    reference_scores = dict(reference.select("eval_set", "bits_per_byte").iter_rows()) if reference is not None else {}
    for eval_set in sorted(set(results.get_column("eval_set"))):
        part = results.filter(pl.col("eval_set") == eval_set)
        xs = [position[e] for e in part.get_column("evaluation_id")]
        line = axes.plot(xs, part.get_column("bits_per_byte").to_list(), marker="o", label=eval_set)[0]
        axes.plot(xs, part.get_column("unigram_bits_per_byte").to_list(), linestyle="--", color=line.get_color())
        if eval_set in reference_scores:
            axes.axhline(reference_scores[eval_set], linestyle=":", color=line.get_color())
    labels = [c.replace("/step-", " @") for c in order.get_column("checkpoint")]
    axes.set_xticks(range(len(labels)), labels, rotation=15, fontsize=8)
    title = "evaluation per checkpoint (dashed: unigram baseline"
    if reference is not None and reference.height:
        title += f", dotted: {reference.get_column('model')[0]}"
    axes.set(ylabel="bits per byte (lower is better)", title=title + ")")
    axes.grid(alpha=0.3)
    return _plot("eval_over_checkpoints", axes)
