"""A real study (Ray Tune, Optuna, MLflow) in which one trial runs out of memory and one trial's
loss becomes non-finite: both are retried `sweep.max_failures` times, end as failed with their
reason in the report, in MLflow and in Optuna, and the study goes on. Both are the trials of the
first method's search (IFI's), so IFI has no result: the study completes the other method and
its report, and exits with code 3 saying which method has no result and why.

The faults come from tests/_faults.py, a driver that wraps the video trainable (see there)."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import optuna
import pytest

pytestmark = pytest.mark.slow
TESTS = Path(__file__).parent


def test_failing_trials_are_retried_then_reported_and_the_study_completes_the_rest(tmp_path):
    out, faults = tmp_path / "study", tmp_path / "faults"
    faults.mkdir()
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "FAULTS_DIR": str(faults),
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, "-c", "import sys, _faults; sys.exit(_faults.main())", "birds_video",
         "sweep=smoke", "report.explain_models=false", f"study.output_dir={out}",
         f"data.cache_dir={tmp_path / 'cache'}", "ray.num_cpus=2", "study.methods=[ifi,vanilla]",
         "sweep.num_samples=2",
         "model=pool_t", "sweep.max_failures=1", "data.synthetic.train_per_class=8",
         "data.synthetic.val_per_class=4", "data.synthetic.test_per_class=4"],
        capture_output=True, text=True, timeout=900, env=env, start_new_session=True,
    )  # fmt: skip
    assert result.returncode == 3, result.stdout[-3000:] + result.stderr[-3000:]
    assert "incomplete study, exit code 3: ifi: no search trial finished" in result.stderr
    assert f"report: {out / 'report'}" in result.stdout

    # each faulty trial ran 1 + max_failures times, then was left failed
    attempts = {fault: (faults / fault).read_text().split() for fault in ("oom", "nan")}
    for ids in attempts.values():
        assert len(ids) == 2 and len(set(ids)) == 1
    oom, nan = (f"flaky_trial_{attempts[f][0]}" for f in ("oom", "nan"))
    reasons = {
        oom: "MemoryError: injected: out of memory",
        nan: "FloatingPointError: non-finite training loss nan at epoch 0",
    }

    failed = list(csv.DictReader((out / "report" / "failed_trials.csv").open()))
    assert {row["trial"]: row["reason"] for row in failed} == reasons
    assert {row["method"] for row in failed} == {"ifi"}
    table = csv.DictReader((out / "report" / "comparison.csv").open())
    rows = {row["method"]: row for row in table}
    counts = {m: (int(r["trials"]), int(r["failed_trials"]), int(r["seeds"]))
              for m, r in rows.items()}  # fmt: skip
    assert counts == {"ifi": (2, 2, 0), "vanilla": (2, 0, 1)}
    assert 0.0 <= float(rows["vanilla"]["test_acc_mean"]) <= 1.0  # the study went on
    assert "2 (2)" in (out / "report" / "comparison.md").read_text()
    # report.explain_models=false: the page says how to add the final models' explanations
    assert not (out / "report" / "models").exists()
    page = (out / "report" / "index.html").read_text()
    assert f"--no-explain); <code>python -m harness.report {out}</code> adds them" in page

    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("et-harness-birds_video")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert len(runs) == 1 + 2 + 2 + 1  # parent, search trials of both methods, final training
    for name, reason in reasons.items():
        assert runs[name].info.status == "FAILED"
        assert runs[name].data.tags["error"] == reason
    finished = [r for n, r in runs.items() if n not in reasons]
    assert all(r.info.status == "FINISHED" for r in finished)

    storage = f"sqlite:///{out / 'optuna.db'}"
    studies = {m: optuna.load_study(study_name=f"birds_video-{m}", storage=storage)
               for m in ("ifi", "vanilla")}  # fmt: skip
    states = {m: sorted(t.state.name for t in study.trials) for m, study in studies.items()}
    assert states == {"ifi": ["FAIL", "FAIL"], "vanilla": ["COMPLETE", "COMPLETE"]}
