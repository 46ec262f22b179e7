"""A models x methods smoke study through the real stack (`study.models=[timesformer, pool_t,
video_swin_t]`, every method on every model): one report row, one export and one set of MLflow
runs per (model, method), each trial training, explaining, occluding and drawing its gallery on its
own model. One Ray start-up for the three models."""

import csv
import os
import subprocess
import sys

import mlflow
import pytest
import yaml

pytestmark = pytest.mark.slow
MODELS = ("timesformer", "pool_t", "video_swin_t")
METHODS = ("vanilla", "ifi", "et")
RUNS = [f"{model}-{method}" for model in MODELS for method in METHODS]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("models_study")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "MLFLOW_DISABLE_TELEMETRY": "true"}
    result = subprocess.run(
        [sys.executable, "-m", "harness.sweep", "birds_video", "sweep=smoke",
         "report.explain_models=false",
         f"study.models=[{','.join(MODELS)}]", "sweep.num_samples=1",
         "data.synthetic.train_per_class=4", "data.synthetic.val_per_class=2",
         "data.synthetic.test_per_class=2", "evaluation.occlusion_levels=[0.0,0.5]",
         "evaluation.gallery_clips=1", f"study.output_dir={out}",
         f"data.cache_dir={out / 'cache'}", "ray.num_cpus=2"],
        capture_output=True, text=True, timeout=1500, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def test_one_row_per_model_and_method_each_paired_with_its_own_vanilla(study):
    rows = list(csv.DictReader((study / "report" / "comparison.csv").open()))
    # each model's block: its methods, then its ET control (ET's selection, random relevance)
    controls = [f"{model}-et (random relevance)" for model in MODELS]
    assert [r["method"] for r in rows] == [
        run for model, control in zip(MODELS, controls)
        for run in [*RUNS[3 * MODELS.index(model):][:3], control]
    ]  # fmt: skip
    for row in rows:
        assert row["synthetic"] == "True" and 0.0 <= float(row["test_acc_mean"]) <= 1.0
        searched = 0 if row["method"] in controls else 1  # a control re-trains, it searches not
        assert int(row["trials"]) == searched and int(row["seeds"]) == 1
        for key in ("occ_morf_auc", "occ_lerf_auc", "occ_seed_morf_acc"):
            assert 0.0 <= float(row[key]) <= 1.0
    markdown = (study / "report" / "comparison.md").read_text()
    assert "on timesformer, pool_t, video_swin_t" in markdown
    assert "each model's methods against that model's own vanilla" in markdown


def test_exports_and_mlflow_runs_are_named_by_model_and_method(study):
    for model in MODELS:
        for method in METHODS:
            config = yaml.safe_load((study / "best" / f"{model}-{method}.yaml").read_text())
            assert config["model"]["name"] == model and config["method"]["name"] == method
    client = mlflow.MlflowClient(f"sqlite:///{study / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("et-harness-birds_video")
    runs = client.search_runs([experiment.experiment_id])
    search = [r for r in runs if r.data.tags.get("stage") == "search"]
    assert sorted((r.data.tags["model"], r.data.tags["method"]) for r in search) == sorted(
        (model, method) for model in MODELS for method in METHODS
    )
    for run in search:
        assert {"val_accuracy", "occ_gap"} <= set(run.data.metrics)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert any(p.startswith("gallery_") for p in artifacts), run.data.tags["model"]
