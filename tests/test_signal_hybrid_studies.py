"""birds_signal and birds_hybrid smoke studies through the real stack (Hydra, local Ray with
2 CPUs, Optuna, MLflow in a temporary store), on the synthetic pairs."""

import csv
import os
import subprocess
import sys

import mlflow
import pandas as pd
import pytest

pytestmark = pytest.mark.slow
METHODS = ("vanilla", "ifi", "et")
GALLERIES = {"birds_signal": {"signal_gallery_"}, "birds_hybrid": {"signal_gallery_", "gallery_"}}


@pytest.fixture(scope="module", params=["birds_signal", "birds_hybrid"])
def study(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "MLFLOW_DISABLE_TELEMETRY": "true"}
    result = subprocess.run(
        [sys.executable, "-m", "harness.sweep", request.param, "sweep=smoke",
         f"study.output_dir={out}", f"data.cache_dir={out / 'cache'}", "ray.num_cpus=2",
         "data.synthetic.train_per_class=8", "data.synthetic.val_per_class=4",
         "data.synthetic.test_per_class=4"],
        capture_output=True, text=True, timeout=900, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return request.param, out


def test_report_compares_the_three_methods_on_synthetic_pairs(study):
    experiment, out = study
    markdown = (out / "report" / "comparison.md").read_text()
    assert markdown.startswith(f"# {experiment}: vanilla vs ifi vs et") and "SYNTHETIC" in markdown
    rows = list(csv.DictReader((out / "report" / "comparison.csv").open()))
    assert [r["method"] for r in rows] == [*METHODS, "et (random relevance)"]  # + the control
    for row in rows[:-1]:
        assert (
            row["synthetic"] == "True" and int(row["trials"]) == 2 and row["failed_trials"] == "0"
        )
        for key in ("test_acc_mean", "occ_morf_auc", "occ_lerf_auc"):
            assert 0.0 <= float(row[key]) <= 1.0
    assert ("30%+2f MoRF" in markdown) == (experiment == "birds_hybrid")  # a video protocol
    # like-for-like faithfulness with the signal event as ground truth (and the actor's box)
    faithfulness = pd.read_csv(out / "report" / "faithfulness.csv")
    tested = faithfulness[faithfulness.explainer != "motion_oracle"]
    assert len(tested) == 4 * len(rows) and tested.energy_signal.between(0, 1).all()
    assert ("energy_video" in faithfulness) == (experiment == "birds_hybrid")


def test_each_trial_run_has_metrics_and_its_modalities_galleries(study):
    experiment, out = study
    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name(f"et-harness-{experiment}")
    children = [r for r in client.search_runs([exp.experiment_id])
                if "mlflow.parentRunId" in r.data.tags]  # fmt: skip
    assert len(children) == 2 * len(METHODS) + len(METHODS) + 1  # search, final seeds, control
    for run in children:
        assert {"val_accuracy", "occ_gap", "test_accuracy"} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(children[0].info.run_id)}
    for stem in GALLERIES[experiment]:
        assert any(a.startswith(stem) for a in artifacts), (stem, artifacts)
