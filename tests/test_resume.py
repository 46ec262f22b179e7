"""Resuming: a training run continued from a saved state is the run never stopped, and a whole
study killed with SIGKILL and run again finishes with the trials and MLflow runs of one
uninterrupted study."""

import contextlib
import copy
import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest

from harness.config import compose, resolve_paths, trial_config
from harness.train import STATE_FILE, run_fingerprint, train_and_evaluate

TESTS = Path(__file__).parent
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "MLFLOW_DISABLE_TELEMETRY": "true",
       "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture
def et_config(tmp_path):
    cfg = compose(
        "birds_video",
        ["sweep=smoke", f"data.cache_dir={tmp_path / 'cache'}", "model.hidden_size=16",
         "model.num_layers=1", "evaluation.occlusion_levels=[0.0,0.5]", "train.epochs=3",
         # ET from the first epoch, explanations refreshed at epochs 0 and 2: a run resumed at
         # epoch 1 needs the cached ones
         "methods.et.warmup_fraction=0.0", "methods.et.refresh_every=2"],
    )  # fmt: skip
    resolve_paths(cfg)
    return trial_config(cfg, "et")


def _run(config, folder, resume_from=None):
    """Train, saving the state of every epoch to folder/<epoch>; returns the reports."""
    reports = []

    def save(state, artifacts):
        state.save(folder / str(state.epoch))

    train_and_evaluate(
        config, lambda m, a: reports.append(m), checkpoint=save, resume_from=resume_from
    )
    return reports


def _same(a, b):
    keys = set(a) - {"epoch_seconds"}
    assert keys == set(b) - {"epoch_seconds"}
    for key in keys:
        assert a[key] == b[key] or (math.isnan(a[key]) and math.isnan(b[key])), key


def test_a_resumed_run_continues_exactly_where_it_stopped(et_config, tmp_path):
    straight = _run(et_config, tmp_path / "straight")
    assert [r["epoch"] for r in straight] == [1, 2, 3]

    # from every checkpoint of the run, each read after the run had written the later ones (as a
    # Tune snapshot may hold an earlier checkpoint than the trial last wrote): the same reports
    # as the run never stopped; from the last one (the driver died before it recorded the end)
    # the same final report again, from the restored model
    for epoch in (1, 2, 3):
        assert (tmp_path / "straight" / str(epoch) / STATE_FILE).is_file()
        resumed = _run(et_config, tmp_path / f"from{epoch}",
                       resume_from=tmp_path / "straight" / str(epoch))  # fmt: skip
        assert [r["epoch"] for r in resumed] == ([2, 3] if epoch == 1 else [3])
        for a, b in zip(resumed, straight[-len(resumed):]):
            _same(a, b)
    assert "test_accuracy" in resumed[-1]


@pytest.mark.parametrize(
    "other", ["train.batch_size=8", "seed=1", "train.epochs=4", "methods.et.k=1.0"]
)
def test_a_training_state_is_never_continued_by_another_run(et_config, tmp_path, other):
    """The cause of a resumed trial stepping its LR schedule past its end: a state written with
    another batch size (so other steps per epoch) continued as if it were this run's. Any other
    configuration is refused by name."""
    _run(et_config, tmp_path / "run")
    key, value = other.split("=")
    config = copy.deepcopy(et_config)
    section = config
    *parents, leaf = key.replace("methods.et", "method").split(".")
    for name in parents:
        section = section[name]
    section[leaf] = type(section[leaf])(value)
    with pytest.raises(ValueError, match=r"training_state.pt: a training state of another run"):
        _run(config, tmp_path / "other", resume_from=tmp_path / "run" / "1")


def test_where_and_how_many_threads_a_run_trains_do_not_change_its_identity(et_config):
    moved = copy.deepcopy(et_config)
    moved["train"].update(device="cpu", threads=7)
    assert run_fingerprint(moved) == run_fingerprint(et_config)
    assert run_fingerprint({**et_config, "seed": 1}) != run_fingerprint(et_config)


