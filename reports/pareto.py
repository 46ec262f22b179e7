"""The Pareto front of a two-objective search (validation accuracy against the faithfulness of the
trial's explainer, the validation occlusion gap) and the member the final stage re-trains.

A trial is on the front when no other trial is at least as good on both objectives and better on
one (both maximised). The chosen member is the front's knee: each objective is min-max scaled over
the front to [0, 1] and the member nearest the ideal corner (1, 1) wins (ties: the higher first
objective). A front of one is that member; otherwise the knee trades a little of one objective for
much of the other instead of taking an extreme of the front (the front's best accuracy is what
`sweep.objective=accuracy` would pick).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def pareto_mask(points: np.ndarray) -> np.ndarray:
    """bool [n]: the rows of `points` [n, k] (every column maximised) no other row dominates."""
    points = np.asarray(points, dtype=float)
    at_least = (points[:, None, :] <= points[None, :, :]).all(-1)  # [i, j]: j >= i everywhere
    better = (points[:, None, :] < points[None, :, :]).any(-1)  # [i, j]: j > i somewhere
    return ~(at_least & better).any(1)


def knee(points: np.ndarray, mask: np.ndarray) -> int:
    """Row index of the front member (`mask`) nearest (1, 1) after min-max scaling each objective
    over the front; ties go to the higher first objective."""
    points = np.asarray(points, dtype=float)
    front = np.flatnonzero(mask)
    values = points[front]
    low, high = values.min(0), values.max(0)
    scaled = (values - low) / np.where(high > low, high - low, 1.0)
    distance = np.round(np.linalg.norm(1.0 - scaled, axis=1), 12)
    return int(front[np.lexsort((-values[:, 0], distance))[0]])


def pareto_table(
    trials: Sequence[Mapping[str, Any]], objectives: Sequence[str], signs: Sequence[float]
) -> tuple[pd.DataFrame, int]:
    """One row per trial (`trials`: dicts with "trial", the `objectives` and any parameters), with
    `on_front` and `chosen` (the knee) of the objectives times `signs` (1 maximised, -1
    minimised), best first objective first; and the chosen row's position in `trials`."""
    table = pd.DataFrame(list(trials))
    points = table[list(objectives)].to_numpy(dtype=float) * np.asarray(signs, dtype=float)
    mask = pareto_mask(points)
    chosen = knee(points, mask)
    table.insert(1, "on_front", mask)
    table.insert(2, "chosen", np.arange(len(table)) == chosen)
    order = np.lexsort(points.T[::-1])[::-1]  # best first objective, then second, first
    return table.iloc[order].reset_index(drop=True), chosen


def write_pareto(
    table: pd.DataFrame,
    folder: Path,
    method: str,
    objectives: Sequence[str],
    title: str,
    synthetic: bool,
) -> dict[str, Path]:
    """pareto_<method>.csv, .md (the title, the rule, the table) and .png (every trial, the front
    as a staircase, the chosen member starred); labelled SYNTHETIC (title, `synthetic` column)
    when the data is."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {ext: folder / f"pareto_{method}.{ext}" for ext in ("csv", "md", "png")}
    title += " (SYNTHETIC DATA)" if synthetic else ""
    table.assign(synthetic=synthetic).to_csv(paths["csv"], index=False)
    x, y = objectives
    rule = (
        f"Pareto front of the search over ({x}, {y}): a trial is on the front when no other "
        "trial is at least as good on both and better on one. `chosen`: the "
        "front's knee (each objective min-max scaled over the front, nearest to (1, 1)), the "
        "configuration the final stage re-trains. Trials stopped early or failed are not listed."
    )
    shown = table.map(lambda v: f"{v:.4g}" if isinstance(v, float) else v)
    paths["md"].write_text(f"# {title}\n\n{rule}\n\n{shown.to_markdown(index=False)}\n")
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    ax.scatter(table[x], table[y], color="0.6", label="trials")
    front = table[table["on_front"]].sort_values(x)
    ax.step(front[x], front[y], where="pre", color="tab:blue", alpha=0.6)
    ax.scatter(front[x], front[y], color="tab:blue", label="Pareto front")
    best = table[table["chosen"]]
    ax.scatter(best[x], best[y], marker="*", s=220, color="tab:red", label="chosen (knee)")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(paths["png"], dpi=100)
    plt.close(fig)
    return paths
