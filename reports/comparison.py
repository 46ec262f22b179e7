"""The study's comparison table: each method's final re-trainings (mean ± std over seeds, a paired
t-test against vanilla), its occlusion metrics, and its search (trials, best validation accuracy,
best parameters). Written as Markdown, LaTeX and CSV, labelled SYNTHETIC when the data is."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

_SKIPPED_SHOWN = 50  # skipped files listed in comparison.md (all of them in skipped_files.csv)
OCCLUSION_COLUMNS = (
    "occ_morf_auc",
    "occ_lerf_auc",
    "occ_gap",
    "occ_seed_morf_acc",
    "occ_seed_lerf_acc",
)


@dataclass
class MethodSummary:
    """What the study learnt about one method."""

    method: str
    trials: int
    failed_trials: int
    best_val_accuracy: float
    best_params: dict[str, Any]
    final_runs: list[dict[str, float]] = field(default_factory=list)  # one per seed, with "seed"
    failures: list[tuple[str, str]] = field(default_factory=list)  # (trial, reason)


def _paired_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided paired t-test p-value (NaN with fewer than 2 pairs or identical pairs)."""
    if len(a) < 2 or len(a) != len(b) or np.allclose(a, b):
        return float("nan")
    return float(stats.ttest_rel(a, b).pvalue)


def comparison_table(
    summaries: Sequence[MethodSummary], data_name: str, synthetic: bool, baseline: str = "vanilla"
) -> pd.DataFrame:
    by_seed = {s.method: {r["seed"]: r["test_accuracy"] for r in s.final_runs} for s in summaries}
    rows = []
    for s in summaries:
        acc = np.array([r["test_accuracy"] for r in s.final_runs], dtype=float)
        seeds = sorted(set(by_seed[s.method]) & set(by_seed.get(baseline, {})))
        row = {
            "method": s.method,
            "data": data_name,
            "synthetic": synthetic,
            "test_acc_mean": acc.mean() if acc.size else float("nan"),
            "test_acc_std": acc.std(ddof=1) if acc.size > 1 else float("nan"),
            "seeds": int(acc.size),
            f"p_vs_{baseline}": float("nan")
            if s.method == baseline
            else _paired_p(
                [by_seed[s.method][k] for k in seeds], [by_seed[baseline][k] for k in seeds]
            ),
        }
        for column in OCCLUSION_COLUMNS:
            values = [r[column] for r in s.final_runs if column in r]
            row[column] = float(np.mean(values)) if values else float("nan")
        row.update(
            trials=s.trials, failed_trials=s.failed_trials, best_val_acc=s.best_val_accuracy,
            best_params=", ".join(f"{k}={_short(v)}" for k, v in s.best_params.items()),
        )  # fmt: skip
        rows.append(row)
    return pd.DataFrame(rows)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _mean_std(mean: float, std: float) -> str:
    if np.isnan(mean):
        return "n/a"
    return f"{mean:.3f}" if np.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def _display(table: pd.DataFrame, baseline: str) -> pd.DataFrame:
    accuracy = [_mean_std(m, s) for m, s in zip(table.test_acc_mean, table.test_acc_std)]
    p_values = ["—" if np.isnan(p) else f"{p:.3g}" for p in table[f"p_vs_{baseline}"]]
    shown = pd.DataFrame({
        "method": table["method"],
        "test acc (mean ± std)": accuracy,
        "seeds": table["seeds"],
        f"p vs {baseline}": p_values,
        "MoRF AUC ↓": table["occ_morf_auc"].map("{:.3f}".format),
        "LeRF AUC ↑": table["occ_lerf_auc"].map("{:.3f}".format),
        "gap ↑": table["occ_gap"].map("{:.3f}".format),
        "30%+2f MoRF": table["occ_seed_morf_acc"].map("{:.3f}".format),
        "30%+2f LeRF": table["occ_seed_lerf_acc"].map("{:.3f}".format),
        "trials (failed)": [f"{t} ({f})" for t, f in zip(table.trials, table.failed_trials)],
        "best val acc": table["best_val_acc"].map("{:.3f}".format),
        "best params": table["best_params"],
    })  # fmt: skip
    if table["occ_seed_morf_acc"].isna().all():  # no video input: the seed protocol is video's
        shown = shown.drop(columns=["30%+2f MoRF", "30%+2f LeRF"])
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
) -> dict[str, Path]:
    """comparison.md / .tex / .csv in `folder` (and failed_trials.csv, skipped_files.csv); the
    SYNTHETIC label heads every file."""
    folder.mkdir(parents=True, exist_ok=True)
    synthetic = bool(table["synthetic"].any())
    label = "SYNTHETIC DATA: built-in generator, not a real dataset. " if synthetic else ""
    shown = _display(table, baseline)
    lines = [f"# {title}", ""]
    if synthetic:
        lines += [f"**{label.strip()}** Numbers show how the methods behave on the synthetic task, "
                  "not on BIRDS.", ""]  # fmt: skip
    lines += [f"- {k}: {v}" for k, v in notes.items()] + ["", shown.to_markdown(index=False), ""]
    lines += [
        "Test accuracy: the configuration each method's search selected (see selection above) "
        "re-trained on each seed and evaluated on the test split; p: two-sided paired t-test "
        "over seeds. "
        "Occlusion (test split, the method's own explainer): area under accuracy vs share of "
        "tokens occluded, most-relevant-first (MoRF, lower = more faithful) and "
        "least-relevant-first (LeRF); gap = LeRF - MoRF; 30%+2f: the 001 seed's protocol "
        "(30% of spatial patches and 2 frames; video inputs). Signal tokens are time patches; a "
        "multimodal model has each input occluded by its own branch's relevance at each level.",
    ]
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
    paths["tex"].write_text(
        shown.to_latex(index=False, caption=caption, escape=True).replace("±", r"$\pm$")
    )
    return paths
