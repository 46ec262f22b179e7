"""MLflow as a real tracking server (`mlflow server` on loopback, started by the test): stopped
in the middle of a study and started again, it ends up with every metric every trial reported,
once; `python -m harness.tracking sync` rebuilds the same records from the study's files."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

from harness.tracking import main as tracking_main
from harness.tracking import sync

ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "MLFLOW_DISABLE_TELEMETRY": "true"}
TESTS = Path(__file__).parent
EPOCHS = 2
KEYS = ("train_loss", "val_loss", "val_accuracy", "test_accuracy", "occ_gap")


class _Server:
    """`mlflow server` on a free loopback port with its store in `folder`; stop() and start()
    again keep the same port and store."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen | None = None

    def start(self, timeout: float = 600) -> None:
        log = (self.folder / "server.log").open("a")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
             "--artifacts-destination", str(self.folder / "artifacts")],
            stdout=log, stderr=subprocess.STDOUT, env=ENV, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            assert self._process.poll() is None, (self.folder / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server did not start"
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            time.sleep(0.5)

    def stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGTERM)
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()


@pytest.fixture
def server(tmp_path):
    folder = tmp_path / "server"
    folder.mkdir()
    server = _Server(folder)
    yield server
    server.stop()


def _results(out: Path) -> dict[str, list[dict]]:
    """Each trial's reports as Ray Tune wrote them to the study's folder."""
    return {
        path.parent.name: [json.loads(line) for line in path.read_text().splitlines()]
        for path in sorted((out / "ray").glob("*/*/result.json"))
    }


def _assert_complete(client: mlflow.MlflowClient, out: Path) -> None:
    """The store holds one run per trial of the study, with each reported value once."""
    experiment = client.get_experiment_by_name("et-harness-birds_video")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    results = _results(out)
    assert len(results) == 3 and set(runs) == {"birds_video", *results}
    for trial, reports in results.items():
        run = runs[trial]
        assert [r["epoch"] for r in reports] == list(range(1, EPOCHS + 1))
        for key in KEYS:
            history = client.get_metric_history(run.info.run_id, key)
            expected = [(r["epoch"], r[key]) for r in reports if key in r]
            assert sorted((m.step, m.value) for m in history) == expected, (trial, key)
        assert run.info.status == "FINISHED"
        assert {"model.pt", "config.yaml"} <= {
            a.path for a in client.list_artifacts(run.info.run_id)
        }
    assert "comparison.md" in {
        a.path for a in client.list_artifacts(runs["birds_video"].info.run_id)
    }


