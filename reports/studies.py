"""Several studies side by side: an ablation of the study's settings (e.g. ET searched over one
crop policy against ET searched over the others, each at several sampler seeds).

`studies_table` puts every arm of every study in one table: the study's folder name, the settings
in which the studies differ (found by comparing their composed configs, so nothing is typed by
hand), the arm's test accuracy with its interval (the study's own comparison.csv), and its paired
difference to the same arm of the first study with a 95% interval and a permutation p-value
(harness/evaluate/statistics.py), over the clips and seed positions both studies tested: the final
stage re-trains on the same seeds (`final.first_seed`) and tests on the same split, so the
difference is paired wherever the two studies' predictions cover the same clips and seeds (else
"not paired"). The differences are not Holm-corrected: they are the reader's to weigh, with the
search's variance in view (the selection of a 4-trial search moves with the sampler seed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from harness.evaluate.statistics import paired_bootstrap_difference, paired_permutation_p
from harness.study_state import flat_config
from reports.comparison import correct_matrix
from reports.study_folder import StudyFolder

#: config keys that say where a study writes, not what it measures
PLACES = ("study.output_dir", "study.name", "study.restart", "mlflow.", "sweep.optuna_storage",
          "data.cache_dir", "ray.")  # fmt: skip


def _node(config: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(config, dict) or part not in config:
            return None
        config = config[part]
    return config


def _shown(value: Any) -> str:
    """A setting as the table shows it: a mapping in YAML's flow style on one line."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_shown(v)}" for k, v in value.items()) + "}"
    return "—" if value is None else str(value)


def differing_settings(studies: Sequence[StudyFolder]) -> dict[str, list[str]]:
    """Each config key (dotted) whose value is not the same in every study (where a study writes
    left out) -> its value in each study; a key some studies lack entirely is shown as the
    shallowest node they lack (e.g. a knob added to one study's search space), '—' where absent."""
    configs = [s.config for s in studies]
    flats = [{k: str(v) for k, v in flat_config(c).items()} for c in configs]
    keys = sorted({k for f in flats for k in f if not k.startswith(PLACES)})
    shown: dict[str, list[str]] = {}
    for key in keys:
        if len({f.get(key, "—") for f in flats}) == 1:
            continue
        parts = key.split(".")
        node = next((".".join(parts[:n]) for n in range(1, len(parts) + 1)
                     if any(_node(c, ".".join(parts[:n])) is None for c in configs)), key)
        shown.setdefault(node, [_shown(_node(c, node)) for c in configs])
    return shown


def _correct(study: StudyFolder, arm: str) -> tuple[np.ndarray, np.ndarray, list[int]] | None:
    """The arm's [seeds, clips] correctness matrix, its clip rows and seeds, or None."""
    predictions = study.tables.get("predictions")
    if predictions is None or not len(predictions):
        return None
    rows = predictions[predictions["method"] == arm]
    by_seed = {int(seed): part for seed, part in rows.groupby("seed")}
    if not by_seed:
        return None
    matrix = correct_matrix(by_seed)
    return matrix, np.sort(by_seed[min(by_seed)]["row"].to_numpy()), sorted(by_seed)


def _interval(mean: float, low: float, high: float, signed: bool = False) -> str:
    text = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    return f"{text} [{low:.3f}, {high:.3f}]"


def studies_table(studies: Sequence[StudyFolder], *, seed: int = 0) -> pd.DataFrame:
    """One row per study and arm (see the module docstring), formatted for Markdown."""
    if not studies:
        raise ValueError("studies_table needs at least one study")
    settings = differing_settings(studies)
    first = studies[0]
    rows = []
    for i, study in enumerate(studies):
        table = study.tables.get("comparison")
        if table is None or not len(table):
            raise ValueError(f"{study.folder}: no report/comparison.csv (its final stage has "
                             "not finished)")  # fmt: skip
        for arm in table.itertuples():
            row: dict[str, Any] = {"study": study.folder.name}
            row.update({key: values[i] for key, values in settings.items()})
            row["arm"] = arm.method
            row["test acc [95% CI]"] = _interval(arm.test_acc_mean, arm.test_acc_low,
                                                 arm.test_acc_high)  # fmt: skip
            row["seeds"] = int(arm.seeds)
            row[f"Δ vs {first.folder.name} [95% CI]"], row["p"] = _versus(
                study, first, arm.method, seed)
            row["best val acc"] = "—" if arm.best_val_acc != arm.best_val_acc else (
                f"{arm.best_val_acc:.3f}")  # fmt: skip
            row["best params"] = arm.best_params if isinstance(arm.best_params, str) else "—"
            rows.append(row)
    return pd.DataFrame(rows)


def _versus(study: StudyFolder, first: StudyFolder, arm: str, seed: int) -> tuple[str, str]:
    """The arm's paired difference to the same arm of `first`, and its p-value, as shown."""
    if study is first:
        return "—", "—"
    a, b = _correct(study, arm), _correct(first, arm)
    if a is None or b is None or not np.array_equal(a[1], b[1]) or a[2] != b[2]:
        return "not paired", "—"
    difference = paired_bootstrap_difference(a[0], b[0], seed=seed)
    p = paired_permutation_p(a[0], b[0], seed=seed)
    shown = "< 0.001" if p < 0.001 else f"{p:.3g}"
    return _interval(difference.estimate, difference.low, difference.high, signed=True), shown


STUDIES_NOTE = (
    "One row per study and arm; the columns after `study` are the settings in which the studies "
    "differ (from their composed configs). test acc: the study's own (comparison.csv: pooled "
    "over the final seeds and test clips, 95% bootstrap interval over both). Δ: the paired "
    "difference to the same arm of the first study (same final seeds and test clips; paired "
    "bootstrap interval, sign-flip permutation p over clips, not corrected for the several "
    "comparisons). Each study's search is its own: the intervals do not cover which "
    "configuration another sampler seed or budget would have selected, except as far as the "
    "rows at several sampler seeds show it."
)
