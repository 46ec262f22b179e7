"""What each knob did in a study's searches: the knob table, accuracy against each knob, the search
history.

Knob table (`knob_table`): for each method and each searched parameter, its levels (a categorical
knob's choices; a numeric knob's values when it took at most `MAX_LEVELS`, else equal-count bins of
the values its trials took), and per level: the trials that used it (`trials`: COMPLETE ones, whose
metric is averaged; `pruned`, `failed`, `unfinished`: still running when an interrupted study
stopped), the mean of the search metric (validation accuracy) with a 95% Student-t interval over
those complete trials, and the knob's importance rank (fANOVA, PED-ANOVA; see
reports/importance.py). Every trial in which the knob applied counts in exactly one level, so
`trials + pruned + failed + unfinished` over a knob's levels is the number of trials that sampled
it.

Search trials are not independent samples: TPE puts later trials where earlier ones scored well, so
a level's mean describes where the search went, not what the level does in general; the intervals
are descriptive, not tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator, NullFormatter
from scipy import stats

from harness.search_space import Parameter
from reports.figures import figure, save_figure, styled
from reports.importance import EVALUATORS, Importance
from reports.study_folder import SEARCH_STATES, Search

MAX_LEVELS = 4  # a numeric knob with more distinct values is binned
BINS = 3
KNOB_NOTE = (
    "Search trials are not independent samples: TPE concentrates later trials where earlier "
    "ones scored well, so these are descriptions of the search, not tests. Mean: of the search "
    "metric over the level's complete trials, with a 95% Student-t interval (none for a single "
    "trial); pruned trials (stopped early by ASHA) and failed ones are counted, not averaged."
)
STATE_STYLE = {  # how each trial state is drawn
    "COMPLETE": {"marker": "o", "color": "tab:blue", "label": "complete"},
    "PRUNED": {"marker": "o", "color": "none", "edgecolors": "tab:orange",
               "label": "pruned (last value)"},
    "FAIL": {"marker": "x", "color": "tab:red", "label": "failed"},
}  # fmt: skip


def _is_numeric(param: Parameter) -> bool:
    return param.spec["type"] != "categorical"


def knob_levels(param: Parameter, values: pd.Series) -> pd.Series:
    """The level label of each trial's value of `param` (NaN where the knob did not apply)."""
    applied = values.dropna()
    if not _is_numeric(param) or applied.nunique() <= MAX_LEVELS:
        return values.map(lambda v: v if pd.isna(v) else _fmt(v))
    bins = pd.qcut(applied.astype(float), BINS, duplicates="drop")
    labels = pd.Series(np.nan, index=values.index, dtype=object)
    labels[applied.index] = [f"[{_fmt(b.left)}, {_fmt(b.right)}]" for b in bins]
    return labels


def _fmt(value) -> str:
    if isinstance(value, float | np.floating) and not float(value).is_integer():
        return f"{value:.3g}"
    return str(int(value)) if isinstance(value, float | np.floating) else str(value)


def _interval(values: np.ndarray) -> tuple[float, float]:
    if len(values) < 2:
        return float("nan"), float("nan")
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean() - half), float(values.mean() + half)


def _level_order(param: Parameter, levels: pd.Series, values: pd.Series) -> list[str]:
    present = list(dict.fromkeys(levels.dropna()))
    if not _is_numeric(param):
        order = [_fmt(c) for c in param.spec["choices"]]
        return [c for c in order if c in present]
    first = {level: float(values[levels == level].min()) for level in present}
    return sorted(present, key=first.get)


def knob_table(
    searches: Mapping[str, Search], importances: Mapping[str, Mapping[str, Importance]]
) -> pd.DataFrame:
    """One row per (method, knob, level), see the module docstring."""
    rows = []
    for method, search in searches.items():
        trials = search.trials
        for param in search.params:
            levels = knob_levels(param, trials[param.path])
            ranks = {e: importances.get(method, {}).get(e) for e in EVALUATORS}
            for level in _level_order(param, levels, trials[param.path]):
                used = trials[levels == level]
                scores = used.loc[used["state"] == "COMPLETE", "value"].to_numpy(float)
                low, high = _interval(scores)
                row = {
                    "method": method, "knob": param.path, "level": level,
                    "trials": len(scores), "pruned": int((used["state"] == "PRUNED").sum()),
                    "failed": int((used["state"] == "FAIL").sum()),
                    "unfinished": int((~used["state"].isin(SEARCH_STATES)).sum()),
                    "mean": float(scores.mean()) if len(scores) else float("nan"),
                    "ci_low": low, "ci_high": high,
                }  # fmt: skip
                for evaluator, imp in ranks.items():
                    row[f"rank_{evaluator}"] = imp.rank(param.path) if imp else None
                rows.append(row)
    columns = ["method", "knob", "level", "trials", "pruned", "failed", "unfinished", "mean",
               "ci_low",
               "ci_high", *(f"rank_{e}" for e in EVALUATORS)]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def _draw_states(ax, x, trials: pd.DataFrame, bottom: float) -> None:
    for state, style in STATE_STYLE.items():
        chosen = (trials["state"] == state).to_numpy()
        if not chosen.any():
            continue
        y = trials["last_value"].to_numpy(float)[chosen] if state != "FAIL" else None
        if y is None:  # failed trials have no score: drawn on the axis' floor
            y = np.full(chosen.sum(), bottom)
        ax.scatter(np.asarray(x)[chosen], y, s=18, linewidths=1.0, zorder=3, **style)


