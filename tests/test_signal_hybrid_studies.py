"""birds_signal and birds_hybrid smoke studies through the real stack (Hydra, local Ray with
2 CPUs, Optuna, MLflow in a temporary store), on the synthetic pairs; their report pages with the
final models' explanations per input, in a real browser."""

import csv
import os
import shutil
import subprocess
import sys

import mlflow
import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.slow
METHODS = ("vanilla", "ifi", "et")
GALLERIES = {"birds_signal": {"signal_gallery_"}, "birds_hybrid": {"signal_gallery_", "gallery_"}}
INPUTS = {"birds_signal": ["signal"], "birds_hybrid": ["video", "signal"]}
CURVES = {"birds_signal": ["signal"], "birds_hybrid": ["video+signal", "video", "signal"]}
TEST_CLIPS = 4 * 4  # data.synthetic.test_per_class=4, 4 classes


# The hybrid's video branch: Pool-T, the video model cheapest to start (TimeSformer's
# transformers import costs every trial actor about 4 s); the end-to-end study runs TimeSformer.
CHEAP_BRANCH = {"birds_signal": [], "birds_hybrid": ["model@model.video=pool_t"]}


@pytest.fixture(scope="module", params=["birds_signal", "birds_hybrid"])
def study(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "MLFLOW_DISABLE_TELEMETRY": "true"}
    result = subprocess.run(
        [sys.executable, "-m", "harness.sweep", request.param, "sweep=smoke",
         f"study.output_dir={out}", f"data.cache_dir={out / 'cache'}", "ray.num_cpus=2",
         "data.synthetic.train_per_class=8", "data.synthetic.val_per_class=4",
         "data.synthetic.test_per_class=4", *CHEAP_BRANCH[request.param]],
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


def test_report_explains_the_final_models_of_every_input(study):
    """Each method's final model through the same explainers, per input: the explainer table's
    columns, the curves (a hybrid's joint one and one per input), the signal trends, the
    galleries, all on the page; the numbers are the study's own where both measure the same."""
    from harness.evaluate.__main__ import input_file, table_columns

    experiment, out = study
    report = out / "report"
    comparison = pd.read_csv(report / "comparison.csv").set_index("method")
    faithfulness = pd.read_csv(report / "faithfulness.csv")
    page = (report / "index.html").read_text()
    assert "Occlusion test of the final models" in page
    assert f"Per-class trends of the explanations ({', '.join(INPUTS[experiment])})" in page
    segments = [f"segment_{s}" for s in (1, 2, 3, 4)]
    for method in METHODS:
        folder = report / "models" / method
        table = pd.read_csv(folder / "explainers.csv").set_index("explainer")
        assert list(table.columns) == [*table_columns(INPUTS[experiment]), "synthetic"]
        points = pd.read_csv(folder / "occlusion_curves.csv")
        assert points["input"].unique().tolist() == CURVES[experiment]
        assert points[points.level == 0.0]["accuracy"].nunique() == 1  # the clean accuracy
        config = yaml.safe_load((out / "best" / f"{method}.yaml").read_text())
        # like for like: every row is the like-for-like test of the same model (one final seed:
        # the mean over seeds is that seed's)
        explainers = table.index[table["morf_auc"].notna()]  # not the motion oracle (video)
        assert sorted(explainers) == sorted(config["evaluation"]["explainers"])
        ff = faithfulness[faithfulness.method == method].set_index("explainer")
        for column in ("morf_auc", "lerf_auc", "morf_prob_auc", "lerf_prob_auc",
                       "energy_signal", "hit_signal"):  # fmt: skip
            assert table.loc[explainers, column].tolist() == pytest.approx(
                ff.loc[explainers, column].tolist()
            )
        # vanilla and IFI predict by the plain forward: the joint curve of their own explainer
        # is also the final trial's own occlusion test
        if method != "et":
            own = config["evaluation"]["explainer"]
            for column in ("morf_auc", "lerf_auc"):
                assert table.loc[own, column] == pytest.approx(
                    comparison.loc[method, f"occ_{column}"], abs=1e-9
                )
        trends = pd.read_csv(folder / "signal_trends.csv")
        assert trends[segments].sum(axis=1).tolist() == pytest.approx([1.0] * len(trends))
        assert (trends.groupby("explainer")["clips"].sum() == TEST_CLIPS).all()
        assert set(trends["explainer"]) == set(explainers) and trends["synthetic"].all()
        assert (folder / "trends.csv").is_file() == ("video" in INPUTS[experiment])
        for name in explainers:
            trend_pngs = [f"trends/{input_file(name, m)}.png" for m in INPUTS[experiment]]
            for path in [f"galleries/{name}.png", *trend_pngs]:
                assert (folder / path).is_file() and f"models/{method}/{path}" in page, path
    svg = (report / "figures" / "occlusion.svg").read_text()
    assert "SYNTHETIC DATA" in svg
    assert ("signal occluded, LeRF" in svg) == (experiment == "birds_hybrid")


@pytest.mark.skipif(
    not (shutil.which("chromium") or shutil.which("chromium-browser")),
    reason="needs Debian's chromium (apt-get install chromium); .ci/run installs it",
)
def test_report_page_with_signal_figures_opens_in_chromium(study):
    from _browser import check_page

    _, out = study
    check = check_page(out / "report" / "index.html")
    assert check.errors == [] and check.broken_images == []
    assert check.images >= len(list((out / "report").glob("models/*/galleries/*.png")))
