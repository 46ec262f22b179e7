"""Run a whole study: per method an Optuna (TPE) search run by Ray Tune, MLflow records, the best
configuration of each method re-trained over seeds, a comparison report and exported configs.

    python -m harness.sweep birds_video [key=value ...]
    python -m harness.sweep birds_video sweep=smoke study.output_dir=/tmp/study

Outputs under `study.output_dir`: `report/` (index.html, the page to open first; figures/;
comparison.md/.csv/.tex, the knob table, per-method trial tables; see reports/study_report.py),
`best/<method>.yaml` (the final-training command `python -m harness.train` takes them as they are),
`ray/` (Ray Tune's results), `mlflow.db` (unless `mlflow.tracking_uri` points elsewhere),
`study_state.json` (what a re-run of the same command resumes from).

Resuming: each stage (`search-<method>`, then `final`) is one Ray Tune experiment under `ray/`.
Running the same command again on the same `study.output_dir` after the driver died (SIGINT,
SIGKILL, a lost machine) reloads the results of finished stages without running them, and
restores an unfinished one with `Tuner.restore(resume_unfinished=True)`: its finished trials
stay as they are, unfinished ones restart from their last per-epoch checkpoint, failed ones stay
failed, and the Optuna study (SQLite) continues with its sampler's saved state.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml
from omegaconf import DictConfig, OmegaConf
from ray.tune.search.optuna import OptunaSearch

from harness.config import (
    ConfigError,
    compose,
    experiments,
    resolve_paths,
    run_name,
    search_params,
    study_runs,
    trial_config,
    validate_study,
)
from harness.data import Dataset, prepare_dataset
from harness.data.folders import DatasetError
from harness.models import model_inputs
from harness.overrides import check_overrides
from harness.preflight import check_before_start
from harness.resources import trial_resources
from harness.search_space import define_by_run
from harness.study_state import FolderInUse, StudyState, flat_config, hold_folder
from harness.train import VALIDATION_FAITHFULNESS

SYNTHETIC_NOTE = "SYNTHETIC DATA (built-in generator, not a real dataset)"


class StudyInterrupted(RuntimeError):
    """A stage ended before all its trials did (SIGINT): the same command resumes it."""


class StudyIncomplete(RuntimeError):
    """The study ended, its report written, but some methods have no final result (no search
    trial finished, or no final seed did): their rows in the table are empty."""

    def __init__(self, report: Path, methods: dict[str, str]) -> None:
        self.report, self.methods = report, methods
        super().__init__("; ".join(f"{m}: {why}" for m, why in methods.items()))


EXIT_INCOMPLETE = 3  # the exit code of a study that ended with a method lacking final results


def _quiet_libraries(verbose: bool) -> None:
    """The progress view (harness/progress.py) replaces the libraries' own lines: Ray Tune's
    headers and INFO lines, Optuna's "study created", MLflow's store set-up; `ray.verbose` keeps
    them. Warnings always show."""
    # A snapshot of Tune's experiment state follows every trial checkpoint (CheckpointConfig
    # num_to_keep=1): that is what bounds the work a killed driver loses, not a problem to warn of.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if verbose:
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # its new engine prints headers whatever
    for name in ("ray.tune", "optuna", "mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _init_ray(cfg: DictConfig) -> bool:
    """Join the Ray cluster at `ray.address` (or RAY_ADDRESS; "auto": the cluster started on this
    machine with `ray start`), or start a local Ray (`ray.num_cpus`, `ray.num_gpus`; no dashboard).
    Returns whether a cluster was joined."""
    import ray

    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        # the trial workers' own log lines reach this terminal with ray.verbose only
        quiet = {"log_to_driver": bool(cfg.ray.verbose)}
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(
                address="local", num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus,
                include_dashboard=False, **quiet,
            )  # fmt: skip
    return bool(address)


def _warm_up_store(tracking_uri: str) -> None:
    """Import MLflow and open a local tracking store (a new SQLite store creates its schema), to
    run while Ray starts; a tracking server is not called here (the pre-flight check asked it).
    Failures are left to the study's own first call, which reports them."""
    try:
        from mlflow import MlflowClient

        if urlparse(tracking_uri).scheme not in ("http", "https"):
            MlflowClient(tracking_uri).search_experiments(max_results=1)
    except Exception:  # noqa: BLE001, S110 - reported by start_study_run, in the main thread
        pass


def _alive_nodes() -> list[dict[str, Any]]:
    import ray

    return [node for node in ray.nodes() if node["Alive"]]