@pytest.mark.slow
def test_a_tracking_server_stopped_and_restarted_mid_study_loses_no_metric(tmp_path, server):
    """The study is held at a gate (tests/_faults.py) after every search trial's first epoch
    until the server has its first metric and has been stopped: the rest of the study then runs
    while the server is down, however fast the machine."""
    out, gate = tmp_path / "study", tmp_path / "gate"
    gate.mkdir()
    server.start()
    client = mlflow.MlflowClient(server.uri)
    env = {**ENV, "GATE_DIR": str(gate), "GATE_EPOCH": "1", "GATE_STAGE": "search-vanilla",
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    driver = subprocess.Popen(
        [sys.executable, "-c", "import sys, _faults; sys.exit(_faults.main())", "birds_video",
         "sweep=smoke", "report.explain_models=false", f"study.output_dir={out}",
         f"data.cache_dir={tmp_path / 'cache'}", "ray.num_cpus=2", "study.methods=[vanilla]",
         f"train.epochs={EPOCHS}", "model=pool_t",
         f"mlflow.tracking_uri={server.uri}",
         "mlflow.flush_timeout_s=900",  # the end waits for the server however slow its restart
         "data.synthetic.train_per_class=8", "data.synthetic.val_per_class=4",
         "data.synthetic.test_per_class=4"],
        stdout=(tmp_path / "study.log").open("w"), stderr=subprocess.STDOUT, env=env,
        start_new_session=True,
    )  # fmt: skip
    try:

        def wait_for(condition, what):
            deadline = time.monotonic() + 900  # a bound, not a synchronisation
            while not condition():
                assert driver.poll() is None, (tmp_path / "study.log").read_text()[-3000:]
                assert time.monotonic() < deadline, f"waited 900 s for {what}"
                time.sleep(0.5)

        def logged():
            with contextlib.suppress(Exception):
                experiment = client.get_experiment_by_name("et-harness-birds_video")
                return bool(
                    client.search_runs([experiment.experiment_id], "metrics.val_accuracy >= 0")
                )
            return False

        wait_for(logged, "a first metric on the server")
        server.stop()
        reported = sum(map(len, _results(out).values()))
        assert reported <= 2  # the search trials wait at the gate after their first epoch
        (gate / "open").touch()
        # trials go on while the server is down (6 reports in all: 3 trials of 2 epochs), and the
        # driver notices the outage
        wait_for(lambda: sum(map(len, _results(out).values())) >= reported + 2,
                 "two more results while the server is down (trials stalled?)")  # fmt: skip
        wait_for(lambda: "unreachable; records wait" in (tmp_path / "study.log").read_text(),
                 "the driver to report the server unreachable")  # fmt: skip
        server.start()
        assert driver.wait(timeout=1500) == 0, (tmp_path / "study.log").read_text()[-3000:]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)
    log = (tmp_path / "study.log").read_text()
    assert "unreachable; records wait and are sent when it is back" in log
    assert "is back after" in log
    _assert_complete(client, out)

    # the same records, rebuilt from the study's files in another (empty) store; idempotent
    copy = f"sqlite:///{tmp_path / 'copy.db'}"
    assert tracking_main(["sync", str(out), "--tracking-uri", copy]) == 0
    _assert_complete(mlflow.MlflowClient(copy), out)
    again = sync(out, copy)
    assert (again.runs_created, again.params, again.metrics, again.artifacts) == (0, 0, 0, 0)


def test_sync_of_a_folder_that_is_not_a_study_says_so(tmp_path, capsys):
    assert tracking_main(["sync", str(tmp_path)]) == 2
    assert f"{tmp_path}: no study_state.json" in capsys.readouterr().err


def test_sync_sends_only_what_the_store_lacks_and_drops_runs_of_lost_trials(tmp_path):
    from harness.study_state import StudyState
    from harness.tracking import StageRuns, _sync_stage, _TrialRecord, start_study_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    state = StudyState(tmp_path, uri, "exp", config={"study": {"name": "s"}}, tags={"a": "b"})
    state.parent_run_id = start_study_run(state)
    state.begin_stage("search-et", {"stage": "search", "method": "et"})
    client = mlflow.MlflowClient(uri)
    live = StageRuns(state, "search-et")  # what the driver logged before it was killed
    live.start(client, "lost", {"train": {"lr": 0.1}})  # a trial Tune never recorded
    live.start(client, "kept", {"train": {"lr": 0.2}})
    live.log(client, "kept", [{"epoch": 1, "val_accuracy": 0.5, "timestamp": 100}])
    state.finish_stage("search-et")

    kept = [
        {"epoch": 1, "val_accuracy": 0.5, "timestamp": 100, "training_iteration": 1},
        {"epoch": 2, "val_accuracy": 0.25, "timestamp": 200, "training_iteration": 2},
        {"epoch": 2, "val_accuracy": 0.75, "timestamp": 300, "training_iteration": 2},  # resumed
    ]
    records = [
        _TrialRecord("kept", "TERMINATED", {"train": {"lr": 0.2}}, kept, None, None),
        _TrialRecord("oom", "ERROR", {"train": {"lr": 0.3}}, [], "MemoryError: out", None),
    ]
    counts = _sync_stage(client, state, "search-et", records)
    assert (counts.runs_created, counts.metrics, counts.runs_deleted) == (1, 1, 1)

    experiment = client.get_experiment_by_name("exp")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"s", "kept", "oom"}
    history = client.get_metric_history(runs["kept"].info.run_id, "val_accuracy")
    assert sorted((m.step, m.value, m.timestamp) for m in history) == [
        (1, 0.5, 100_000),
        (2, 0.75, 300_000),
    ]
    assert runs["kept"].info.status == "FINISHED" and runs["kept"].data.params == {
        "train.lr": "0.2"
    }
    assert (
        runs["oom"].info.status == "FAILED" and runs["oom"].data.tags["error"] == "MemoryError: out"
    )
    assert runs["oom"].data.tags["stage"] == "search" and runs["oom"].data.tags["a"] == "b"

    again = _sync_stage(client, state, "search-et", records)
    assert again == type(again)()  # nothing left to send


