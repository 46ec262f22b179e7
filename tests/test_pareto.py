"""Two objectives at once (`sweep.objective=pareto`): validation accuracy and the validation
occlusion gap, Optuna's multi-objective TPE, the Pareto front in the report, its knee re-trained."""

import itertools
import os
import subprocess
import sys

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest
import yaml

from harness.config import compose, resolve_paths, trial_config
from harness.train import train_and_evaluate
from reports.pareto import knee, pareto_mask, pareto_table


def _dominated_by_any(points: np.ndarray, i: int) -> bool:
    return any(
        all(points[j] >= points[i]) and any(points[j] > points[i])
        for j in range(len(points))
        if j != i
    )


def test_pareto_mask_matches_the_definition_on_random_points():
    rng = np.random.default_rng(0)
    for n, k in itertools.product((1, 2, 7, 30), (2, 3)):
        points = rng.integers(0, 5, size=(n, k)).astype(float)  # small ints: ties and duplicates
        expected = [not _dominated_by_any(points, i) for i in range(n)]
        assert pareto_mask(points).tolist() == expected


def test_knee_is_the_front_member_nearest_the_ideal_corner():
    # front: (0.9, 0.00), (0.8, 0.10), (0.5, 0.12); (0.6, 0.05) is dominated by (0.8, 0.10)
    points = np.array([[0.9, 0.0], [0.6, 0.05], [0.8, 0.10], [0.5, 0.12]])
    mask = pareto_mask(points)
    assert mask.tolist() == [True, False, True, True]
    # scaled over the front: (1, 0), (0.75, 0.833), (0, 1); distances to (1, 1): 1, 0.300, 1
    assert knee(points, mask) == 2
    # a two-member front is a tie; the higher accuracy wins it
    two = np.array([[0.9, 0.0], [0.5, 0.2]])
    assert knee(two, pareto_mask(two)) == 0
    assert knee(points[:1], pareto_mask(points[:1])) == 0


def test_pareto_table_minimised_objectives_count_negated():
    trials = [{"trial": "a", "loss": 0.5, "gap": 0.1}, {"trial": "b", "loss": 0.4, "gap": 0.0},
              {"trial": "c", "loss": 0.6, "gap": 0.05}]  # fmt: skip
    table, chosen = pareto_table(trials, ["loss", "gap"], [-1.0, 1.0])
    assert dict(zip(table["trial"], table["on_front"])) == {"a": True, "b": True, "c": False}
    assert table["trial"].tolist() == ["b", "a", "c"]  # lowest loss first
    assert chosen in (0, 1) and table["chosen"].sum() == 1


def test_validation_occlusion_is_measured_on_the_validation_split(tmp_path):
    cfg = compose(
        "birds_video",
        ["sweep=smoke", "sweep.objective=pareto", f"data.cache_dir={tmp_path}",
         "model.hidden_size=16", "model.num_layers=1", "evaluation.occlusion_levels=[0.0,0.5]",
         "data.synthetic.train_per_class=8", "data.synthetic.val_per_class=4",
         "data.synthetic.test_per_class=6"],
    )  # fmt: skip
    resolve_paths(cfg)
    config = trial_config(cfg, "vanilla")
    assert config["evaluation"]["validation_occlusion"] is True  # pareto turns it on
    metrics = train_and_evaluate(config, lambda m, a: None)
    # the unoccluded point of the validation curve is the validation accuracy (same pipeline,
    # same clips), as the test curve's is the test accuracy
    assert metrics["val_occ_morf_acc_0"] == pytest.approx(metrics["val_accuracy"])
    assert metrics["occ_morf_acc_0"] == pytest.approx(metrics["test_accuracy"])
    gap = metrics["val_occ_lerf_auc"] - metrics["val_occ_morf_auc"]
    assert metrics["val_occ_gap"] == pytest.approx(gap)


@pytest.mark.slow
def test_pareto_study_reports_the_front_and_retrains_its_knee(tmp_path):
    out = tmp_path / "study"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "MLFLOW_DISABLE_TELEMETRY": "true"}
    result = subprocess.run(
        [sys.executable, "-m", "harness.sweep", "birds_video", "sweep=smoke",
         "report.explain_models=false",
         "sweep.objective=pareto", "study.methods=[vanilla]", "sweep.num_samples=4",
         "train.epochs=2", f"study.output_dir={out}", f"data.cache_dir={tmp_path / 'cache'}",
         "ray.num_cpus=2", "model=pool_t", "model.hidden_size=16", "model.spatial_layers=1",
         "evaluation.occlusion_levels=[0.0,0.5]", "evaluation.gallery_clips=1",
         "data.synthetic.train_per_class=8", "data.synthetic.val_per_class=4",
         "data.synthetic.test_per_class=6"],
        capture_output=True, text=True, timeout=900, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = out / "report"
    front = pd.read_csv(report / "pareto_vanilla.csv")
    assert len(front) == 4 and front["synthetic"].all() and front["chosen"].sum() == 1
    # Optuna's own multi-objective study agrees: values, directions, and its Pareto front
    study = optuna.load_study(study_name="birds_video-vanilla-pareto",
                              storage=f"sqlite:///{out / 'optuna.db'}")  # fmt: skip
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MAXIMIZE"]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    by_lr = {round(t.params["train/lr"], 12): t for t in complete}
    assert len(by_lr) == 4
    for row in front.to_dict("records"):
        trial = by_lr[round(row["train.lr"], 12)]
        assert trial.values == pytest.approx([row["val_accuracy"], row["val_occ_gap"]])
    optuna_front = {round(t.params["train/lr"], 12) for t in study.best_trials}
    assert optuna_front == {round(lr, 12) for lr in front[front["on_front"]]["train.lr"]}
    # the knee is what the final stage re-trained and exported
    chosen = front[front["chosen"]].iloc[0]
    best = yaml.safe_load((out / "best" / "vanilla.yaml").read_text())
    assert best["train"]["lr"] == pytest.approx(chosen["train.lr"])
    assert best["evaluation"]["validation_occlusion"] is True
    assert (
        "selection: the knee of each search's Pareto front"
        in (report / "comparison.md").read_text()
    )
    assert "SYNTHETIC" in (report / "pareto_vanilla.md").read_text().splitlines()[0]
    assert (report / "pareto_vanilla.png").stat().st_size > 10_000
    # every search trial's MLflow run holds both objectives (the gap: at the last epoch only)
    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("et-harness-birds_video")
    search = client.search_runs([experiment.experiment_id], "tags.stage = 'search'")
    assert len(search) == 4
    for run in search:
        history = client.get_metric_history(run.info.run_id, "val_occ_gap")
        assert [m.step for m in history] == [2]
        assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 2
