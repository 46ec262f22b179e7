"""`python -m harness.evaluate`: every explainer on a trained model (a tiny one, on tiny synthetic
data), from a model folder, a config YAML and an MLflow run, for video, signal and hybrid models;
the explainer and per-input options of `evaluate_occlusion`; messages for bad sources."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from harness.config import compose, resolve_paths, trial_config
from harness.evaluate import evaluate_occlusion, load_trained
from harness.evaluate.__main__ import main, table_columns
from harness.explain import EXPLAINERS
from harness.models import build_model

TINY = [
    "data.synthetic.num_classes=3", "data.num_frames=4", "data.frame_size=48",
    "data.synthetic.actor_size=9", "data.synthetic.num_distractors=1",
    "data.synthetic.train_per_class=2", "data.synthetic.val_per_class=1",
    "data.synthetic.test_per_class=3", "model.image_size=16", "model.hidden_size=16",
    "model.num_layers=1", "model.num_heads=2", "evaluation.occlusion_levels=[0.0,0.5]",
    "evaluation.gallery_clips=1", "train.epochs=1", "train.threads=1", "train.device=cpu",
]  # fmt: skip


def tiny_config(cache, method="vanilla", overrides=()):
    cfg = compose("birds_video", [f"data.cache_dir={cache}", *TINY, *overrides])
    resolve_paths(cfg)
    return trial_config(cfg, method)


def save_model_folder(config, folder):
    """What `harness.train --output` leaves: model.pt and config.yaml (an untrained model here)."""
    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    model = build_model(config["model"], config["data"]["synthetic"]["num_classes"])
    torch.save(model.state_dict(), folder / "model.pt")
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    config = tiny_config(root / "cache")
    return root, config, save_model_folder(config, root / "model")


def test_every_explainer_from_a_model_folder(workspace, capsys):
    root, _, folder = workspace
    output = root / "out"
    code = main([str(folder), "evaluation.occlusion_levels=[0.0,0.5]", "--output", str(output)])
    assert code == 0
    table = pd.read_csv(output / "explainers.csv")
    assert list(table["explainer"])[-1] == "motion_oracle"  # the reference row, no gap: last
    explainers, oracle = table.iloc[:-1], table.iloc[-1]
    assert sorted(explainers["explainer"]) == sorted(EXPLAINERS)  # random included
    assert list(table.columns) == ["explainer", *table_columns(["video"]), "synthetic"]
    assert explainers["gap"].is_monotonic_decreasing
    assert table["synthetic"].all()
    # ground truth for every row, the oracle's too; distinct values between 1 and the 16 tokens
    assert table[["energy_video", "hit_video"]].notna().all().all()
    assert ((table.energy_video >= 0) & (table.energy_video <= 1)).all()
    assert oracle.hit_video > explainers.set_index("explainer").loc["random", "hit_video"]
    assert explainers["distinct_video"].between(1, 16).all()
    rows = explainers.set_index("explainer")
    # MPRT: random relevance does not depend on the model: correlation 1, flagged
    assert rows.loc["random", "mprt_spearman"] == pytest.approx(1.0)
    assert rows.loc["random", "mprt_flag"] == "fails"
    assert rows.loc["rollout", "mprt_spearman"] < 1.0
    markdown = (output / "explainers.md").read_text()
    assert "SYNTHETIC" in markdown.splitlines()[0]
    printed = capsys.readouterr().out
    assert "| random " in printed and printed.rstrip().endswith(markdown.rstrip()[-60:])
    points = pd.read_csv(output / "occlusion_curves.csv")
    assert sorted(points["level"].unique()) == [0.0, 0.5]
    assert len(points) == len(EXPLAINERS) * 2 * 2 and set(points["input"]) == {"video"}
    # the 0% point is the model's accuracy, whatever the explainer
    assert points[points.level == 0.0]["accuracy"].nunique() == 1
    trends = pd.read_csv(output / "trends.csv")
    assert len(trends) == len(EXPLAINERS) * 3
    regions = ["top-left", "top-right", "bottom-left", "bottom-right"]
    assert trends[regions].sum(axis=1).tolist() == pytest.approx([1.0] * len(trends))
    assert trends[[f"frame_{t}" for t in (1, 2, 3, 4)]].sum(axis=1).tolist() == pytest.approx(
        [1.0] * len(trends)
    )
    for name in ("explainers.md", "occlusion_curves.png", "trends.md"):
        assert (output / name).is_file()
    for name in EXPLAINERS:
        assert (output / "trends" / f"{name}.png").is_file()
        assert (output / "galleries" / f"{name}.png").is_file()
        with Image.open(output / "galleries" / f"{name}_clip0.gif") as gif:
            assert gif.n_frames == 4
    assert not (output / "galleries" / "random_clip1.gif").exists()  # gallery_clips = 1
    assert not (output / "face_trends.md").exists()  # data.face_crop is off for birds_video


def test_face_cropped_data_gets_the_facial_region_trends(workspace):
    root, config, _ = workspace
    config = {**config, "data": {**config["data"], "face_crop": {"enabled": True, "margin": 0.0}}}
    folder = save_model_folder(config, root / "face_model")
    output = root / "face_out"
    assert main([str(folder), "--explainers", "random,rollout", "--output", str(output)]) == 0
    trends = pd.read_csv(output / "trends.csv")
    faces = pd.read_csv(output / "face_trends.csv")
    assert faces["synthetic"].all() and "SYNTHETIC" in (output / "face_trends.md").read_text()
    assert faces["explainer"].tolist() == ["uniform (area)"] + ["random"] * 3 + ["rollout"] * 3
    regions = ["eyes", "nose", "mouth", "rest"]
    assert faces[regions].sum(axis=1).tolist() == pytest.approx([1.0] * 7)
    assert faces["clips"].tolist()[1:] == trends["clips"].tolist()  # the same test clips
    assert (output / "face_trends_vanilla.png").is_file()
    assert (output / "face_maps_vanilla.png").is_file()


def test_a_config_yaml_is_trained_first_with_the_default_levels(workspace):
    root, config, _ = workspace
    path = root / "exported" / "vanilla.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(config))
    assert main([str(path), "--explainers", "random,rollout", "--split", "val"]) == 0
    assert (root / "exported" / "vanilla" / "model.pt").is_file()
    output = root / "exported" / "vanilla" / "evaluation"
    names = sorted(pd.read_csv(output / "explainers.csv")["explainer"])
    assert names == ["motion_oracle", "random", "rollout"]  # and the ground-truth reference
    levels = pd.read_csv(output / "occlusion_curves.csv")["level"].unique()
    assert levels.tolist() == pytest.approx([i / 10 for i in range(10)])


def test_an_mlflow_run_is_downloaded_and_gets_the_evaluation(workspace, monkeypatch, capsys):
    import mlflow

    root, _, folder = workspace
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a file store: no database to create
    uri = (root / "mlruns").as_uri()
    client = mlflow.MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("t")).info.run_id
    client.log_artifacts(run_id, str(folder))
    output = root / "from_run"
    args = [f"runs:/{run_id}", "--tracking-uri", uri, "--explainers", "random", "--output",
            str(output), "evaluation.occlusion_levels=[0.0,0.5]"]  # fmt: skip
    assert main(args) == 0
    assert (output / "explainers.csv").is_file()
    logged = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert "evaluation/explainers.md" in logged
    assert f"logged {output} to run {run_id}" in capsys.readouterr().out
    assert main([f"runs:/{'0' * 32}", "--tracking-uri", uri]) == 2
    assert "no such run" in capsys.readouterr().err


def test_an_explicit_explainer_equals_the_methods_own(tmp_path, workspace):
    root, _, _ = workspace
    # ET past its warm-up, with its own rollout_fem parameters (k, heads) from its config
    config = tiny_config(root / "cache", "et", ["methods.et.k=1.0", "methods.et.heads=top1"])
    folder = save_model_folder(config, tmp_path / "et")
    trained = load_trained(config, folder / "model.pt")
    assert trained.method.active and trained.method.explainer_kwargs == {
        "k": 1.0, "heads": "top1", "head_weight": "mean", "normalise": True
    }
    args = (trained.model, trained.method, trained.dataset, trained.dataset.indices("test"),
            config["evaluation"], 4)  # fmt: skip
    own = evaluate_occlusion(*args)
    explicit = evaluate_occlusion(*args, explainer="rollout_fem", keep_relevance=True)
    assert explicit.as_metrics() == own.as_metrics()
    assert explicit.relevance["video"].shape == (9, 4, 2, 2)
    assert sorted(explicit.rows.tolist()) == trained.dataset.indices("test").tolist()
    # random relevance is seeded
    first = evaluate_occlusion(*args, explainer="random", seed=3, keep_relevance=True)
    again = evaluate_occlusion(*args, explainer="random", seed=3, keep_relevance=True)
    other = evaluate_occlusion(*args, explainer="random", seed=4, keep_relevance=True)
    first, again, other = (r.relevance["video"] for r in (first, again, other))
    assert first.equal(again) and not first.equal(other)


def test_the_like_for_like_protocol_is_the_studys_like_for_like_test(tmp_path, workspace):
    """`--protocol like_for_like` (what a study report shows) predicts with the plain forward and
    every explainer's default parameters: its numbers equal `faithfulness_table`'s, computed
    independently; the default protocol goes through ET's pipeline and its own parameters."""
    from harness.evaluate import evaluate_accuracy, faithfulness_table

    root, _, _ = workspace
    config = tiny_config(root / "cache", "et", ["methods.et.k=1.0", "evaluation.tie_draws=2"])
    folder = save_model_folder(config, tmp_path / "et")
    trained = load_trained(config, folder / "model.pt")
    explainers = ["rollout_fem", "tibav", "random"]
    config["evaluation"]["explainers"] = explainers
    for protocol in ("like_for_like", "pipeline"):
        code = main([str(folder), "evaluation.occlusion_levels=[0.0,0.5]", "evaluation.tie_draws=2",
                     "--explainers", ",".join(explainers), "--protocol", protocol,
                     "--output", str(tmp_path / protocol)])  # fmt: skip
        assert code == 0
    indices = trained.dataset.indices("test")
    args = (trained.model, trained.method, trained.dataset, indices, config["evaluation"], 4)
    reference = faithfulness_table(*args).set_index("explainer")
    table = pd.read_csv(tmp_path / "like_for_like" / "explainers.csv").set_index("explainer")
    columns = ["morf_auc", "lerf_auc", "gap", "gap_rel", "seed_morf_acc", "seed_lerf_acc",
               "distinct_video", "energy_video", "hit_video"]  # fmt: skip
    for name in explainers:
        assert table.loc[name, columns].tolist() == pytest.approx(
            reference.loc[name, columns].tolist(), abs=1e-12)
    points = pd.read_csv(tmp_path / "like_for_like" / "occlusion_curves.csv")
    plain = evaluate_accuracy(*args[:4], 4, plain=True).accuracy
    assert points[points.level == 0.0]["accuracy"].tolist() == pytest.approx([plain] * 6)
    pipeline = pd.read_csv(tmp_path / "pipeline" / "occlusion_curves.csv")
    own = evaluate_accuracy(*args[:4], 4).accuracy
    assert pipeline[pipeline.level == 0.0]["accuracy"].tolist() == pytest.approx([own] * 6)
    zero = [p[p.level == 0.0]["probability"].iloc[0] for p in (points, pipeline)]
    assert zero[0] != pytest.approx(zero[1])  # ET's restriction moves its predictions
    own_fem = evaluate_occlusion(*args, explainer="rollout_fem")  # k = 1.0: the config's
    assert pd.read_csv(tmp_path / "pipeline" / "explainers.csv").set_index("explainer").loc[
        "rollout_fem", "morf_auc"] == pytest.approx(own_fem.curve.morf_auc)  # fmt: skip
    stamp = yaml.safe_load((tmp_path / "like_for_like" / "explained.json").read_text())
    assert stamp == {"explainers": explainers, "protocol": "like_for_like", "inputs": ["video"],
                     "split": "test", "seed": 0}  # fmt: skip
    assert "protocol: like_for_like" in (tmp_path / "like_for_like" / "explainers.md").read_text()
    with pytest.raises(SystemExit):  # argparse: invalid choice
        main([str(folder), "--protocol", "nope"])


