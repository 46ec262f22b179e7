"""Run a whole study: per method an Optuna (TPE) search run by Ray Tune, MLflow records, the best
configuration of each method re-trained over seeds, a comparison report and exported configs.

    python -m harness.sweep birds_video [key=value ...]
    python -m harness.sweep birds_video sweep=smoke study.output_dir=/tmp/study

Outputs under `study.output_dir`: `report/` (comparison.md/.csv/.tex, per-method trial tables),
`best/<method>.yaml` (the final-training command `python -m harness.train` takes them as they are),
`ray/` (Ray Tune's results), `mlflow.db` (unless `mlflow.tracking_uri` points elsewhere).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from ray.tune.search.optuna import OptunaSearch

from harness.config import (
    ConfigError,
    compose,
    experiments,
    resolve_paths,
    trial_config,
    validate_study,
)
from harness.data import VideoDataset, prepare_dataset
from harness.data.folders import DatasetError
from harness.search_space import check_space, define_by_run
from harness.train import VALIDATION_FAITHFULNESS

SYNTHETIC_NOTE = "SYNTHETIC DATA (built-in generator, not a real dataset)"


AUTO_GPU_SHARE = 0.25  # sweep.gpus_per_trial=auto: a quarter of a GPU per trial where GPUs exist


def _init_ray(cfg: DictConfig) -> bool:
    """Join the Ray cluster at `ray.address` (or RAY_ADDRESS; "auto": the cluster started on this
    machine with `ray start`), or start a local Ray (`ray.num_cpus`, `ray.num_gpus`; no dashboard).
    Returns whether a cluster was joined."""
    import ray

    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        if address:
            ray.init(address=address)
        else:
            ray.init(
                address="local", num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus,
                include_dashboard=False,
            )  # fmt: skip
    return bool(address)


def _alive_nodes() -> list[dict[str, Any]]:
    import ray

    return [node for node in ray.nodes() if node["Alive"]]


def _resources(
    sweep: DictConfig, nodes: list[dict[str, float]], joined: bool
) -> tuple[dict[str, float], int]:
    """Per-trial resources (`sweep.cpus_per_trial`, `sweep.gpus_per_trial`) and the number of
    trials that fit at once, counted node by node (`nodes`: each node's Ray resources; a trial's
    resources must all be on one node). No node fitting a trial is an error on a local Ray; on a
    joined cluster a warning (an autoscaler may still add such nodes)."""
    gpus = sweep.gpus_per_trial
    if gpus == "auto":
        gpus = AUTO_GPU_SHARE if any(node.get("GPU", 0) > 0 for node in nodes) else 0
    cpus, gpus = float(sweep.cpus_per_trial), float(gpus)

    def fit(have: float, need: float) -> int:
        return math.floor(have / need + 1e-9) if need else 1 << 30

    fits = sum(min(fit(n.get("CPU", 0), cpus), fit(n.get("GPU", 0), gpus)) for n in nodes)
    if not fits:
        have = "; ".join(f"{n.get('CPU', 0):g} CPU, {n.get('GPU', 0):g} GPU" for n in nodes)
        message = (
            f"sweep.cpus_per_trial={cpus:g}, sweep.gpus_per_trial={gpus:g}: no Ray node has that "
            f"much for a trial (nodes: {have})"
        )
        if not joined:
            raise ConfigError(message)
        print(f"warning: {message}; trials wait until the cluster has such a node", flush=True)
    concurrent = int(sweep.max_concurrent or max(fits, 1))
    return {"cpu": cpus, "gpu": gpus}, concurrent


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
    PRUNED rather than COMPLETE with its partial score: TPE then ranks it below every completed
    trial instead of taking an early, usually lower, validation accuracy as that configuration's
    final result. A single-objective study also records its last score as an intermediate value at
    its epoch (pruned trials then rank among themselves by how far they got, then by score);
    Optuna keeps no intermediate values for a multi-objective study (`metric` a list), whose
    pruned trials are left out of the sampler's model. A trial counts as finished when it ran
    every epoch and reported every objective (the validation occlusion gap comes at the end)."""

    def __init__(self, *, epochs: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._epochs = epochs

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
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
    parent_run_id: str
    tags: dict[str, str]
    trainable: Callable[[dict[str, Any]], None]
    resources: dict[str, float]
    concurrent: int

    def fit(self, name: str, trainable, param_space: dict[str, Any], tags: dict[str, str],
            **tune_config):  # fmt: skip
        from ray import tune

        from harness.tracking import log_trial_artifacts, trial_callback

        mlflow_cfg = self.cfg.mlflow
        tuner = tune.Tuner(
            tune.with_resources(trainable, self.resources),
            param_space=param_space,
            tune_config=tune.TuneConfig(
                max_concurrent_trials=self.concurrent,
                trial_dirname_creator=_trial_dirname,
                reuse_actors=True,  # a trial actor imports torch + transformers once, not per trial
                **tune_config,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=str(Path(self.cfg.study.output_dir) / "ray"),
                callbacks=[
                    trial_callback(
                        mlflow_cfg.tracking_uri,
                        mlflow_cfg.experiment_name,
                        self.parent_run_id,
                        {**self.tags, **tags},
                    )
                ],
                failure_config=tune.FailureConfig(max_failures=int(self.cfg.sweep.max_failures)),
                verbose=1,
            ),
        )
        grid = tuner.fit()
        log_trial_artifacts(mlflow_cfg.tracking_uri, mlflow_cfg.experiment_name, grid)
        return grid

    def search(self, method: str):
        """Optuna TPE over the method's space, trials run by Ray Tune (ASHA stops the weak ones
        early when `sweep.scheduler=asha`, on `sweep.metric`). `sweep.objective=pareto`: Optuna's
        multi-objective TPE (MOTPE) over (`sweep.metric`, validation occlusion gap); TPE rather
        than NSGA-II, whose first generation (50 trials by default) would be random sampling at
        the budgets a study affords."""
        import optuna
        from ray.tune.schedulers import ASHAScheduler

        cfg = self.cfg
        space = OmegaConf.to_container(cfg.space[method], resolve=True)
        params = check_space(space, f"space.{method}")
        metrics, modes = _objectives(cfg.sweep)
        pareto = len(metrics) > 1
        searcher = _OptunaSearch(
            epochs=int(cfg.train.epochs),
            space=define_by_run(params),
            metric=metrics if pareto else metrics[0],
            mode=modes if pareto else modes[0],
            sampler=optuna.samplers.TPESampler(
                seed=int(cfg.sweep.sampler_seed), n_startup_trials=int(cfg.sweep.startup_trials)
            ),
            storage=optuna.storages.RDBStorage(cfg.sweep.optuna_storage),
            study_name=f"{cfg.study.name}-{method}" + ("-pareto" if pareto else ""),
        )
        scheduler = None
        if cfg.sweep.scheduler == "asha":
            scheduler = ASHAScheduler(
                time_attr="epoch",
                max_t=int(cfg.train.epochs),
                grace_period=int(cfg.sweep.asha.grace_period),
                reduction_factor=float(cfg.sweep.asha.reduction_factor),
            )
        grid = self.fit(
            f"search-{method}",
            self.trainable,
            trial_config(cfg, method),
            {"stage": "search", "method": method},
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=int(cfg.sweep.num_samples),
            metric=cfg.sweep.metric,
            mode=cfg.sweep.mode,
        )
        return grid, params

    def final(self, best: dict[str, dict[str, Any]]):
        """Each method's best configuration re-trained on seeds 0 .. final.seeds-1, in one Tuner
        (trials of all methods share the trial actors). Trials get {method, seed}; the configs
        travel with the trainable. Tune starts them seed by seed in the order of `best` (give the
        slowest method first: each wave then ends with its quickest trials, a shorter tail)."""
        from ray import tune

        space = {
            "method": tune.grid_search(list(best)),
            "seed": tune.grid_search(list(range(int(self.cfg.final.seeds)))),
        }
        trainable = tune.with_parameters(_retrain, run=self.trainable, configs=best)
        return self.fit("final", trainable, space, {"stage": "final"}, num_samples=1)


def _retrain(config: dict[str, Any], run, configs: dict[str, dict[str, Any]]) -> None:
    run({**configs[config["method"]], "seed": config["seed"]})


def _reason(error: BaseException) -> str:
    """The original exception's last line (Ray wraps it with the remote traceback)."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _finished(grid) -> list:
    return [r for r in grid if r.error is None and r.metrics and "test_accuracy" in r.metrics]


def _select(cfg: DictConfig, finished: list, params, folder: Path, method: str, synthetic: bool):
    """The trial whose configuration the final stage re-trains: the best `sweep.metric`; under
    `sweep.objective=pareto` the knee of the Pareto front of the finished trials (written to
    `folder` as pareto_<method>.csv|md|png, see reports/pareto.py)."""
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


def run_study(cfg: DictConfig, dataset: VideoDataset | None = None) -> Path:
    """Run the study described by `cfg` (already composed and validated) on `dataset` (prepared
    from `cfg.data` when not given); returns the report folder."""
    from harness.tracking import finish_study_run, start_study_run
    from reports.comparison import (
        MethodSummary,
        comparison_table,
        failures_table,
        write_comparison,
    )
    from trainables import TRAINABLES

    started = time.perf_counter()
    out = Path(cfg.study.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    joined, nodes = _init_ray(cfg), _alive_nodes()
    resources, concurrent = _resources(cfg.sweep, [n["Resources"] for n in nodes], joined)
    if len(nodes) > 1:
        _check_shared_storage(out, nodes)
    ray_note = (
        f"{'joined' if joined else 'local'}, {len(nodes)} node(s); per trial {resources['cpu']:g} "
        f"CPU, {resources['gpu']:g} GPU; up to {concurrent} trials at once"
    )
    print(f"ray: {ray_note}", flush=True)
    dataset = dataset or prepare_dataset(cfg.data)  # once, in the driver; trials memory-map it
    print(f"data: {dataset.name} ({len(dataset.labels)} clips, {dataset.num_classes} classes)"
          + (f" — {SYNTHETIC_NOTE}" if dataset.synthetic else ""), flush=True)  # fmt: skip
    tags = {"experiment": cfg.experiment, "data": dataset.name, "synthetic": str(dataset.synthetic)}
    parent = start_study_run(
        cfg.mlflow.tracking_uri, cfg.mlflow.experiment_name, cfg.study.name,
        out / "study_state.json", tags,
    )  # fmt: skip
    engine = _Engine(cfg, parent, tags, TRAINABLES[cfg.modality], resources, concurrent)
    summaries, best_configs, seconds = {}, {}, {}
    for method in cfg.study.methods:
        grid, params = engine.search(method)
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
            _export_best(out / "best" / f"{method}.yaml", best.config, method, scores,
                         dataset.synthetic)  # fmt: skip
        summaries[method] = summary
    if best_configs:
        slowest_first = sorted(best_configs, key=lambda m: -seconds[m])
        for result in _finished(engine.final({m: best_configs[m] for m in slowest_first})):
            summaries[result.config["method"]].final_runs.append(
                {**result.metrics, "seed": result.config["seed"]}
            )
    summaries = list(summaries.values())
    table = comparison_table(summaries, dataset.name, dataset.synthetic)
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
        "final seeds": str(cfg.final.seeds),
        "selection": selection,
        "Ray": ray_note,
        "wall time": f"{elapsed / 60:.1f} min",
        "MLflow": f"{cfg.mlflow.tracking_uri} (experiment {cfg.mlflow.experiment_name}, "
        f"parent run {parent})",
    }
    title = f"{cfg.experiment}: " + " vs ".join(cfg.study.methods)
    paths = write_comparison(table, out / "report", title, notes, failures_table(summaries))
    metrics = {f"{row.method}_test_acc_mean": row.test_acc_mean for row in table.itertuples()}
    finish_study_run(cfg.mlflow.tracking_uri, parent, {"wall_seconds": round(elapsed)},
                     {k: v for k, v in metrics.items() if v == v}, out / "report")  # fmt: skip
    print(paths["md"].read_text(), flush=True)
    return out / "report"


def _searched_values(config: dict[str, Any], params) -> dict[str, Any]:
    """The values the search chose (the parameters that applied to this trial)."""
    flat = _flat(config)
    return {p.path: flat[p.path] for p in params if p.applies(flat)}


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.sweep",
        description="Run a whole explanation-guided-training study (vanilla vs IFI vs ET): "
        "Optuna searches run by Ray Tune, MLflow records, final re-training over seeds, "
        "comparison tables and exported best configs.",
        epilog="Overrides are Hydra-style, e.g. sweep=smoke sweep.num_samples=16 "
        "study.output_dir=/tmp/s mlflow.tracking_uri=http://127.0.0.1:5000 methods.et.k=1.5",
    )
    parser.add_argument("experiment", help=f"one of: {', '.join(experiments())}")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    parser.add_argument("--print-config", action="store_true",
                        help="print the composed config and exit")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        cfg = compose(args.experiment, args.overrides)
        resolve_paths(cfg)
        validate_study(cfg)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.print_config:
        print(OmegaConf.to_yaml(cfg))
        return 0
    try:
        dataset = prepare_dataset(cfg.data)  # a bad data folder stops here, before Ray starts
    except (DatasetError, FileNotFoundError) as error:
        print(f"error: data.root: {error}", file=sys.stderr)
        return 2
    try:
        run_study(cfg, dataset)
    except ConfigError as error:  # what only Ray can tell: resources, shared storage
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
