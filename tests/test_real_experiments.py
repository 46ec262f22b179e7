"""ucf50_video, cremad_video and birds_video on real videos encoded by the test (PyAV) into
UCF50-, CREMA-D- and BIRDS-style trees: each experiment's smoke study runs end to end (real Ray,
Optuna, MLflow), its report names the real dataset, the clips the trials trained on are the
encoded frames (for CREMA-D: their face crops, the clips being a real face photograph moving over
the frame), the group/actor splits hold, and skipped files are listed; the CREMA-D report carries
the facial-region trends and the face-crop gallery. Without a folder, the same experiments run on
their synthetic stand-ins."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from _video_files import (
    birds_tree,
    clip_level,
    crema_d_tree,
    decoded_index,
    face_frames,
    no_face_frames,
    ucf50_tree,
    write_video,
)

from harness.config import ConfigError, compose, experiments, resolve_paths, validate_study
from harness.data import open_dataset
from harness.data.cache import load_video_cache
from harness.data.faces import crop_box
from harness.data.folders import Skipped
from harness.data.video_io import decode_clip, resize_frames, sample_indices
from harness.sweep import main as sweep_main
from reports.comparison import MethodSummary, comparison_table, skipped_table, write_comparison

FRAMES = 8  # data.num_frames of the experiments; every encoded clip has 10 frames
UCF50_OPTIONS = ["data.options.test_groups=[3]", "data.options.val_groups=[4]"]
CREMA_D_OPTIONS = ["data.options.test_actors=[1002]", "data.class_names=[ANG,HAP,SAD]"]


def _face_clip(i: int) -> np.ndarray:
    """The astronaut moving over a 320 x 240 frame, on a background grey that tells clips
    apart."""
    return face_frames(height=240, width=320, photo=224, background=40 + 12 * (i % 12))[0]


def _trees(base: Path) -> dict[str, tuple[Path, dict[str, int]]]:
    ucf50 = base / "UCF50"
    crema = base / "CREMA-D"
    birds = base / "BIRDS"
    rows = [(f"{s}{i}", ("fall", "no_risk")[i % 2], s) for s, n in
            (("train", 4), ("val", 2), ("test", 2)) for i in range(n)]  # fmt: skip
    trees = {
        "ucf50_video": (ucf50, ucf50_tree(ucf50, ["Basketball", "Biking"], [1, 2, 3, 4])),
        "cremad_video": (crema, crema_d_tree(crema, range(1001, 1006), ["ANG", "HAP", "SAD"],
                                             make=_face_clip)),  # fmt: skip
        "birds_video": (birds, birds_tree(birds, rows + [("corrupt", "fall", "train")])),
    }
    # BIRDS bad files: a clip that does not decode, an annotated clip without a video, a stray file
    (birds / "video" / "corrupt.avi").write_bytes(b"\x00" * 64)
    with (birds / "annotations.csv").open("a") as f:
        f.write("lost,fall,train,s0\n")
    (birds / "video" / "notes.txt").write_text("not a clip")
    # CREMA-D: a clip without a face (face crops are on: data.on_bad_file=skip lists it)
    write_video(crema / "1001_IEO_ANG_XX.mp4", no_face_frames(), codec="libx264")
    return trees


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """The three smoke studies, in this process, on one local Ray instance and one MLflow
    store."""
    import ray

    base = tmp_path_factory.mktemp("real")
    trees = _trees(base / "data")
    extra = {
        "ucf50_video": ["study.methods=[vanilla]", *UCF50_OPTIONS],
        "cremad_video": ["study.methods=[vanilla]", "data.on_bad_file=skip", *CREMA_D_OPTIONS],
        "birds_video": ["study.methods=[et]", "data.on_bad_file=skip"],
    }
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        for experiment, (root, _) in trees.items():
            out = base / experiment
            code = sweep_main([experiment, "sweep=smoke",
                               "report.explain_models=false", "model=pool_t", f"data.root={root}",
                               f"data.cache_dir={out / 'cache'}", f"study.output_dir={out}",
                               f"mlflow.tracking_uri=sqlite:///{base / 'mlflow.db'}",
                               *extra[experiment]])  # fmt: skip
            assert code == 0, experiment
    finally:
        ray.shutdown()
    return base, trees


def _cache(study: Path):
    folders = [p for p in (study / "cache").iterdir()]
    assert len(folders) == 1, folders  # decoded once: the trials opened the driver's cache
    return load_video_cache(folders[0])


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["ucf50_video", "cremad_video", "birds_video"])
def test_report_names_the_real_dataset(studies, experiment):
    base, trees = studies
    root, _ = trees[experiment]
    report = base / experiment / "report"
    markdown = (report / "comparison.md").read_text()
    assert "SYNTHETIC" not in markdown.upper()
    assert f"- data: {root.name}\n" in markdown
    assert f"- data folder: {root.resolve()} (" in markdown
    rows = list(csv.DictReader((report / "comparison.csv").open()))
    arms = ["et", "et (random relevance)"] if experiment == "birds_video" else ["vanilla"]
    assert [r["method"] for r in rows] == arms  # ET comes with its control arm (final.controls)
    assert rows[0]["data"] == root.name and rows[0]["synthetic"] == "False"
    assert 0.0 <= float(rows[0]["test_acc_mean"]) <= 1.0 and rows[0]["trials"] == "2"
    header = (base / experiment / "best" / f"{rows[0]['method']}.yaml").read_text()
    assert "SYNTHETIC" not in header


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["ucf50_video", "cremad_video", "birds_video"])
def test_trials_trained_on_the_encoded_frames(studies, experiment):
    base, trees = studies
    _, written = trees[experiment]
    cached = _cache(base / experiment)
    expected_frames = sample_indices(10, FRAMES).tolist()
    assert cached.video.shape[1:] == (FRAMES, 96, 96, 3)
    if experiment == "cremad_video":  # face crops: the box cut from the native frames, resized
        boxes = list(csv.DictReader((cached.folder / "face_boxes.csv").open()))
        assert [b["clip_id"] for b in boxes] == list(cached.clip_ids) and len(boxes) == 15
        _, faces = face_frames(height=240, width=320, photo=224)
        for box, clip in zip(boxes, cached.video):
            x0, y0, side = int(box["x0"]), int(box["y0"]), int(box["side"])
            read = decode_clip(box["path"], FRAMES, None)
            expected = resize_frames(crop_box(read.frames, (x0, y0, side)), 96)
            np.testing.assert_array_equal(clip, expected)
            for f in expected_frames:  # her face is inside the clip's box in every sampled frame
                assert faces[f][0] >= x0 and faces[f][2] <= x0 + side, box["clip_id"]
                assert faces[f][1] >= y0 and faces[f][3] <= y0 + side, box["clip_id"]
        return
    for clip_id, clip in zip(cached.clip_ids, cached.video):
        assert [decoded_index(f) for f in clip] == expected_frames, clip_id
        blue = float(clip[:, :, 60:, 2].mean())  # the coloured half, upscaled from 32 to 96
        assert abs(blue - clip_level(written[clip_id])) < 6, clip_id


@pytest.mark.slow
def test_ucf50_groups_and_crema_d_actors_never_cross_splits(studies):
    base, _ = studies
    for experiment, held_out, classes in (
        ("ucf50_video", {"g03"}, ("Basketball", "Biking")),
        ("cremad_video", {"1002"}, ("ANG", "HAP", "SAD")),
    ):
        cached = _cache(base / experiment)
        assert cached.class_names == classes
        splits: dict[str, set[str]] = {}
        for group, split in zip(cached.groups, cached.split):
            splits.setdefault(group, set()).add(str(split))
        assert all(len(s) == 1 for s in splits.values()), splits  # never in two splits
        test = {g for g, s in splits.items() if s == {"test"}}
        assert test == held_out  # the configured held-out groups/actors are the test split
        assert {"train", "val"} <= set().union(*splits.values())
    ucf50 = _cache(base / "ucf50_video")
    assert {g for g, s in zip(ucf50.groups, ucf50.split) if s == "val"} == {"g04"}


@pytest.mark.slow
def test_cremad_report_carries_facial_region_trends_and_the_face_gallery(studies):
    base, trees = studies
    report = base / "cremad_video" / "report"
    markdown = (report / "face_trends.md").read_text()
    assert "SYNTHETIC" not in markdown and "## vanilla" in markdown
    rows = list(csv.DictReader((report / "face_trends.csv").open()))
    explainers = ["gradcam", "rollout", "rollout_grad", "tibav", "random"]
    assert [r["explainer"] for r in rows] == ["uniform (area)"] + [e for e in explainers
                                                                  for _ in range(3)]  # fmt: skip
    assert [r["class"] for r in rows[1:4]] == ["ANG", "HAP", "SAD"]
    test_clips = {r["class"]: int(r["clips"]) for r in rows[1:4]}
    assert test_clips == {"ANG": 1, "HAP": 1, "SAD": 1}  # actor 1002's clips, one final seed
    for r in rows:
        shares = [float(r[k]) for k in ("eyes", "nose", "mouth", "rest")]
        assert math.isclose(sum(shares), 1.0, abs_tol=1e-9) and min(shares) >= 0
        assert r["synthetic"] == "False" and r["model"] == "vanilla"
    assert (report / "face_trends_vanilla.png").stat().st_size > 0
    assert (report / "face_maps_vanilla.png").stat().st_size > 0
    assert (report / "face_crops.png").stat().st_size > 0
    skipped = (report / "skipped_files.csv").read_text()
    assert "1001_IEO_ANG_XX.mp4,no face found: " in skipped  # the faceless clip, named


@pytest.mark.slow
def test_skipped_files_are_listed_in_the_report(studies):
    base, _ = studies
    report = base / "birds_video" / "report"
    skipped = {Path(r["path"]).name: r["reason"]
               for r in csv.DictReader((report / "skipped_files.csv").open())}  # fmt: skip
    assert set(skipped) == {"corrupt.avi", "lost", "notes.txt"}
    assert skipped["corrupt.avi"].startswith("cannot decode: ")
    assert skipped["lost"].startswith("missing video file")
    assert skipped["notes.txt"].startswith("not a video file")
    markdown = (report / "comparison.md").read_text()
    assert "## Skipped data files" in markdown and "corrupt.avi" in markdown
    assert "(3 files skipped)" in markdown
    assert "corrupt" not in _cache(base / "birds_video").clip_ids


def test_experiments_are_discoverable(capsys):
    assert {"birds_video", "ucf50_video", "cremad_video"} <= set(experiments())
    with pytest.raises(SystemExit):
        sweep_main(["--help"])
    assert "cremad_video" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("experiment", "classes", "names"),
    [("ucf50_video", 8, None), ("cremad_video", 6, ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD"))],
)
def test_without_a_folder_the_experiment_runs_on_a_synthetic_stand_in(
    tmp_path, experiment, classes, names
):
    cfg = compose(experiment, ["sweep=smoke", f"data.cache_dir={tmp_path}"])
    resolve_paths(cfg)
    validate_study(cfg)
    dataset = open_dataset(cfg.data)
    assert dataset.synthetic and dataset.name == experiment.replace("_video", "_synthetic")
    assert dataset.num_classes == classes and dataset.video.shape[1:] == (FRAMES, 96, 96, 3)
    assert names is None or dataset.class_names == names
    assert np.bincount(dataset.labels, minlength=classes).min() > 0


@pytest.mark.parametrize(
    ("experiment", "override", "message"),
    [
        ("ucf50_video", "data.on_bad_file=ignore", "data.on_bad_file: expected error or skip"),
        ("ucf50_video", "data.layout=kinetics", "data.layout: expected auto or one of birds"),
        ("ucf50_video", "+data.options.test_group=[1]",
         "data.options.test_group: expected an option of the ucf50 layout: test_groups"),
        ("birds_video", "+data.options.on_bad_file=skip",
         "data.options.on_bad_file: expected no such option \\(it is data.on_bad_file\\)"),
        ("cremad_video", "data.class_names=[ANG,SAD]",
         "data.class_names: expected 6 names \\(data.synthetic.num_classes\\)"),
        ("cremad_video", "data.class_names=[ANG,ANG]", "expected null or a list of distinct"),
    ],
)  # fmt: skip
def test_bad_data_keys_name_the_key(experiment, override, message):
    cfg = compose(experiment, [override])
    resolve_paths(cfg)
    with pytest.raises(ConfigError, match=message):
        validate_study(cfg)


def test_an_undecodable_clip_stops_the_study_before_ray_naming_the_file(tmp_path, capsys):
    import ray

    root = tmp_path / "UCF50"
    ucf50_tree(root, ["Biking"], [1, 2, 3, 4])
    (root / "Biking" / "v_Biking_g03_c01.avi").write_bytes(b"\x00" * 64)
    code = sweep_main(["ucf50_video", f"data.root={root}", f"data.cache_dir={tmp_path / 'c'}",
                       f"study.output_dir={tmp_path / 'out'}", *UCF50_OPTIONS])  # fmt: skip
    assert code == 2 and not ray.is_initialized()
    err = capsys.readouterr().err
    assert err.startswith("error: data.root: 1 of 4 clips could not be decoded")
    assert "v_Biking_g03_c01.avi" in err and "on_bad_file='skip'" in err
    assert not list((tmp_path / "c").glob("*/video.npy"))  # nothing half-written


def test_skipped_table_in_the_report(tmp_path):
    table = comparison_table([MethodSummary("et", 2, 2, math.nan, {})], "BIRDS", synthetic=False)
    skipped = [Skipped(Path(f"/d/video/x{i}.avi"), "empty video file (0 bytes)") for i in range(60)]
    paths = write_comparison(table, tmp_path, "t", {}, skipped=skipped_table(skipped))
    markdown = paths["md"].read_text()
    assert "60 files of the data folder are not in the study" in markdown
    assert "x49.avi" in markdown and "x50.avi" not in markdown and "... and 10 more." in markdown
    rows = list(csv.DictReader((tmp_path / "skipped_files.csv").open()))
    assert len(rows) == 60 and rows[59] == {"path": "/d/video/x59.avi",
                                            "reason": "empty video file (0 bytes)"}  # fmt: skip
