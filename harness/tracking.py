"""MLflow records of a study, delivered so that a tracking server going away never stops a study
and never loses a record.

    python -m harness.tracking sync <study.output_dir> [--tracking-uri URI]

Records. One parent run per study; one child run per trial, made on the driver by `TrialRuns` (a
Ray Tune callback), tagged `trial_name`, `tune_experiment` (the stage: `search-<method>` or
`final`), the stage's tags (`stage`, `method`) and the study's. Its params are the trial config
(dotted keys); its metrics every value the trial reported, at step = epoch and with the time the
trial reported it; its status FINISHED or FAILED (tag `error`: the failure's reason); its
artifacts the files of the trial's last checkpoint (model, config, occlusion curves, gallery),
not the training state.

Delivery. Every call goes through an `Outbox`: one background thread per tracking URI sends the
calls in order, so a trial never waits on MLflow. When a call fails and the store does not answer
a probe either (the server is down), the call stays at the head of the queue and is tried again
every `RETRY_SECONDS`: what could not be sent is sent, in order, once the server is back. A call
the reachable store rejects is dropped with a warning.

Reconciliation. `sync` reads the study's own results on disk (each stage's Tune experiment: its
trials' statuses, params.json, result.json, error.txt and last checkpoint) and sends what the
store lacks. It is idempotent: a trial's run is looked up by (parent run, stage, trial name)
before one is created, a metric is sent only if its run lacks that (key, step), a param or an
artifact only if its run lacks that key or file. In a finished stage, runs of trials that Ray
Tune's experiment state does not hold (a driver killed after a trial started but before Tune
recorded it; the resumed study runs that trial again under a new name) are deleted, so the store
holds one run per trial. The driver queues a sync after every stage and at the end of the study,
then waits up to `mlflow.flush_timeout_s` for the queue; after a longer outage run the command
above once the server is back. In the process that ran a stage its sync shares the live records'
knowledge (`StageRuns.of`) and asks the store only about what those did not send: a run's status
and artifacts, not every metric's history.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from ray.tune import Callback
from ray.tune.result import AUTO_RESULT_KEYS

from harness.stores import artifact_location
from harness.study_state import StudyState, flat_config
from harness.train import STATE_FILE

# Short HTTP timeouts and few retries: the outbox does the waiting. No "View run ... at" line per
# run (the progress view names the runs). Defaults only: the user's environment wins.
MLFLOW_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


def mlflow_client(tracking_uri: str) -> MlflowClient:
    """An MLflow client for `tracking_uri`, with the harness's defaults (MLFLOW_ENV_DEFAULTS) in
    this process's environment; MLflow reads them per request."""
    for key, value in MLFLOW_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    return MlflowClient(tracking_uri)


RETRY_SECONDS = 5.0
SYNCED = ".mlflow_synced"  # in a finished stage's folder once a sync of it has completed
# Ray Tune's bookkeeping in a result: not the trial's metrics
NOT_METRICS = frozenset(AUTO_RESULT_KEYS) | {"done", "trial_id", "experiment_tag", "epoch"}
Call = Callable[[MlflowClient], None]


def start_study_run(state: StudyState) -> str:
    """Create (or, for a resumed study, find again) the study's parent run; returns its id.

    The store and the experiment are created here, in the driver, before any trial starts
    (parallel first-time creation of a SQLite store races)."""
    return _parent_run(mlflow_client(state.tracking_uri), state)


def _parent_run(client: MlflowClient, state: StudyState) -> str:
    """The study's parent run in the store: the recorded one, else the one tagged with the
    study's id, else a new one."""
    experiment = client.get_experiment_by_name(state.experiment_name)
    if experiment is None:
        experiment_id = client.create_experiment(
            state.experiment_name, artifact_location=artifact_location(state.tracking_uri)
        )
    else:
        experiment_id = experiment.experiment_id
    if state.parent_run_id:
        try:
            run = client.get_run(state.parent_run_id)
            if run.info.experiment_id == experiment_id and run.info.lifecycle_stage == "active":
                return state.parent_run_id
        except mlflow.exceptions.MlflowException:
            pass  # not in this store
    found = client.search_runs([experiment_id], f"tags.study_id = '{state.study_id}'",
                               max_results=1)  # fmt: skip
    if found:
        return found[0].info.run_id
    run = client.create_run(experiment_id, run_name=state.config["study"]["name"],
                            tags={**state.tags, "study_id": state.study_id})  # fmt: skip
    return run.info.run_id


