"""The study CLI: bad overrides stop with a clear message before Ray starts."""

import os
import subprocess
import sys

import pytest

from harness.config import ConfigError, compose, resolve_paths, validate_study
from harness.sweep import main, run_study


def _validate(*overrides):
    cfg = compose("birds_video", list(overrides))
    resolve_paths(cfg)
    validate_study(cfg)
    return cfg


def test_default_and_smoke_studies_are_valid():
    assert _validate().sweep.num_samples > _validate("sweep=smoke").sweep.num_samples


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("study.methods=[vanilla,boosting]", "study.methods: unknown method 'boosting'"),
        ("methods.et.k=-1", "method.k: expected K >= 0"),
        ("space.et.method.k.low=-0.5", r"space.et.method.k.low: a log-scaled range needs low > 0"),
        (
            "space.et.method.discard_ratio.high=1.0",
            r"space.et.method.discard_ratio = 1.0: method.discard_ratio: expected a fraction",
        ),
        ("data.root=/no/such/folder", "data.root: expected an existing folder"),
        ("methods.et.crop_policy=zoom", "method.crop_policy: expected one of largest_region"),
        ("space.et.method.explainer.choices=[rollout,magic]", "method.explainer: expected one of"),
        ("methods.et.heads=best", "method.heads: expected all, nonempty, top<n>"),
        ("space.ifi.method.weight.low=5", "low \\(5\\) must not exceed high"),
        ("sweep.reuse_actors=maybe", "sweep.reuse_actors: expected true or false, got 'maybe'"),
        ("report.explain_models=1", "report.explain_models: expected true or false, got 1"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        _validate(override)


def test_unknown_experiment_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown experiment 'birds_audio'.*birds_video"):
        compose("birds_audio", [])


def test_cli_exits_2_before_starting_ray(capsys):
    import ray

    assert main(["birds_video", "~space.et.method.k", "methods.et.k=-2"]) == 2
    assert "error: methods.et: method.k: expected K >= 0" in capsys.readouterr().err
    assert not ray.is_initialized()


def test_a_folder_another_driver_holds_is_refused_before_ray_starts(tmp_path):
    """Two drivers in one study folder would resume and checkpoint the same trials: the second is
    refused, naming the first (its pid), before Ray starts; the first's kill -9 frees the folder
    (the operating system drops the lock with the process)."""
    import ray

    from harness.study_state import FolderInUse, hold_folder

    folder = tmp_path / "study"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path\n"
         "from harness.study_state import hold_folder\n"
         "with hold_folder(Path(sys.argv[1])):\n    print('held', flush=True); sys.stdin.read()",
         str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"  # the event: the folder is held
        cfg = _validate("sweep=smoke", f"study.output_dir={folder}")
        with pytest.raises(ConfigError) as refused:  # before the data, Ray or any stage
            run_study(cfg)
        assert str(refused.value).startswith(
            f"study.output_dir: {folder} is in use by another study's driver (pid {holder.pid} on ")
        assert "or choose another study.output_dir" in str(refused.value)
        assert not ray.is_initialized() and not (folder / "study_state.json").exists()
        with pytest.raises(FolderInUse):
            with hold_folder(folder):
                pass
    finally:
        holder.kill()
        holder.wait(timeout=60)
    with hold_folder(folder):  # freed by the kill
        assert (folder / ".study.lock").read_text().startswith(f"pid {os.getpid()} on ")


@pytest.mark.parametrize("tool", ["sweep", "train", "evaluate", "tracking"])
def test_help_works(tool):
    result = subprocess.run(
        [sys.executable, "-m", f"harness.{tool}", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "usage: python -m harness." + tool in result.stdout
