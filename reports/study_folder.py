"""A study's output folder read back for its report: settings, each method's search (its Optuna
study), the final re-trainings (Ray Tune's results on disk), the tables the sweep wrote.

Everything comes from files the study leaves (`study_state.json`, `optuna.db` or
`sweep.optuna_storage`, `ray/<stage>/`, `report/*.csv`, `best/*.yaml`), so the report of a finished,
resumed or interrupted study can be rebuilt without running a trial. `StudyFolderError` says why a
folder cannot be reported on (not a study; no stage finished).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness.search_space import Parameter, check_space
from harness.study_state import STATE_FILE, StudyState

SEARCH_STATES = ("COMPLETE", "PRUNED", "FAIL")  # shown states of a search trial


class StudyFolderError(ValueError):
    """The folder is not a study output folder, or holds nothing a report can show."""


@dataclass
class Search:
    """One method's search as its Optuna study holds it.

    `trials`: one row per trial, in trial order: `number`, `state` (COMPLETE, PRUNED, FAIL, or
    RUNNING/WAITING in an interrupted study), `value` (the search metric of a COMPLETE trial, else
    NaN), `last_value` (COMPLETE: `value`; PRUNED: its last intermediate value; else NaN),
    `start_s` / `end_s` (seconds since the study's first trial of any method started), and one
    column per searched parameter (dotted config path; NaN where it did not apply)."""

    method: str
    params: list[Parameter]
    trials: pd.DataFrame
    study: Any = None  # the optuna.Study (importance), None when the storage has none

    @property
    def complete(self) -> pd.DataFrame:
        return self.trials[self.trials["state"] == "COMPLETE"]


@dataclass
class FinalRun:
    method: str
    seed: int
    metrics: dict[str, float]
    checkpoint: Path | None  # holds model.pt and config.yaml (the trial's artifacts)


@dataclass
class StudyFolder:
    folder: Path
    state: StudyState
    methods: list[str]
    searches: dict[str, Search]
    finals: list[FinalRun]
    missing_stages: list[str]  # stages of the study that have not finished
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # report/<name>.csv files

    @property
    def config(self) -> dict[str, Any]:
        return self.state.config

    @property
    def synthetic(self) -> bool:
        return str(self.state.tags.get("synthetic", "")).lower() == "true" or not (
            self.config.get("data", {}).get("root")
        )

    @property
    def metric(self) -> str:
        return str(self.config["sweep"]["metric"])

    def finals_of(self, method: str) -> list[FinalRun]:
        return sorted((r for r in self.finals if r.method == method), key=lambda r: r.seed)

    def best_config(self, method: str) -> Path | None:
        path = self.folder / "best" / f"{method}.yaml"
        return path if path.is_file() else None


def _storage_url(folder: Path, config: dict[str, Any]) -> str:
    """The study's Optuna storage; a SQLite file that moved with the folder is found there."""
    url = str(config["sweep"].get("optuna_storage") or "")
    prefix = "sqlite:///"
    if (not url or url.startswith(prefix)) and not Path(url[len(prefix) :]).is_file():
        url = f"{prefix}{folder / 'optuna.db'}"
    return url


def _study_name(config: dict[str, Any], method: str) -> str:
    pareto = config["sweep"].get("objective") == "pareto"
    return f"{config['study']['name']}-{method}" + ("-pareto" if pareto else "")


def _load_search(storage: Any, config: dict[str, Any], method: str) -> Search:
    import optuna

    params = check_space(config["space"][method], f"space.{method}")
    columns = ["number", "state", "value", "last_value", "start", "end", *(p.path for p in params)]
    try:
        study = optuna.load_study(study_name=_study_name(config, method), storage=storage)
    except KeyError:  # the search never started
        return Search(method, params, pd.DataFrame(columns=columns))
    rows = []
    for trial in study.get_trials(deepcopy=False):
        state = trial.state.name
        value = trial.values[0] if state == "COMPLETE" and trial.values else float("nan")
        last = value
        if state == "PRUNED" and trial.intermediate_values:
            last = trial.intermediate_values[max(trial.intermediate_values)]
        row = {"number": trial.number, "state": state, "value": value, "last_value": last,
               "start": trial.datetime_start, "end": trial.datetime_complete}  # fmt: skip
        for p in params:
            row[p.path] = trial.params.get(p.path.replace(".", "/"), float("nan"))
        rows.append(row)
    return Search(method, params, pd.DataFrame(rows, columns=columns), study)


def _times(searches: dict[str, Search]) -> None:
    """start/end datetimes -> start_s/end_s, seconds since the study's first trial started."""
    starts = [t for s in searches.values() for t in s.trials["start"] if pd.notna(t)]
    origin = min(starts) if starts else None
    for search in searches.values():
        trials = search.trials
        for column in ("start", "end"):
            trials[f"{column}_s"] = [
                (t - origin).total_seconds() if origin is not None and pd.notna(t) else float("nan")
                for t in trials.pop(column)
            ]


def _final_runs(state: StudyState) -> list[FinalRun]:
    if "final" not in state.stages:
        return []
    from harness.tracking import read_stage  # Ray and MLflow: only when there is a final stage

    runs = []
    for record in read_stage(state, "final") or []:
        if record.status != "TERMINATED" or not record.results:
            continue
        last = record.results[-1]
        if "test_accuracy" not in last:
            continue
        metrics = {k: float(v) for k, v in last.items()
                   if isinstance(v, int | float) and not isinstance(v, bool)}  # fmt: skip
        runs.append(FinalRun(str(record.config["method"]), int(record.config["seed"]), metrics,
                             record.checkpoint))  # fmt: skip
    return runs


def load_study_folder(folder: Path | str) -> StudyFolder:
    """Read a study output folder; StudyFolderError if it is not one or no stage finished."""
    import optuna

    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise StudyFolderError(f"{folder}: no such folder (expected a study's study.output_dir)")
    state = StudyState.load(folder)
    if state is None:
        raise StudyFolderError(
            f"{folder}: not a study output folder (no {STATE_FILE}; expected the "
            "study.output_dir of `python -m harness.sweep`)"
        )
    methods = [str(m) for m in state.config["study"]["methods"]]
    stages = [f"search-{m}" for m in methods] + ["final"]
    finished = [s for s in stages if s in state.stages and state.stages[s].finished]
    if not finished:
        raise StudyFolderError(
            f"{folder}: no stage of the study has finished yet (stages: {', '.join(stages)}); "
            "a report needs at least one finished search; run the study's command again to "
            "resume it"
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(_storage_url(folder, state.config))
    searches = {m: _load_search(storage, state.config, m) for m in methods}
    _times(searches)
    tables = {}
    for path in sorted((folder / "report").glob("*.csv")):
        try:
            tables[path.stem] = pd.read_csv(path)
        except pd.errors.EmptyDataError:
            tables[path.stem] = pd.DataFrame()
    return StudyFolder(
        folder, state, methods, searches, _final_runs(state),
        [s for s in stages if s not in finished], tables,
    )  # fmt: skip
