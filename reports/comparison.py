"""The study's comparison tables, one row per method or arm, written as Markdown, LaTeX and CSV
and labelled SYNTHETIC when the data is.

``comparison.csv`` (one row per arm: the methods, and the control ``et (random relevance)``):
``method, data, synthetic, seeds, test_clips``; ``test_acc_mean`` (over seeds and test clips),
``test_acc_low`` / ``test_acc_high`` (95% bootstrap interval over seeds and clips),
``test_acc_std`` (over seeds); versus the baseline (vanilla) ``diff_vs_vanilla`` with
``diff_low`` / ``diff_high`` (paired bootstrap), ``p_vs_vanilla`` (paired permutation test) and
``p_holm`` (Holm over the table's comparisons; harness/evaluate/statistics.py); the occlusion
test of the arm's own pipeline and explainer (``occ_*``, means over seeds); the like-for-like
faithfulness gap of each explainer (``ff_<explainer>_gap``); the search (``trials``,
``failed_trials``, ``best_val_acc``, ``best_params``).

``faithfulness.csv`` (one row per arm and explainer, means over seeds): ``method, explainer,
seeds, clean_accuracy, morf_auc, lerf_auc, gap, gap_rel, distinct_<input>, tokens_<input>`` and,
on synthetic data, ``energy_<input>, hit_<input>`` (see harness.evaluate.faithfulness_table).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.evaluate.statistics import (
    bootstrap_accuracy,
    holm,
    paired_bootstrap_difference,
    paired_permutation_p,
)

_SKIPPED_SHOWN = 50  # skipped files listed in comparison.md (all of them in skipped_files.csv)
OCCLUSION_COLUMNS = (
    "occ_morf_auc",
    "occ_lerf_auc",
    "occ_gap",
    "occ_seed_morf_acc",
    "occ_seed_lerf_acc",
)
FAITHFULNESS_SHOWN = {  # faithfulness.csv column -> its heading in comparison.md
    "clean_accuracy": "clean acc",
    "morf_auc": "MoRF AUC ↓",
    "lerf_auc": "LeRF AUC ↑",
    "gap": "gap ↑",
    "gap_rel": "gap / clean acc ↑",
    "energy_video": "energy in actor ↑",
    "hit_video": "pointing hit ↑",
    "energy_signal": "energy in event ↑",
    "hit_signal": "pointing hit (signal) ↑",
}
STATISTICS_NOTE = (
    "Test accuracy: the configuration each method's search selected (on validation only) "
    "re-trained on each final seed (disjoint from the search's seed) and evaluated on the test "
    "split, pooled over seeds and test clips; [low, high]: 95% percentile interval of a bootstrap "
    "that resamples both the seeds and the test clips. Δ vs {baseline}: the paired difference "
    "(same clips, seed positions paired) with its paired bootstrap interval; p: two-sided paired "
    "permutation test (signs of each clip's mean difference flipped), Holm-corrected over the "
    "{family} comparison(s) of this table. p holds the trained models fixed (it flips clips, "
    "not seeds): with few seeds it can be small while the interval, which also resamples the "
    "seeds, covers 0; then the difference holds on these seeds' models, not across training "
    "runs. The intervals cover the variation of training seeds "
    "and of the test sample; they do not cover the search's own variance (which configuration "
    "another search budget or sampler seed would have selected), nor any dataset but this one."
)


@dataclass
class MethodSummary:
    """What the study learnt about one method (or a control arm of the final stage)."""

    method: str
    trials: int
    failed_trials: int
    best_val_accuracy: float
    best_params: dict[str, Any]
    final_runs: list[dict[str, float]] = field(default_factory=list)  # one per seed, with "seed"
    failures: list[tuple[str, str]] = field(default_factory=list)  # (trial, reason)
    # per final seed: the test predictions (row, label, predicted, prob_*) and the like-for-like
    # faithfulness table (one row per explainer), when the runs saved them
    predictions: dict[int, pd.DataFrame] = field(default_factory=dict)
    faithfulness: dict[int, pd.DataFrame] = field(default_factory=dict)


def correct_matrix(predictions: Mapping[int, pd.DataFrame]) -> np.ndarray | None:
    """float [seeds, clips] (seeds ascending, clips by dataset row): 1 where right, else 0;
    None without predictions. Every seed must cover the same clips."""
    if not predictions:
        return None
    frames = [predictions[seed].sort_values("row") for seed in sorted(predictions)]
    rows = frames[0]["row"].to_numpy()
    if any(not np.array_equal(f["row"].to_numpy(), rows) for f in frames):
        raise ValueError("the final runs' predictions cover different test clips")
    return np.stack([(f["predicted"] == f["label"]).to_numpy(dtype=float) for f in frames])


def _accuracy_columns(
    summary: MethodSummary, baseline: MethodSummary | None, name: str, seed: int
) -> dict[str, float]:
    columns = dict.fromkeys(
        ("test_clips", "test_acc_low", "test_acc_high", f"diff_vs_{name}", "diff_low",
         "diff_high", f"p_vs_{name}"), float("nan"),
    )  # fmt: skip
    correct = correct_matrix(summary.predictions)
    if correct is None:
        return columns
    interval = bootstrap_accuracy(correct, seed=seed)
    columns.update(test_clips=correct.shape[1], test_acc_low=interval.low,
                   test_acc_high=interval.high)  # fmt: skip
    if baseline is None or baseline is summary or not baseline.predictions:
        return columns
    seeds = min(len(summary.predictions), len(baseline.predictions))  # seed positions paired
    other = correct_matrix(baseline.predictions)
    a, b = correct[:seeds], other[:seeds]
    difference = paired_bootstrap_difference(a, b, seed=seed)
    columns.update({
        f"diff_vs_{baseline.method}": difference.estimate, "diff_low": difference.low,
        "diff_high": difference.high,
        f"p_vs_{baseline.method}": paired_permutation_p(a, b, seed=seed),
    })  # fmt: skip
    return columns


def faithfulness_summary(summaries: Sequence[MethodSummary]) -> pd.DataFrame:
    """One row per (arm, explainer): the means over seeds of its like-for-like faithfulness."""
    frames = [
        table.assign(method=s.method, seed=seed)
        for s in summaries
        for seed, table in s.faithfulness.items()
    ]
    if not frames:
        return pd.DataFrame(columns=["method", "explainer", "seeds"])
    every = pd.concat(frames, ignore_index=True)
    order = {name: i for i, name in enumerate(dict.fromkeys(every["explainer"]))}
    numbers = every.drop(columns=["seed"]).groupby(["method", "explainer"], sort=False)
    table = numbers.mean(numeric_only=True).reset_index()
    table.insert(2, "seeds", numbers.size().to_numpy())
    methods = {s.method: i for i, s in enumerate(summaries)}
    key = table["method"].map(methods) * 1000 + table["explainer"].map(order)
    return table.iloc[np.argsort(key.to_numpy(), kind="stable")].reset_index(drop=True)


def comparison_table(
    summaries: Sequence[MethodSummary],
    data_name: str,
    synthetic: bool,
    baseline: str = "vanilla",
    *,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per summary (see the module docstring); bootstrap and permutation draws come from
    generators seeded with `seed`."""
    base = next((s for s in summaries if s.method == baseline), None)
    faithfulness = faithfulness_summary(summaries)
    rows = []
    for s in summaries:
        acc = np.array([r["test_accuracy"] for r in s.final_runs], dtype=float)
        row = {
            "method": s.method,
            "data": data_name,
            "synthetic": synthetic,
            "test_acc_mean": acc.mean() if acc.size else float("nan"),
            "test_acc_std": acc.std(ddof=1) if acc.size > 1 else float("nan"),
            "seeds": int(acc.size),
            **_accuracy_columns(s, base, baseline, seed),
        }
        for column in OCCLUSION_COLUMNS:
            values = [r[column] for r in s.final_runs if column in r]
            row[column] = float(np.mean(values)) if values else float("nan")
        mine = faithfulness[faithfulness["method"] == s.method]
        for explainer, gap in zip(mine["explainer"], mine.get("gap", []), strict=False):
            if gap == gap:
                row[f"ff_{explainer}_gap"] = gap
        row.update(
            trials=s.trials, failed_trials=s.failed_trials, best_val_acc=s.best_val_accuracy,
            best_params=", ".join(f"{k}={_short(v)}" for k, v in s.best_params.items()),
        )  # fmt: skip
        rows.append(row)
    table = pd.DataFrame(rows)
    p_values = table[f"p_vs_{baseline}"].tolist()
    table.insert(table.columns.get_loc(f"p_vs_{baseline}") + 1, "p_holm", holm(p_values))
    return table


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _number(value: float, digits: int = 3) -> str:
    return "—" if value != value else f"{value:.{digits}f}"


