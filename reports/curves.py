"""Occlusion (deletion) curves of several explainers in one figure: MoRF and LeRF side by side.

Standalone: takes any mapping name -> curve with `levels` and `morf_accuracy`/`lerf_accuracy` (or
`morf_probability`/`lerf_probability`) lists, e.g. `harness.evaluate.occlusion.OcclusionCurve`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

if TYPE_CHECKING:
    from harness.evaluate.occlusion import OcclusionCurve

BASELINES = frozenset({"random"})  # drawn dashed and grey-ish: the chance floor


def _auc(levels: list[float], values: list[float]) -> float:
    if len(levels) < 2:
        return float(values[0]) if values else float("nan")
    area = sum((x1 - x0) * (y0 + y1) / 2
               for x0, x1, y0, y1 in zip(levels, levels[1:], values, values[1:]))  # fmt: skip
    return area / (levels[-1] - levels[0])


def draw_occlusion_curves(
    axes,
    curves: Mapping[str, OcclusionCurve],
    *,
    metric: str = "accuracy",
    colours: Mapping[str, int] | None = None,
    legend: bool = True,
) -> None:
    """Draw `curves` on a pair of axes, MoRF (axes[0]) and LeRF (axes[1]): `metric` ("accuracy"
    or "probability", the target-class probability) against the share of tokens occluded; one
    line per curve, labelled with its area under the curve; `random` dashed. `colours`: curve
    name -> tab10 index (default: the curve's position)."""
    if metric not in ("accuracy", "probability"):
        raise ValueError(f"metric must be 'accuracy' or 'probability', got {metric!r}")
    palette = plt.get_cmap("tab10")
    for ax, direction, caption in (
        (axes[0], "morf", "MoRF: most relevant occluded first (lower = more faithful)"),
        (axes[1], "lerf", "LeRF: least relevant occluded first (higher = more faithful)"),
    ):
        for i, (name, curve) in enumerate(curves.items()):
            levels = [float(x) for x in curve.levels]
            values = list(getattr(curve, f"{direction}_{metric}"))
            baseline = name in BASELINES
            colour = (colours or {}).get(name, i)
            ax.plot(
                levels, values,
                linestyle="--" if baseline else "-",
                color="0.35" if baseline else palette(colour % 10),
                marker="" if baseline else ".",
                linewidth=1.8 if baseline else 1.3,
                label=f"{name} (AUC {_auc(levels, values):.3f})",
            )  # fmt: skip
        ax.set_title(caption, fontsize=9)
        ax.set_xlabel("share of tokens occluded")
        ax.grid(alpha=0.3)
        if legend:
            ax.legend(fontsize=7, loc="best")
    axes[0].set_ylabel("accuracy" if metric == "accuracy" else "target-class probability")
    axes[0].set_ylim(-0.02, 1.02)
    axes[1].set_ylim(-0.02, 1.02)


def plot_occlusion_curves(
    curves: Mapping[str, OcclusionCurve],
    path: Path | str,
    title: str = "",
    *,
    metric: str = "accuracy",
) -> Path:
    """PNG with the two panels of `draw_occlusion_curves` (MoRF left, LeRF right)."""
    path = Path(path)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    draw_occlusion_curves(axes, curves, metric=metric)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
