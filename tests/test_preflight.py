"""Mistakes a study can only see outside its config (a folder it cannot write, a Ray cluster
that does not answer, resources no local Ray has, a missing checkpoint) stop it with exit code 2
and a message naming the key, before anything is written, decoded or started."""

import re
import socket

import pytest

from harness.sweep import main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("study.output_dir=/proc/et-study", r"study.output_dir: /proc/et-study: cannot create"),
        ("sweep.gpus_per_trial=3", r"sweep.gpus_per_trial=3: no Ray node has that much"),
        ("model.pretrained=/nonexistent/ckpt",
         r"model.pretrained: /nonexistent/ckpt: no such file or folder"),
        ("ray.address=127.0.0.1:{free_port}",  # a port nothing listens on, taken at run time
         r"ray.address: 127.0.0.1:\d+: no Ray cluster answers within ray.connect_timeout_s=2 s"),
    ],
)  # fmt: skip
def test_a_study_that_could_not_run_is_refused_before_anything_starts(
    tmp_path, capsys, override, message
):
    import ray

    out, cache = tmp_path / "study", tmp_path / "cache"
    code = main(["birds_video", "sweep=smoke", f"study.output_dir={out}",
                 f"data.cache_dir={cache}", "ray.connect_timeout_s=2",
                 override.format(free_port=_free_port())])  # fmt: skip
    assert code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and re.search(message, error), error
    assert not out.exists() and not cache.exists()
    assert not ray.is_initialized()


def test_a_dataset_a_study_cannot_learn_from_is_refused_by_name():
    import numpy as np

    from harness.data import Dataset, check_splits
    from harness.data.folders import DatasetError

    def dataset(labels, split, names=("fall", "walk")):
        return Dataset("d", False, names, np.array(labels), np.array(split))

    ok = dataset([0, 1, 0, 1, 0, 1], ["train", "train", "val", "val", "test", "test"])
    check_splits(ok)
    with pytest.raises(DatasetError, match=r"d: 1 class \(fall\): a study needs at least two"):
        check_splits(dataset([0, 0, 0], ["train", "val", "test"], names=("fall",)))
    with pytest.raises(DatasetError, match=r"class\(es\) walk have no training samples"):
        check_splits(dataset([0, 1, 0, 1], ["train", "val", "test", "test"]))
    with pytest.raises(DatasetError, match=r"the val split is empty"):
        check_splits(dataset([0, 1, 0], ["train", "train", "test"]))


def test_a_label_typo_leaving_a_class_without_training_clips_stops_the_cli(tmp_path, capsys):
    """A BIRDS-style folder whose annotation misspells a label once ('wlak', a test clip) has a
    class with no training clip: exit 2, the class named, nothing written, no Ray."""
    import numpy as np
    import ray

    root = tmp_path / "BIRDS"
    (root / "signal").mkdir(parents=True)
    rows = [("t1", "fall", "train"), ("t2", "walk", "train"), ("t3", "fall", "train"),
            ("t4", "walk", "train"), ("v1", "fall", "val"), ("v2", "walk", "val"),
            ("e1", "fall", "test"), ("e2", "wlak", "test")]  # fmt: skip
    (root / "annotations.csv").write_text(
        "clip_id,label,split\n" + "".join(f"{c},{label},{split}\n" for c, label, split in rows)
    )
    for i, (clip, _, _) in enumerate(rows):
        np.save(root / "signal" / f"{clip}.npy", np.random.default_rng(i).normal(size=(64, 3)))
    out, cache = tmp_path / "study", tmp_path / "cache"
    code = main(["birds_signal", "sweep=smoke", f"data.root={root}", f"study.output_dir={out}",
                 f"data.cache_dir={cache}"])  # fmt: skip
    assert code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "class(es) wlak have no training samples" in error
    assert "(a label typo in the annotation table?)" in error
    assert not out.exists() and not cache.exists() and not ray.is_initialized()