def _with_interval(value: float, low: float, high: float, signed: bool = False) -> str:
    if value != value:
        return "n/a" if not signed else "—"
    text = f"{value:+.3f}" if signed else f"{value:.3f}"
    return text if low != low else f"{text} [{low:.3f}, {high:.3f}]"


def _p(value: float) -> str:
    """A p-value as the table shows it: under 0.001 as a bound (the permutation floor is 1e-4)."""
    return "—" if value != value else "< 0.001" if value < 0.001 else f"{value:.3g}"


def _display(table: pd.DataFrame, baseline: str) -> pd.DataFrame:
    shown = pd.DataFrame({
        "method": table["method"],
        "test acc [95% CI]": [_with_interval(*v) for v in zip(
            table.test_acc_mean, table.test_acc_low, table.test_acc_high, strict=True)],
        "seeds": table["seeds"],
        f"Δ vs {baseline} [95% CI]": [_with_interval(*v, signed=True) for v in zip(
            table[f"diff_vs_{baseline}"], table.diff_low, table.diff_high, strict=True)],
        "p": table[f"p_vs_{baseline}"].map(_p),
        "p (Holm)": table["p_holm"].map(_p),
        "own MoRF ↓": table["occ_morf_auc"].map(_number),
        "own LeRF ↑": table["occ_lerf_auc"].map(_number),
        "own gap ↑": table["occ_gap"].map(_number),
        "30%+2f MoRF": table["occ_seed_morf_acc"].map(_number),
        "30%+2f LeRF": table["occ_seed_lerf_acc"].map(_number),
        "trials (failed)": [f"{t} ({f})" if t else "—"
                            for t, f in zip(table.trials, table.failed_trials, strict=True)],
        "best val acc": table["best_val_acc"].map(_number),
        "best params": table["best_params"],
    })  # fmt: skip
    if table["occ_seed_morf_acc"].isna().all():  # no video input: the seed protocol is video's
        shown = shown.drop(columns=["30%+2f MoRF", "30%+2f LeRF"])
    return shown