class Outbox:
    """MLflow calls sent in order by one background thread (one outbox per tracking URI).

    A failing call is retried every `RETRY_SECONDS` while the store does not answer a probe (it
    is unreachable), and dropped with a warning when it does (the store rejects that call)."""

    _by_uri: ClassVar[dict[str, Outbox]] = {}

    @classmethod
    def to(cls, tracking_uri: str) -> Outbox:
        if tracking_uri not in cls._by_uri:
            cls._by_uri[tracking_uri] = cls(tracking_uri)
        return cls._by_uri[tracking_uri]

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self._client = mlflow_client(tracking_uri)
        self._calls: deque[Call] = deque()
        self._changed = threading.Condition()
        threading.Thread(target=self._send, name="mlflow-outbox", daemon=True).start()

    def put(self, call: Call) -> None:
        with self._changed:
            self._calls.append(call)
            self._changed.notify_all()

    def drain(self, timeout_s: float) -> int:
        """Wait until every call is sent, at most `timeout_s`; returns how many are left."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self._calls and (left := deadline - time.monotonic()) > 0:
                self._changed.wait(left)
            return len(self._calls)

    def _reachable(self) -> bool:
        try:
            self._client.search_experiments(max_results=1)
            return True
        except Exception:
            return False

    def _send(self) -> None:
        down_since = None
        while True:
            with self._changed:
                while not self._calls:
                    self._changed.wait()
                call = self._calls[0]  # stays queued until sent: drain() waits for it
            try:
                call(self._client)
            except Exception as error:
                if not self._reachable():
                    if down_since is None:
                        down_since = time.monotonic()
                        _say(f"{self.tracking_uri} unreachable; records wait and are sent when "
                             f"it is back (trials go on): {last_line(str(error))}")  # fmt: skip
                    time.sleep(RETRY_SECONDS)
                    continue
                _say(f"a record was rejected and dropped ({last_line(str(error))}); the "
                     "study's files keep it: python -m harness.tracking sync")  # fmt: skip
            if down_since is not None:
                _say(f"{self.tracking_uri} is back after {time.monotonic() - down_since:.0f} s; "
                     f"sending {len(self._calls)} waiting records")  # fmt: skip
                down_since = None
            with self._changed:
                self._calls.popleft()
                self._changed.notify_all()


def _say(message: str) -> None:
    print(f"mlflow: {message}", file=sys.stderr, flush=True)


def last_line(text: str) -> str:
    """The last non-blank line (an exception's message where Ray wraps it in its traceback)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _metrics(result: Mapping[str, Any]) -> dict[str, float]:
    return {
        key: float(value) for key, value in result.items()
        if key not in NOT_METRICS and isinstance(value, int | float) and not isinstance(value, bool)
    }  # fmt: skip


def _step(result: Mapping[str, Any]) -> int:
    return int(result.get("epoch", result.get("training_iteration", 0)))


@dataclass
class SyncCounts:
    runs_created: int = 0
    params: int = 0
    metrics: int = 0
    artifacts: int = 0
    runs_ended: int = 0
    runs_deleted: int = 0

    def add(self, other: SyncCounts) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def __str__(self) -> str:
        return ", ".join(f"{getattr(self, f.name)} {f.name.replace('_', ' ')}"
                         for f in fields(self))  # fmt: skip


class StageRuns:
    """The child runs of one stage's trials: found (by parent run, stage and trial name) or
    created, and what each holds, so that nothing is created or sent twice.

    `RESULT_TAGS` maps a key of a trial's results to a run tag, set from the first result that
    carries it (e.g. the Ray node a trial ran on)."""

    RESULT_TAGS: ClassVar[dict[str, str]] = {"node_id": "ray.node_id"}  # the trial's Ray node
    # (tracking URI, parent run, stage) -> the stage's runs as this process knows them
    _known: ClassVar[dict[tuple[str, str | None, str], StageRuns]] = {}

    @classmethod
    def of(cls, state: StudyState, stage: str) -> StageRuns:
        """The stage's runs as this process knows them: the live records (`TrialRuns`) and the
        stage's reconciliation share one, so a sync after the stage looks up only what this
        process did not send itself (it knows the runs it created and the steps it logged;
        only the outbox thread uses it). A new process (a resumed study, `sync`) starts afresh
        and looks everything up."""
        key = (state.tracking_uri, state.parent_run_id, stage)
        if key not in cls._known:
            cls._known[key] = cls(state, stage)
        return cls._known[key]

    def __init__(self, state: StudyState, stage: str) -> None:
        self.stage = stage
        self.parent = state.parent_run_id
        self.experiment_name = state.experiment_name
        self.tags = {**state.tags, **state.stages[stage].tags, "mlflow.parentRunId": self.parent,
                     "tune_experiment": stage}  # fmt: skip
        self.counts = SyncCounts()
        self._experiment_id: str | None = None
        self._runs: dict[str, str] = {}  # trial name -> run id
        self._held: dict[tuple[str, str], set[int]] = {}  # (run id, metric) -> steps it holds
        self._new: set[str] = set()  # runs created here (they hold no metric yet)
        self._tagged: set[tuple[str, str]] = set()  # (run id, tag) set from a result

    def _experiment(self, client: MlflowClient) -> str:
        if self._experiment_id is None:
            self._experiment_id = client.get_experiment_by_name(self.experiment_name).experiment_id
        return self._experiment_id

    def existing(self, client: MlflowClient) -> dict[str, str]:
        """trial name -> run id, for every (active) run of this stage in the store."""
        query = (f"tags.`mlflow.parentRunId` = '{self.parent}' "
                 f"and tags.tune_experiment = '{self.stage}'")  # fmt: skip
        runs, token = {}, None
        while True:
            page = client.search_runs([self._experiment(client)], query, max_results=1000,
                                      page_token=token)  # fmt: skip
            runs.update({r.data.tags["trial_name"]: r.info.run_id for r in page})
            token = page.token
            if not token:
                return runs

    def forget(self, trial: str) -> None:
        """The trial's run was deleted: looked up (or created) again if it is ever needed."""
        self._runs.pop(trial, None)

    def run_id(self, client: MlflowClient, trial: str) -> str:
        if trial not in self._runs:
            found = client.search_runs(
                [self._experiment(client)],
                f"tags.`mlflow.parentRunId` = '{self.parent}' and "
                f"tags.tune_experiment = '{self.stage}' and tags.trial_name = '{trial}'",
                max_results=1,
            )
            if found:
                self._runs[trial] = found[0].info.run_id
            else:
                run = client.create_run(self._experiment(client), run_name=trial,
                                        tags={**self.tags, "trial_name": trial})  # fmt: skip
                self._runs[trial] = run.info.run_id
                self._new.add(run.info.run_id)
                self.counts.runs_created += 1
        return self._runs[trial]

    def start(self, client: MlflowClient, trial: str, config: Mapping[str, Any]):
        """The trial's run exists and holds the trial's params; returns the run."""
        run_id = self.run_id(client, trial)
        run = client.get_run(run_id)
        params = {k: str(v) for k, v in flat_config(config).items() if k not in run.data.params}
        for chunk in _chunks([Param(k, v) for k, v in params.items()], 100):
            client.log_batch(run_id, params=chunk)
        self.counts.params += len(params)
        return run

    def log(self, client: MlflowClient, trial: str, results: Iterable[Mapping[str, Any]]) -> None:
        """Send the metrics of `results` (a trial's reports, in order) that the run lacks."""
        run_id = self.run_id(client, trial)
        metrics: dict[tuple[str, int], Metric] = {}  # a step reported twice: its last value
        tags: dict[str, str] = {}
        for result in results:
            step, stamp = _step(result), int(float(result.get("timestamp", time.time())) * 1000)
            for key, value in _metrics(result).items():
                if step not in self._steps(client, run_id, key):
                    metrics[key, step] = Metric(key, value, stamp, step)
            for key, tag in self.RESULT_TAGS.items():
                if key in result and (run_id, tag) not in self._tagged:
                    tags.setdefault(tag, str(result[key]))
        for chunk in _chunks(list(metrics.values()), 1000):
            client.log_batch(run_id, metrics=chunk)
        for (key, step), _ in metrics.items():
            self._held[run_id, key].add(step)
        for tag, value in tags.items():
            client.set_tag(run_id, tag, value)
            self._tagged.add((run_id, tag))
        self.counts.metrics += len(metrics)

    def _steps(self, client: MlflowClient, run_id: str, key: str) -> set[int]:
        if (run_id, key) not in self._held:
            history = [] if run_id in self._new else client.get_metric_history(run_id, key)
            self._held[run_id, key] = {m.step for m in history}
        return self._held[run_id, key]

    def end(self, client: MlflowClient, trial: str, failure: str | None) -> None:
        """The trial ended: FINISHED, or FAILED with its reason as tag `error`."""
        run_id = self.run_id(client, trial)
        if failure is not None:
            client.set_tag(run_id, "error", failure[:5000])
        client.set_terminated(run_id, "FAILED" if failure is not None else "FINISHED")
        self.counts.runs_ended += 1

    def upload(self, client: MlflowClient, trial: str, folder: Path) -> None:
        self.counts.artifacts += _upload_missing(client, self.run_id(client, trial), folder)


def _upload_missing(client: MlflowClient, run_id: str, folder: Path) -> int:
    """Log the files of `folder` that the run lacks (a checkpoint's, but its training state)."""
    held = {Path(a.path).name for a in client.list_artifacts(run_id)}
    sent = 0
    for path in sorted(folder.iterdir()):
        if path.name in held or path.name == STATE_FILE:
            continue
        if path.is_dir():
            client.log_artifacts(run_id, str(path), artifact_path=path.name)
        else:
            client.log_artifact(run_id, str(path))
        sent += 1
    return sent


def _chunks(items: list, size: int) -> Iterable[list]:
    return (items[i : i + size] for i in range(0, len(items), size))


def failure_reason(error_file: str | Path | None) -> str:
    """The last line of a trial's error.txt (Ray appends each failure's exception to it)."""
    if not error_file or not Path(error_file).is_file():
        return "unknown failure"
    return last_line(Path(error_file).read_text()) or "unknown failure"


class TrialRuns(Callback):
    """Ray Tune callback on the driver: one MLflow child run per trial of a stage, sent through
    the study's `Outbox`. It holds only the study folder and the stage's name (Ray pickles it
    into the experiment, and a resumed study gets it back): the MLflow target, parent run and
    tags are read from the study's state file when the experiment starts."""

    def __init__(self, study_dir: str | Path, stage: str) -> None:
        self.study_dir, self.stage = str(study_dir), stage

    def __getstate__(self) -> dict[str, Any]:
        return {"study_dir": self.study_dir, "stage": self.stage}

    def setup(self, **info: Any) -> None:
        state = StudyState.load(Path(self.study_dir))
        self._runs = StageRuns.of(state, self.stage)
        self._outbox = Outbox.to(state.tracking_uri)

    def on_trial_start(self, iteration: int, trials: list, trial, **info: Any) -> None:
        name, config = str(trial), dict(trial.config)

        def start(client: MlflowClient) -> None:
            run = self._runs.start(client, name, config)
            if run.info.status != "RUNNING":  # a trial resumed or retried: its run again
                client.update_run(run.info.run_id, status="RUNNING")

        self._outbox.put(start)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        name, result = str(trial), dict(result)
        self._outbox.put(lambda client: self._runs.log(client, name, [result]))

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        name = str(trial)
        self._outbox.put(lambda client: self._runs.end(client, name, None))

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        name, reason = str(trial), failure_reason(trial.error_file)
        self._outbox.put(lambda client: self._runs.end(client, name, reason))


@dataclass
class _TrialRecord:
    """One trial as the study's files on disk hold it."""

    name: str
    status: str  # Ray Tune's: TERMINATED, ERROR, or unfinished (PENDING, RUNNING, PAUSED)
    config: dict[str, Any]
    results: list[dict[str, Any]]
    failure: str | None
    checkpoint: Path | None


def read_stage(state: StudyState, stage: str) -> list[_TrialRecord] | None:
    """The trials of a stage as Ray Tune's experiment state on disk holds them (None before
    the experiment has written one)."""
    from ray.tune import ExperimentAnalysis

    path = state.ray_dir / stage
    if not any(path.glob("experiment_state-*.json")):
        return None
    records = []
    for trial in ExperimentAnalysis(str(path)).trials:
        folder = Path(trial.path)
        results_file = folder / "result.json"
        results = []
        if results_file.is_file():
            results = [json.loads(line) for line in results_file.read_text().splitlines() if line]
        failed = trial.status == "ERROR"
        error_file = folder / trial.run_metadata.error_filename if failed else None
        checkpoint = trial.checkpoint
        records.append(_TrialRecord(
            str(trial), trial.status, dict(trial.config), results,
            failure_reason(error_file) if failed else None,
            Path(checkpoint.path) if checkpoint is not None else None,
        ))  # fmt: skip
    return records


def _sync_stage(
    client: MlflowClient, state: StudyState, stage: str, records: list[_TrialRecord]
) -> SyncCounts:
    runs = StageRuns.of(state, stage)
    runs.counts = SyncCounts()  # what this sync sends
    for record in records:
        run = runs.start(client, record.name, record.config)
        runs.log(client, record.name, record.results)
        if record.status == "TERMINATED" and record.checkpoint is not None:
            runs.upload(client, record.name, record.checkpoint)
        ended = {"TERMINATED": "FINISHED", "ERROR": "FAILED"}.get(record.status)
        if ended and (run.info.status != ended or run.data.tags.get("error") != record.failure):
            runs.end(client, record.name, record.failure)
    if state.stages[stage].finished:
        kept = {record.name for record in records}
        for trial, run_id in runs.existing(client).items():
            if trial not in kept:
                client.delete_run(run_id)
                runs.forget(trial)
                runs.counts.runs_deleted += 1
    return runs.counts


def _sync_parent(client: MlflowClient, state: StudyState) -> None:
    """The study's summary (params, metrics, the report folder) on its parent run."""
    run = client.get_run(state.parent_run_id)
    summary = state.summary or {}
    params = [Param(k, str(v)) for k, v in summary.get("params", {}).items()
              if k not in run.data.params]  # fmt: skip
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, 0) for k, v in summary.get("metrics", {}).items()
               if k not in run.data.metrics]  # fmt: skip
    client.log_batch(state.parent_run_id, metrics=metrics, params=params)
    _upload_missing(client, state.parent_run_id, state.folder / "report")
    if run.info.status != "FINISHED":
        client.set_terminated(state.parent_run_id)


