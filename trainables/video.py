"""Ray Tune function trainable for video trials.

Runs `harness.train.train_and_evaluate` and reports each epoch with `ray.tune.report` (with the
Ray node's id, which the MLflow callback tags the trial's run with); the last
report carries a checkpoint folder (the model weights and the explanation gallery), which Ray
persists to the study's storage and the MLflow callback logs as the trial's artifacts.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

import ray
from ray import tune

from harness.train import VALIDATION_FAITHFULNESS, train_and_evaluate


def _report(metrics: dict[str, float], artifacts: Path | None, pending: tuple[str, ...]) -> None:
    """Tune checks that every result has every metric the search asks for: `pending` metrics,
    measured at the last epoch only, are None before it."""
    metrics = {**dict.fromkeys(pending), **metrics}
    metrics["node_id"] = ray.get_runtime_context().get_node_id()  # the MLflow run's tag
    if artifacts is None:
        tune.report(metrics)
    else:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(artifacts)))


def train_video(config: dict[str, Any]) -> None:
    faithfulness = config["evaluation"].get("validation_occlusion")
    report = functools.partial(_report, pending=(VALIDATION_FAITHFULNESS,) if faithfulness else ())
    with tempfile.TemporaryDirectory(prefix="et-trial-") as folder:
        train_and_evaluate(config, report, artifacts_dir=Path(folder))
