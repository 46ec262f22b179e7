"""MLflow records of a study: one parent run, one child run per trial (made by Ray Tune's
MLflowLoggerCallback on the driver), the report folder logged to the parent at the end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
from ray.air.integrations.mlflow import MLflowLoggerCallback

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def start_study_run(
    tracking_uri: str, experiment_name: str, study_name: str, state_file: Path, tags: dict[str, str]
) -> str:
    """Create (or, for a resumed study, reopen) the study's parent run; returns its id.

    The store and the experiment are created here, in the driver, before any trial starts
    (parallel first-time creation of a SQLite store races).
    """
    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.set_experiment(experiment_name)
    if state_file.is_file():
        run_id = json.loads(state_file.read_text())["parent_run_id"]
        if mlflow.get_run(run_id).info.experiment_id == experiment.experiment_id:
            return run_id
    client = mlflow.MlflowClient()
    run = client.create_run(experiment.experiment_id, run_name=study_name, tags=tags)
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps({"parent_run_id": run.info.run_id}))
    return run.info.run_id


class _TrialRuns(MLflowLoggerCallback):
    """Ray's MLflow callback, also tagging each trial's run with the Ray node it ran on
    (`ray.node_id`, from the `node_id` its trainable reports; a retried trial keeps the last)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._nodes: dict = {}  # trial -> the node its run is tagged with

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        super().log_trial_result(iteration, trial, result)
        node = result.get("node_id")
        if node and self._nodes.get(trial) != node:
            client = mlflow.MlflowClient(self.tracking_uri)
            client.set_tag(self._trial_runs[trial], "ray.node_id", node)
            self._nodes[trial] = node


def trial_callback(
    tracking_uri: str, experiment_name: str, parent_run_id: str, tags: dict[str, str]
) -> MLflowLoggerCallback:
    """Child runs under the study's parent run: params, per-epoch metrics, artifacts, the node."""
    return _TrialRuns(
        tracking_uri=tracking_uri,
        experiment_name=experiment_name,
        tags={"mlflow.parentRunId": parent_run_id, **tags},
        save_artifact=False,  # the trial's checkpoint folder is logged by `log_trial_artifacts`
    )


def log_trial_artifacts(tracking_uri: str, experiment_name: str, results) -> None:
    """Log each finished trial's checkpoint folder (model, explanation gallery) to its run."""
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    for result in results:
        if result.checkpoint is None:
            continue
        name = Path(result.path).name
        runs = client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.trial_name = '{name}'", max_results=1
        )
        if runs:
            client.log_artifacts(runs[0].info.run_id, result.checkpoint.path)


def finish_study_run(
    tracking_uri: str, run_id: str, params: dict, metrics: dict, folder: Path
) -> None:
    client = mlflow.MlflowClient(tracking_uri)
    for key, value in params.items():
        client.log_param(run_id, key, value)
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    client.log_artifacts(run_id, str(folder))
    client.set_terminated(run_id)