def sync_call(state: StudyState, stages: Iterable[str] | None = None, parent: bool = False) -> Call:
    """An outbox call that reconciles `stages` (default: the finished stages no sync has
    completed; each read from disk once, however often the call is tried) and, with `parent`,
    the parent run's summary. A finished stage is marked synced once its sync completed."""
    read: dict[str, list[_TrialRecord] | None] = {}

    def call(client: MlflowClient) -> None:
        for stage in _unsynced(state) if stages is None else stages:
            if stage not in read:
                read[stage] = read_stage(state, stage)
            if read[stage] is not None:
                _sync_stage(client, state, stage, read[stage])
            if state.stages[stage].finished:
                (state.ray_dir / stage / SYNCED).touch()
        if parent and state.summary is not None:
            _sync_parent(client, state)

    return call


def _unsynced(state: StudyState) -> list[str]:
    return [name for name, stage in list(state.stages.items())
            if stage.finished and not (state.ray_dir / name / SYNCED).exists()]  # fmt: skip


def sync(study_dir: Path, tracking_uri: str | None = None) -> SyncCounts:
    """Send to MLflow whatever the study's files on disk hold and the store lacks."""
    state = StudyState.load(study_dir)
    if state is None:
        raise FileNotFoundError(f"{study_dir}: no study_state.json (not a study output folder)")
    if tracking_uri and tracking_uri != state.tracking_uri:  # another store: its own parent run
        client = mlflow_client(tracking_uri)
        state = replace(state, tracking_uri=tracking_uri, parent_run_id=None)
        state.parent_run_id = _parent_run(client, state)
    client = mlflow_client(state.tracking_uri)
    counts = SyncCounts()
    for stage in state.stages:
        records = read_stage(state, stage)
        if records is not None:
            counts.add(_sync_stage(client, state, stage, records))
    if state.summary is not None:
        _sync_parent(client, state)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.tracking",
        description="MLflow records of a study. `sync` sends what a study's results on disk "
        "hold and the tracking store lacks (after a tracking-server outage); it is idempotent.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    sync_parser = commands.add_parser("sync", help="re-send a study's records from its files")
    sync_parser.add_argument("study_dir", type=Path, help="the study's study.output_dir")
    sync_parser.add_argument("--tracking-uri", default=None,
                             help="the store to send to (default: the study's own; another one "
                             "gets the whole study, under a parent run of its own)")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        counts = sync(args.study_dir, args.tracking_uri)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except mlflow.exceptions.MlflowException as error:
        print(f"error: --tracking-uri / the study's mlflow.tracking_uri: "
              f"{last_line(str(error))}", file=sys.stderr)  # fmt: skip
        return 2
    print(f"synced {args.study_dir}: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