def comparison_markdown(table: pd.DataFrame, baseline: str = "vanilla") -> str:
    """The comparison table (comparison.csv's rows) as comparison.md shows it, numbers as
    formatted there; also the README's results blocks (reports/readme.py)."""
    return _display(table, baseline).to_markdown(index=False, disable_numparse=True)


def faithfulness_markdown(faithfulness: pd.DataFrame) -> str:
    """The like-for-like table (faithfulness.csv's rows) as comparison.md shows it."""
    return _display_faithfulness(faithfulness).to_markdown(index=False, disable_numparse=True)


def _display_faithfulness(faithfulness: pd.DataFrame) -> pd.DataFrame:
    shown = pd.DataFrame({"method": faithfulness["method"],
                          "explainer": faithfulness["explainer"]})  # fmt: skip
    for column, heading in FAITHFULNESS_SHOWN.items():
        if column in faithfulness and faithfulness[column].notna().any():
            shown[heading] = faithfulness[column].map(_number)
    for column in faithfulness.columns:
        if column.startswith("distinct_"):
            tokens = faithfulness[f"tokens_{column[len('distinct_') :]}"]
            shown[f"distinct values ({column[len('distinct_') :]})"] = [
                "—" if d != d else f"{d:.1f} / {n:.0f}"
                for d, n in zip(faithfulness[column], tokens, strict=True)
            ]
    return shown


def failures_table(summaries: Sequence[MethodSummary]) -> pd.DataFrame:
    rows = [{"method": s.method, "trial": t, "reason": r} for s in summaries for t, r in s.failures]
    return pd.DataFrame(rows, columns=["method", "trial", "reason"])


def skipped_table(skipped: Iterable[Any]) -> pd.DataFrame:
    """The data files a study left out (objects with `path` and `reason`, e.g. the dataset
    index's `Skipped` entries)."""
    rows = [{"path": str(s.path), "reason": s.reason} for s in skipped]
    return pd.DataFrame(rows, columns=["path", "reason"])


