"""Per-class trends of explanations (see `harness.evaluate.trends`): tables and a figure.

`trend_table` makes one explainer's table (one row per class: its clips, its share of relevance per
region of the frame, per frame); `write_trends` writes the tables of several explainers as one
Markdown file and one CSV; `plot_class_trends` draws one explainer's class-mean maps (one row per
class: the mean map of each frame as a heatmap, then a bar chart of the frame shares).
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from harness.evaluate.trends import frame_shares, region_names, region_shares  # noqa: E402

SYNTHETIC_NOTE = "SYNTHETIC DATA: built-in generator, not a real dataset."


def frame_column(t: int) -> str:
    return f"frame_{t + 1}"


def trend_table(
    maps: torch.Tensor,
    class_names: Sequence[str],
    counts: Sequence[int],
    regions: tuple[int, int] = (2, 2),
) -> pd.DataFrame:
    """One row per class: `class`, `clips`, the share per region (columns named by
    `region_names`, e.g. top-left), the share per frame (`frame_1`, ...)."""
    by_region = region_shares(maps.double(), regions).numpy()
    by_frame = frame_shares(maps.double()).numpy()
    table = pd.DataFrame({"class": list(class_names), "clips": [int(c) for c in counts]})
    for j, name in enumerate(region_names(regions)):
        table[name] = by_region[:, j]
    for t in range(by_frame.shape[1]):
        table[frame_column(t)] = by_frame[:, t]
    return table


def _markdown(table: pd.DataFrame, columns: list[str], rename: Mapping[str, str]) -> str:
    shown = table[["class", "clips", *columns]].rename(columns=dict(rename))
    return shown.to_markdown(index=False, floatfmt=".3f")


def write_trends(
    tables: Mapping[str, pd.DataFrame],
    folder: Path,
    title: str,
    *,
    synthetic: bool,
    notes: Mapping[str, str] | None = None,
    stem: str = "trends",
) -> dict[str, Path]:
    """`<stem>.md` (per explainer: a class x region table and a class x frame table) and
    `<stem>.csv` (the tables stacked, with `explainer` and `synthetic` columns)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", ""]
    if synthetic:
        lines += [f"**{SYNTHETIC_NOTE}**", ""]
    lines += [f"- {k}: {v}" for k, v in (notes or {}).items()]
    lines += [
        "",
        "Each clip's map is normalised to sum 1 (negative relevance clipped to 0), then the clips "
        "of each class are averaged; shares are of that class-mean map (rows sum to 1). Regions: "
        "a grid over the frame's patch grid, a patch belonging to the region holding its centre.",
        "",
    ]
    for explainer, table in tables.items():
        frames = [c for c in table.columns if c.startswith("frame_")]
        regions = [c for c in table.columns if c not in ("class", "clips", *frames)]
        lines += [f"## {explainer}", "", "Share of relevance per region:", ""]
        lines += [_markdown(table, regions, {}), "", "Share of relevance per frame:", ""]
        rename = {c: c.replace("frame_", "frame ") for c in frames}
        lines += [_markdown(table, frames, rename), ""]
    paths = {"md": folder / f"{stem}.md", "csv": folder / f"{stem}.csv"}
    paths["md"].write_text("\n".join(lines))
    stacked = pd.concat(
        [table.assign(explainer=name, synthetic=synthetic) for name, table in tables.items()],
        ignore_index=True,
    )
    first = ["explainer", "class", "clips"]
    stacked = stacked[first + [c for c in stacked.columns if c not in first]]
    stacked.to_csv(paths["csv"], index=False)
    return paths


def _strip(frames: np.ndarray) -> np.ndarray:
    """[T, h, w] -> [h, T * (w + 1) - 1]: the frames side by side, NaN columns between them."""
    T, h, w = frames.shape
    strip = np.full((h, T * (w + 1) - 1), np.nan)
    for t in range(T):
        strip[:, t * (w + 1) : t * (w + 1) + w] = frames[t]
    return strip


def plot_class_trends(
    maps: torch.Tensor,
    class_names: Sequence[str],
    path: Path,
    title: str = "",
    counts: Sequence[int] | None = None,
) -> Path:
    """One row per class: the class-mean map [T, h, w] of each frame as a heatmap, frames side by
    side (one colour scale for the whole figure, so classes and frames compare), then a bar chart
    of its frame shares (dashed: uniform)."""
    K, T, h, w = maps.shape
    values = maps.double().numpy()
    finite = values[np.isfinite(values)]
    vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    shares = frame_shares(maps.double()).numpy()
    top = float(np.nanmax(shares)) if np.isfinite(shares).any() else 0.0
    strip_width = T * (w + 1) / max(h, 1)  # aspect of a row's heatmap strip
    fig, axes = plt.subplots(
        K, 2, squeeze=False, figsize=(min(1.0 * strip_width + 3.2, 16), 1.1 * K + 0.8),
        gridspec_kw={"width_ratios": [strip_width, 1.6]},
    )  # fmt: skip
    cmap = plt.get_cmap("magma").with_extremes(bad="white")
    image = None
    centres = [t * (w + 1) + (w - 1) / 2 for t in range(T)]
    for k in range(K):
        ax = axes[k][0]
        image = ax.imshow(_strip(values[k]), cmap=cmap, vmin=0, vmax=vmax)
        ax.set_yticks([])
        ax.set_xticks(centres if k == K - 1 else [])
        ax.set_xticklabels([str(t + 1) for t in range(T)] if k == K - 1 else [], fontsize=6)
        label = textwrap.fill(class_names[k].replace("_", " "), 14)
        label += f"\n({counts[k]} clips)" if counts is not None else ""
        ax.set_ylabel(label, fontsize=7)
        bar = axes[k][1]
        bar.bar(np.arange(1, T + 1), shares[k], color="tab:blue")
        bar.axhline(1 / T, color="0.4", linewidth=0.8, linestyle="--")
        bar.set_ylim(0, max(top, 1 / T) * 1.15)
        bar.set_xticks(np.arange(1, T + 1))
        bar.tick_params(labelsize=6)
    axes[K - 1][0].set_xlabel("frame (class-mean share of relevance per patch)", fontsize=7)
    axes[K - 1][1].set_xlabel("frame", fontsize=7)
    axes[0][1].set_title("frame shares (-- uniform)", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=0.1, right=0.88, top=1 - 0.45 / fig.get_figheight(), bottom=0.12,
                        wspace=0.15, hspace=0.25)  # fmt: skip
    if image is not None:
        colourbar = fig.colorbar(image, cax=fig.add_axes([0.9, 0.15, 0.015, 0.7]))
        colourbar.ax.tick_params(labelsize=6)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