def test_a_final_trial_that_explains_its_model_reports_the_same_numbers(tmp_path, workspace):
    """`evaluation.explain_model` (the final stage's lowest seed) writes the like-for-like
    evaluation into <artifacts>/explained/ and takes the like-for-like table from it: every
    metric equals that of the same trial without it."""
    from harness.train import EXPLAINED_DIR, train_and_evaluate

    root, _, _ = workspace
    config = tiny_config(root / "cache", "et", ["evaluation.tie_draws=2"])
    config["evaluation"].update(like_for_like=True, explainers=["rollout", "tibav", "random"])
    metrics = {}
    for explain in (False, True):
        config["evaluation"]["explain_model"] = explain
        artifacts = tmp_path / str(explain)
        metrics[explain] = train_and_evaluate(config, lambda *_: None, artifacts)
        assert (artifacts / EXPLAINED_DIR).is_dir() == explain
    same = [pd.Series(m).drop("epoch_seconds").sort_index() for m in metrics.values()]
    assert same[0].equals(same[1])  # NaN where both are NaN (the motion oracle's curve columns)
    assert any(k.startswith("ff_tibav_") for k in metrics[True])
    explained = tmp_path / "True" / EXPLAINED_DIR
    table = pd.read_csv(explained / "explainers.csv").set_index("explainer")
    assert table.loc["tibav", "gap"] == pytest.approx(metrics[True]["ff_tibav_gap"])
    assert yaml.safe_load((explained / "explained.json").read_text())["protocol"] == "like_for_like"
    for name in ("occlusion_curves.csv", "trends.csv", "galleries/rollout.png"):
        assert (explained / name).is_file()


