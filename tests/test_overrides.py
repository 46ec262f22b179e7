"""Overrides a study or a final training would misread stop it with exit code 2 and a message
naming the key, before anything is written or started: a type error, a typo (with or without
Hydra's `+`), a value the search overwrites; and an exported config file that is not one."""

import pytest
import yaml

from harness.config import compose, resolve_paths, trial_config
from harness.sweep import main as sweep_main
from harness.train import main as train_main


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr=abc", "train.lr=abc: train.lr: expected a number (like 0.002), got 'abc'"),
        ("train.epochs=2.5", "train.epochs=2.5: train.epochs: expected an integer (like 1)"),
        ("sweep.num_samples=[1,2]", "sweep.num_samples: expected an integer (like 2), got [1, 2]"),
        ("seed=abc", "seed=abc: seed: expected an integer (like 0), got 'abc'"),
        ("sweep.num_sample=3",
         "sweep.num_sample=3: birds_video has no key sweep.num_sample; did you mean "
         "sweep.num_samples"),
        ("+sweep.num_sample=3", "+sweep.num_sample=3: birds_video has no key sweep.num_sample"),
        ("+train.epochs=3", "+train.epochs=3: train.epochs exists; set it without '+'"),
        ("methods.et.k=1.5",
         "methods.et.k=1.5: the et search sets method.k in every trial (space.et.method.k)"),
        ("train.lr=0.01",
         "the vanilla search sets train.lr in every trial (space.vanilla.train.lr)"),
    ],
)  # fmt: skip
def test_a_misread_override_stops_the_study_before_anything_starts(
    tmp_path, capsys, override, message
):
    import ray

    out, cache = tmp_path / "study", tmp_path / "cache"
    code = sweep_main(["birds_video", "sweep=smoke", f"study.output_dir={out}",
                       f"data.cache_dir={cache}", override])  # fmt: skip
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not cache.exists() and not ray.is_initialized()


def test_overrides_that_are_used_pass():
    from harness.overrides import check_overrides

    check_overrides("birds_video", [
        "sweep=smoke", "model.hidden_size=16", "train.warmup=0.2", "data.root=/data",
        "evaluation.occlusion_levels=[0.0,0.5]", "~space.et.method.k", "methods.et.k=1.5",
        "+space.et.method.margin={type: float, low: 0.0, high: 0.2}", "ray.num_cpus=2",
    ])  # fmt: skip
    check_overrides("ucf50_video", ["data.options.test_groups=[1]"])


@pytest.fixture
def exported(tmp_path):
    cfg = compose("birds_video", ["sweep=smoke"])
    resolve_paths(cfg)
    return trial_config(cfg, "et")


@pytest.mark.parametrize(
    ("edit", "overrides", "message"),
    [
        (lambda c: c["train"].update(lr="fast"), [],
         "et.yaml: train.lr: expected a number (like 0.002), got 'fast'"),
        (lambda c: c["train"].update(epochs=[1, 2]), [],
         "et.yaml: train.epochs: expected an integer (like 8), got [1, 2]"),
        (None, ["train.epoch=1"], "train.epoch=1: "),
        (None, ["train.epochs=abc"], "train.epochs=abc: train.epochs: expected an integer"),
    ],
)  # fmt: skip
def test_a_misread_exported_config_stops_the_training(
    tmp_path, capsys, exported, edit, overrides, message
):
    if edit is not None:
        edit(exported)
    path = tmp_path / "et.yaml"
    path.write_text(yaml.safe_dump(exported))
    assert train_main([str(path), *overrides, "--output", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert message in error
    if overrides == ["train.epoch=1"]:
        assert "has no key train.epoch; did you mean train.epochs" in error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [("- 1\n- 2\n", "expected a mapping of config sections, got [1, 2]"),
     ("train: {lr: [\n", "not valid YAML"),
     ("experiment: birds_audio\n", "experiment: expected one of")],
)  # fmt: skip
def test_a_file_that_is_not_a_trial_config_is_named(tmp_path, capsys, text, message):
    path = tmp_path / "best.yaml"
    path.write_text(text)
    assert train_main([str(path)]) == 2
    error = capsys.readouterr().err
    assert f"{path}: " in error and message in error
