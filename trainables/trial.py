"""Ray Tune function trainable: one trial of any modality (video, signal, hybrid).

Runs `harness.train.train_and_evaluate` and reports each epoch with `ray.tune.report`; the last
report carries a checkpoint folder (the model weights and the explanation gallery), which Ray
persists to the study's storage and the MLflow callback logs as the trial's artifacts.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ray import tune

from harness.train import train_and_evaluate


def _report(metrics: dict[str, float], artifacts: Path | None) -> None:
    if artifacts is None:
        tune.report(metrics)
    else:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(artifacts)))


def run_trial(config: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory(prefix="et-trial-") as folder:
        train_and_evaluate(config, _report, artifacts_dir=Path(folder))
