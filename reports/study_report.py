"""A study's whole report, rebuilt from its output folder: what `harness.sweep` writes at the end
of a study and `python -m harness.report <study.output_dir>` writes again (restyled, re-analysed)
without running a trial.

`<study.output_dir>/report/` gets, beside the comparison tables the sweep wrote:
  index.html                  the page to open first: settings, SYNTHETIC banner, tables, figures
  figures/*.png|svg           knobs_<method> (metric vs each knob), history, importance,
                              final_accuracy, occlusion
  knobs.csv|md                what each knob did (see reports/knobs.py)
  importance.csv              fANOVA and PED-ANOVA importance of each knob (reports/importance.py)
  models/<method>/            each method's final model through the same explainers
                              (reports/final_runs.py): explainers.md, occlusion curves, trends,
                              galleries, per input (video, signal, both for a hybrid)
A partial study (an interrupted one) gets what its finished parts allow, and the page says which
stages are missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from harness.evaluate.__main__ import INPUT_PREFIX, input_file
from reports.final_runs import (
    accuracy_intervals,
    evaluate_models,
    model_set,
    plot_final_accuracy,
    plot_occlusion,
    read_curves,
)
from reports.importance import EVALUATORS, plot_importances, study_importances
from reports.knobs import KNOB_NOTE, knob_table, plot_history, plot_knobs
from reports.page import Page, esc, grid_html, image_html, list_html, table_html
from reports.study_folder import StudyFolder, load_study_folder

HIDDEN_COMPARISON_COLUMNS = ("data", "synthetic")  # the same in every row: said on the page
MAX_TABLE_ROWS = 200


@dataclass
class Report:
    folder: Path  # <study>/report
    index: Path  # index.html
    figures: list[Path] = field(default_factory=list)
    missing_stages: list[str] = field(default_factory=list)


def _rel(path: Path, folder: Path) -> str:
    return path.relative_to(folder).as_posix()


def _importance_table(importances) -> pd.DataFrame:
    rows = []
    for method, by_evaluator in importances.items():
        for evaluator, imp in by_evaluator.items():
            if not imp.values:
                rows.append({"method": method, "evaluator": evaluator, "knob": None,
                             "importance": None, "rank": None, "note": imp.note})  # fmt: skip
            for knob, value in sorted(imp.values.items(), key=lambda kv: -kv[1]):
                rows.append({"method": method, "evaluator": evaluator, "knob": knob,
                             "importance": value, "rank": imp.rank(knob),
                             "note": imp.note})  # fmt: skip
    return pd.DataFrame(rows, columns=["method", "evaluator", "knob", "importance", "rank", "note"])


def _mlflow_runs(study: StudyFolder) -> pd.DataFrame | str:
    """The study's child runs in its MLflow store (stage, method, seed, trial, run id, status), or
    why they could not be listed."""
    state = study.state
    store = state.tracking_uri.removeprefix("sqlite:///")
    if store != state.tracking_uri and not Path(store).is_file():
        return f"no MLflow store at {state.tracking_uri}"
    try:
        from mlflow import MlflowClient

        client = MlflowClient(state.tracking_uri)
        experiment = client.get_experiment_by_name(state.experiment_name)
        runs = client.search_runs(
            [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{state.parent_run_id}'",
            max_results=5000,
        )  # fmt: skip
    except Exception as error:  # an unreachable or moved store: the page says so
        return f"the MLflow store {state.tracking_uri} could not be read ({type(error).__name__})"
    rows = [{"stage": r.data.tags.get("tune_experiment"), "method": r.data.tags.get("method"),
             "seed": r.data.params.get("seed"), "trial": r.data.tags.get("trial_name"),
             "run id": r.info.run_id, "status": r.info.status} for r in runs]  # fmt: skip
    table = pd.DataFrame(rows, columns=["stage", "method", "seed", "trial", "run id", "status"])
    return table.sort_values(["stage", "method", "trial"], ignore_index=True)


def _settings(study: StudyFolder, report: Path) -> str:
    cfg, state = study.config, study.state
    data = state.tags.get("data", cfg["data"].get("name", "?"))
    files = [p for p in ("comparison.md", "comparison.csv", "comparison.tex", "knobs.md",
                         "knobs.csv", "importance.csv") if (report / p).is_file()]  # fmt: skip
    items = {
        "experiment": esc(cfg.get("experiment", "?")),
        "data": esc(data) + (" (SYNTHETIC)" if study.synthetic else "")
        + (f", root {esc(cfg['data']['root'])}" if cfg["data"].get("root") else ""),
        "methods": esc(", ".join(study.methods)),
        "search": esc(f"{cfg['sweep']['num_samples']} trials per method, Optuna TPE "
                      f"(seed {cfg['sweep']['sampler_seed']}), metric {cfg['sweep']['metric']} "
                      f"({cfg['sweep']['mode']}), objective {cfg['sweep']['objective']}, "
                      f"scheduler {cfg['sweep']['scheduler']}"),
        "training": esc(f"{cfg['train']['epochs']} epochs per trial; model "
                        f"{cfg['model'].get('name', '?')}"),
        "final stage": esc(f"the selected configuration of each method re-trained on "
                           f"{cfg['final']['seeds']} seed(s)"),
        "MLflow": esc(f"{state.tracking_uri} (experiment {state.experiment_name}, parent run "
                      f"{state.parent_run_id})"),
        "study folder": esc(study.folder),
        "files": " ".join(f"<a href='{esc(p)}'>{esc(p)}</a>" for p in files) or "—",
    }  # fmt: skip
    return list_html(items)


def _comparison(study: StudyFolder) -> str:
    table = study.tables.get("comparison")
    if table is None:
        return ("<p class='partial'>No comparison table yet: the study's final stage has not "
                "finished (run the study's command again to resume it).</p>")  # fmt: skip
    shown = table.drop(columns=[c for c in HIDDEN_COMPARISON_COLUMNS if c in table.columns])
    return (table_html(shown) + "<p class='note'>The sweep's comparison table (comparison.csv; "
            "comparison.md explains each column and what it does not cover).</p>")  # fmt: skip


def _failures(study: StudyFolder) -> str:
    parts = []
    failed = study.tables.get("failed_trials")
    if failed is not None and len(failed):
        parts.append("<p>Failed trials, with their reasons (failed_trials.csv):</p>")
        parts.append(table_html(failed, MAX_TABLE_ROWS))
    states = pd.concat([s.trials.assign(method=m) for m, s in study.searches.items()])
    unusual = states[states["state"] != "COMPLETE"][["method", "number", "state", "last_value"]]
    if len(unusual):
        parts.append("<p>Search trials that did not complete (Optuna's record: FAIL, PRUNED by "
                     "early stopping, or unfinished in an interrupted study):</p>")  # fmt: skip
        parts.append(table_html(unusual.rename(columns={"number": "trial number"})))
    skipped = study.tables.get("skipped_files")
    if skipped is not None and len(skipped):
        parts.append(f"<p>{len(skipped)} data files are not in the study (skipped_files.csv):</p>")
        parts.append(table_html(skipped, MAX_TABLE_ROWS))
    return "".join(parts) or "<p>No failed trial and no skipped data file.</p>"


def _exports(study: StudyFolder) -> str:
    links = {m: f"<a href='../best/{esc(m)}.yaml'>best/{esc(m)}.yaml</a>"
             for m in study.methods if study.best_config(m)}  # fmt: skip
    parts = [list_html(links) if links else "<p>No exported configuration yet.</p>"]
    if links:
        example = f"{study.folder}/best/{list(links)[-1]}.yaml"
        parts.append(f"<p class='note'>Train one: <code>python -m harness.train {esc(example)}"
                     "</code>.</p>")  # fmt: skip
    runs = _mlflow_runs(study)
    parts.append(f"<p>MLflow parent run: <code>{esc(study.state.parent_run_id)}</code></p>")
    if isinstance(runs, str):
        parts.append(f"<p class='note'>{esc(runs)}</p>")
    else:
        parts.append(table_html(runs, MAX_TABLE_ROWS))
    return "".join(parts)


def _model_sections(page: Page, study: StudyFolder, report: Path, explain: bool,
                    explainers: Sequence[str] | None) -> list[Path]:  # fmt: skip
    models = model_set(study)
    if not models.runs:
        page.add("Explanations of the final models",
                 "<p class='partial'>No final model yet: the final stage has not finished.</p>")
        return []
    folders = evaluate_models(models, report / "models", explainers) if explain else {
        m: report / "models" / m for m in models.runs
        if (report / "models" / m / "occlusion_curves.csv").is_file()
    }  # fmt: skip
    if not folders:  # not explained here, and not before
        page.add("Explanations of the final models",
                 "<p class='note'>The final models were not put through the explainers "
                 "(report.explain_models=false, or --no-explain); <code>python -m harness.report "
                 f"{esc(study.folder)}</code> adds them.</p>")  # fmt: skip
        return []
    seeds = ", ".join(f"{m} seed {models.runs[m].seed}" for m in folders)
    curves = {m: read_curves(folder) for m, folder in folders.items()}
    figures = plot_occlusion(curves, report / "figures", study.synthetic)
    names = list(dict.fromkeys(e for c in curves.values() for by in c.values() for e in by))
    inputs = [m for m in INPUT_PREFIX if any(
        (folder / f"{input_file('trends', m)}.csv").is_file() for folder in folders.values())]
    several = ""
    if any(len(c) > 1 for c in curves.values()):
        several = ("<p class='note'>Hybrid models: a row with both inputs occluded (each by its "
                   "own relevance, at the same share), then a row per input occluded alone, the "
                   "other left whole.</p>")  # fmt: skip
    tables = []
    for method, folder in folders.items():
        table = pd.read_csv(folder / "explainers.csv").drop(columns=["synthetic"], errors="ignore")
        tables.append(f"<h3>{esc(method)}</h3>" + table_html(table))
    page.add(
        "Occlusion test of the final models",
        image_html(_rel(figures[0], report), "MoRF and LeRF accuracy, one row per method and "
                   "occluded input"),
        f"<p class='note'>Each method's final model ({esc(seeds)}) on the test split, like for "
        "like: every method through the same explainers (evaluation.explainers, default "
        "parameters) and the model's plain forward of the whole inputs (no ET restriction), the "
        "protocol of the like-for-like table (random: the floor; a faithful explainer falls "
        "faster than it under MoRF and slower under LeRF). One model per method: the spread "
        "over seeds is not shown here; the like-for-like table has the means over seeds, the "
        "comparison table each method's own pipeline and explainer.</p>", several, *tables,
    )  # fmt: skip
    cells = []
    for method, folder in folders.items():
        for name in names:
            path = folder / "galleries" / f"{name}.png"
            if path.is_file():
                cells.append(image_html(_rel(path, report), f"{method} / {name}"))
    rows = {"video": "a clip's frames (columns) with the heat of the explainer's relevance over "
                     "them", "signal": "a signal's channels (lines) over time on a band of its "
                                       "relevance per time token"}  # fmt: skip
    gifs = (" Animated clips: models/&lt;method&gt;/galleries/*.gif." if "video" in inputs
            else "")  # fmt: skip
    page.add(
        "Gallery: the same test inputs, every method and explainer",
        "<p class='note'>Each image: the first test samples (true → predicted class); per "
        f"sample {'; then '.join(rows[m] for m in inputs)}; relevance of the predicted class, "
        f"normalised per sample.{gifs}</p>", grid_html(cells, len(names)),
    )  # fmt: skip
    trend_parts = []
    reading = {"video": "the mean of the clips' normalised maps, frame by frame, and its share "
                        "per frame (dashed: uniform)",
               "signal": "the mean of the signals' normalised maps per time token, and its share "
                         "per time segment (dotted: the segment borders; dashed: uniform)"}
    for method, folder in folders.items():
        for m in inputs:
            pngs = {name: folder / "trends" / f"{input_file(name, m)}.png" for name in names}
            trend_cells = [image_html(_rel(p, report), n) for n, p in pngs.items() if p.is_file()]
            markdown = f"{_rel(folder, report)}/{input_file('trends', m)}.md"
            what = "region and frame" if m == "video" else "time segment"
            trend_parts.append(
                f"<h3>{esc(method)}: {m}</h3>" + grid_html(trend_cells, 2)
                + f"<p class='note'><a href='{esc(markdown)}'>{esc(input_file('trends', m))}.md"
                f"</a>: share of relevance per class and {what}.</p>"
            )  # fmt: skip
    page.add(
        f"Per-class trends of the explanations ({', '.join(inputs)})",
        f"<p class='note'>Per class (true class of the test samples): "
        f"{'; '.join(f'{m}: {reading[m]}' for m in inputs)}.</p>", *trend_parts,
    )  # fmt: skip
    return figures


def _knob_tables(study: StudyFolder, report: Path, importances, title: str) -> list[str]:
    """knobs.csv|md and importance.csv in `report`; returns the page's knob-table parts."""
    knobs = knob_table(study.searches, importances)
    knobs.to_csv(report / "knobs.csv", index=False)
    _importance_table(importances).to_csv(report / "importance.csv", index=False)
    markdown = [f"# What each knob did: {title}", "", KNOB_NOTE, ""]
    parts = [f"<p class='note'>{esc(KNOB_NOTE)}</p>"]
    for method in study.methods:
        part = knobs[knobs["method"] == method].drop(columns=["method"])
        parts.append(f"<h3>{esc(method)}</h3>" + table_html(part))
        markdown += [f"## {method}", "", part.to_markdown(index=False, floatfmt=".3f"), ""]
    banner = "**SYNTHETIC DATA: built-in generator, not a real dataset.**\n\n"
    (report / "knobs.md").write_text((banner if study.synthetic else "") + "\n".join(markdown))
    return parts