def test_a_stage_reconciled_by_the_process_that_logged_it_looks_up_only_what_it_did_not_send(
    tmp_path,
):
    """The driver's sync after a stage shares the live records' knowledge (`StageRuns.of`): it
    asks the store for no metric history, and still sends the one result whose live record was
    lost; a new process (a resumed study) looks every metric up and finds nothing missing."""
    from collections import Counter

    from harness.study_state import StudyState
    from harness.tracking import StageRuns, SyncCounts, _sync_stage, _TrialRecord, start_study_run

    class CountingClient(mlflow.MlflowClient):
        calls: Counter = Counter()

        def get_metric_history(self, run_id, key):
            self.calls["history"] += 1
            return super().get_metric_history(run_id, key)

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    state = StudyState(tmp_path, uri, "exp", config={"study": {"name": "s"}}, tags={})
    state.parent_run_id = start_study_run(state)
    state.begin_stage("search-et", {"stage": "search", "method": "et"})
    client = CountingClient(uri)
    results = {
        name: [{"epoch": e, "val_accuracy": e / 10, "train_loss": 1 / e, "timestamp": 100 * e,
                "training_iteration": e} for e in (1, 2, 3)]
        for name in ("t1", "t2")
    }  # fmt: skip
    live = StageRuns.of(state, "search-et")  # what `TrialRuns` logs through
    for name, reports in results.items():
        live.start(client, name, {"train": {"lr": 0.1}})
        for result in reports[:-1] if name == "t2" else reports:  # t2's last record was lost
            live.log(client, name, [result])
        live.end(client, name, None)
    state.finish_stage("search-et")
    records = [_TrialRecord(n, "TERMINATED", {"train": {"lr": 0.1}}, r, None, None)
               for n, r in results.items()]  # fmt: skip

    client.calls.clear()
    counts = _sync_stage(client, state, "search-et", records)
    assert counts == SyncCounts(metrics=2) and client.calls["history"] == 0  # t2's epoch 3
    run = client.search_runs([client.get_experiment_by_name("exp").experiment_id],
                             "tags.trial_name = 't2'")[0]  # fmt: skip
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2, 3]

    StageRuns._known.clear()  # a new process: nothing known
    client.calls.clear()
    assert _sync_stage(client, state, "search-et", records) == SyncCounts()
    assert client.calls["history"] == 2 * 2  # each trial's val_accuracy and train_loss


def test_a_study_does_not_start_without_its_tracking_server(tmp_path, capsys):
    import ray

    from harness.sweep import main

    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = main(["birds_video", "sweep=smoke", f"study.output_dir={tmp_path / 'study'}",
                 f"data.cache_dir={tmp_path / 'cache'}", "data.synthetic.train_per_class=2",
                 "data.synthetic.val_per_class=1", "data.synthetic.test_per_class=1",
                 f"mlflow.tracking_uri=http://127.0.0.1:{port}"])  # fmt: skip
    assert code == 2
    error = capsys.readouterr().err
    assert f"error: mlflow.tracking_uri: http://127.0.0.1:{port} does not answer" in error
    assert not ray.is_initialized()


def test_artifacts_of_a_local_store_go_beside_it_not_into_the_working_folder(
    tmp_path, monkeypatch
):
    from harness.study_state import StudyState
    from harness.tracking import start_study_run

    store, elsewhere = tmp_path / "study", tmp_path / "elsewhere"
    store.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # where the user happened to start the command
    uri = f"sqlite:///{store / 'mlflow.db'}"
    state = StudyState(store, uri, "exp", config={"study": {"name": "s"}})
    run_id = start_study_run(state)
    (tmp_path / "table.md").write_text("| a |\n")
    mlflow.MlflowClient(uri).log_artifact(run_id, str(tmp_path / "table.md"))
    assert list(elsewhere.iterdir()) == []
    (logged,) = (store / "mlartifacts").rglob("table.md")
    assert logged.read_text() == "| a |\n"
