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
from harness.data import Dataset, prepare_dataset
from harness.data.folders import DatasetError
from harness.models import model_inputs
from harness.search_space import check_space, define_by_run

SYNTHETIC_NOTE = "SYNTHETIC DATA (built-in generator, not a real dataset)"


def _init_ray(cfg: DictConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        ray.init(
            address="local", num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus,
            include_dashboard=False,
        )  # fmt: skip


def _resources(cfg: DictConfig) -> tuple[dict[str, float], int]:
    """Per-trial resources and the number of trials that fit at once."""
    import ray

    total = ray.cluster_resources()
    gpus = cfg.sweep.gpus_per_trial
    if gpus == "auto":
        gpus = 0.25 if total.get("GPU", 0) > 0 else 0
    cpus = float(cfg.sweep.cpus_per_trial)
    fit = int(total.get("CPU", 1) // cpus)
    if gpus:
        fit = min(fit, int(total.get("GPU", 0) / float(gpus)))
    concurrent = int(cfg.sweep.max_concurrent or max(fit, 1))
    return {"cpu": cpus, "gpu": float(gpus)}, concurrent


class _OptunaSearch(OptunaSearch):
    """Ray Tune's OptunaSearch, telling Optuna that a trial stopped early by the scheduler was
    PRUNED (its last score reported as an intermediate value at its epoch) rather than COMPLETE
    with that partial score: TPE then ranks it below every completed trial (pruned trials among
    themselves by how far they got, then by score) instead of taking an early, usually lower,
    validation accuracy as that configuration's final result."""

    def __init__(self, *, epochs: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._epochs = epochs

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        stopped_early = bool(result) and not error and result["epoch"] < self._epochs
        if not stopped_early or trial_id in self._completed_trials:
            return super().on_trial_complete(trial_id, result, error)
        import optuna

        trial = self._ot_trials[trial_id]
        trial.report(result[self.metric], step=result["epoch"])
        self._ot_study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        self._completed_trials.add(trial_id)


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
        early when `sweep.scheduler=asha`)."""
        import optuna
        from ray.tune.schedulers import ASHAScheduler

        cfg = self.cfg
        space = OmegaConf.to_container(cfg.space[method], resolve=True)
        params = check_space(space, f"space.{method}")
        searcher = _OptunaSearch(
            epochs=int(cfg.train.epochs),
            space=define_by_run(params),
            metric=cfg.sweep.metric,
            mode=cfg.sweep.mode,
            sampler=optuna.samplers.TPESampler(
                seed=int(cfg.sweep.sampler_seed), n_startup_trials=int(cfg.sweep.startup_trials)
            ),
            storage=optuna.storages.RDBStorage(cfg.sweep.optuna_storage),
            study_name=f"{cfg.study.name}-{method}",
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
        travel with the trainable."""
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


def _export_best(
    path: Path, config: dict[str, Any], method: str, val: float, synthetic: bool
) -> None:
    header = [
        f"# Best {method} configuration of study {config['experiment']} "
        f"(validation accuracy {val:.4f}).",
        "# Train and evaluate it with: python -m harness.train " + str(path),
    ]
    if synthetic:
        header.append(f"# Data: {SYNTHETIC_NOTE}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(header) + "\n" + yaml.safe_dump(config, sort_keys=False))


def run_study(cfg: DictConfig, dataset: Dataset | None = None) -> Path:
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
    # once, in the driver; trials memory-map it
    dataset = dataset or prepare_dataset(cfg.data, model_inputs(cfg.model))
    print(f"data: {dataset.name} ({len(dataset.labels)} samples of {'+'.join(dataset.inputs)}, "
          f"{dataset.num_classes} classes)"
          + (f" — {SYNTHETIC_NOTE}" if dataset.synthetic else ""), flush=True)  # fmt: skip
    tags = {"experiment": cfg.experiment, "data": dataset.name, "synthetic": str(dataset.synthetic)}
    parent = start_study_run(
        cfg.mlflow.tracking_uri, cfg.mlflow.experiment_name, cfg.study.name,
        out / "study_state.json", tags,
    )  # fmt: skip
    _init_ray(cfg)
    engine = _Engine(cfg, parent, tags, TRAINABLES[cfg.modality], *_resources(cfg))
    summaries, best_configs = {}, {}
    for method in cfg.study.methods:
        grid, params = engine.search(method)
        (out / "report").mkdir(parents=True, exist_ok=True)
        grid.get_dataframe().to_csv(out / "report" / f"trials_{method}.csv", index=False)
        finished = _finished(grid)
        summary = MethodSummary(method, len(grid), len(grid) - len(finished), math.nan, {})
        summary.failures = [(Path(r.path).name, _reason(r.error)) for r in grid if r.error]
        if finished:
            best = max(finished, key=lambda r: r.metrics[cfg.sweep.metric])
            summary.best_val_accuracy = float(best.metrics[cfg.sweep.metric])
            summary.best_params = _searched_values(best.config, params)
            best_configs[method] = best.config
            _export_best(out / "best" / f"{method}.yaml", best.config, method,
                         summary.best_val_accuracy, dataset.synthetic)  # fmt: skip
        summaries[method] = summary
    if best_configs:
        for result in _finished(engine.final(best_configs)):
            summaries[result.config["method"]].final_runs.append(
                {**result.metrics, "seed": result.config["seed"]}
            )
    summaries = list(summaries.values())
    table = comparison_table(summaries, dataset.name, dataset.synthetic)
    elapsed = time.perf_counter() - started
    notes = {
        "experiment": cfg.experiment,
        "data": dataset.name + (f" — {SYNTHETIC_NOTE}" if dataset.synthetic else ""),
        "trials per method": str(cfg.sweep.num_samples),
        "epochs per trial": str(cfg.train.epochs),
        "final seeds": str(cfg.final.seeds),
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
        # a bad data folder stops here, before Ray starts
        dataset = prepare_dataset(cfg.data, model_inputs(cfg.model))
    except (DatasetError, FileNotFoundError) as error:
        print(f"error: data.root: {error}", file=sys.stderr)
        return 2
    run_study(cfg, dataset)
    return 0


if __name__ == "__main__":
    sys.exit(main())
