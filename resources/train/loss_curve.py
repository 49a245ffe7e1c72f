"""The loss curve as a picture: a PNG in every checkpoint, and inline Markdown for the asset's metadata."""

from __future__ import annotations

import base64
from pathlib import Path

from matplotlib.figure import Figure


def plot_losses(losses: list[float], path: Path, title: str) -> None:
    """The loss curve as a PNG, drawn on a bare Figure (Agg canvas, no pyplot global state)."""
    figure = Figure(figsize=(6, 3.5), dpi=100)
    axes = figure.add_subplot()
    axes.plot(range(1, len(losses) + 1), losses, linewidth=1)
    axes.set(xlabel="step", ylabel="train loss", title=title)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)


def loss_curve_markdown(png: Path) -> str:
    """The PNG embedded as a data URL (empty when there is none): the UI shows it without a file server."""
    if not png.exists():
        return ""
    return f"![loss curve](data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()})"