def _bottom(trials: pd.DataFrame) -> tuple[float, float]:
    scores = trials["last_value"].dropna()
    low = float(scores.min()) if len(scores) else 0.0
    high = float(scores.max()) if len(scores) else 1.0
    pad = max(0.05 * (high - low), 0.02)
    return low - 2 * pad, high + pad


def _numeric_axis(ax, param: Parameter) -> None:
    """The knob's whole search range, three labelled ticks (its bounds and middle)."""
    low, high = float(param.spec["low"]), float(param.spec["high"])
    if param.spec.get("log"):
        ax.set_xscale("log")
        ticks = [low, (low * high) ** 0.5, high]
        ax.set_xlim(low / (high / low) ** 0.05, high * (high / low) ** 0.05)
    elif param.spec["type"] == "int" and high - low <= 4:
        ticks = list(range(int(low), int(high) + 1))
        ax.set_xlim(low - 0.3, high + 0.3)
    else:
        ticks = [low, (low + high) / 2, high]
        ax.set_xlim(low - 0.05 * (high - low) - 1e-12, high + 0.05 * (high - low) + 1e-12)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(ticks, [_fmt(t) for t in ticks])


@styled
def plot_knobs(search: Search, metric: str, folder: Path, synthetic: bool) -> list[Path]:
    """knobs_<method>.png|svg: one panel per searched knob, the search metric of each trial
    against the knob's value (categorical knobs: its choices, trials spread a little sideways),
    pruned trials hollow at their last value, failed ones as red crosses on the floor, the best
    trial starred; a knob that did not apply to a trial leaves it out of that panel."""
    params, trials = search.params, search.trials
    cols = min(4, max(len(params), 1))
    rows = max(1, -(-len(params) // cols))
    fig, axes = figure(rows, cols, height_per_row=1.9, sharey=True)
    ylim = _bottom(trials)
    best = trials.loc[trials["value"].idxmax()] if trials["value"].notna().any() else None
    for ax, param in zip(axes.flat, params):
        used = trials[trials[param.path].notna()]
        values = used[param.path]
        if _is_numeric(param):
            x = values.astype(float).to_numpy()
            _numeric_axis(ax, param)
        else:
            choices = [_fmt(c) for c in param.spec["choices"]]
            spread = ((used["number"].to_numpy() * 0.618) % 1 - 0.5) * 0.3  # fixed, no overlap
            x = np.array([choices.index(_fmt(v)) for v in values], dtype=float) + spread
            ax.set_xticks(range(len(choices)), choices, rotation=30, ha="right",
                          rotation_mode="anchor")  # fmt: skip
            ax.set_xlim(-0.5, len(choices) - 0.5)
        _draw_states(ax, x, used, ylim[0] + 0.01)
        if best is not None and pd.notna(best[param.path]):
            j = list(used.index).index(best.name)
            ax.scatter([x[j]], [best["value"]], marker="*", s=110, color="tab:green", zorder=4,
                       label="best")  # fmt: skip
        skipped = len(trials) - len(used)
        ax.set_title(param.path + (f" (n/a: {skipped})" if skipped else ""))
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(params) :]:
        ax.set_axis_off()
    for row in axes:
        row[0].set_ylabel(metric)
    axes[0][0].set_ylim(*ylim)
    title = f"{search.method}: {metric} of each search trial against each knob"
    return save_figure(fig, folder, f"knobs_{search.method}", title, synthetic)


@styled
def plot_history(searches: Mapping[str, Search], metric: str, folder: Path,
                 synthetic: bool) -> list[Path]:  # fmt: skip
    """history.png|svg: a row per method; each trial's metric by trial order (left) and by the
    time it ended (right, minutes since the study's first trial started), with the best so far
    as a step line (complete trials only)."""
    methods = list(searches)
    fig, axes = figure(len(methods), 2, height_per_row=1.8, sharey="row")
    for i, method in enumerate(methods):
        trials = searches[method].trials
        ylim = _bottom(trials)
        panels = ((axes[i][0], "number", "trial (order started)"),
                  (axes[i][1], "end_s", "minutes since the study started"))  # fmt: skip
        for ax, column, label in panels:
            x = trials[column].to_numpy(float) / (60 if column == "end_s" else 1)
            if column == "end_s":  # failed or running trials without an end: their start
                x = np.where(np.isnan(x), trials["start_s"].to_numpy(float) / 60, x)
            _draw_states(ax, x, trials, ylim[0] + 0.01)
            complete = np.flatnonzero((trials["state"] == "COMPLETE").to_numpy())
            if len(complete):
                order = complete[np.argsort(x[complete], kind="stable")]
                best = np.maximum.accumulate(trials["value"].to_numpy(float)[order])
                ax.step(x[order], best, where="post", color="tab:green", label="best so far")
            if column == "number":
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if not trials["state"].isin(SEARCH_STATES).any():
                ax.text(0.5, 0.5, "no finished trial yet", ha="center", va="center",
                        transform=ax.transAxes)  # fmt: skip
            ax.set_ylim(*ylim)
            ax.set_xlabel(label)
            ax.grid(alpha=0.3)
        axes[i][0].set_ylabel(f"{method}\n{metric}")
    return save_figure(fig, folder, "history", f"Search history: {metric} of each trial",
                       synthetic)  # fmt: skip