def write_comparison(
    table: pd.DataFrame,
    folder: Path,
    title: str,
    notes: Mapping[str, str],
    failures: pd.DataFrame | None = None,
    skipped: pd.DataFrame | None = None,
    baseline: str = "vanilla",
    faithfulness: pd.DataFrame | None = None,
) -> dict[str, Path]:
    """comparison.md / .tex / .csv in `folder` (and faithfulness.csv, failed_trials.csv,
    skipped_files.csv); the SYNTHETIC label heads every file."""
    folder.mkdir(parents=True, exist_ok=True)
    synthetic = bool(table["synthetic"].any())
    label = "SYNTHETIC DATA: built-in generator, not a real dataset. " if synthetic else ""
    lines = [f"# {title}", ""]
    if synthetic:
        lines += [f"**{label.strip()}** Numbers show how the methods behave on the synthetic task, "
                  "not on BIRDS.", ""]  # fmt: skip
    lines += [f"- {k}: {v}" for k, v in notes.items()]
    lines += ["", comparison_markdown(table, baseline), ""]
    family = int(table[f"p_vs_{baseline}"].notna().sum())
    lines += [STATISTICS_NOTE.format(baseline=baseline, family=family), ""]
    lines += [
        "own: the occlusion test (test split) of each arm's own pipeline and explainer (ET: "
        "explain the unoccluded clip, restrict, classify; vanilla and IFI: evaluation.explainer on "
        "the plain forward), so these columns mix explainers and pipelines; the like-for-like "
        "table below compares them on equal terms. MoRF / LeRF: area under accuracy vs share of "
        "tokens occluded, most- / least-relevant first (ties in random order, averaged over "
        "evaluation.tie_draws draws); gap = LeRF - MoRF; 30%+2f: the 001 seed's protocol (30% "
        "of spatial patches and 2 frames; video inputs). Signal tokens are time patches; a "
        "multimodal model has each input occluded by its own branch's relevance at each level.",
    ]
    if faithfulness is not None and len(faithfulness):
        lines += [
            "", "## Like-for-like faithfulness", "",
            faithfulness_markdown(faithfulness), "",
            "Every arm's final models, each explainer of evaluation.explainers with its default "
            "parameters, occlusion-tested on the model's plain forward of whole inputs (no ET "
            "restriction), means over seeds. clean acc: that forward's test accuracy (the "
            "bound of the gap); random: the floor. distinct values: mean number of distinct "
            "relevance values per map / tokens per map (a flat map has 1)."
            + _ground_truth_note(faithfulness),
        ]  # fmt: skip
        faithfulness.to_csv(folder / "faithfulness.csv", index=False)
    if failures is not None and len(failures):
        lines += ["", "## Failed trials", "", failures.to_markdown(index=False)]
        failures.to_csv(folder / "failed_trials.csv", index=False)
    if skipped is not None and len(skipped):
        shown_skipped = skipped.head(_SKIPPED_SHOWN)
        lines += ["", "## Skipped data files", "",
                  f"{len(skipped)} files of the data folder are not in the study "
                  "(data.on_bad_file, and files that are not samples); all in skipped_files.csv.",
                  "", shown_skipped.to_markdown(index=False)]  # fmt: skip
        if len(skipped) > _SKIPPED_SHOWN:
            lines += ["", f"... and {len(skipped) - _SKIPPED_SHOWN} more."]
        skipped.to_csv(folder / "skipped_files.csv", index=False)
    paths = {
        "md": folder / "comparison.md",
        "csv": folder / "comparison.csv",
        "tex": folder / "comparison.tex",
    }
    paths["md"].write_text("\n".join(lines) + "\n")
    table.to_csv(paths["csv"], index=False)
    caption = f"{label}{title}".replace("%", r"\%").replace("_", r"\_")
    note = STATISTICS_NOTE.format(baseline=baseline, family=family)
    note = note.replace("%", r"\%").replace("_", r"\_").replace("Δ", r"$\Delta$")
    latex = _display(table, baseline).to_latex(index=False, caption=caption, escape=True)
    latex = latex.replace("±", r"$\pm$")
    paths["tex"].write_text(
        latex.replace("\\end{table}", f"\\par\\footnotesize {note}\n\\end{{table}}")
    )
    return paths


_GROUND_TRUTH = {  # what the synthetic generator knows, per input: the localisation columns
    "video": "energy in actor = share of positive relevance inside the actor's box (energy "
    "pointing game), pointing hit = share of frames whose most relevant token touches the box; "
    "motion_oracle: a model-free frame-difference map, the reference",
    "signal": "energy in event = share of positive relevance inside the event's time window, "
    "pointing hit (signal) = share of signals whose most relevant time patch touches the window",
}


def _ground_truth_note(faithfulness: pd.DataFrame) -> str:
    """The localisation columns' sentence, for the inputs whose scores the table holds (synthetic
    data knows where the evidence is); empty when it holds none."""
    held = [
        text for name, text in _GROUND_TRUTH.items()
        if any(c in faithfulness and faithfulness[c].notna().any()
               for c in (f"energy_{name}", f"hit_{name}"))
    ]  # fmt: skip
    return f" Ground truth (synthetic data): {'; '.join(held)}." if held else ""
