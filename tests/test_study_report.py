"""The study report from a study folder, without Ray: a real composed config, a real Optuna study
in SQLite (complete, pruned and failed trials), the knob table and importance checked against
hand-computed numbers, a partial study's page, and the CLI's refusals."""

import math

import numpy as np
import optuna
import pandas as pd
import pytest
from omegaconf import OmegaConf
from scipy import stats

from harness.config import compose, resolve_paths
from harness.report import main
from harness.search_space import check_space, define_by_run
from harness.study_state import StudyState
from reports.importance import param_importances
from reports.study_folder import load_study_folder
from reports.study_report import build_report

# vanilla's trials: (lr, weight_decay, batch_size, state, value)
TRIALS = [
    (1.2e-3, 0.002, 8, "COMPLETE", 0.30),
    (2.0e-3, 0.010, 16, "COMPLETE", 0.45),
    (3.0e-3, 0.020, 8, "COMPLETE", 0.50),
    (4.0e-3, 0.050, 16, "COMPLETE", 0.40),
    (5.0e-3, 0.004, 8, "PRUNED", 0.20),
    (1.5e-3, 0.030, 16, "FAIL", None),
    (2.5e-3, 0.060, 8, "COMPLETE", 0.35),
]


def _study_folder(tmp_path, finished=("search-vanilla",)):
    """A study folder as the sweep leaves it after its vanilla search (and nothing else)."""
    cfg = compose("birds_video", ["sweep=smoke", f"study.output_dir={tmp_path}"])
    resolve_paths(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    state = StudyState(tmp_path, config["mlflow"]["tracking_uri"],
                       config["mlflow"]["experiment_name"], config,
                       tags={"synthetic": "True", "data": "birds_synthetic"})  # fmt: skip
    for stage in ("search-vanilla", "search-ifi"):
        state.begin_stage(stage, {"stage": "search"})
    for stage in finished:
        state.finish_stage(stage)
    params = check_space(config["space"]["vanilla"], "space.vanilla")
    study = optuna.create_study(study_name="birds_video-vanilla", direction="maximize",
                                storage=config["sweep"]["optuna_storage"])  # fmt: skip
    sample = define_by_run(params)
    for lr, wd, bs, state_name, value in TRIALS:
        study.enqueue_trial({"train/lr": lr, "train/weight_decay": wd, "train/batch_size": bs})
        trial = study.ask()
        sample(trial)
        if state_name == "PRUNED":
            trial.report(value, step=1)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif state_name == "FAIL":
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(trial, value)
    return tmp_path


@pytest.fixture(scope="module")
def partial(tmp_path_factory):
    """The report of a study stopped after its first search."""
    return build_report(_study_folder(tmp_path_factory.mktemp("partial")))


def test_knob_table_counts_means_and_intervals(partial):
    report = partial
    knobs = pd.read_csv(report.folder / "knobs.csv", keep_default_na=False, na_values=[""])
    vanilla = knobs[knobs["method"] == "vanilla"]
    for _, rows in vanilla.groupby("knob"):  # every trial counts once per knob
        assert (rows[["trials", "pruned", "failed", "unfinished"]].sum().sum()) == len(TRIALS)
    batch = vanilla[vanilla["knob"] == "train.batch_size"].set_index("level")
    for size in (8, 16):
        scores = [v for _, _, b, s, v in TRIALS if b == size and s == "COMPLETE"]
        row = batch.loc[str(size)]
        assert row["trials"] == len(scores) and row["mean"] == pytest.approx(np.mean(scores))
        half = stats.t.ppf(0.975, len(scores) - 1) * np.std(scores, ddof=1) / math.sqrt(len(scores))
        assert row["ci_low"] == pytest.approx(np.mean(scores) - half)
        assert row["ci_high"] == pytest.approx(np.mean(scores) + half)
    assert batch.loc["8", "pruned"] == 1 and batch.loc["16", "failed"] == 1
    lr = vanilla[vanilla["knob"] == "train.lr"]  # 7 distinct values: 3 equal-count bins
    assert len(lr) == 3 and lr[["trials", "pruned", "failed"]].sum().sum() == len(TRIALS)
    # ifi's search has not started: its knobs are listed, with no trial
    assert (knobs[knobs["method"] == "ifi"][["trials", "pruned", "failed"]].to_numpy() == 0).all()


def test_importance_of_a_search_and_of_too_few_trials(tmp_path):
    folder = load_study_folder(_study_folder(tmp_path))
    search = folder.searches["vanilla"]
    for evaluator in ("fANOVA", "PED-ANOVA"):
        importance = param_importances(search, evaluator)
        assert set(importance.values) == {"train.lr", "train.weight_decay", "train.batch_size"}
        assert sum(importance.values.values()) == pytest.approx(1.0)
        ranks = sorted(importance.rank(p) for p in importance.values)
        assert ranks == [1, 2, 3]
    search.trials = search.trials[search.trials["number"] < 2]
    few = param_importances(search, "fANOVA")
    assert not few.values and "2 complete trial(s)" in few.note


def test_partial_study_page_says_what_is_missing(partial):
    report = partial
    assert report.missing_stages == ["search-ifi", "search-et", "final"]
    page = report.index.read_text()
    assert "SYNTHETIC DATA" in page and "Partial study" in page
    assert "search-ifi, search-et, final" in page and "No comparison table yet" in page
    assert "No final model yet" in page
    for stem in ("history", "importance", "knobs_vanilla", "knobs_ifi", "knobs_et"):
        assert f"figures/{stem}.png" in page
        assert (report.folder / "figures" / f"{stem}.png").stat().st_size > 5000
        svg = (report.folder / "figures" / f"{stem}.svg").read_text()
        assert "SYNTHETIC DATA" in svg
    knobs_svg = (report.folder / "figures" / "knobs_vanilla.svg").read_text()
    for knob in ("train.lr", "train.weight_decay", "train.batch_size"):
        assert knob in knobs_svg
    assert "http://" not in page.replace("http://www.w3.org", "") and "https://" not in page
    assert "no MLflow store at sqlite:///" in page


def test_cli_refuses_a_folder_that_is_not_a_study(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "not a study output folder (no study_state.json" in capsys.readouterr().err
    assert main([str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_cli_refuses_a_study_with_no_finished_stage(tmp_path, capsys):
    _study_folder(tmp_path, finished=())
    assert main([str(tmp_path)]) == 2
    assert "no stage of the study has finished yet" in capsys.readouterr().err
    assert not (tmp_path / "report" / "index.html").exists()


def test_cli_rebuilds_a_partial_study(tmp_path, capsys):
    _study_folder(tmp_path)
    assert main([str(tmp_path), "--explainers", "rollout,random"]) == 0
    out = capsys.readouterr().out
    assert "partial study" in out and (tmp_path / "report" / "index.html").is_file()
    assert main([str(tmp_path), "--explainers", "nope"]) == 2
    assert "unknown explainer 'nope'" in capsys.readouterr().err


def test_final_accuracy_intervals_from_the_comparison_table_or_the_seeds(tmp_path):
    from reports.final_runs import accuracy_intervals, plot_final_accuracy
    from reports.study_folder import FinalRun, StudyFolder

    folder = load_study_folder(_study_folder(tmp_path))
    accuracies = {"vanilla": [0.50, 0.55, 0.61], "ifi": [0.40], "et": [0.70, 0.74, 0.72]}
    finals = [FinalRun(m, seed, {"test_accuracy": a}, None)
              for m, values in accuracies.items() for seed, a in enumerate(values)]  # fmt: skip
    study = StudyFolder(folder.folder, folder.state, folder.methods, folder.searches, finals, [])
    table = accuracy_intervals(study).set_index("method")
    values = np.array(accuracies["et"])
    half = stats.t.ppf(0.975, 2) * values.std(ddof=1) / math.sqrt(3)
    assert table.loc["et", "low"] == pytest.approx(values.mean() - half)
    assert table.loc["et", "interval"] == "95% Student-t over seeds"
    assert math.isnan(table.loc["ifi", "low"]) and table.loc["ifi", "mean"] == 0.40
    # a comparison table with an interval (e.g. a bootstrap's) is used as it is
    study.tables["comparison"] = pd.DataFrame({
        "method": ["vanilla", "ifi", "et"], "test_acc_mean": [0.553, 0.40, 0.72],
        "test_acc_ci_low": [0.5, 0.3, 0.69], "test_acc_ci_high": [0.6, 0.5, 0.75],
    })  # fmt: skip
    table = accuracy_intervals(study).set_index("method")
    assert (table.loc["ifi", "low"], table.loc["ifi", "high"]) == (0.3, 0.5)
    assert table.loc["et", "seeds"] == accuracies["et"]
    paths = plot_final_accuracy(table.reset_index(), tmp_path / "figures", synthetic=True)
    svg = paths[1].read_text()
    assert "test_acc_ci_low" in svg and "SYNTHETIC DATA" in svg and "vanilla" in svg


README = "# Tool\n\nprose quoting `<!-- results:quoted begin -->`\n\n" \
         "<!-- results:birds_video begin -->\nold table\n" \
         "<!-- results:birds_video end -->\n\nmore prose\n"  # fmt: skip


def test_readme_results_refuse_unknown_blocks_non_studies_and_unfinished_studies(tmp_path, capsys):
    """Every refusal exits 2 with a message and leaves the README and docs/figures untouched."""
    readme = tmp_path / "README.md"
    readme.write_text(README)
    (tmp_path / "partial").mkdir()
    partial = _study_folder(tmp_path / "partial")
    (tmp_path / "empty").mkdir()
    cases = [
        ([f"nosuch={partial}"], "no block <!-- results:nosuch begin --> (its blocks: birds_video)"),
        ([f"birds_video={tmp_path / 'empty'}"], "not a study output folder (no study_state.json"),
        ([f"birds_video={partial}"], "no report/comparison.csv (the study's final stage has not"),
        ([f"birds_video={partial}", f"birds_video={partial}"], "block 'birds_video' given twice"),
        ([f"bad-name={partial}"], "a block name is letters, digits"),
    ]
    for studies, message in cases:
        args = ["--readme", str(readme)] + [a for s in studies for a in ("--study", s)]
        assert main(args) == 2, studies
        assert message in capsys.readouterr().err
        assert readme.read_text() == README and not (tmp_path / "docs").exists()
    for broken, message in [
        (README.replace("<!-- results:birds_video end -->\n", ""), "has no <!-- results:birds"),
        (README + "<!-- results:birds_video begin -->\n", "README.md:10: unexpected"),
    ]:
        readme.write_text(broken)
        assert main(["--readme", str(readme), "--study", f"birds_video={partial}"]) == 2
        assert message in capsys.readouterr().err and readme.read_text() == broken
    readme.write_text(README)
    assert main(["--readme", str(readme), "--study", f"birds_video={partial}",
                 "--figures", "birds_vidoe"]) == 2  # fmt: skip
    assert "--figures birds_vidoe: not a block given by --study" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--readme", str(readme), "--study", "no-equals-sign"])


def test_the_repository_readme_has_its_results_blocks_and_small_figures():
    """The README's results blocks are where `--readme` expects them, and every figure it links
    is in docs/figures/, all of them under the 300 KB budget."""
    import re
    from pathlib import Path

    from reports.readme import FIGURE_BUDGET_BYTES, blocks_of

    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text()
    assert set(blocks_of(text)) == {"birds_video", "birds_signal", "birds_hybrid", "models",
                                    "explainers", "et_policies_s0", "et_policies_s1",
                                    "et_policies_s2"}  # fmt: skip
    linked = re.findall(r"\]\((docs/figures/[^)]+\.png)\)", text)
    assert linked and all((root / path).is_file() for path in linked)
    figures = list((root / "docs" / "figures").glob("*.png"))
    assert sorted(root / p for p in linked) == sorted(figures)  # none unlinked
    assert sum(p.stat().st_size for p in figures) <= FIGURE_BUDGET_BYTES


def test_a_final_models_evaluation_is_reused_only_for_the_same_source(tmp_path, monkeypatch):
    """report/models/<method>/ is redone when the checkpoint, the explainers or the inputs it
    explained differ from its source.json (an older evaluation of a hybrid's video alone, which
    has no `inputs`, is redone), and reused otherwise; every evaluation is like for like."""
    import json

    import harness.evaluate.__main__ as evaluate
    from reports.final_runs import ModelSet, evaluate_models
    from reports.study_folder import FinalRun

    calls = []

    def record(config, weights, output, explainers, protocol, source):
        calls.append((list(explainers), protocol))
        output.mkdir(parents=True, exist_ok=True)
        (output / "occlusion_curves.csv").write_text("explainer,direction,level\n")

    monkeypatch.setattr(evaluate, "evaluate_explainers", record)
    config = OmegaConf.to_container(compose("birds_hybrid", []), resolve=True)
    run = FinalRun("et", 1000, {}, tmp_path / "checkpoint")
    models = ModelSet({"et": run}, {"et": config})
    folder = tmp_path / "models"
    evaluate_models(models, folder, ["rollout", "random"])
    evaluate_models(models, folder, ["rollout", "random"])
    assert calls == [(["rollout", "random"], "like_for_like")]
    evaluate_models(models, folder, ["tibav", "random"])
    assert calls[-1] == (["tibav", "random"], "like_for_like") and len(calls) == 2
    stamp = folder / "et" / "source.json"
    assert json.loads(stamp.read_text())["inputs"] == ["video", "signal"]
    older = {k: v for k, v in json.loads(stamp.read_text()).items() if k != "inputs"}
    stamp.write_text(json.dumps(older))
    evaluate_models(models, folder, ["tibav", "random"])
    assert len(calls) == 3


def test_the_final_trials_own_evaluation_is_copied_when_it_holds_what_is_asked(tmp_path,
                                                                               monkeypatch):
    """A final trial that explained its model (`evaluation.explain_model`: <checkpoint>/explained/
    with its explained.json) is copied into report/models/<method>/, not run again; one whose
    stamp says other explainers, another protocol or another seed is not."""
    import json

    import harness.evaluate.__main__ as evaluate
    from harness.evaluate.__main__ import EXPLAINED_FILE, explained_stamp
    from reports.final_runs import ModelSet, evaluate_models
    from reports.study_folder import FinalRun

    calls = []

    def record(config, weights, output, explainers, protocol, source):
        calls.append(explainers)
        output.mkdir(parents=True, exist_ok=True)

    monkeypatch.setattr(evaluate, "evaluate_explainers", record)
    config = OmegaConf.to_container(compose("birds_video", []), resolve=True)
    run = FinalRun("vanilla", 1000, {}, tmp_path / "checkpoint")
    models = ModelSet({"vanilla": run}, {"vanilla": config})
    assert models.explainers == ["rollout", "rollout_fem", "tibav", "random"]
    trial = run.checkpoint / "explained"
    (trial / "galleries").mkdir(parents=True)
    (trial / "occlusion_curves.csv").write_text("explainer,direction,level\n")
    (trial / "galleries" / "rollout.png").write_bytes(b"png")
    for stamp in (explained_stamp(models.explainers, "pipeline", ["video"], "test", 1000),
                  explained_stamp(models.explainers, "like_for_like", ["video"], "test", 1001),
                  explained_stamp(["rollout", "random"], "like_for_like", ["video"], "test",
                                  1000)):  # fmt: skip
        (trial / EXPLAINED_FILE).write_text(json.dumps(stamp))
        evaluate_models(models, tmp_path / "no", None)
        assert len(calls) == 1 and calls.pop() == models.explainers
    wanted = explained_stamp(models.explainers, "like_for_like", ["video"], "test", 1000)
    (trial / EXPLAINED_FILE).write_text(json.dumps(wanted))
    done = evaluate_models(models, tmp_path / "models", None)
    assert not calls
    assert (done["vanilla"] / "galleries" / "rollout.png").read_bytes() == b"png"
    source = json.loads((done["vanilla"] / "source.json").read_text())
    assert source == {"checkpoint": str(run.checkpoint), **wanted}