def _search_sections(page: Page, study: StudyFolder, report: Path, importances) -> list[Path]:
    figures_dir, synthetic = report / "figures", study.synthetic
    history = plot_history(study.searches, study.metric, figures_dir, synthetic)
    importance = plot_importances(importances, figures_dir, synthetic)
    knobs = {m: plot_knobs(s, study.metric, figures_dir, synthetic)
             for m, s in study.searches.items()}  # fmt: skip
    page.add(
        "Searches",
        image_html(_rel(history[0], report), "each trial and the best so far, by trial order "
                   "and by time"),
        *(image_html(_rel(paths[0], report), f"{m}: {study.metric} against each knob")
          for m, paths in knobs.items()),
    )  # fmt: skip
    page.add(
        "Hyperparameter importance",
        image_html(_rel(importance[0], report), " and ".join(EVALUATORS)),
        "<p class='note'>fANOVA: the share of the metric's variance over the searched space each "
        "knob explains; PED-ANOVA: how much each knob's values among the top trials differ from "
        "all trials. Complete trials only; knobs not sampled by every complete trial are left "
        "out (see the notes).</p>", table_html(_importance_table(importances)),
    )  # fmt: skip
    return history + importance + [p for paths in knobs.values() for p in paths]


def build_report(study_dir: Path | str, *, explain: bool = True,
                 explainers: Sequence[str] | None = None) -> Report:  # fmt: skip
    """Write the report of the study in `study_dir` (see the module docstring). `explain`: put the
    final models through the explainers (else reuse what report/models/ holds); `explainers`:
    that set (default: evaluation.explainers, the like-for-like set). StudyFolderError when the
    folder is not a study or no stage has finished."""
    study = load_study_folder(study_dir)
    report = study.folder / "report"
    report.mkdir(exist_ok=True)
    title = f"Study report: {study.config.get('experiment', study.folder.name)}"
    importances = study_importances(study.searches)
    knob_parts = _knob_tables(study, report, importances, title)
    page = Page(title, study.synthetic)
    if study.missing_stages:
        page.warnings.append(
            "Partial study: these stages have not finished: "
            f"<b>{esc(', '.join(study.missing_stages))}</b>. This page shows what the finished "
            "parts allow; run the study's command again to resume it, then rebuild the report "
            f"(<code>python -m harness.report {esc(study.folder)}</code>)."
        )
    page.add("Study", _settings(study, report))
    page.add("Comparison", _comparison(study))
    figures: list[Path] = []
    intervals = accuracy_intervals(study)
    if len(intervals):
        figures += plot_final_accuracy(intervals, report / "figures", study.synthetic)
        page.add("Final accuracies", image_html(_rel(figures[0], report),
                 "each seed's test accuracy, the mean and its interval"))  # fmt: skip
    figures += _model_sections(page, study, report, explain, explainers)
    figures += _search_sections(page, study, report, importances)
    page.add("What each knob did", *knob_parts)
    page.add("Failed trials and skipped files", _failures(study))
    page.add("Exports and MLflow runs", _exports(study))
    index = page.write(report / "index.html")
    return Report(report, index, figures, study.missing_stages)
