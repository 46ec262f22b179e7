"""The whole smoke study through the real stack: Hydra, Ray Tune (local, 2 CPUs), Optuna TPE,
MLflow (a SQLite store in a temporary folder), then the final-training command on an export."""

import csv
import io
import json
import os
import shutil
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

pytestmark = pytest.mark.slow
METHODS = ("vanilla", "ifi", "et")
ARMS = (*METHODS, "et (random relevance)")  # final.controls: the control arm


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "MLFLOW_DISABLE_TELEMETRY": "true"}
    result = subprocess.run(
        [sys.executable, "-m", "harness.sweep", "birds_video", "sweep=smoke",
         f"study.output_dir={out}", f"data.cache_dir={out / 'cache'}", "ray.num_cpus=2"],
        capture_output=True, text=True, timeout=900, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (out.parent / "study_stdout.txt").write_text(result.stdout)
    (out.parent / "study_stderr.txt").write_text(result.stderr)
    return out


def test_the_terminal_shows_the_progress_view_not_ray_tunes_output(study):
    stdout = (study.parent / "study_stdout.txt").read_text()
    printed = stdout + (study.parent / "study_stderr.txt").read_text()
    assert "search-et  trial 2/2 " in stdout and "search-et  2/2 ended (0 failed)" in stdout
    for ray_line in ("Configuration for experiment", "View detailed results here",
                     "Wrote the latest version of all result files", "Trial status:",
                     "A new study created in RDB", "Creating initial MLflow database tables"):
        assert ray_line not in printed, ray_line  # fmt: skip
    assert stdout.splitlines()[-1] == f"report: {study / 'report'}"


def test_report_has_one_row_per_arm_labelled_synthetic(study):
    markdown = (study / "report" / "comparison.md").read_text()
    assert "SYNTHETIC DATA" in markdown
    rows = list(csv.DictReader((study / "report" / "comparison.csv").open()))
    assert [r["method"] for r in rows] == list(ARMS)
    for row in rows:
        assert row["synthetic"] == "True" and row["data"] == "birds_synthetic"
        assert 0.0 <= float(row["test_acc_low"]) <= float(row["test_acc_mean"])
        assert float(row["test_acc_mean"]) <= float(row["test_acc_high"]) <= 1.0
        assert int(row["seeds"]) == 1 and int(row["test_clips"]) == 32
        assert int(row["trials"]) == (0 if row["method"] == ARMS[-1] else 2)
        for key in ("occ_morf_auc", "occ_lerf_auc", "occ_seed_morf_acc", "ff_random_gap"):
            assert -1.0 <= float(row[key]) <= 1.0
        if row["method"] != "vanilla":  # paired with vanilla, Holm over the 3 comparisons
            assert 0.0 < float(row["p_vs_vanilla"]) <= float(row["p_holm"]) <= 1.0
            assert (
                float(row["diff_low"]) <= float(row["diff_vs_vanilla"]) <= float(row["diff_high"])
            )
    assert "do not cover the search's own variance" in markdown
    assert (study / "report" / "comparison.tex").read_text().startswith("\\begin{table}")


def test_every_arm_is_tested_like_for_like_with_ground_truth(study):
    table = pd.read_csv(study / "report" / "faithfulness.csv")
    explainers = ["rollout", "rollout_fem", "tibav", "random", "motion_oracle"]
    assert list(table.method) == [m for m in ARMS for _ in explainers]
    assert list(table.explainer) == explainers * len(ARMS)
    for _, row in table.iterrows():
        assert 0.0 <= row.energy_video <= 1.0 and 0.0 <= row.hit_video <= 1.0
        if row.explainer != "motion_oracle":
            assert 1 <= row.distinct_video <= row.tokens_video == 128
            assert row.gap_rel == pytest.approx(row.gap / row.clean_accuracy)
    # the plain forward of one model is the same whatever the explainer
    assert table.groupby("method").clean_accuracy.nunique().eq(1).all()


def test_search_and_final_seeds_are_disjoint_and_predictions_are_kept(study):
    search = [json.loads(p.read_text())["seed"]
              for p in (study / "ray").glob("search-*/*/params.json")]  # fmt: skip
    final = [json.loads(p.read_text())["seed"] for p in (study / "ray").glob("final/*/params.json")]
    assert len(search) == 2 * len(METHODS) and len(final) == len(ARMS)
    assert set(search) == {0} and set(final) == {1000}
    predictions = pd.read_csv(study / "report" / "predictions.csv")
    assert list(predictions.columns[:5]) == ["method", "seed", "row", "label", "predicted"]
    assert predictions.groupby(["method", "seed"]).size().to_dict() == {
        (arm, 1000): 32 for arm in ARMS
    }
    probabilities = predictions.filter(like="prob_")
    assert probabilities.shape[1] == 4 and np.allclose(probabilities.sum(1), 1.0, atol=1e-5)
    assert (probabilities.to_numpy().argmax(1) == predictions.predicted).all()
    rows = pd.read_csv(study / "report" / "comparison.csv").set_index("method")
    for arm in ARMS:  # the table's accuracy is the saved predictions'
        mine = predictions[predictions.method == arm]
        assert rows.loc[arm, "test_acc_mean"] == pytest.approx(
            (mine.label == mine.predicted).mean()
        )


def test_best_configs_are_complete_trial_configs(study):
    for method in METHODS:
        text = (study / "best" / f"{method}.yaml").read_text()
        assert "SYNTHETIC" in text.splitlines()[2]
        config = yaml.safe_load(text)
        assert config["method"]["name"] == method
        assert {"data", "model", "train", "evaluation", "seed"} <= set(config)


def test_mlflow_holds_a_parent_and_a_child_per_trial(study):
    client = mlflow.MlflowClient(f"sqlite:///{study / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("et-harness-birds_video")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    search = [r for r in children if r.data.tags["stage"] == "search"]
    final = [r for r in children if r.data.tags["stage"] == "final"]
    assert len(search) == 2 * len(METHODS) and len(final) == len(ARMS)
    assert sorted(r.data.tags["method"] for r in search) == sorted(METHODS * 2)
    for run in search + final:
        assert {"val_accuracy", "train_loss", "occ_morf_auc", "occ_lerf_auc", "occ_gap"} <= set(
            run.data.metrics
        )
        assert run.data.tags["synthetic"] == "True"
    artifacts = {a.path for a in client.list_artifacts(search[0].info.run_id)}
    assert {"model.pt", "config.yaml", "occlusion_curves.png"} <= artifacts
    assert any(p.startswith("gallery_") for p in artifacts)
    for run in final:  # every final run's per-clip predictions and like-for-like table
        held = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"predictions.csv", "faithfulness.csv"} <= held
        assert int(run.data.params["seed"]) == 1000
    report = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"comparison.md", "index.html", "figures", "knobs.csv", "models"} <= report


