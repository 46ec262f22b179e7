"""Dataset folders (BIRDS-style, UCF50, CREMA-D): indexing, splits, validation, signals, and the
decode-once video cache.  Indexing never decodes, so index-only trees hold placeholder bytes;
the cache tests use real videos written with PyAV."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from _video_files import decoded_index, indexed_frames, write_video

from harness.data.cache import build_video_cache, cache_key, load_video_cache, open_folder_dataset
from harness.data.folders import (
    DatasetError,
    Sample,
    detect_layout,
    fit_length,
    index_birds,
    index_crema_d,
    index_folder,
    index_ucf50,
    read_signal,
)

CHANNELS = ("acc_x", "acc_y", "acc_z")


def _touch(path, data=b"placeholder"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _signal_csv(path, rows=5, header=CHANNELS):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(header)]
    lines += [",".join(f"{r + c / 10:.2f}" for c in range(len(header))) for r in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _birds(root, rows=None, signals=True, videos=True):
    rows = rows or [
        ("c1", "fall", "train"),
        ("c2", "no_risk", "train"),
        ("c3", "fall", "val"),
        ("c4", "no_risk", "test"),
    ]
    root.mkdir(parents=True, exist_ok=True)
    text = "clip_id,label,split,subject\n" + "".join(f"{c},{lab},{s},s{c}\n" for c, lab, s in rows)
    (root / "annotations.csv").write_text(text)
    for i, (clip, _, _) in enumerate(rows):
        if videos:
            _touch(root / "video" / f"{clip}.{['mp4', 'avi', 'mkv', 'MOV'][i % 4]}")
        if signals:
            if i % 2:
                np.save(root / "signal" / f"{clip}.npy", np.ones((7, 3), np.float32))
            else:
                _signal_csv(root / "signal" / f"{clip}.csv")
    return root


# ----------------------------------------------------------------------------- BIRDS


def test_birds_index_modalities_and_classes(tmp_path):
    root = _birds(tmp_path / "birds")
    index = index_birds(root, modality="both")
    assert index.layout == "birds" and detect_layout(root) == "birds"
    assert index.class_names == ("fall", "no_risk")  # sorted unique labels
    assert [s.clip_id for s in index.samples] == ["c1", "c2", "c3", "c4"]  # train, val, test
    assert index.splits.tolist() == ["train", "train", "val", "test"]
    assert index.labels.tolist() == [0, 1, 0, 1]
    assert index.num_channels == 3 and index.channel_names == CHANNELS
    assert index.samples[1].path.name == "c2.avi" and index.samples[3].path.name == "c4.MOV"
    assert index.samples[1].signal_path.name == "c2.npy"
    assert index.counts()["train"] == {"fall": 1, "no_risk": 1}
    table = index.table()
    assert list(table.columns[:5]) == ["clip_id", "path", "label", "label_index", "split"]

    given = index_birds(root, class_names=["no_risk", "fall", "extra"])
    assert given.class_names == ("no_risk", "fall", "extra") and given.labels.tolist() == [
        1,
        0,
        1,
        0,
    ]
    assert all(s.signal_path is None for s in given.samples)

    video_only = _birds(tmp_path / "video_only", signals=False)
    assert index_folder(video_only).num_channels is None
    signal_only = _birds(tmp_path / "signal_only", videos=False)
    index = index_birds(signal_only, modality="signal")
    assert all(s.path is None and s.signal_path for s in index.samples)
    with pytest.raises(DatasetError, match=r"video_only/signal: missing folder .*'both'"):
        index_birds(video_only, modality="both")

    grouped = index_birds(root, group_column="subject")
    assert [s.group for s in grouped.samples] == ["sc1", "sc2", "sc3", "sc4"]


def test_birds_structural_errors(tmp_path):
    with pytest.raises(DatasetError, match=r"dataset root .*nowhere: no such folder"):
        index_birds(tmp_path / "nowhere")
    root = tmp_path / "b"
    root.mkdir()
    with pytest.raises(DatasetError, match=r"annotations\.csv: missing.*clip_id, label, split"):
        index_birds(root)
    (root / "annotations.csv").write_text("clip_id,class,split\nc1,fall,train\n")
    with pytest.raises(
        DatasetError,
        match=r"annotations\.csv: missing column\(s\) 'label'; required columns: clip_id, "
        r"label, split \(found: clip_id, class, split\)",
    ):
        index_birds(root)
    (root / "annotations.csv").write_text("")
    with pytest.raises(DatasetError, match=r"annotations\.csv: empty file"):
        index_birds(root)


def test_birds_annotation_errors_name_line_and_field(tmp_path):
    root = _birds(
        tmp_path / "b",
        rows=[
            ("c1", "fall", "train"),
            ("c2", "flying", "train"),
            ("c3", "fall", "validation"),
            ("c1", "fall", "test"),
        ],
    )
    with pytest.raises(DatasetError) as err:
        index_birds(root, class_names=["fall", "no_risk"])
    msg = str(err.value)
    assert "annotations.csv: 3 problems" in msg
    assert "line 3: label 'flying' is not in the class list [fall, no_risk]" in msg
    assert "line 4: split 'validation' is not one of train, val, test" in msg
    assert "line 5: clip_id 'c1' duplicates line 2" in msg


def test_birds_empty_split(tmp_path):
    root = _birds(tmp_path / "b", rows=[("c1", "fall", "train"), ("c2", "fall", "test")])
    with pytest.raises(DatasetError, match=r"split\(s\) 'val' have no samples"):
        index_birds(root)


def test_birds_missing_and_empty_files(tmp_path):
    root = _birds(tmp_path / "b")
    (root / "video" / "c2.avi").unlink()  # missing video
    (root / "video" / "c3.mkv").write_bytes(b"")  # empty video
    with pytest.raises(DatasetError) as err:
        index_birds(root, modality="both")
    msg = str(err.value)
    assert "(BIRDS-style): 2 problems" in msg
    assert re.search(r"video/c2: missing video file \(no video/c2\.\*\)", msg)
    assert re.search(r"c3\.mkv: empty video file \(0 bytes\)", msg)
    assert "on_bad_file='skip'" in msg
    (root / "signal" / "c4.npy").unlink()
    with pytest.raises(DatasetError, match=r"signal/c4: missing signal file"):
        index_birds(root, modality="signal")


def test_birds_signal_checks(tmp_path):
    root = _birds(tmp_path / "b")
    # a signal with another channel count, named with the reference file
    np.save(root / "signal" / "c4.npy", np.ones((7, 4), np.float32))
    with pytest.raises(DatasetError, match=r"c4\.npy: 4 channels, expected 3 \(as c1\.csv\)"):
        index_birds(root, modality="signal")
    np.save(root / "signal" / "c4.npy", np.ones((7, 3), np.float32))
    # a CSV header that differs from the others'
    _signal_csv(root / "signal" / "c1.csv", header=("acc_x", "acc_y", "gyro"))
    _signal_csv(root / "signal" / "c5.csv")  # an unannotated file: ignored, listed
    with pytest.raises(
        DatasetError,
        match=r"c1\.csv: header \['acc_x', 'acc_y', 'gyro'\] differs from "
        r"\['acc_x', 'acc_y', 'acc_z'\] \(as c3\.csv\)",
    ):
        index_birds(root, modality="signal")
    index = index_birds(root, modality="signal", on_bad_file="skip")
    assert [s.clip_id for s in index.samples] == ["c2", "c3", "c4"]
    reasons = {s.path.name: s.reason for s in index.skipped}
    assert reasons["c5.csv"] == "signal file of no annotated clip"
    assert reasons["c1.csv"].startswith("header ['acc_x', 'acc_y', 'gyro'] differs")
    _signal_csv(root / "signal" / "c1.csv")
    # ambiguous: two signal files for c3 (csv and npy)
    np.save(root / "signal" / "c3.npy", np.ones((7, 3), np.float32))
    with pytest.raises(
        DatasetError, match=r"ambiguous signal file for clip 'c3': c3\.csv, c3\.npy"
    ):
        index_birds(root, modality="signal")
    (root / "signal" / "c3.npy").unlink()
    # a header-only CSV, a 1-D .npy
    (root / "signal" / "c3.csv").write_text("acc_x,acc_y,acc_z\n")
    np.save(root / "signal" / "c2.npy", np.ones(7, np.float32))
    with pytest.raises(DatasetError) as err:
        index_birds(root, modality="signal")
    assert "c3.csv: no data rows after the header" in str(err.value)
    assert "c2.npy: shape (7,): expected [time, channels]" in str(err.value)
    with pytest.raises(DatasetError, match=r"'val' have no samples .*2 bad files were skipped"):
        index_birds(root, modality="signal", on_bad_file="skip")


def test_birds_non_finite_signal_values_are_bad_files(tmp_path):
    """A NaN, an inf or a word among a signal's values is found while indexing (before any
    cache), names the file, line and channel, and `skip` leaves that clip out."""
    extra = [("c5", "fall", "train"), ("c6", "no_risk", "val"), ("c7", "fall", "train")]
    root = _birds(tmp_path / "b", rows=[*_default_rows(), *extra])
    (root / "signal" / "c1.csv").write_text("acc_x,acc_y,acc_z\n0,0.1,0.2\n1,nan,1.2\n")
    np.save(root / "signal" / "c2.npy", np.array([[0, 1, 2], [3, np.inf, 5]], np.float32))
    (root / "signal" / "c5.csv").write_text("acc_x,acc_y,acc_z\n0,0.1,0.2\n1,oops,1.2\n")
    with pytest.raises(DatasetError) as err:
        index_birds(root, modality="signal")
    message = str(err.value)
    assert "3 problems" in message and "on_bad_file='skip'" in message
    assert "c1.csv: line 3, channel 'acc_y': not a finite number" in message
    assert "c2.npy: row 1, channel '1': not a finite number" in message
    assert "c5.csv: line 3, channel 'acc_y': 'oops' is not a number" in message
    index = index_birds(root, modality="signal", on_bad_file="skip")
    assert [s.clip_id for s in index.samples] == ["c7", "c3", "c6", "c4"]
    reasons = {s.path.name: s.reason for s in index.skipped}
    assert reasons == {"c1.csv": "line 3, channel 'acc_y': not a finite number",
                       "c2.npy": "row 1, channel '1': not a finite number",
                       "c5.csv": "line 3, channel 'acc_y': 'oops' is not a number"}  # fmt: skip


def test_birds_skip_lists_files_and_can_empty_a_split(tmp_path):
    root = _birds(tmp_path / "b")
    (root / "video" / "c3.mkv").write_bytes(b"")  # the only val clip
    _touch(root / "video" / "notes.txt")
    with pytest.raises(DatasetError, match=r"'val' have no samples .*1 bad files were skipped"):
        index_birds(root, on_bad_file="skip")
    root2 = _birds(tmp_path / "b2", rows=[*_default_rows(), ("c5", "fall", "val")])
    (root2 / "video" / "c3.mkv").write_bytes(b"")
    _touch(root2 / "video" / "notes.txt")
    index = index_birds(root2, on_bad_file="skip")
    assert [s.clip_id for s in index.samples] == ["c1", "c2", "c5", "c4"]
    reasons = {s.path.name: s.reason for s in index.skipped}
    assert reasons["c3.mkv"] == "empty video file (0 bytes)"
    assert reasons["notes.txt"].startswith("not a video file")


def _default_rows():
    return [
        ("c1", "fall", "train"),
        ("c2", "no_risk", "train"),
        ("c3", "fall", "val"),
        ("c4", "no_risk", "test"),
    ]


def test_birds_group_leak(tmp_path):
    root = _birds(tmp_path / "b")
    text = (root / "annotations.csv").read_text().replace("sc4", "sc1")
    (root / "annotations.csv").write_text(text)
    with pytest.raises(
        DatasetError, match=r"subject value\(s\) found in more than one split: 'sc1'"
    ):
        index_birds(root, group_column="subject")


# ----------------------------------------------------------------------------- signals


def test_read_signal_and_fit_length(tmp_path):
    sig = read_signal(_signal_csv(tmp_path / "s.csv", rows=4))
    assert sig.dtype == np.float32 and sig.shape == (4, 3)
    np.testing.assert_allclose(sig[:, 1], [0.1, 1.1, 2.1, 3.1], rtol=1e-6)
    np.save(tmp_path / "s.npy", np.arange(8, dtype=np.float64).reshape(4, 2))
    assert read_signal(tmp_path / "s.npy").dtype == np.float32
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n3,oops\n")
    with pytest.raises(
        DatasetError, match=r"bad\.csv: line 3, channel 'b': 'oops' is not a number"
    ):
        read_signal(tmp_path / "bad.csv")
    (tmp_path / "nohead.csv").write_text("1,2\n3,4\n")
    with pytest.raises(DatasetError, match=r"nohead\.csv: header .* is numeric"):
        read_signal(tmp_path / "nohead.csv")
    (tmp_path / "nan.csv").write_text("a,b\n1,2\n3,nan\n")
    with pytest.raises(DatasetError, match=r"nan\.csv: line 3, channel 'b': not a finite"):
        read_signal(tmp_path / "nan.csv")

    x = np.array([[0.0, 10.0], [1.0, 20.0], [2.0, 30.0]], np.float32)
    np.testing.assert_allclose(fit_length(x, 5)[:, 0], [0, 0.5, 1, 1.5, 2])
    np.testing.assert_allclose(fit_length(x, 2)[:, 1], [10, 30])
    assert fit_length(x[:1], 3).tolist() == [[0, 10]] * 3
    assert fit_length(x, 1, "crop").tolist() == [[1, 20]]
    assert fit_length(x, 4, "crop")[3].tolist() == [0, 0]
    assert fit_length(x, 5, "pad")[:3].tolist() == x.tolist()
    with pytest.raises(ValueError, match="never drops samples"):
        fit_length(x, 2, "pad")
    with pytest.raises(ValueError, match="policy"):
        fit_length(x, 2, "stretch")


# ----------------------------------------------------------------------------- UCF50


def _ucf50(root, classes=("Basketball", "Biking"), groups=range(1, 10), clips=2):
    for cls in classes:
        for g in groups:
            for c in range(1, clips + 1):
                _touch(root / cls / f"v_{cls}_g{g:02d}_c{c:02d}.avi")
    return root


def test_ucf50_group_splits(tmp_path):
    root = _ucf50(tmp_path / "UCF50")
    index = index_folder(root)
    assert index.layout == "ucf50" and index.class_names == ("Basketball", "Biking")
    assert len(index) == 2 * 9 * 2
    by_split = {
        s: {x.group for x in index.samples if x.split == s} for s in ("train", "val", "test")
    }
    assert by_split["test"] == {f"g{g:02d}" for g in (1, 2, 3, 4, 5)}
    assert by_split["val"] == {"g06", "g07"} and by_split["train"] == {"g08", "g09"}
    assert index.samples[0].clip_id == "v_Basketball_g08_c01"

    logo = index_ucf50(root, test_groups=3, val_groups=(9,), class_names=["Biking"])
    assert logo.class_names == ("Biking",)
    assert {s.group for s in logo.samples if s.split == "test"} == {"g03"}
    groups = {}
    for s in logo.samples:
        groups.setdefault(s.group, set()).add(s.split)
    assert all(len(v) == 1 for v in groups.values())  # a group never in two splits


def test_ucf50_errors(tmp_path):
    root = _ucf50(tmp_path / "UCF50")
    with pytest.raises(ValueError, match=r"groups \[6\] are in both"):
        index_ucf50(root, test_groups=(5, 6))
    with pytest.raises(DatasetError, match=r"test_groups \[12\] have no clips"):
        index_ucf50(root, test_groups=(12,))
    with pytest.raises(DatasetError, match=r"no class folder for 'Diving'"):
        index_ucf50(root, class_names=["Diving"])
    with pytest.raises(DatasetError, match=r"split\(s\) 'train' have no samples"):
        index_ucf50(root, test_groups=(1, 2, 3, 4, 5, 8, 9))
    _touch(root / "Biking" / "biking_01.avi")
    _touch(root / "Biking" / "v_Basketball_g01_c09.avi")
    _touch(root / "Biking" / "v_Biking_g02_c09.avi", b"")
    _touch(root / "Biking" / "Thumbs.db")
    with pytest.raises(DatasetError) as err:
        index_ucf50(root)
    msg = str(err.value)
    assert "3 problems" in msg
    assert "biking_01.avi: name does not match v_Biking_g<NN>_c<NN>.avi" in msg
    assert (
        "v_Basketball_g01_c09.avi: class 'Basketball' in the name but the folder is 'Biking'" in msg
    )
    assert "v_Biking_g02_c09.avi: empty video file (0 bytes)" in msg
    index = index_ucf50(root, on_bad_file="skip")
    assert len(index) == 36
    reasons = {s.path.name: s.reason for s in index.skipped}
    assert len(reasons) == 4 and reasons["Thumbs.db"] == "not a video file"


# ----------------------------------------------------------------------------- CREMA-D


def _crema(root, actors=range(1001, 1011), ext="flv"):
    for a in actors:
        for emo in ("ANG", "HAP", "SAD"):
            _touch(root / f"{a}_DFA_{emo}_XX.{ext}")
            _touch(root / f"{a}_IEO_{emo}_HI.{ext}")
    return root


def test_crema_d_actor_splits(tmp_path):
    root = _crema(tmp_path / "crema")
    index = index_folder(root)
    assert index.layout == "crema_d"
    assert index.class_names == ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
    assert len(index) == 60
    actors = {
        s: sorted({x.group for x in index.samples if x.split == s})
        for s in ("train", "val", "test")
    }
    # 10 actors: 2 test at sorted positions 2 and 7, then 1 val at position 4 of the other 8
    assert actors["test"] == ["1003", "1008"] and actors["val"] == ["1006"]
    assert len(actors["train"]) == 7
    assert index.options["test_actors"] == ("1003", "1008")
    assert index_folder(root).samples == index.samples  # deterministic, seed-free
    assert index.samples[0].clip_id == "1001_DFA_ANG_XX" and index.samples[0].label == "ANG"

    chosen = index_crema_d(
        root, test_actors=[1001], val_actors=["1002", "1003"], class_names=["SAD", "ANG"]
    )
    assert chosen.class_names == ("SAD", "ANG") and len(chosen) == 40
    assert {s.group for s in chosen.samples if s.split == "val"} == {"1002", "1003"}
    assert {s.split for s in chosen.samples if s.group == "1001"} == {"test"}


def test_crema_d_seeded_90_5_5_split(tmp_path):
    root = _crema(tmp_path / "crema", actors=range(1001, 1092))  # CREMA-D's 91 actors
    index = index_crema_d(root, test_fraction=0.05, val_fraction=0.05, split_seed=0)
    actors = {s: {x.group for x in index.samples if x.split == s} for s in ("train", "val", "test")}
    ids = [str(a) for a in range(1001, 1092)]
    order = [ids[i] for i in np.random.default_rng(0).permutation(91)]  # the documented draw
    assert actors["test"] == set(order[:5]) and actors["val"] == set(order[5:10])  # round(4.55)
    assert len(actors["train"]) == 81 and not (actors["train"] & (actors["test"] | actors["val"]))
    again = index_crema_d(root, test_fraction=0.05, val_fraction=0.05, split_seed=0)
    assert again.samples == index.samples  # seeded: the same split every time
    other = index_crema_d(root, test_fraction=0.05, val_fraction=0.05, split_seed=1)
    assert {x.group for x in other.samples if x.split == "test"} != actors["test"]
    spread = index_crema_d(root, test_fraction=0.05, val_fraction=0.05)  # today's: no seed
    assert {x.group for x in spread.samples if x.split == "test"} == {
        ids[int((j + 0.5) * 91 / 5)] for j in range(5)
    }
    kept = index_crema_d(root, test_actors=[1001], val_fraction=0.05, split_seed=0)
    assert {x.group for x in kept.samples if x.split == "test"} == {"1001"}  # a list wins
    with pytest.raises(ValueError, match="split_seed must be null or an integer >= 0, got -1"):
        index_crema_d(root, split_seed=-1)


def test_crema_d_errors(tmp_path):
    root = _crema(tmp_path / "crema")
    with pytest.raises(ValueError, match=r"actors \['1002'\] are in both"):
        index_crema_d(root, test_actors=[1002], val_actors=[1002])
    with pytest.raises(DatasetError, match=r"test_actors \['1099'\] have no clips"):
        index_crema_d(root, test_actors=[1099])
    with pytest.raises(ValueError, match="class_names must be distinct CREMA-D emotions"):
        index_crema_d(root, class_names=["JOY"])
    with pytest.raises(ValueError, match=r"unknown option\(s\) test_groups for the crema_d layout"):
        index_folder(root, test_groups=[1])
    _touch(root / "1001_DFA_JOY_XX.flv")
    _touch(root / "1001_DFA_ANG_ZZ.flv")
    _touch(root / "clip.flv")
    _touch(root / "1002_DFA_ANG_XX.mp4")  # same clip as the .flv
    _touch(root / "1003_DFA_ANG_LO.flv", b"")
    _touch(root / "README.md")
    with pytest.raises(DatasetError) as err:
        index_crema_d(root)
    msg = str(err.value)
    assert "5 problems" in msg
    assert "1001_DFA_JOY_XX.flv: unknown emotion 'JOY'" in msg
    assert "1001_DFA_ANG_ZZ.flv: unknown level 'ZZ'" in msg
    assert "clip.flv: name does not match <ActorID>_<Sentence>_<Emotion>_<Level>" in msg
    assert "ambiguous: 1002_DFA_ANG_XX.flv, 1002_DFA_ANG_XX.mp4" in msg
    assert "1003_DFA_ANG_LO.flv: empty video file (0 bytes)" in msg
    index = index_crema_d(root, on_bad_file="skip")
    assert len(index) == 59 and len(index.skipped) == 6  # the 5 above and README.md

    parent = tmp_path / "CREMA-D"
    _touch(parent / "VideoFlash" / "1001_DFA_ANG_XX.flv")
    with pytest.raises(DatasetError, match=r"no CREMA-D clips .*may be in .*VideoFlash"):
        index_crema_d(parent)
    with pytest.raises(DatasetError, match="cannot tell the dataset layout"):
        index_folder(parent)


# ----------------------------------------------------------------------------- cache


@pytest.fixture
def video_tree(tmp_path):
    """A real BIRDS-style tree: 6 clips of 10 frames at 32 x 32 (one of only 3 frames)."""
    root = tmp_path / "real"
    rows = [
        ("a", "fall", "train"),
        ("b", "no_risk", "train"),
        ("c", "fall", "train"),
        ("d", "no_risk", "val"),
        ("e", "fall", "test"),
        ("f", "no_risk", "test"),
    ]
    root.mkdir()
    (root / "annotations.csv").write_text(
        "clip_id,label,split\n" + "".join(f"{c},{lab},{s}\n" for c, lab, s in rows)
    )
    for i, (clip, _, _) in enumerate(rows):
        frames = indexed_frames(3 if clip == "f" else 10)
        frames[:, :, 16:, 2] = 20 * i  # the clip's identity: blue of the coloured half
        write_video(root / "video" / f"{clip}.{'avi' if i % 2 else 'mp4'}", frames)
        _signal_csv(root / "signal" / f"{clip}.csv", rows=5 + i)
    return root


def test_cache_decodes_once_and_keys_on_settings(video_tree, tmp_path):
    index = index_birds(video_tree, modality="both")
    cache_root = tmp_path / "cache"
    decoded = []

    def build(**kw):
        args = dict(num_frames=4, size=16, sampling="uniform", cache_root=cache_root)
        args.update(kw)
        return build_video_cache(index, progress=lambda d, n, s: decoded.append(s.clip_id), **args)

    folder = build(signal_length=8)
    assert sorted(decoded) == ["a", "b", "c", "d", "e", "f"]
    assert folder.parent == cache_root and folder.name.startswith("birds-real-")
    cached = load_video_cache(folder)
    assert cached.video.shape == (6, 4, 16, 16, 3) and cached.video.dtype == np.uint8
    assert isinstance(cached.video, np.memmap) and not cached.video.flags.writeable
    assert cached.clip_ids == ("a", "b", "c", "d", "e", "f")
    assert cached.labels.tolist() == [0, 1, 0, 1, 0, 1] and cached.class_names == (
        "fall",
        "no_risk",
    )
    assert cached.split.tolist() == ["train", "train", "train", "val", "test", "test"]
    assert cached.signal.shape == (6, 8, 3) and cached.signal.dtype == np.float32
    for row, clip in enumerate(cached.video):
        expected = [1, 3, 6, 8] if row < 5 else [0, 1, 1, 2]  # clip f has 3 frames
        assert [decoded_index(frame) for frame in clip] == expected
        assert abs(float(clip[:, :, 10:, 2].mean()) - 20 * row) < 6
    meta = cached.meta
    assert meta["counts"] == {"train": [2, 1], "val": [0, 1], "test": [1, 1]}
    assert meta["short_clips"] == [{"clip_id": "f", "frames": 3}]
    assert sum(meta["decoders"].values()) == 6

    stamp = (folder / "video.npy").stat().st_mtime_ns
    decoded.clear()
    again = build(signal_length=8)
    assert again == folder and decoded == [] and (folder / "video.npy").stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(load_video_cache(again).video, cached.video)

    center = build(sampling="center", signal_length=8)
    assert center != folder and len(decoded) == 6
    assert [decoded_index(f) for f in load_video_cache(center).video[0]] == [3, 4, 5, 6]
    assert cache_key(index, 4, 16, "uniform") != cache_key(index, 4, 16, "uniform", "extra")
    assert cache_key(index, 4, 16, "uniform") != cache_key(index, 8, 16, "uniform")
    assert len({p.name for p in cache_root.iterdir()}) == 2  # no temporary folders left
    index2, opened = open_folder_dataset(
        video_tree, num_frames=4, size=16, cache_root=cache_root, class_names=["no_risk", "fall"]
    )
    assert opened.class_names == index2.class_names == ("no_risk", "fall")
    assert opened.labels.tolist() == [1, 0, 1, 0, 1, 0] and opened.folder.parent == cache_root
    key = json.loads((folder / "meta.json").read_text())["key"]
    assert cache_key(index, 4, 16, "uniform", signal_length=8) == key
    (video_tree / "video" / "a.mp4").touch()  # a changed file changes the key
    assert cache_key(index, 4, 16, "uniform", signal_length=8) != key


def test_cache_undecodable_clip(video_tree, tmp_path):
    (video_tree / "video" / "c.mp4").write_bytes(b"\x00" * 64)  # not a video
    samples = list(index_birds(video_tree).samples)
    with pytest.raises(ValueError, match=r"(?s)1 of 6 clips could not be decoded.*c\.mp4"):
        build_video_cache(samples, 4, 16, "uniform", tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []  # nothing half-written
    folder = build_video_cache(samples, 4, 16, "uniform", tmp_path / "cache", on_bad_file="skip")
    cached = load_video_cache(folder)
    assert cached.clip_ids == ("a", "b", "d", "e", "f") and cached.video.shape[0] == 5
    assert [decoded_index(f) for f in cached.video[2]] == [1, 3, 6, 8]
    assert cached.meta["dropped"][0]["clip_id"] == "c"
    with pytest.raises(ValueError, match="no video file"):
        build_video_cache([Sample("x", "a", "train", None)], 4, 16, "uniform", tmp_path)
