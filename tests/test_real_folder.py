"""birds_video on a real BIRDS-style folder: videos encoded by the test, decoded with decord."""

import csv

import numpy as np
import pytest
from _video_files import write_video

from harness.config import compose, resolve_paths, trial_config
from harness.sweep import main as sweep_main
from harness.train import train_and_evaluate


def _birds_tree(root, clips_per_split=(4, 2, 2)):
    rng = np.random.default_rng(0)
    rows = []
    for split, count in zip(("train", "val", "test"), clips_per_split):
        for i in range(count):
            clip_id, label = f"{split}{i}", ("fall", "no_risk")[i % 2]
            frames = rng.integers(0, 255, size=(10, 48, 48, 3), dtype=np.uint8)
            write_video(root / "video" / f"{clip_id}.avi", frames)
            rows.append({"clip_id": clip_id, "label": label, "split": split, "note": "x"})
    with (root / "annotations.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["clip_id", "label", "split", "note"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_birds_video_trains_on_a_real_folder(tmp_path):
    root = _birds_tree(tmp_path / "BIRDS")
    cfg = compose(
        "birds_video",
        ["sweep=smoke", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}",
         "data.frame_size=48", "model.image_size=16", "data.num_frames=8",
         "model.hidden_size=16", "model.num_layers=1", "evaluation.occlusion_levels=[0.0]"],
    )  # fmt: skip
    resolve_paths(cfg)
    config = trial_config(cfg, "et")
    metrics = train_and_evaluate(config, lambda m, a: None)
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    cached = list((tmp_path / "cache").glob("birds-BIRDS-*/video.npy"))
    assert len(cached) == 1 and np.load(cached[0], mmap_mode="r").shape == (8, 8, 48, 48, 3)


def test_a_missing_video_stops_the_study_before_ray_naming_the_file(tmp_path, capsys):
    import ray

    root = _birds_tree(tmp_path / "BIRDS")
    (root / "video" / "val1.avi").unlink()
    code = sweep_main(["birds_video", f"data.root={root}", f"data.cache_dir={tmp_path / 'c'}",
                       f"study.output_dir={tmp_path / 'out'}"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data.root:") and "val1" in err
    assert not ray.is_initialized()
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").glob("*/video.npy"))


@pytest.mark.parametrize("override", ["data.frame_size=8"])
def test_real_data_frame_size_is_checked(tmp_path, override):
    from harness.config import ConfigError, validate_study

    cfg = compose("birds_video", [f"data.root={tmp_path}", override])
    resolve_paths(cfg)
    with pytest.raises(ConfigError, match="data.frame_size: expected at least model.image_size"):
        validate_study(cfg)