def test_final_training_command_trains_an_export(study, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "harness.train", str(study / "best" / "et.yaml"),
         "--output", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SYNTHETIC" in result.stdout
    accuracy = float(result.stdout.strip().splitlines()[-1].split(":")[1])
    assert 0.0 <= accuracy <= 1.0
    assert (tmp_path / "model.pt").is_file()


@pytest.mark.skipif(
    not (shutil.which("chromium") or shutil.which("chromium-browser")),
    reason="needs Debian's chromium (apt-get install chromium); .ci/run installs it",
)
def test_report_page_opens_in_chromium_without_errors(study):
    """The page a researcher opens first, in a real browser: no console error, no failed load,
    no broken image, a screenshot that is not blank."""
    from _browser import check_page

    report = study / "report"
    check = check_page(report / "index.html")
    assert check.errors == [] and check.broken_images == []
    figures = len(list((report / "figures").glob("*.png")))
    galleries = len(list(report.glob("models/*/galleries/*.png")))
    explained = pd.read_csv(report / "models" / "et" / "explainers.csv")
    explainers = int(explained["morf_auc"].notna().sum())  # not the model-free reference row
    assert figures == 4 + len(METHODS) and galleries == explainers * len(METHODS)
    assert check.images >= figures + galleries
    pixels = np.asarray(Image.open(io.BytesIO(check.screenshot)).convert("L"), dtype=float)
    assert pixels.shape == (2400, 1280)
    assert (pixels < 200).mean() > 0.02 and pixels.std() > 20  # text, figures: not a blank page


def test_report_numbers_are_the_study_numbers(study):
    """The knob table, the final-accuracy figure's data and the final models' occlusion curves
    against the sweep's own tables (Ray's trial table, the comparison table)."""
    from reports.final_runs import accuracy_intervals
    from reports.study_folder import load_study_folder

    report = study / "report"
    comparison = pd.read_csv(report / "comparison.csv").set_index("method")
    knobs = pd.read_csv(report / "knobs.csv", keep_default_na=False, na_values=[""])
    counted = ["trials", "pruned", "failed", "unfinished"]
    folder = load_study_folder(study)
    for method in METHODS:
        trials = pd.read_csv(report / f"trials_{method}.csv")  # Ray Tune's table of the search
        rows = knobs[knobs["method"] == method]
        params = {p.path: p for p in folder.searches[method].params}
        configs = [{c[len("config/"):].replace("/", "."): v for c, v in row.items()
                    if c.startswith("config/")} for _, row in trials.iterrows()]  # fmt: skip
        for knob, part in rows.groupby("knob"):
            # a conditional knob (K and heads: Rollout-FEM only) counts the trials it applied to
            applied = sum(params[knob].applies(config) for config in configs)
            assert part[counted].to_numpy().sum() == applied, (method, knob)
            assert int(comparison.loc[method, "trials"]) == len(trials)
        for level, part in rows[rows["knob"] == "train.batch_size"].groupby("level"):
            same = trials[trials["config/train/batch_size"] == int(level)]
            assert part["mean"].item() == pytest.approx(same["val_accuracy"].mean())
    intervals = accuracy_intervals(folder).set_index("method")
    runs = pd.read_csv(report / "faithfulness_runs.csv")
    for method in METHODS:
        mean = comparison.loc[method, "test_acc_mean"]
        assert intervals.loc[method, "mean"] == pytest.approx(mean)
        explained = pd.read_csv(report / "models" / method / "explainers.csv")
        explained = explained.set_index("explainer")
        config = yaml.safe_load((study / "best" / f"{method}.yaml").read_text())
        tested = sorted(explained.index[explained["morf_auc"].notna()])  # not the oracle row
        assert tested == sorted(config["evaluation"]["explainers"])
        # the report's model section is the like-for-like test of the lowest seed's model: that
        # run's row of the like-for-like table, explainer by explainer
        row = runs[(runs["method"] == method) & (runs["seed"] == 1000)].set_index("explainer")
        for column in ("morf_auc", "lerf_auc", "gap", "energy_video"):
            assert explained[column].to_dict() == pytest.approx(row[column].to_dict(), abs=1e-9,
                                                                nan_ok=True)  # fmt: skip
        if method != "et":  # their own pipeline is the plain forward: the own numbers come back
            own = config["evaluation"]["explainer"]
            for column in ("morf_auc", "lerf_auc"):
                assert explained.loc[own, column] == pytest.approx(
                    comparison.loc[method, f"occ_{column}"], abs=1e-9
                )
    # the final trials explained their models: the report copied their folders
    stdout = (study.parent / "study_stdout.txt").read_text()
    assert "report: explaining" not in stdout
    for method in METHODS:
        source = json.loads((report / "models" / method / "source.json").read_text())
        assert source["protocol"] == "like_for_like" and "/explained" not in source["checkpoint"]
    page = (report / "index.html").read_text()
    assert "SYNTHETIC DATA" in page and "Partial study" not in page
    for method in METHODS:
        assert f"../best/{method}.yaml" in page


def test_readme_results_blocks_from_the_study(study, tmp_path):
    """`python -m harness.report --readme`: the marked blocks get the study's own tables, its
    measured line and its figures (under the budget); the rest of the README stays as it was."""
    import re

    from harness.report import main
    from reports.readme import FIGURE_KINDS, ReadmeError, load_blocks, update_readme

    before, after = "# Tool\n\nintro <!-- a comment -->\n\n", "\n\n## Next\n\ntext\n"
    blocks = "".join(f"<!-- results:{n} begin -->\nstale\n<!-- results:{n} end -->\n\nbetween\n\n"
                     for n in ("birds_video", "explainers"))  # fmt: skip
    readme = tmp_path / "README.md"
    readme.write_text(before + blocks + after)
    args = ["--readme", str(readme), "--study", f"birds_video={study}",
            "--explainer-table", f"explainers={study}"]  # fmt: skip
    assert main(args) == 0
    text = readme.read_text()
    assert text.startswith(before) and text.endswith(after) and "stale" not in text
    assert text.count("\n\nbetween\n\n") == 2
    video, explainers = (text.split(f"<!-- results:{n} begin -->")[1].split("end -->")[0]
                         for n in ("birds_video", "explainers"))  # fmt: skip
    state = json.loads((study / "study_state.json").read_text())
    measured = next(line for line in video.splitlines() if line.startswith("*Measured:*"))
    assert "**SYNTHETIC data**" in measured and f"{os.cpu_count()}-core" in measured
    assert "2 trials per method, 1 epochs per trial, 1 final seed(s)" in measured
    assert state["machine"]["started"] in measured and "up to 2 trials at once" in measured
    minutes = float(re.search(r"wall time ([\d.]+) min", measured)[1])
    assert abs(minutes - state["summary"]["params"]["wall_seconds"] / 60) <= 0.051
    for row in pd.read_csv(study / "report" / "comparison.csv").itertuples():
        cell = f"{row.test_acc_mean:.3f} [{row.test_acc_low:.3f}, {row.test_acc_high:.3f}]"
        assert re.search(rf"^\| {re.escape(row.method)} +\| {re.escape(cell)} ", video, re.M)
    for method in METHODS:
        table = pd.read_csv(study / "report" / "models" / method / "explainers.csv")
        assert f"`{method}`'s final model" in explainers
        for value in table["lerf_auc"].dropna():
            assert f"{value:.3f}" in explainers
    figures = sorted((tmp_path / "docs" / "figures").glob("*.png"))
    assert [p.name for p in figures] == sorted(f"birds_video-{k}.png" for k in FIGURE_KINDS)
    assert sum(p.stat().st_size for p in figures) <= 300_000
    for path in figures:
        assert f"](docs/figures/{path.name})" in video and Image.open(path).width <= 640
    first = {p: p.read_bytes() for p in figures}
    assert main(args) == 0 and readme.read_text() == text  # generated again: the same
    assert {p: p.read_bytes() for p in figures} == first
    # a smaller budget: narrower figures; one that no width meets: refused, nothing written
    loaded = load_blocks([("birds_video", str(study), False)], None)
    update_readme(readme, loaded, budget=sum(map(len, first.values())) * 2 // 3)
    assert all(Image.open(p).width < 640 for p in figures)
    shrunk = {p: p.read_bytes() for p in figures}
    with pytest.raises(ReadmeError, match="over the budget of 1000"):
        update_readme(readme, loaded, budget=1000)
    assert readme.read_text() == text and {p: p.read_bytes() for p in figures} == shrunk


def test_readme_block_of_studies_side_by_side(study, tmp_path):
    """`--studies NAME=DIR,DIR`: one table of every arm of each study, paired with the first's;
    a study against its own copy differs by exactly 0 on every arm, and a name without its
    block, or a single study, is refused."""
    import re
    import shutil

    from harness.report import main

    copy = tmp_path / "again"
    shutil.copytree(study, copy, ignore=shutil.ignore_patterns("cache"))
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:pair begin -->\n<!-- results:pair end -->\n")
    assert main(["--readme", str(readme), "--studies", f"pair={study},{copy}"]) == 0
    text = readme.read_text()
    assert f"from {study.name}/, again/" in text and text.count("*Measured:*") == 2
    rows = [line for line in text.splitlines() if line.startswith("| again ")]
    assert len(rows) == len(ARMS)
    assert all(re.search(r"\| \+0\.000 \[0\.000, 0\.000\] +\|", row) for row in rows), rows
    assert main(["--readme", str(readme), "--studies", f"pair={study}"]) == 2
    assert main(["--readme", str(readme), "--studies", f"other={study},{copy}"]) == 2