def _check_shared_storage(folder: Path, nodes: list[dict[str, Any]]) -> None:
    """Every node must see `folder`: Tune writes each trial's results and checkpoints there from
    the trial's own node, and the driver reads them back. A marker file written here is looked
    for by a task pinned to each node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    marker = folder / f".storage-check-{os.getpid()}-{time.time_ns()}"
    marker.write_text("written by the study's driver\n")
    try:
        visible = ray.remote(num_cpus=0)(os.path.isfile)
        seen = ray.get([
            visible.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            ).remote(str(marker))
            for node in nodes
        ], timeout=300)  # fmt: skip
    finally:
        marker.unlink()
    blind = [f"{n['NodeManagerAddress']} ({n['NodeID'][:12]})"
             for n, ok in zip(nodes, seen) if not ok]  # fmt: skip
    if blind:
        raise ConfigError(
            f"study.output_dir: {folder} is not visible from Ray node(s) {', '.join(blind)}: "
            "every node writes its trials' results and checkpoints there; put it on storage "
            "all nodes mount at the same path (NFS, a cluster file system)"
        )


class _OptunaSearch(OptunaSearch):
    """Ray Tune's OptunaSearch, telling Optuna that a trial stopped early by the scheduler was
    PRUNED (its last score reported as an intermediate value at its epoch) rather than COMPLETE
    with that partial score: TPE then ranks it below every completed trial (pruned trials among
    themselves by how far they got, then by score) instead of taking an early, usually lower,
    validation accuracy as that configuration's final result.

    Resumable: Ray Tune saves this searcher with its experiment state (its Optuna trials, the
    sampler's random state; the study itself lives in `sweep.optuna_storage`). On a start or a
    restore, Optuna trials left RUNNING that no Tune trial holds (asked by a driver killed
    before Tune saved the trial) are told FAIL; a trial already finished in the storage (the
    driver died after telling Optuna, before Tune saved that) is not told or reported again.

    Multi-objective (`metric` a list, `sweep.objective=pareto`): Optuna keeps no intermediate
    values, so a pruned trial is only told PRUNED and left out of the sampler's model. A trial
    counts as finished when it ran every epoch and reported every objective (the validation
    occlusion gap comes at the end)."""

    def __init__(self, *, epochs: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._epochs = epochs
        self._checked: set[str] = set()  # trials whose Optuna state this session has checked
        self._fail_lost_trials()

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self._checked = set()
        self._fail_lost_trials()

    def _fail_lost_trials(self) -> None:
        from optuna.trial import TrialState

        held = {trial.number for trial in self._ot_trials.values()}
        for trial in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.number not in held:
                self._ot_study.tell(trial.number, state=TrialState.FAIL)

    def _skip_if_told(self, trial_id: str) -> None:
        """Count a trial finished in the storage as completed (checked once per session)."""
        if trial_id in self._checked or trial_id not in self._ot_trials:
            return
        self._checked.add(trial_id)
        number = self._ot_trials[trial_id].number
        if self._ot_study.get_trials(deepcopy=False)[number].state.is_finished():
            self._completed_trials.add(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._skip_if_told(trial_id)
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        self._skip_if_told(trial_id)
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        finished = bool(result) and result["epoch"] >= self._epochs
        finished = finished and all(result.get(m) is not None for m in metrics)
        if error or not result or finished or trial_id in self._completed_trials:
            return super().on_trial_complete(trial_id, result, error)
        import optuna

        trial = self._ot_trials[trial_id]
        if not isinstance(self.metric, list):
            trial.report(result[self.metric], step=result["epoch"])
        self._ot_study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        self._completed_trials.add(trial_id)


def _objectives(sweep: DictConfig) -> tuple[list[str], list[str]]:
    """The search's metrics and modes: `sweep.metric`, and under `sweep.objective=pareto` the
    validation occlusion gap of the trial's explainer (LeRF - MoRF area, higher = more faithful)
    too. Validation, not test: the objectives select configurations."""
    metrics, modes = [str(sweep.metric)], [str(sweep.mode)]
    if sweep.objective == "pareto":
        metrics.append(VALIDATION_FAITHFULNESS)
        modes.append("max")
    return metrics, modes


def _trial_dirname(trial) -> str:
    """Short trial folders; the trial's MLflow run is tagged with the same name."""
    return str(trial)


@dataclass
class _Engine:
    """What every Tuner of a study shares: where results go and how trials are run and logged."""

    cfg: DictConfig
    state: StudyState
    trainable: Callable[[dict[str, Any]], None]
    resources: dict[str, float]
    concurrent: int
    ray_note: str = ""  # how the study runs on Ray, for the report

    def fit(self, name: str, trainable, param_space: dict[str, Any], tags: dict[str, str],
            trials: int, tune_config: Callable[[], dict[str, Any]]):  # fmt: skip
        """Run stage `name` (a Tune experiment of `trials` trials) to its end: a finished stage's
        results are loaded, an unfinished one is restored, a new one started (`tune_config()`
        makes its searcher and scheduler). Raises StudyInterrupted if it ends unfinished."""
        from ray import tune

        from harness.progress import Progress
        from harness.tracking import Outbox, TrialRuns, sync_call

        path = self.state.ray_dir / name
        trainable = tune.with_resources(trainable, self.resources)
        if self.state.begin_stage(name, tags).finished:
            print(f"{name}: finished in an earlier run, results loaded from {path}", flush=True)
            return tune.Tuner.restore(str(path), trainable).get_results()
        if _saved_trials(path):
            print(f"{name}: resuming the interrupted stage from {path}", flush=True)
            tuner = tune.Tuner.restore(str(path), trainable, resume_unfinished=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=param_space,
                tune_config=tune.TuneConfig(
                    max_concurrent_trials=self.concurrent,
                    trial_dirname_creator=_trial_dirname,
                    # true: a trial actor imports torch + transformers once
                    reuse_actors=bool(self.cfg.sweep.reuse_actors),
                    **tune_config(),
                ),
                run_config=tune.RunConfig(
                    name=name,
                    storage_path=str(self.state.ray_dir),
                    callbacks=[
                        TrialRuns(self.state.folder, name),
                        Progress(name, trials, str(self.cfg.sweep.metric),
                                 str(self.cfg.sweep.mode), self.concurrent),  # fmt: skip
                    ],
                    # the latest per-epoch checkpoint of each trial (the last one holds its
                    # artifacts): what a retried or resumed trial restarts from
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                    failure_config=tune.FailureConfig(
                        max_failures=int(self.cfg.sweep.max_failures)
                    ),
                    verbose=2 if self.cfg.ray.verbose else 0,  # Ray Tune's own tables
                ),
            )
        grid = tuner.fit()
        # Judged by the state Tune saved (what a resume starts from): after a SIGINT, Tune's
        # in-memory trials read TERMINATED, the saved ones RUNNING.
        ended = sum(trial.status in ("TERMINATED", "ERROR") for trial in _saved_trials(path))
        if ended < trials:
            raise StudyInterrupted(f"{name}: {ended} of {trials} trials ended")
        self.state.finish_stage(name)
        Outbox.to(self.state.tracking_uri).put(sync_call(self.state, [name]))
        return grid

    def search(self, method: str, model: str | None = None):
        """Optuna TPE over the method's space (on `model` of `study.models`, named by
        `run_name`), trials run by Ray Tune (ASHA stops the weak ones
        early when `sweep.scheduler=asha`, on `sweep.metric`). `sweep.objective=pareto`: Optuna's
        multi-objective TPE (MOTPE) over (`sweep.metric`, validation occlusion gap); TPE rather
        than NSGA-II, whose first generation (50 trials by default) would be random sampling at
        the budgets a study affords."""
        cfg = self.cfg
        space = search_params(cfg, method, model)
        for why in space.left_out:  # choices this model cannot serve are not searched on it
            print(f"{run_name(model, method)}: left out of the search: {why}", flush=True)
        metrics, modes = _objectives(cfg.sweep)
        name, tags = run_name(model, method), {"stage": "search", "method": method}
        if model is not None:
            tags["model"] = model
        pareto = len(metrics) > 1

        def tune_config() -> dict[str, Any]:
            import optuna
            from ray.tune.schedulers import ASHAScheduler

            searcher = _OptunaSearch(
                epochs=int(cfg.train.epochs),
                space=define_by_run(space.params),
                metric=metrics if pareto else metrics[0],
                mode=modes if pareto else modes[0],
                sampler=optuna.samplers.TPESampler(
                    seed=int(cfg.sweep.sampler_seed),
                    n_startup_trials=int(cfg.sweep.startup_trials),
                ),
                storage=optuna.storages.RDBStorage(cfg.sweep.optuna_storage),
                study_name=f"{cfg.study.name}-{name}" + ("-pareto" if pareto else ""),
            )
            scheduler = None
            if cfg.sweep.scheduler == "asha":
                scheduler = ASHAScheduler(
                    time_attr="epoch",
                    max_t=int(cfg.train.epochs),
                    grace_period=int(cfg.sweep.asha.grace_period),
                    reduction_factor=float(cfg.sweep.asha.reduction_factor),
                )
            return dict(search_alg=searcher, scheduler=scheduler, metric=cfg.sweep.metric,
                        mode=cfg.sweep.mode, num_samples=int(cfg.sweep.num_samples))  # fmt: skip

        grid = self.fit(
            f"search-{name}", self.trainable, trial_config(cfg, method, model), tags,
            int(cfg.sweep.num_samples), tune_config,
        )  # fmt: skip
        return grid, space.params

    def final(self, arms: dict[str, dict[str, Any]]):
        """Each arm's configuration (`final_arms`) re-trained on the final seeds (`final_seeds`),
        in one Tuner (trials of all arms share the trial actors). Trials get {method: the arm,
        seed}; the configs travel with the trainable. Tune starts them seed by seed in the order
        of `arms` (give the slowest first: each wave then ends with its quickest trials, a
        shorter tail)."""
        from ray import tune

        seeds = final_seeds(self.cfg)
        space = {"method": tune.grid_search(list(arms)), "seed": tune.grid_search(seeds)}
        trainable = tune.with_parameters(_retrain, run=self.trainable, configs=arms,
                                         first_seed=seeds[0])  # fmt: skip
        return self.fit("final", trainable, space, {"stage": "final"}, len(arms) * len(seeds),
                        lambda: {"num_samples": 1})  # fmt: skip


CONTROL = "et (random relevance)"  # final.controls: ET's selected configuration, random relevance


def exported(cfg: DictConfig, config: dict[str, Any]) -> dict[str, Any]:
    """A search trial's config as the study exports and re-trains it: its occlusion tests with
    `evaluation.tie_draws` draws (search trials use `evaluation.search_tie_draws`)."""
    config = copy.deepcopy(config)
    config["evaluation"]["tie_draws"] = int(cfg.evaluation.tie_draws)
    return config


def final_seeds(cfg: DictConfig) -> list[int]:
    """The final stage's seeds: `final.seeds` of them from `final.first_seed` on, disjoint from
    the search trials' `seed` (checked by `validate_study`)."""
    first = int(cfg.final.first_seed)
    return list(range(first, first + int(cfg.final.seeds)))


def final_arms(cfg: DictConfig, best: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The final stage's configurations, by arm: each method's selected one, with the
    like-for-like faithfulness test on (`evaluation.like_for_like`), and with `final.controls`
    and an ET arm, `et (random relevance)`: ET's selected configuration (same policy, knobs and
    seeds) with `random` relevance, which tells the explanation's effect from the crop's (with
    `study.models`, one per model: `<model>-et (random relevance)`). With
    `report.explain_models`, a study method's arm (the models the report explains) also has
    `evaluation.explain_model` on; `_retrain` keeps it for the lowest seed only."""
    arms = {}
    methods = set(cfg.study.methods)
    for method, config in best.items():
        config = exported(cfg, config)
        config["evaluation"]["like_for_like"] = True
        config["evaluation"]["explain_model"] = bool(cfg.report.explain_models) and (
            method in methods
        )
        arms[method] = config
        if config["method"]["name"] == "et" and cfg.final.get("controls", True):
            control = copy.deepcopy(config)
            control["method"]["explainer"] = "random"
            control["evaluation"]["explain_model"] = False
            arms[CONTROL if method == "et" else f"{method} (random relevance)"] = control
    return arms


def _saved_trials(path: Path) -> list:
    """The trials in the experiment state Ray Tune saved under `path` (none before its first
    snapshot)."""
    from ray import tune

    if not any(path.glob("experiment_state-*.json")):
        return []
    return tune.ExperimentAnalysis(str(path)).trials


def _retrain(config: dict[str, Any], run, configs: dict[str, dict[str, Any]],
             first_seed: int) -> None:  # fmt: skip
    """Train arm `config["method"]` on `config["seed"]`: the lowest seed's run is the one whose
    model the report explains (`evaluation.explain_model`), the others only test it."""
    arm = copy.deepcopy(configs[config["method"]])
    evaluation = arm["evaluation"]
    evaluation["explain_model"] = bool(evaluation.get("explain_model")) and (
        config["seed"] == first_seed
    )
    run({**arm, "seed": config["seed"]})


def _reason(error: BaseException) -> str:
    from harness.tracking import last_line

    return last_line(str(error)) or type(error).__name__


def _finished(grid) -> list:
    """The trials of `grid` that ran to their end, in the order the stage created them (by trial
    id): Ray Tune promises no order for a result grid (one that just ran, or the same stage read
    back from disk by a resumed study), and whatever picks among trials (ties included) must not
    depend on it."""
    done = [r for r in grid if r.error is None and r.metrics and "test_accuracy" in r.metrics]
    return sorted(done, key=lambda r: r.metrics["trial_id"])


def _select(cfg: DictConfig, finished: list, params, folder: Path, method: str, synthetic: bool):
    """The trial whose configuration the final stage re-trains: the best `sweep.metric` (ties go
    to the earliest trial: `finished` is in creation order); under `sweep.objective=pareto` the
    knee of the Pareto front of the finished trials (written to `folder` as
    pareto_<method>.csv|md|png, see reports/pareto.py). A resumed study makes the same choice."""
    from reports.pareto import pareto_table, write_pareto

    metrics, modes = _objectives(cfg.sweep)
    signs = [1.0 if mode == "max" else -1.0 for mode in modes]
    if len(metrics) == 1:
        return max(finished, key=lambda r: signs[0] * r.metrics[metrics[0]])
    rows = [{"trial": Path(r.path).name, **{m: r.metrics[m] for m in metrics},
             **_searched_values(r.config, params)} for r in finished]  # fmt: skip
    table, chosen = pareto_table(rows, metrics, signs)
    write_pareto(table, folder, method, metrics, f"{cfg.experiment}: {method}", synthetic)
    return finished[chosen]


def _export_best(
    path: Path, config: dict[str, Any], method: str, scores: dict[str, float], synthetic: bool
) -> None:
    scored = ", ".join(f"{name} {value:.4f}" for name, value in scores.items())
    header = [
        f"# Best {method} configuration of study {config['experiment']} ({scored}).",
        "# Train and evaluate it with: python -m harness.train " + str(path),
    ]
    if synthetic:
        header.append(f"# Data: {SYNTHETIC_NOTE}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(header) + "\n" + yaml.safe_dump(config, sort_keys=False))


def _open_state(cfg: DictConfig, tags: dict[str, str]) -> StudyState:
    """The study's state in its output folder: new, or (same command again) the one to resume.
    A folder holding a study started with another configuration is refused, unless
    `study.restart=true` (the old study is then moved aside, see `_move_aside`)."""
    config = _comparable(cfg)
    state = StudyState.load(Path(cfg.study.output_dir))
    if state is not None and state.config != config and cfg.study.restart:
        _move_aside(Path(cfg.study.output_dir), cfg)
        state = None
    if state is None:
        state = StudyState(Path(cfg.study.output_dir), cfg.mlflow.tracking_uri,
                           cfg.mlflow.experiment_name, config, tags=tags)  # fmt: skip
    elif state.config != config:
        old, new = flat_config(state.config), flat_config(config)
        keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        raise ConfigError(
            f"study.output_dir: {state.folder} holds a study started with other settings "
            f"({', '.join(f'{k}: {old.get(k)!r} -> {new.get(k)!r}' for k in keys[:5])}). Run "
            "it with its own settings to resume it; to start afresh there, add "
            "study.restart=true (the old study is moved aside, nothing is deleted); or choose "
            "another study.output_dir"
        )
    return state


def _move_aside(folder: Path, cfg: DictConfig) -> None:
    """`study.restart=true`: the study in `folder` is renamed `<folder>.replaced-<time>` (its
    MLflow and Optuna stores move with it where they live in the folder, as by default)."""
    aside = folder.with_name(f"{folder.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(folder, aside)
    folder.mkdir()
    print(f"study.restart: the earlier study in {folder} was moved to {aside}", flush=True)


def _comparable(cfg: DictConfig) -> dict[str, Any]:
    """The settings a resumed study must share with its start: all but where it runs (`ray`),
    how long the end waits for MLflow, what the report page draws (`report`) and
    `study.restart`."""
    config = OmegaConf.to_container(cfg, resolve=True)
    del config["ray"], config["report"]
    config["mlflow"].pop("flush_timeout_s", None)
    config["study"].pop("restart", None)
    # plain types, as the state file reads back; in order (a space lists a parameter before the
    # ones whose `when` names it)
    return yaml.safe_load(yaml.safe_dump(config, sort_keys=False))


def check_output_dir(cfg: DictConfig) -> None:
    """Raise ConfigError if `study.output_dir` holds a study with other settings (and
    `study.restart` is not set); reads only."""
    if not cfg.study.restart:
        _open_state(cfg, {})


def run_study(cfg: DictConfig, dataset: Dataset | None = None) -> Path:
    """Run the study described by `cfg` (already composed and validated) on `dataset` (prepared
    from `cfg.data` when not given), or resume it from `study.output_dir`, holding that folder
    (`hold_folder`: ConfigError while another driver runs there); returns the report folder.
    Raises StudyInterrupted when a stage was interrupted (SIGINT)."""
    try:
        with hold_folder(Path(cfg.study.output_dir)):
            return _run_study(cfg, dataset)
    except FolderInUse as error:
        raise ConfigError(f"study.output_dir: {error}; wait for it to end (the same command "
                          "then resumes it), or choose another study.output_dir") from None


def _run_study(cfg: DictConfig, dataset: Dataset | None) -> Path:
    from trainables import TRAINABLES

    started = time.perf_counter()
    _quiet_libraries(bool(cfg.ray.verbose))
    out = Path(cfg.study.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    # once, in the driver; trials memory-map it
    dataset = dataset or prepare_dataset(cfg.data, model_inputs(cfg.model))
    print(f"data: {dataset.name} ({len(dataset.labels)} samples of {'+'.join(dataset.inputs)}, "
          f"{dataset.num_classes} classes)"
          + (f" — {SYNTHETIC_NOTE}" if dataset.synthetic else ""), flush=True)  # fmt: skip
    if dataset.skipped:
        shown = "; ".join(str(s) for s in dataset.skipped[:5])
        print(f"data: {len(dataset.skipped)} files skipped (data.on_bad_file=skip; all of them in "
              f"report/skipped_files.csv): {shown}" + (" ..." if len(dataset.skipped) > 5 else ""),
              flush=True)  # fmt: skip
    # MLflow's import and a new store's schema take as long as Ray's start-up: both at once
    with ThreadPoolExecutor(1, thread_name_prefix="mlflow-warm-up") as pool:
        pool.submit(_warm_up_store, str(cfg.mlflow.tracking_uri))
        joined, nodes = _init_ray(cfg), _alive_nodes()
    from mlflow.exceptions import MlflowException

    from harness.tracking import Outbox, last_line, start_study_run

    resources, concurrent = trial_resources(cfg.sweep, [n["Resources"] for n in nodes], joined)
    if len(nodes) > 1:
        _check_shared_storage(out, nodes)
    # the study's settings are recorded once Ray and the tracking store are there
    tags = {"experiment": cfg.experiment, "data": dataset.name, "synthetic": str(dataset.synthetic)}
    state = _open_state(cfg, tags)
    resumed = bool(state.stages)
    try:
        state.parent_run_id = start_study_run(state)
    except MlflowException as error:
        raise ConfigError(f"mlflow.tracking_uri: {state.tracking_uri} does not answer "
                          f"({last_line(str(error))}); a study starts with its tracking store "
                          "reachable") from None  # fmt: skip
    state.save()
    ray_note = (
        f"{'joined' if joined else 'local'}, {len(nodes)} node(s); per trial {resources['cpu']:g} "
        f"CPU, {resources['gpu']:g} GPU; up to {concurrent} trials at once"
    )
    print(f"ray: {ray_note}", flush=True)
    engine = _Engine(cfg, state, TRAINABLES[cfg.modality], resources, concurrent, ray_note)
    outbox = Outbox.to(state.tracking_uri)
    try:
        report = _run_stages(cfg, engine, dataset, started, resumed)
    finally:
        left = outbox.drain(float(cfg.mlflow.flush_timeout_s))
        if left:
            print(f"mlflow: {state.tracking_uri} did not take {left} waiting records within "
                  f"mlflow.flush_timeout_s={cfg.mlflow.flush_timeout_s}; the study's files hold "
                  f"them: python -m harness.tracking sync {out}", file=sys.stderr)  # fmt: skip
    return report


def _run_stages(cfg: DictConfig, engine: _Engine, dataset: Dataset, started: float,
                resumed: bool) -> Path:  # fmt: skip
    from harness.tracking import Outbox, sync_call
    from reports.comparison import (
        MethodSummary,
        comparison_table,
        failures_table,
        faithfulness_summary,
        skipped_table,
        write_comparison,
    )

    state, out = engine.state, engine.state.folder
    summaries, best_configs, seconds = {}, {}, {}
    for model, searched in study_runs(cfg):
        grid, params = engine.search(searched, model)
        method = run_name(model, searched)  # the report's row
        (out / "report").mkdir(parents=True, exist_ok=True)
        grid.get_dataframe().to_csv(out / "report" / f"trials_{method}.csv", index=False)
        finished = _finished(grid)
        summary = MethodSummary(method, len(grid), len(grid) - len(finished), math.nan, {})
        summary.failures = [(Path(r.path).name, _reason(r.error)) for r in grid if r.error]
        if finished:
            best = _select(cfg, finished, params, out / "report", method, dataset.synthetic)
            summary.best_val_accuracy = float(best.metrics[cfg.sweep.metric])
            summary.best_params = _searched_values(best.config, params)
            best_configs[method] = best.config
            seconds[method] = sum(r.metrics["time_total_s"] for r in finished) / len(finished)
            scores = {m: float(best.metrics[m]) for m in _objectives(cfg.sweep)[0]}
            _export_best(out / "best" / f"{method}.yaml", exported(cfg, best.config), method,
                         scores, dataset.synthetic)  # fmt: skip
        summaries[method] = summary
    finals = []
    if best_configs:
        slowest_first = sorted(best_configs, key=lambda m: -seconds[m])
        arms = final_arms(cfg, {m: best_configs[m] for m in slowest_first})
        for arm in arms.keys() - summaries.keys():  # the controls
            summaries[arm] = MethodSummary(
                arm, 0, 0, math.nan, {"config": "et's selected", "method.explainer": "random"}
            )
        finals = _finished(engine.final(arms))
        for result in finals:
            _add_final_run(summaries[result.config["method"]], result)
        _write_final_records(list(summaries.values()), out / "report")
    summaries = list(summaries.values())
    table = _comparison(cfg, summaries, dataset, comparison_table)
    elapsed = time.perf_counter() - started
    objectives = _objectives(cfg.sweep)[0]
    selection = f"the best {objectives[0]} of each search" if len(objectives) == 1 else (
        f"the knee of each search's Pareto front of ({', '.join(objectives)}), "
        "report/pareto_<method>.md"
    )  # fmt: skip
    notes = {
        "experiment": cfg.experiment,
        "data": dataset.name + (f" — {SYNTHETIC_NOTE}" if dataset.synthetic else ""),
        "trials per method": str(cfg.sweep.num_samples),
        "epochs per trial": str(cfg.train.epochs),
        "final seeds": f"{cfg.final.seeds} ({', '.join(map(str, final_seeds(cfg)))}; the "
        f"search's: {cfg.seed})",
        "selection": selection,
        "occlusion": f"ties in random order, {cfg.evaluation.tie_draws} draws in the final stage "
        f"({cfg.evaluation.get('search_tie_draws', 1)} in search trials); like-for-like "
        f"explainers {', '.join(cfg.evaluation.explainers)}",
        "Ray": engine.ray_note,
        "wall time": f"{elapsed / 60:.1f} min" + (" (its last run: resumed)" if resumed else ""),
        "MLflow": f"{cfg.mlflow.tracking_uri} (experiment {cfg.mlflow.experiment_name}, "
        f"parent run {state.parent_run_id})",
    }
    if not dataset.synthetic:
        notes["data folder"] = f"{cfg.data.root} ({len(dataset.skipped)} files skipped)"
    title = f"{cfg.experiment}: " + " vs ".join(cfg.study.methods)
    if cfg.study.get("models"):
        title += " on " + ", ".join(cfg.study.models)
        notes["p vs vanilla"] = "each model's methods against that model's own vanilla"
    paths = write_comparison(table, out / "report", title, notes, failures_table(summaries),
                             skipped_table(dataset.skipped),
                             faithfulness=faithfulness_summary(summaries))  # fmt: skip
    if (cfg.data.get("face_crop") or {}).get("enabled") and "video" in dataset.inputs:
        _face_report(cfg, dataset, finals, out / "report", title)
    _write_report_page(out, bool(cfg.report.explain_models))
    metrics = {f"{_metric_name(row.method)}_test_acc_mean": row.test_acc_mean
               for row in table.itertuples()}  # fmt: skip
    state.summary = {"params": {"wall_seconds": round(elapsed)},
                     "metrics": {k: v for k, v in metrics.items() if v == v}}  # fmt: skip
    state.save()
    Outbox.to(state.tracking_uri).put(sync_call(state, parent=True))  # and stages not synced
    print(paths["md"].read_text(), flush=True)
    incomplete = {s.method: "no search trial finished" if s.method not in best_configs
                  else "no final seed finished" for s in summaries if not s.final_runs}  # fmt: skip
    if incomplete:
        raise StudyIncomplete(out / "report", incomplete)
    return out / "report"


def _face_report(cfg: DictConfig, dataset: Dataset, finals: list, folder: Path, title: str) -> None:
    """Face-cropped data: the crops' gallery (report/face_crops.png, real data) and the facial-
    region trends of the final models (report/face_trends.md|csv|_<method>.png)."""
    from reports.faces import FACE_GALLERY, save_face_gallery
    from reports.trends import study_face_trends

    if dataset.cache is not None:
        save_face_gallery(dataset.cache, folder / FACE_GALLERY)
    runs: dict[str, list[Path]] = {}
    for result in finals:
        if result.checkpoint is not None:
            runs.setdefault(result.config["method"], []).append(Path(result.checkpoint.path))
    if runs:
        study_face_trends(runs, folder, f"{title}: facial-region trends",
                          explainers=list(cfg.evaluation.trend_explainers))  # fmt: skip


def _write_report_page(out: Path, explain_models: bool) -> None:
    """The report's page, figures and knob table (what `python -m harness.report` rebuilds), the
    final models put through the explainers when `explain_models` (`report.explain_models`). The
    study's results are on disk by now: a failure here is reported, not raised."""
    from reports.study_report import build_report

    try:
        print(f"report page: {build_report(out, explain=explain_models).index}", flush=True)
    except Exception as error:
        print(f"warning: report page not written ({type(error).__name__}: {error}); the tables "
              f"are; rebuild it with: python -m harness.report {out}", file=sys.stderr)  # fmt: skip


def _comparison(cfg: DictConfig, summaries: list, dataset: Dataset, comparison_table):
    """The comparison table; with `study.models`, one block of rows per model, each paired
    against its own vanilla (rows `<model>-<method>`)."""
    seed = int(cfg.seed)
    if not cfg.study.get("models"):
        return comparison_table(summaries, dataset.name, dataset.synthetic, seed=seed)
    import pandas as pd

    from harness.evaluate.statistics import holm

    blocks = []
    for model in cfg.study.models:
        mine = [s for s in summaries if s.method.startswith(f"{model}-")]
        block = comparison_table(mine, dataset.name, dataset.synthetic, f"{model}-vanilla",
                                 seed=seed)  # fmt: skip
        blocks.append(block.rename(columns={f"p_vs_{model}-vanilla": "p_vs_vanilla",
                                            f"diff_vs_{model}-vanilla": "diff_vs_vanilla"}))
    table = pd.concat(blocks, ignore_index=True)
    table["p_holm"] = holm(table["p_vs_vanilla"].tolist())  # over every comparison of the table
    return table


def _metric_name(arm: str) -> str:
    """An arm's name as MLflow takes it in a metric key: `et (random relevance)` ->
    `et_random_relevance`."""
    return re.sub(r"[^0-9A-Za-z]+", "_", arm).strip("_")


def _add_final_run(summary, result) -> None:
    """A final run's metrics, and its saved test predictions and like-for-like faithfulness
    (predictions.csv, faithfulness.csv in its last checkpoint), into the arm's summary."""
    import pandas as pd

    from harness.train import FAITHFULNESS_FILE, PREDICTIONS_FILE

    seed = int(result.config["seed"])
    summary.final_runs.append({**result.metrics, "seed": seed})
    folder = Path(result.checkpoint.path) if result.checkpoint else None
    for name, held in ((PREDICTIONS_FILE, summary.predictions),
                       (FAITHFULNESS_FILE, summary.faithfulness)):  # fmt: skip
        if folder is not None and (folder / name).is_file():
            held[seed] = pd.read_csv(folder / name)


def _write_final_records(summaries, folder: Path) -> None:
    """report/predictions.csv (every final run's test predictions: method, seed, row, label,
    predicted, prob_<class>) and report/faithfulness_runs.csv (every run's like-for-like
    faithfulness: method, seed, explainer, ...), tidy, one row per clip or explainer."""
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    for name, field in (("predictions.csv", "predictions"),
                        ("faithfulness_runs.csv", "faithfulness")):  # fmt: skip
        frames = [frame.assign(method=s.method, seed=seed)
                  for s in summaries for seed, frame in getattr(s, field).items()]  # fmt: skip
        if frames:
            table = pd.concat(frames, ignore_index=True)
            first = ["method", "seed"]
            table[first + [c for c in table.columns if c not in first]].to_csv(
                folder / name, index=False
            )


def _searched_values(config: dict[str, Any], params) -> dict[str, Any]:
    """The values the search chose (the parameters that applied to this trial)."""
    flat = flat_config(config)
    return {p.path: flat[p.path] for p in params if p.applies(flat)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.sweep",
        description="Run a whole explanation-guided-training study (vanilla vs IFI vs ET): "
        "Optuna searches run by Ray Tune, MLflow records, final re-training over seeds, "
        "comparison tables and exported best configs.",
        epilog="Overrides are Hydra-style, e.g. sweep=smoke sweep.num_samples=16 "
        "study.output_dir=/tmp/s mlflow.tracking_uri=http://127.0.0.1:5000 "
        "space.et.method.k.high=1.5",
    )
    parser.add_argument("experiment", help=f"one of: {', '.join(experiments())}")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    parser.add_argument("--print-config", action="store_true",
                        help="print the composed config and exit")  # fmt: skip
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="Ray Tune's progress tables and the trials' own log lines too "
                        "(ray.verbose=true)")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        overrides = [*args.overrides, *["ray.verbose=true"] * args.verbose]
        if args.experiment in experiments():
            check_overrides(args.experiment, overrides)
        cfg = compose(args.experiment, overrides)
        resolve_paths(cfg)
        validate_study(cfg)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.print_config:
        print(OmegaConf.to_yaml(cfg))
        return 0
    try:
        check_output_dir(cfg)
        check_before_start(cfg)  # all before any file is written, any data decoded, Ray started
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        # a bad data folder stops here, before Ray starts
        dataset = prepare_dataset(cfg.data, model_inputs(cfg.model))
    except (DatasetError, ValueError, FileNotFoundError) as error:  # ValueError: clips not decoded
        print(f"error: data{'.root' if cfg.data.root else ''}: {error}", file=sys.stderr)
        return 2
    try:
        report = run_study(cfg, dataset)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except StudyInterrupted as error:
        print(f"interrupted ({error}); run the same command again to resume the study",
              file=sys.stderr)  # fmt: skip
        return 130
    except StudyIncomplete as error:
        print(f"report: {error.report}", flush=True)
        print(f"incomplete study, exit code {EXIT_INCOMPLETE}: {error} (see the report's failed "
              "trials)", file=sys.stderr, flush=True)  # fmt: skip
        return EXIT_INCOMPLETE
    print(f"report: {report}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
