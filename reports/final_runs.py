"""The final re-trainings of a study in its report: their test accuracies (a dot-and-interval plot)
and what their explanations do (every method's model put through the same explainers).

Explanations: for each method, the final model of its lowest seed is evaluated like for like
(`python -m harness.evaluate --protocol like_for_like`: the model's plain forward, every explainer
with its default parameters, the same protocol for every method) on the test split with one set of
explainers for every method: `evaluation.explainers` (the like-for-like table's, `random`, the
floor, among them). Its outputs go to `report/models/<method>/` (explainer table, occlusion curves,
per-class trends, galleries of the first `evaluation.gallery_clips` test inputs, the same ones for
every method). The study's final stage already ran that evaluation in the trial of that seed
(`evaluation.explain_model`, its checkpoint's `explained/`): it is copied, not run again, when it
holds what is asked (`explained.json`: the explainers, protocol, inputs, split and seed);
`models/<method>/source.json` records which checkpoint and explainers made the folder, so a rebuilt
report reuses it unless the checkpoint or the explainers changed. Video, signal and hybrid models
alike: curves, trends and galleries are made per input the model reads (a hybrid's curves with
both inputs occluded and with each alone; its gallery shows the frames above the signal).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from reports.curves import BASELINES, draw_occlusion_curves
from reports.figures import figure, save_figure, styled
from reports.study_folder import FinalRun, StudyFolder

SOURCE_FILE = "source.json"
FLOOR = "random"


def _interval_columns(table: pd.DataFrame) -> tuple[str, str] | None:
    """The comparison table's interval of the mean test accuracy, where it has one (e.g.
    test_acc_ci_low / test_acc_ci_high): a (low, high) pair of column names."""
    def find(pattern: str) -> str | None:
        return next((c for c in table.columns if re.fullmatch(pattern, c)), None)

    low = find(r"test_acc(uracy)?_(mean_)?(ci_)?(low|lo|lower)")
    high = find(r"test_acc(uracy)?_(mean_)?(ci_)?(high|hi|upper)")
    return (low, high) if low and high else None


def accuracy_intervals(study: StudyFolder) -> pd.DataFrame:
    """One row per method with final runs: `seeds` (the test accuracy of each seed), `mean`,
    `low`, `high` and `interval` (what the interval is): the comparison table's interval where it
    has one, else a 95% Student-t interval of the mean over seeds (none for one seed)."""
    comparison = study.tables.get("comparison")
    columns = _interval_columns(comparison) if comparison is not None else None
    rows = []
    for method in study.methods:
        accuracies = [r.metrics["test_accuracy"] for r in study.finals_of(method)]
        if not accuracies:
            continue
        values = np.array(accuracies, dtype=float)
        mean, low, high = float(values.mean()), float("nan"), float("nan")
        interval = "none (one seed)"
        if columns is not None and method in set(comparison["method"]):
            row = comparison.set_index("method").loc[method]
            low, high = float(row[columns[0]]), float(row[columns[1]])
            interval = f"comparison table ({columns[0]}, {columns[1]})"
        elif len(values) > 1:
            half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
            low, high = mean - half, mean + half
            interval = "95% Student-t over seeds"
        rows.append({"method": method, "seeds": accuracies, "mean": mean, "low": low,
                     "high": high, "interval": interval})  # fmt: skip
    return pd.DataFrame(rows, columns=["method", "seeds", "mean", "low", "high", "interval"])


@styled
def plot_final_accuracy(intervals: pd.DataFrame, folder: Path, synthetic: bool) -> list[Path]:
    """final_accuracy.png|svg: per method, each seed's test accuracy (small dots), the mean (a
    large dot) and its interval (a bar)."""
    fig, axes = figure(1, 1, height_per_row=0.45 * max(len(intervals), 1) + 0.6)
    ax = axes[0][0]
    for i, row in enumerate(intervals.itertuples()):
        seeds = np.asarray(row.seeds, dtype=float)
        ax.scatter(seeds, np.full(len(seeds), i + 0.18), s=12, color="0.5",
                   label="one seed")  # fmt: skip
        if np.isfinite(row.low):
            ax.plot([row.low, row.high], [i, i], color="tab:blue", linewidth=2.5,
                    label="interval of the mean")  # fmt: skip
        ax.scatter([row.mean], [i], s=40, color="tab:blue", zorder=3, label="mean")
    ax.set_yticks(range(len(intervals)), list(intervals["method"]))
    ax.set_ylim(len(intervals) - 0.5, -0.5)
    ax.set_xlabel("test accuracy")
    ax.grid(axis="x", alpha=0.3)
    kinds = "; ".join(sorted(set(intervals["interval"])))
    return save_figure(fig, folder, "final_accuracy",
                       f"Final re-trainings: test accuracy per method (interval: {kinds})",
                       synthetic)  # fmt: skip


@dataclass
class ModelSet:
    """The model each method's explanations are computed on (its lowest seed's final run)."""

    runs: dict[str, FinalRun]
    configs: dict[str, dict]

    @property
    def explainers(self) -> list[str]:
        """The like-for-like explainers (`evaluation.explainers` of the models' configs, `random`
        among them)."""
        names = [str(e) for c in self.configs.values() for e in c["evaluation"]["explainers"]]
        return list(dict.fromkeys([*names, FLOOR]))


def model_set(study: StudyFolder) -> ModelSet:
    runs, configs = {}, {}
    for method in study.methods:
        finals = [r for r in study.finals_of(method) if r.checkpoint is not None
                  and (r.checkpoint / "model.pt").is_file()]  # fmt: skip
        if finals:
            runs[method] = finals[0]
            configs[method] = yaml.safe_load((finals[0].checkpoint / "config.yaml").read_text())
    return ModelSet(runs, configs)


def evaluate_models(models: ModelSet, folder: Path, explainers: Sequence[str] | None = None
                    ) -> dict[str, Path]:  # fmt: skip
    """Each method's model through `explainers` (default: `models.explainers`) into
    folder/<method>/ (reused when source.json matches: the same checkpoint, seed, explainers and
    inputs explained, so an evaluation of a hybrid's video alone is redone); returns method -> its
    folder."""
    from harness.evaluate.__main__ import EXPLAINED_FILE, evaluate_explainers, explained_stamp
    from harness.models import model_inputs
    from harness.train import EXPLAINED_DIR

    explainers = list(explainers or models.explainers)
    done = {}
    for method, run in models.runs.items():
        config = models.configs[method]
        output = folder / method
        wanted = explained_stamp(explainers, PROTOCOL, model_inputs(config["model"]), "test",
                                 run.seed)  # fmt: skip
        source = {"checkpoint": str(run.checkpoint), **wanted}
        stamp, trials = output / SOURCE_FILE, run.checkpoint / EXPLAINED_DIR
        if _holds(output, SOURCE_FILE, source):
            pass
        elif _holds(trials, EXPLAINED_FILE, wanted):  # the final trial explained its model
            shutil.rmtree(output, ignore_errors=True)
            shutil.copytree(trials, output)
            stamp.write_text(json.dumps(source, indent=1))
        else:
            print(f"report: explaining the {method} model (seed {run.seed}) with "
                  f"{', '.join(explainers)}", flush=True)  # fmt: skip
            evaluate_explainers(config, run.checkpoint / "model.pt", output,
                                explainers=explainers, protocol=PROTOCOL,
                                source=str(run.checkpoint))  # fmt: skip
            stamp.write_text(json.dumps(source, indent=1))
        done[method] = output
    return done


PROTOCOL = "like_for_like"  # the report's: the same protocol for every method it compares


def _holds(folder: Path, stamp: str, expected: dict) -> bool:
    """Whether `folder` is a finished evaluation whose stamp file says `expected`."""
    path = folder / stamp
    return (path.is_file() and json.loads(path.read_text()) == expected
            and (folder / "occlusion_curves.csv").is_file())  # fmt: skip


def read_curves(folder: Path) -> dict[str, dict[str, SimpleNamespace]]:
    """What was occluded (an input, or every input: 'video+signal') -> explainer -> curve
    (levels, morf/lerf accuracy and probability), from the occlusion_curves.csv that
    `evaluate_explainers` wrote in `folder` (one without an `input` column is a video model's)."""
    points = pd.read_csv(folder / "occlusion_curves.csv")
    if "input" not in points:
        points = points.assign(input="video")
    curves: dict[str, dict[str, SimpleNamespace]] = {}
    for (occluded, explainer), rows in points.groupby(["input", "explainer"], sort=False):
        fields = {"levels": sorted(rows["level"].unique())}
        for direction, part in rows.groupby("direction"):
            part = part.sort_values("level")
            fields[f"{direction}_accuracy"] = list(part["accuracy"])
            fields[f"{direction}_probability"] = list(part["probability"])
        curves.setdefault(str(occluded), {})[str(explainer)] = SimpleNamespace(**fields)
    return curves


@styled
def plot_occlusion(curves: dict[str, dict[str, dict[str, SimpleNamespace]]], folder: Path,
                   synthetic: bool) -> list[Path]:  # fmt: skip
    """occlusion.png|svg: a row per method (its model of the lowest seed) and occluded input (a
    hybrid: both inputs, then each alone), MoRF and LeRF accuracy against the share of tokens
    occluded, one line per explainer (the same colour for an explainer in every row), `random`
    dashed; every panel on the same axes."""
    rows = [(method, occluded, by_explainer) for method, by_input in curves.items()
            for occluded, by_explainer in by_input.items()]  # fmt: skip
    names = list(dict.fromkeys(e for *_, c in rows for e in c if e not in BASELINES))
    colours = {name: i for i, name in enumerate(names)}
    several = any(len(by_input) > 1 for by_input in curves.values())
    fig, axes = figure(len(rows), 2, height_per_row=2.0, sharex=True, sharey=True)
    for axes_row, (method, occluded, by_explainer) in zip(axes, rows):
        draw_occlusion_curves(axes_row, by_explainer, colours=colours, legend=False)
        captions = ("MoRF (lower = more faithful)", "LeRF (higher = more faithful)")
        if several:  # shorter: the figure's title says which way is faithful
            captions = (f"{occluded} occluded, MoRF", f"{occluded} occluded, LeRF")
        for ax, caption in zip(axes_row, captions):
            ax.set_title(f"{method}: {caption}")
            ax.legend(fontsize=6, loc="best")
    title = "Occlusion test of the final models (test split, the same explainers for all)"
    if several:
        title = "Occlusion of the final models (test split; MoRF lower, LeRF higher = faithful)"
    return save_figure(fig, folder, "occlusion", title, synthetic, legend=False)