EPOCHS = 3


def _study_args(tmp_path):
    """The study command, through the gate driver of tests/_faults.py (the same trainable in
    every run of the command, as a resumed study needs)."""
    return [sys.executable, "-c", "import sys, _faults; sys.exit(_faults.main())",
            "birds_video", "sweep=smoke", "report.explain_models=false",
            f"study.output_dir={tmp_path / 'study'}", f"data.cache_dir={tmp_path / 'cache'}",
            "ray.num_cpus=2", "study.methods=[vanilla]", f"train.epochs={EPOCHS}", "model=pool_t",
            "data.synthetic.train_per_class=8", "data.synthetic.val_per_class=4",
            "data.synthetic.test_per_class=4"]  # fmt: skip


def _mid_trial(stage: Path) -> bool:
    """Ray Tune's saved state of the stage holds a trial that checkpointed an epoch but did not
    finish (so a resumed study must restart it from that checkpoint)."""
    for path in stage.glob("experiment_state-*.json"):
        try:
            trials = json.loads(path.read_text())["trial_data"]
        except ValueError:  # being written
            return False
        for _, metadata in trials:
            if 1 <= json.loads(metadata)["last_result"].get("epoch", 0) < EPOCHS:
                return True
    return False


def _interrupt(args, log: Path, gate: Path, stage: str, sig) -> int:
    """Run the study command with the trials of `stage` held at a gate after their first epoch
    (tests/_faults.py); once Tune's saved state of the stage holds such a trial, send `sig`
    (SIGINT: to the driver, as Ctrl+C; SIGKILL: to its whole process group, Ray's processes
    included)."""
    gate.mkdir()
    env = {**ENV, "GATE_DIR": str(gate), "GATE_EPOCH": "1", "GATE_STAGE": stage}
    with log.open("w") as out:
        driver = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 900  # a bound, not a synchronisation
        while not (any(gate.glob("arrived-*")) and _mid_trial(out_dir(args) / "ray" / stage)):
            assert driver.poll() is None, f"the study ended first:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no {stage} trial reached the gate in 900 s"
            time.sleep(0.5)
        if sig == signal.SIGKILL:
            os.killpg(driver.pid, signal.SIGKILL)
        else:
            driver.send_signal(sig)
        return driver.wait(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):  # nothing of this driver stays behind
            os.killpg(driver.pid, signal.SIGKILL)


def out_dir(args) -> Path:
    (value,) = (a.split("=", 1)[1] for a in args if a.startswith("study.output_dir="))
    return Path(value)


def _epochs(trial: Path) -> list[dict]:
    return [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]


