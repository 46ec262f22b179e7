"""What every figure of a study report shares: paper-size fonts, the SYNTHETIC stamp, PNG + SVG."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PAPER_WIDTH_IN = 7.0  # a two-column paper's full text width
STYLE = {"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7,
         "xtick.labelsize": 7, "ytick.labelsize": 7, "figure.titlesize": 9,
         "svg.hashsalt": "et-harness", "svg.fonttype": "none"}  # fmt: skip
# svg: text kept as text (editable, searchable); the same figure gives the same file
SYNTHETIC_STAMP = "SYNTHETIC DATA"
F = TypeVar("F", bound=Callable)


def styled(draw: F) -> F:
    """Run a plotting function under the report's style (fonts sized for print)."""

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        with plt.rc_context(STYLE):
            return draw(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def figure(rows: int = 1, cols: int = 1, *, height_per_row: float = 2.2, **kwargs):
    """A figure of the paper's width and `rows` x `cols` axes (always a 2-D array)."""
    return plt.subplots(
        rows, cols, squeeze=False, figsize=(PAPER_WIDTH_IN, height_per_row * rows + 0.9),
        **kwargs,
    )  # fmt: skip


def save_figure(
    fig, folder: Path, stem: str, title: str, synthetic: bool, *, legend: bool = True
) -> list[Path]:
    """`folder/stem.png` (150 dpi) and `folder/stem.svg` with `title` on top, under it (with
    `legend`) one legend of every labelled artist of the axes (each label once) and, for
    synthetic data, a red SYNTHETIC DATA stamp in the top right corner; closes the figure."""
    folder.mkdir(parents=True, exist_ok=True)
    height = fig.get_figheight()
    fig.suptitle(title, x=0.01, y=1 - 0.06 / height, ha="left", va="top")
    if synthetic:
        fig.text(0.99, 1 - 0.06 / height, SYNTHETIC_STAMP, ha="right", va="top",
                 color="tab:red", fontsize=8, fontweight="bold")  # fmt: skip
    handles = {}
    for ax in fig.axes if legend else []:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    top = 1 - 0.25 / height
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="upper center", ncol=min(len(handles), 6),
                   frameon=False, bbox_to_anchor=(0.5, top))  # fmt: skip
        top -= 0.22 / height
    fig.tight_layout(rect=(0, 0, 1, top))
    paths = [folder / f"{stem}.png", folder / f"{stem}.svg"]
    fig.savefig(paths[0], dpi=150)
    fig.savefig(paths[1], metadata={"Date": None})
    plt.close(fig)
    return paths
