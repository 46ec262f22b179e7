"""What a running study prints: one line per finished trial and a status line for its stage.

    search-et  trial 3/4 run_trial_2f1e8_00002: val_accuracy 0.5312 in 41 s
    search-et  3/4 ended (0 failed), 1 running; best val_accuracy 0.5312; 2.1 min, ~0.7 min left

Ray Tune's own progress tables and headers and the trial workers' log lines are off unless
`ray.verbose=true` (or `python -m harness.sweep -v`).
"""

from __future__ import annotations

import math
import time
from typing import Any

from ray.tune import Callback

ENDED = ("TERMINATED", "ERROR")


class Progress(Callback):
    """A Ray Tune callback printing stage `stage`'s progress over its `total` trials, of which
    up to `concurrent` run at once; `metric`/`mode` rank the trials (the study's `sweep.metric`).
    The estimate of the time left is the mean duration of the trials ended so far times the
    trials left, over `concurrent`: a guide, not a promise (ASHA stops trials early)."""

    def __init__(self, stage: str, total: int, metric: str, mode: str, concurrent: int) -> None:
        self.stage, self.total, self.metric, self.mode = stage, total, metric, mode
        self.concurrent = max(1, concurrent)
        self._started = time.monotonic()

    def setup(self, **info: Any) -> None:
        self._started = time.monotonic()  # this run of the stage (a resumed one starts again)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._print(trials, trial, failure=None)

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._print(trials, trial, failure=_failure(trial))

    def _print(self, trials: list, trial, failure: str | None) -> None:
        ended = [t for t in trials if t.status in ENDED or t is trial]
        result = trial.last_result or {}
        seconds = float(result.get("time_total_s") or 0.0)
        if failure is None:
            # the selection metric only: test accuracies are the report's, after selection
            what = f"{self.metric} {_score(result, self.metric):.4f}"
        else:
            what = f"FAILED: {failure}"
        print(f"{self.stage}  trial {len(ended)}/{self.total} {trial}: {what} in {seconds:.0f} s",
              flush=True)  # fmt: skip
        scores = [_score(t.last_result or {}, self.metric) for t in ended
                  if t.status != "ERROR" and not (t is trial and failure)]  # fmt: skip
        scores = [s for s in scores if not math.isnan(s)]
        best = (max if self.mode == "max" else min)(scores) if scores else math.nan
        failed = sum(t.status == "ERROR" or (t is trial and failure is not None) for t in ended)
        running = sum(t.status == "RUNNING" and t is not trial for t in trials)
        durations = [float((t.last_result or {}).get("time_total_s") or 0.0) for t in ended]
        left = (self.total - len(ended)) * (sum(durations) / len(durations)) / self.concurrent
        elapsed = (time.monotonic() - self._started) / 60
        print(f"{self.stage}  {len(ended)}/{self.total} ended ({failed} failed), {running} running;"
              f" best {self.metric} {best:.4f}; {elapsed:.1f} min, ~{left / 60:.1f} min left",
              flush=True)  # fmt: skip


def _score(result: dict[str, Any], metric: str) -> float:
    value = result.get(metric)
    return float(value) if value is not None else math.nan


def _failure(trial) -> str:
    from harness.tracking import failure_reason

    return failure_reason(getattr(trial, "error_file", None)) or "error"
