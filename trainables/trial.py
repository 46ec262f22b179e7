"""Ray Tune function trainable: one trial of any modality (video, signal, hybrid).

Runs `harness.train.train_and_evaluate` and reports every epoch with `ray.tune.report`, each
report carrying a checkpoint: the epoch's `TrainingState` (model, optimizer, LR schedule, method
state, random generators), plus, at the last report, the trial's artifacts (model weights,
config, occlusion curves, explanation gallery). Ray persists each checkpoint to the study's
storage and keeps the latest (`CheckpointConfig(num_to_keep=1)` in `harness.sweep`). A trial
that Ray restarts (a retry after a failure, or a resumed study) gets its latest checkpoint from
`ray.tune.get_checkpoint()` and continues after that epoch.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import ray
from ray import tune

from harness.train import VALIDATION_FAITHFULNESS, TrainingState, train_and_evaluate


class _TuneTrial:
    """One trial's side of the checkpoint protocol: `save` writes the epoch's state into a
    folder (the artifacts folder at the last epoch), `report` hands metrics and that folder to
    Ray Tune, which copies it to storage; per-epoch folders are then deleted."""

    def __init__(self, folder: Path, pending: tuple[str, ...] = ()) -> None:
        self.folder = folder
        self.pending = pending  # metrics measured at the last epoch only: None before it
        self.artifacts = folder / "artifacts"
        self._saved: Path | None = None

    def restored(self) -> Path | None:
        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return None
        return Path(checkpoint.to_directory(str(self.folder / "restored")))

    def save(self, state: TrainingState, artifacts: Path | None) -> None:
        self._saved = artifacts or Path(tempfile.mkdtemp(prefix="epoch-", dir=self.folder))
        state.save(self._saved)

    def report(self, metrics: dict[str, float], artifacts: Path | None) -> None:
        assert self._saved is not None, "save() runs before every report"
        # Tune checks that every result has every metric the search asks for; the node id is the
        # trial's MLflow tag `ray.node_id`
        metrics = {**dict.fromkeys(self.pending), **metrics}
        metrics["node_id"] = ray.get_runtime_context().get_node_id()
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(self._saved)))
        if artifacts is None:
            shutil.rmtree(self._saved)


def run_trial(config: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory(prefix="et-trial-") as folder:
        faithfulness = config["evaluation"].get("validation_occlusion")
        trial = _TuneTrial(Path(folder), (VALIDATION_FAITHFULNESS,) if faithfulness else ())
        train_and_evaluate(
            config, trial.report, trial.artifacts, checkpoint=trial.save,
            resume_from=trial.restored(),
        )  # fmt: skip