def test_bad_sources_are_named(tmp_path, capsys):
    def error(*argv):
        assert main([str(a) for a in argv]) == 2
        return capsys.readouterr().err

    assert "no such file or folder; expected a trained-model folder" in error(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.yaml").write_text("seed: 0\n")
    message = error(tmp_path / "empty")
    assert message.startswith(f"error: {tmp_path / 'empty'}: expected a trained-model folder")
    assert "missing: model.pt" in message
    assert "needs --tracking-uri" in error("runs:/0123abcd")
    (tmp_path / "notes.txt").write_text("x")
    assert "not a .yaml file" in error(tmp_path / "notes.txt")
    assert "unknown explainer 'nope'" in error(tmp_path / "empty", "--explainers", "rollout,nope")
    assert "--regions" in error(tmp_path / "empty", "--regions", "2by2")
    assert "--segments: expected an integer >= 1" in error(tmp_path / "empty", "--segments", "0")
    (tmp_path / "empty" / "model.pt").write_bytes(b"")
    assert "config.yaml: experiment: expected one of birds_hybrid" in error(tmp_path / "empty")


def test_a_planted_salient_token_is_found_where_it_is(workspace):
    """The pipeline's wiring: a "model" that is right only while the pixels of token (frame 1,
    row 1, col 0) are intact, explained by an oracle that marks that token: MoRF loses it at once,
    LeRF never; random sits between. Checks that relevance [T, h, w] lands on the right pixels."""
    from harness.methods.vanilla import Vanilla

    root, config, folder = workspace
    trained = load_trained(config, folder / "model.pt")
    dataset = dataclasses.replace(trained.dataset, labels=np.zeros_like(trained.dataset.labels))
    planted = torch.zeros(4, 2, 2)
    planted[1, 1, 0] = 1.0

    class Planted(Vanilla):
        def predict(self, model, inputs):  # full-res 48 px, 2 x 2 grid: the token is 24 x 24 px
            intact = inputs["video"][:, 1, :, 24:, :24].amin(dim=(1, 2, 3)) > 0
            return torch.stack([intact.float(), (~intact).float()], 1) * 10

        def explain(self, model, inputs, target=None, *, explainer=None, **kwargs):
            if explainer is not None:
                return super().explain(model, inputs, target, explainer=explainer, **kwargs)
            return {"video": planted.expand(len(inputs["video"]), -1, -1, -1)}

    method = Planted({"name": "vanilla"}, modalities=trained.method.modalities, epochs=1)
    indices = dataset.indices("test")
    cfg = dict(config["evaluation"], occlusion_levels=[0.0, 0.25, 0.5])
    oracle = evaluate_occlusion(trained.model, method, dataset, indices, cfg, 4)
    assert oracle.curve.morf_accuracy == [1.0, 0.0, 0.0]
    assert oracle.curve.lerf_accuracy == [1.0, 1.0, 1.0]
    assert (oracle.seed_morf_accuracy, oracle.seed_lerf_accuracy) == (0.0, 1.0)
    random = evaluate_occlusion(trained.model, method, dataset, indices, cfg, 4, explainer="random")
    assert oracle.curve.gap == 0.75 > random.curve.gap  # AUCs 0.25 and 1


SIGNAL_TINY = ["hidden_size=16", "num_layers=1", "num_heads=2"]
VIDEO_TINY = ["image_size=16", "hidden_size=16", "num_layers=1", "num_heads=2", "num_frames=4"]


def tiny_modal_config(cache, experiment):
    """A tiny birds_signal (Linformer) or birds_hybrid (TimeSformer + Linformer) trial config."""
    if experiment == "birds_signal":
        model = [f"model.{o}" for o in SIGNAL_TINY]
    else:
        model = [f"model.signal.{o}" for o in SIGNAL_TINY]
        model += [f"model.video.{o}" for o in VIDEO_TINY]
    video = [o for o in TINY if o.startswith(("data.", "evaluation.", "train."))]
    cfg = compose(experiment, [f"data.cache_dir={cache}", *video, *model,
                               "evaluation.gallery_clips=2"])  # fmt: skip
    resolve_paths(cfg)
    config = trial_config(cfg, "vanilla")
    folder = cache.parent / experiment
    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    trained_model = build_model(config["model"], 3, 6)  # the synthetic signals' 6 channels
    torch.save(trained_model.state_dict(), folder / "model.pt")
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return config, folder


def evaluated(root, experiment, inputs):
    """`python -m harness.evaluate` (random, rollout) on the tiny model of `experiment`; its
    explainer table has the columns of `inputs`. Returns the config, the output folder, the
    table and `occlusion(**kwargs)`: `evaluate_occlusion` of that model on the test split."""
    config, folder = tiny_modal_config(root / "cache", experiment)
    output = root / f"{experiment}_out"
    assert main([str(folder), "--explainers", "random,rollout", "--output", str(output),
                 "evaluation.occlusion_levels=[0.0,0.5]"]) == 0  # fmt: skip
    table = pd.read_csv(output / "explainers.csv")
    assert list(table.columns) == ["explainer", *table_columns(inputs), "synthetic"]
    trained = load_trained(config, folder / "model.pt")

    def occlusion(**kwargs):
        return evaluate_occlusion(
            trained.model, trained.method, trained.dataset, trained.dataset.indices("test"),
            config["evaluation"], int(config["train"]["eval_batch_size"]),
            seed=int(config["seed"]), **kwargs,
        )  # fmt: skip

    return config, output, table, trained, occlusion


def test_a_signal_model_gets_curves_time_segment_trends_and_a_signal_gallery(workspace):
    from harness.evaluate.trends import class_mean_maps, segment_shares

    root, _, _ = workspace
    _, output, table, trained, occlusion = evaluated(root, "birds_signal", ["signal"])
    assert "seed_morf_acc" not in table and table["energy_signal"].between(0, 1).all()
    assert table["distinct_signal"].between(1, 16).all()  # 16 time tokens
    points = pd.read_csv(output / "occlusion_curves.csv")
    assert set(points["input"]) == {"signal"} and len(points) == 2 * 2 * 2
    # the signal trends: quarters of the window, each class's shares from the maps the
    # occlusion test used (the same seeded random relevance)
    trends = pd.read_csv(output / "signal_trends.csv").set_index(["explainer", "class"])
    segments = ["segment_1", "segment_2", "segment_3", "segment_4"]
    assert trends[segments].sum(axis=1).tolist() == pytest.approx([1.0] * 6)
    dataset = trained.dataset
    result = occlusion(explainer="random", keep_relevance=True)
    labels = torch.from_numpy(dataset.labels[result.rows].astype("int64"))
    shares = segment_shares(class_mean_maps(result.relevance["signal"], labels, 3).double())
    for k, name in enumerate(dataset.class_names):
        assert trends.loc[("random", name), segments].tolist() == pytest.approx(shares[k].tolist())
    assert "Share of relevance per time segment" in (output / "signal_trends.md").read_text()
    for name in ("random", "rollout"):
        assert (output / "trends" / f"signal_{name}.png").is_file()
        assert (output / "galleries" / f"{name}.png").is_file()
    assert not list(output.glob("galleries/*.gif")) and not (output / "trends.csv").exists()


def test_a_hybrid_model_gets_a_curve_per_input_and_the_joint_one(workspace):
    root, _, _ = workspace
    _, output, table, _, occlusion = evaluated(root, "birds_hybrid", ["video", "signal"])
    assert {"gap_video", "gap_signal", "mprt_spearman_signal", "seed_morf_acc"} <= set(table)
    rows = table.set_index("explainer")
    assert rows.loc["random", "mprt_spearman"] == max(
        rows.loc["random", "mprt_spearman_video"], rows.loc["random", "mprt_spearman_signal"]
    )
    points = pd.read_csv(output / "occlusion_curves.csv")
    assert points["input"].unique().tolist() == ["video+signal", "video", "signal"]
    # the 0% point: the clean accuracy whatever is occluded; the joint curve is the trials' own
    assert points[points.level == 0.0]["accuracy"].nunique() == 1
    trial = occlusion(explainer="rollout")  # what a trial measures: no per-input curves
    joint = points[(points.explainer == "rollout") & (points.input == "video+signal")]
    assert joint[joint.direction == "morf"]["accuracy"].tolist() == trial.curve.morf_accuracy
    assert rows.loc["rollout", "morf_auc"] == pytest.approx(trial.curve.morf_auc)
    for name in ("trends.csv", "signal_trends.csv", "occlusion_curves_video.png",
                 "occlusion_curves_signal.png", "trends/rollout.png", "trends/signal_rollout.png",
                 "galleries/rollout.png", "galleries/rollout_clip1.gif"):  # fmt: skip
        assert (output / name).is_file(), name


def test_a_planted_signal_token_moves_only_the_curves_that_occlude_the_signal(workspace):
    """A hybrid "model" right only while signal token 3 is intact, explained by an oracle that
    marks that token (and a video token the model ignores): with the signal occluded (alone or
    with the video) MoRF loses it at once and LeRF never; with the video alone occluded both
    stay right."""
    from harness.methods.vanilla import Vanilla

    root, _, _ = workspace
    config, folder = tiny_modal_config(root / "cache", "birds_hybrid")
    trained = load_trained(config, folder / "model.pt")
    T, h, w = trained.method.modalities["video"].grid
    video, signal = torch.zeros(T, h, w), torch.zeros(16)
    video[0, 0, 0], signal[3] = 1.0, 1.0

    class Planted(Vanilla):
        def predict(self, model, inputs):  # token 3 = samples 48-63 of the 256 (zero fill)
            intact = inputs["signal"][:, 48:64].abs().amax(dim=(1, 2)) > 0
            return torch.stack([intact.float(), (~intact).float()], 1) * 10

        def explain(self, model, inputs, target=None, **kwargs):
            n = len(inputs["signal"])
            return {"video": video.expand(n, -1, -1, -1), "signal": signal.expand(n, -1)}

    dataset = dataclasses.replace(trained.dataset, labels=np.zeros_like(trained.dataset.labels))
    method = Planted({"name": "vanilla"}, modalities=trained.method.modalities, epochs=1)
    cfg = dict(config["evaluation"], occlusion_levels=[0.0, 0.25])
    result = evaluate_occlusion(trained.model, method, dataset, dataset.indices("test"), cfg, 4,
                                per_input=True)  # fmt: skip
    assert result.curve.morf_accuracy == [1.0, 0.0] and result.curve.lerf_accuracy == [1.0, 1.0]
    assert result.by_input["signal"].morf_accuracy == [1.0, 0.0]
    assert result.by_input["signal"].lerf_accuracy == [1.0, 1.0]
    assert result.by_input["video"].morf_accuracy == [1.0, 1.0]
    assert result.by_input["video"].lerf_accuracy == [1.0, 1.0]
    assert (result.by_input["signal"].gap, result.by_input["video"].gap) == (0.5, 0.0)  # AUCs
    # without per_input: the same joint curve, no per-input curves
    plain = evaluate_occlusion(trained.model, method, dataset, dataset.indices("test"), cfg, 4)
    assert plain.as_metrics() == result.as_metrics() and plain.by_input == {}