@pytest.mark.slow
def test_a_study_interrupted_twice_ends_like_an_uninterrupted_one(tmp_path):
    args, out = _study_args(tmp_path), tmp_path / "study"
    search, final = out / "ray" / "search-vanilla", out / "ray" / "final"

    # Ctrl+C in the middle of a search trial: Tune saves its state, the driver says how to resume
    code = _interrupt(args, tmp_path / "1.log", tmp_path / "gate1", "search-vanilla", signal.SIGINT)
    assert code == 130
    assert "run the same command again to resume" in (tmp_path / "1.log").read_text()
    # the same command resumes the search and is killed -9 in the middle of the final training
    code = _interrupt(args, tmp_path / "2.log", tmp_path / "gate2", "final", signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert "search-vanilla: resuming the interrupted stage" in (tmp_path / "2.log").read_text()
    searched = {trial.name: _epochs(trial) for trial in search.glob("gated_trial_*")}
    # and once more, to the end (no gate)
    result = subprocess.run(args, capture_output=True, text=True, timeout=900,
                            env={**ENV, "GATE_DIR": str(tmp_path), "GATE_EPOCH": "0"},
                            start_new_session=True)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "search-vanilla: finished in an earlier run" in result.stdout
    assert "final: resuming the interrupted stage" in result.stdout

    # the trials of an uninterrupted study: 2 searched (not re-run by the last run), 1 final
    assert {trial.name: _epochs(trial) for trial in search.glob("gated_trial_*")} == searched
    assert len(searched) == 2
    (row,) = csv.DictReader((out / "report" / "comparison.csv").open())
    assert (int(row["trials"]), int(row["failed_trials"]), int(row["seeds"])) == (2, 0, 1)
    assert len(list(csv.DictReader((out / "report" / "trials_vanilla.csv").open()))) == 2
    study = optuna.load_study(study_name="birds_video-vanilla",
                              storage=f"sqlite:///{out / 'optuna.db'}")  # fmt: skip
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]

    # interrupted trials restarted from their last checkpoint, not from scratch: Ray's count of
    # iterations since the restore is behind the trial's epoch
    trials = [*search.glob("gated_trial_*"), *final.glob("_retrain_*")]
    restored = set()
    for trial in trials:
        results = _epochs(trial)
        assert {r["epoch"] for r in results} == set(range(1, EPOCHS + 1))
        assert all(r["epoch"] == r["training_iteration"] for r in results)
        if any(r["iterations_since_restore"] < r["training_iteration"] for r in results):
            restored.add(trial.parent.name)
    assert restored == {"search-vanilla", "final"}

    # MLflow: one run per trial, each epoch's metrics once
    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("et-harness-birds_video")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(
        ["birds_video", *(t.name for t in trials)]
    )
    for run in runs:
        assert run.info.status == "FINISHED"
        if run.info.run_name != "birds_video":
            history = client.get_metric_history(run.info.run_id, "val_accuracy")
            assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))
            assert "model.pt" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_a_study_folder_refuses_other_settings_before_anything_starts(tmp_path, capsys):
    import ray

    from harness.sweep import _open_state, main

    out = tmp_path / "study"
    args = ["birds_video", "sweep=smoke", f"study.output_dir={out}",
            f"data.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    cfg = compose(args[0], args[1:])
    resolve_paths(cfg)
    out.mkdir()
    _open_state(cfg, {}).save()  # a study started with these settings

    assert main([*args, "train.epochs=2", "ray.num_cpus=1", "report.explain_models=false"]) == 2
    error = capsys.readouterr().err
    assert f"study.output_dir: {out} holds a study started with other settings" in error
    assert "(train.epochs: 1 -> 2)" in error  # where it runs (ray.*) and the report may change
    assert not ray.is_initialized()


def test_study_restart_moves_a_study_with_other_settings_aside(tmp_path, capsys):
    from harness.sweep import _open_state, check_output_dir

    out = tmp_path / "study"
    args = ["sweep=smoke", f"study.output_dir={out}", f"data.cache_dir={tmp_path / 'cache'}"]
    cfg = compose("birds_video", args)
    resolve_paths(cfg)
    out.mkdir()
    _open_state(cfg, {}).save()
    (out / "report.md").write_text("the earlier study's\n")

    other = compose("birds_video", [*args, "train.epochs=2", "study.restart=true"])
    resolve_paths(other)
    check_output_dir(other)  # not refused, and nothing moved yet: it only reads
    assert (out / "report.md").is_file()
    state = _open_state(other, {})
    assert state.config["train"]["epochs"] == 2 and not state.stages
    (aside,) = tmp_path.glob("study.replaced-*")
    assert (aside / "report.md").read_text() == "the earlier study's\n"
    assert list(out.iterdir()) == []
    assert f"moved to {aside}" in capsys.readouterr().out
    # the same settings again (restart still set): the study resumes, nothing moves
    state.save()
    assert _open_state(other, {}).study_id == state.study_id
    assert len(list(tmp_path.glob("study.replaced-*"))) == 1
