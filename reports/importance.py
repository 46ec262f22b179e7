"""Hyperparameter importance of each method's search, from its Optuna study (`optuna.importance`).

Two evaluators, since they answer different questions:
- fANOVA (Hutter, Hoos, Leyton-Brown, ICML 2014): the share of the variance of the objective, over
  the searched space, that each parameter explains (a random forest fitted to the trials,
  functional ANOVA on it);
- PED-ANOVA (Watanabe, Bansal, Hutter, IJCAI 2023): how much each parameter's distribution among
  the top trials (`target_quantile`) differs from its distribution among all trials: what
  mattered to reach the best results the search found.

Both see only COMPLETE trials and only parameters every one of them sampled (Optuna's intersection
search space): a conditional knob (K and heads apply to Rollout-FEM only) drops out unless every
complete trial used it. Too few trials give no importance, said in `note` rather than raised.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reports.figures import figure, save_figure, styled
from reports.study_folder import Search

EVALUATORS = ("fANOVA", "PED-ANOVA")
MIN_COMPLETE = 3  # fewer complete trials: no importance (a forest / a top quantile of 1-2 trials)


@dataclass
class Importance:
    method: str
    evaluator: str
    values: dict[str, float] = field(default_factory=dict)  # dotted parameter -> importance
    note: str = ""  # why there are none, or what was left out

    def rank(self, param: str) -> int | None:
        order = sorted(self.values, key=lambda p: (-self.values[p], p))
        return order.index(param) + 1 if param in order else None


def _evaluator(name: str, complete: int):
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator

    if name == "fANOVA":
        return FanovaImportanceEvaluator(seed=0)
    # the top 10% by default; at least 2 trials of a small search
    return PedAnovaImportanceEvaluator(target_quantile=max(0.1, 2 / complete))


def param_importances(search: Search, evaluator: str) -> Importance:
    """`evaluator` ("fANOVA" or "PED-ANOVA") importances of `search`, normalised to sum 1."""
    import optuna

    result = Importance(search.method, evaluator)
    complete = len(search.complete)
    if search.study is None or not len(search.trials):
        result.note = "no trial yet (the search has not started)"
        return result
    if complete < MIN_COMPLETE:
        result.note = (f"{complete} complete trial(s): importance needs at least {MIN_COMPLETE} "
                       "(run more trials, sweep.num_samples)")  # fmt: skip
        return result
    multi = len(search.study.directions) > 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experimental-API and constant-objective warnings
            values = optuna.importance.get_param_importances(
                search.study, evaluator=_evaluator(evaluator, complete),
                target=(lambda t: t.values[0]) if multi else None,
            )  # fmt: skip
    except (RuntimeError, ValueError, ZeroDivisionError) as error:
        result.note = f"{evaluator} could not be computed: {error}"
        return result
    result.values = {name.replace("/", "."): float(v) for name, v in values.items()}
    left_out = [p.path for p in search.params if p.path not in result.values]
    if not result.values:
        result.note = "no parameter was sampled by every complete trial"
    elif left_out:
        result.note = f"not sampled by every complete trial, left out: {', '.join(left_out)}"
    if result.values and not np.isfinite(list(result.values.values())).all():
        result.values, result.note = {}, "the objective did not vary over the complete trials"
    return result


def study_importances(searches: dict[str, Search]) -> dict[str, dict[str, Importance]]:
    """method -> evaluator -> Importance."""
    return {m: {e: param_importances(s, e) for e in EVALUATORS} for m, s in searches.items()}


@styled
def plot_importances(
    importances: dict[str, dict[str, Importance]], folder: Path, synthetic: bool
) -> list[Path]:
    """importance.png|svg: a row per method, a column per evaluator, one bar per parameter (the
    same parameter order in a row), the reason written in the panel where there is none."""
    methods = list(importances)
    fig, axes = figure(len(methods), len(EVALUATORS), height_per_row=1.9)
    for i, method in enumerate(methods):
        names = sorted({p for imp in importances[method].values() for p in imp.values},
                       key=lambda p: -importances[method]["fANOVA"].values.get(p, 0.0))  # fmt: skip
        for j, evaluator in enumerate(EVALUATORS):
            ax, imp = axes[i][j], importances[method][evaluator]
            ax.set_title(f"{method}: {evaluator}")
            if not imp.values:
                ax.text(0.5, 0.5, imp.note, ha="center", va="center", wrap=True, fontsize=7,
                        transform=ax.transAxes)  # fmt: skip
                ax.set_axis_off()
                continue
            y = np.arange(len(names))
            ax.barh(y, [imp.values.get(p, 0.0) for p in names], color="tab:blue")
            ax.set_yticks(y, names)
            ax.invert_yaxis()
            ax.set_xlim(0, 1)
            ax.set_xlabel("importance (sums to 1)")
            ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, folder, "importance", "Hyperparameter importance of each search "
                       "(Optuna; complete trials only)", synthetic)  # fmt: skip
