"""Tests of the built-in synthetic BIRDS-like dataset (harness.data.synthetic)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.data import synthetic
from harness.data.synthetic import (
    CLASS_NAMES,
    GRATING_COMPONENTS,
    SyntheticArrays,
    SyntheticSpec,
    generate,
    grating,
    load_or_generate,
)

# small and fast: 48 px frames, model size 16, a handful of clips
SMALL = SyntheticSpec(
    frame_size=48,
    actor_size=12,
    num_frames=4,
    train_per_class=3,
    val_per_class=1,
    test_per_class=2,
    signal_length=128,
    event_length=24,
)


@pytest.fixture(scope="module")
def small() -> SyntheticArrays:
    return generate(SMALL)


def pool(video: np.ndarray, f: int) -> np.ndarray:
    """f x f area averaging of uint8 [N, T, H, W, 3] -> float [N, T, 3, H/f, W/f]."""
    n, t, h, w, c = video.shape
    x = torch.from_numpy(np.asarray(video, dtype=np.float32)).permute(0, 1, 4, 2, 3)
    return F.avg_pool2d(x.reshape(n * t, c, h, w), f).reshape(n, t, c, h // f, w // f).numpy()


def assert_same(a: SyntheticArrays, b: SyntheticArrays) -> None:
    for name in SyntheticArrays.ARRAY_NAMES:
        np.testing.assert_array_equal(np.asarray(getattr(a, name)), np.asarray(getattr(b, name)))
    assert a.class_names == b.class_names


# ----------------------------------------------------------------------------- determinism


def test_deterministic_and_seed_dependent(small: SyntheticArrays) -> None:
    assert_same(small, generate(SMALL))
    other = generate(dataclasses.replace(SMALL, seed=1))
    assert not np.array_equal(small.video, other.video)
    assert not np.array_equal(small.signal, other.signal)
    assert not np.array_equal(small.actor_box, other.actor_box)


def _changed(spec: SyntheticSpec, name: str) -> SyntheticSpec:
    value = getattr(spec, name)
    candidates = (
        [value + 1, value + 3, value - 1, value * 2]
        if isinstance(value, int)
        else [
            value + 0.01,
            value / 2,
        ]
    )
    for candidate in candidates:
        try:
            return dataclasses.replace(spec, **{name: candidate})
        except ValueError:
            continue
    raise AssertionError(f"no valid change for {name}")


def test_key_is_stable_and_covers_every_field(monkeypatch: pytest.MonkeyPatch) -> None:
    key = SMALL.key()
    assert key == dataclasses.replace(SMALL).key()
    assert len(key) == 12 and all(ch in "0123456789abcdef" for ch in key)
    # numbers are normalised, so equal specs hash equally
    assert SyntheticSpec(actor_brightness=1).key() == SyntheticSpec(actor_brightness=1.0).key()
    keys = {key}
    for field in dataclasses.fields(SyntheticSpec):
        keys.add(_changed(SMALL, field.name).key())
    assert len(keys) == len(dataclasses.fields(SyntheticSpec)) + 1
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", synthetic.GENERATOR_VERSION + 1)
    assert SMALL.key() != key


# ----------------------------------------------------------------------------- gratings


@pytest.mark.parametrize("f", [2, 3, 4])
def test_gratings_vanish_under_area_averaging(f: int) -> None:
    rng = np.random.default_rng(0)
    num = synthetic._num_distinct_patterns(f)
    assert num == (3 if f == 2 else 8)
    phase_sets = [np.full(2, np.pi / 2), np.full(2, 3 * np.pi / 2)]  # the only ones for f = 2
    if f > 2:
        phase_sets += [np.zeros(2)] + [rng.uniform(0, 2 * np.pi, 2) for _ in range(6)]
    size = 6 * f
    stack = np.stack(
        [grating(cls, phases, size, size, f) for cls in range(num) for phases in phase_sets]
    )
    assert stack.std(axis=(1, 2)).min() > 0.5  # clearly visible at full resolution
    pooled = F.avg_pool2d(torch.from_numpy(stack)[:, None], f)
    assert pooled.abs().max().item() < 1e-6


def test_gratings_pairwise_distinguishable() -> None:
    f, size = 3, 18
    supports = []
    for cls in range(len(GRATING_COMPONENTS)):
        g = grating(cls, np.array([0.3, 1.1]), size, size, f)
        spectrum = np.abs(np.fft.fft2(g))
        supports.append(frozenset(map(tuple, np.argwhere(spectrum > 1e-6 * spectrum.max()))))
    assert len(set(supports)) == len(GRATING_COMPONENTS)


def test_texture_invisible_at_model_resolution() -> None:
    # without pixel and tint noise no value clips, so only uint8 rounding (<= 1/255) remains
    spec = dataclasses.replace(SMALL, pixel_noise=0.0, coarse_noise=0.0, num_distractors=4)
    textured = generate(spec)
    flat = generate(dataclasses.replace(spec, texture_amplitude=0.0))
    full_diff = np.abs(textured.video.astype(np.int16) - flat.video.astype(np.int16))
    assert full_diff.max() > 40  # texture present at full resolution
    f = spec.downsample_factor
    low_diff = np.abs(pool(textured.video, f) - pool(flat.video, f))
    assert low_diff.max() <= 1.0 + 1e-4  # ... and gone after f x f area averaging


def test_actor_brightness_survives_downsampling(small: SyntheticArrays) -> None:
    f = SMALL.downsample_factor
    low = pool(small.video, f).mean(axis=2)  # grey, [N, T, h, w]
    inside = np.zeros(low.shape, dtype=bool)
    for n in range(low.shape[0]):
        for t in range(low.shape[1]):
            top, left, bottom, right = (int(v) for v in small.actor_box[n, t])
            # cells lying fully inside the actor box
            inside[n, t, -(-top // f) : bottom // f, -(-left // f) : right // f] = True
    assert inside.any(axis=(2, 3)).all()
    gap = low[inside].mean() - low[~inside].mean()
    assert gap > 0.15 * 255 * SMALL.actor_brightness / 0.25


# ----------------------------------------------------------------------------- motion


def _boxes_mask(boxes: np.ndarray, size: int, grow: int) -> np.ndarray:
    """Union mask [H, W] of the boxes grown by ``grow`` px."""
    mask = np.zeros((size, size), dtype=bool)
    for top, left, bottom, right in boxes.astype(int):
        mask[max(top - grow, 0) : bottom + grow, max(left - grow, 0) : right + grow] = True
    return mask


def test_actor_moves_and_box_is_consistent(small: SyntheticArrays) -> None:
    box = small.actor_box.astype(int)
    size, hw = SMALL.actor_size, SMALL.frame_size
    assert small.actor_box.dtype == np.int16 and box.shape == (len(small), SMALL.num_frames, 4)
    assert (box[..., 2] - box[..., 0] == size).all() and (box[..., 3] - box[..., 1] == size).all()
    assert box.min() >= 0 and box[..., 2:].max() <= hw
    step = np.abs(np.diff(box[..., :2], axis=1))
    assert step.max() <= 3  # speed <= 2 px / frame, plus rounding
    assert (step.sum(axis=(1, 2)) > 0).all()  # every actor moves
    assert (np.abs(box[:, -1, :2] - box[:, 0, :2]).max(axis=1) <= 2 * size).all()


@pytest.mark.parametrize("noisy", [False, True])
def test_only_the_actor_moves(noisy: bool) -> None:
    spec = SMALL if noisy else dataclasses.replace(SMALL, pixel_noise=0.0)
    data = generate(spec)
    f = spec.downsample_factor
    video = data.video.astype(np.float32)
    inside_mass = total_mass = 0.0
    for n in range(len(data)):
        diff = np.abs(np.diff(video[n], axis=0)).mean(axis=-1)  # [T-1, H, W]
        mean_diff = diff.mean(axis=0)
        if noisy:  # remove the noise floor (its fluctuations cancel in the sums)
            mean_diff = mean_diff - np.median(mean_diff)
        # texture of objects under the actor is removed on the f-blocks it touches
        mask = _boxes_mask(data.actor_box[n], spec.frame_size, grow=f - 1)
        inside_mass += float(mean_diff[mask].sum(dtype=np.float64))
        total_mass += float(mean_diff.sum(dtype=np.float64))
    assert total_mass > 0
    if noisy:
        assert 0.8 < inside_mass / total_mass < 1.2
    else:
        assert inside_mass / total_mass == pytest.approx(1.0, abs=1e-12)  # nothing else moves


# ----------------------------------------------------------------------------- labels / splits


def test_balanced_splits_and_labels(small: SyntheticArrays) -> None:
    k = SMALL.num_classes
    assert (
        small.class_names
        == CLASS_NAMES[:k]
        == ("no_risk", "risk_of_fall_action", "risk_of_fall_environment", "fall")
    )
    assert small.label.dtype == np.int64 and small.label.min() >= 0 and small.label.max() < k
    assert len(small) == SMALL.num_clips == k * (3 + 1 + 2)
    assert set(np.unique(small.split)) == {"train", "val", "test"}
    for name, count in SMALL.per_class_counts.items():
        idx = small.split_indices(name)
        np.testing.assert_array_equal(np.bincount(small.label[idx], minlength=k), count)
    assert small.video.dtype == np.uint8
    assert small.video.shape == (len(small), 4, 48, 48, 3)
    with pytest.raises(ValueError, match="split"):
        small.split_indices("training")


def test_eight_classes() -> None:
    spec = dataclasses.replace(
        SMALL, num_classes=8, train_per_class=1, val_per_class=1, test_per_class=1
    )
    data = generate(spec)
    assert data.class_names == CLASS_NAMES
    np.testing.assert_array_equal(np.bincount(data.label, minlength=8), 3)


# ----------------------------------------------------------------------------- signals


def test_signal_shapes(small: SyntheticArrays) -> None:
    assert small.signal.dtype == np.float32
    assert small.signal.shape == (len(small), SMALL.signal_length, SMALL.signal_channels)
    assert small.event_start.dtype == np.int32
    assert small.event_start.min() >= 0
    assert small.event_start.max() <= SMALL.signal_length - SMALL.event_length
    # gravity-like constant on acc z
    assert abs(small.signal[..., 2].mean() - SMALL.gravity) < 0.2


def test_event_lies_at_event_start() -> None:
    # many clips, tiny videos
    spec = dataclasses.replace(
        SMALL, train_per_class=30, frame_size=24, actor_size=6, num_frames=2, num_distractors=0
    )
    data = generate(spec)
    quiet = generate(dataclasses.replace(spec, event_amplitude=0.0))
    length, ev = spec.signal_length, spec.event_length
    window = np.arange(length)[None, :] - data.event_start[:, None]
    in_window = (window >= 0) & (window < ev)
    # the event is exactly the difference to the same clip without it ...
    delta = np.abs(data.signal - quiet.signal).max(axis=-1)
    assert delta[~in_window].max() < 1e-5
    assert (delta.max(axis=1) > 0.5 * spec.event_amplitude).all()
    # ... and it stands out of the noise on average
    centred = data.signal - data.signal.mean(axis=1, keepdims=True)
    energy = (centred**2).sum(axis=-1)
    assert energy[in_window].mean() > 1.2 * energy[~in_window].mean()


# ----------------------------------------------------------------------------- cache


def test_load_or_generate_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_or_generate(SMALL, tmp_path)
    folder = tmp_path / f"synthetic-{SMALL.key()}"
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted([f"{n}.npy" for n in SyntheticArrays.ARRAY_NAMES] + ["meta.json"])
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no temp folder left
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["synthetic"] is True
    assert meta["spec"] == SMALL.to_dict() and meta["key"] == SMALL.key()
    assert meta["class_names"] == list(SMALL.class_names)
    assert meta["counts"]["train"] == [3] * SMALL.num_classes
    assert isinstance(first.video, np.memmap)
    assert_same(first, generate(SMALL))

    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}

    def fail(spec: SyntheticSpec) -> SyntheticArrays:
        raise AssertionError("regenerated")

    monkeypatch.setattr(synthetic, "generate", fail)
    second = load_or_generate(SMALL, str(tmp_path))
    assert all(isinstance(getattr(second, n), np.memmap) for n in SyntheticArrays.ARRAY_NAMES)
    assert_same(first, second)
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes
    monkeypatch.undo()

    other = dataclasses.replace(SMALL, seed=5)
    load_or_generate(other, tmp_path)
    assert (tmp_path / f"synthetic-{other.key()}" / "meta.json").is_file()
    assert other.key() != SMALL.key()


def test_load_or_generate_lost_race_uses_winner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_generate = synthetic.generate
    spec = dataclasses.replace(SMALL, seed=7)

    def racing_generate(s: SyntheticSpec) -> SyntheticArrays:
        # another process finishes writing the cache while this one is generating
        monkeypatch.setattr(synthetic, "generate", real_generate)
        load_or_generate(s, tmp_path)
        return real_generate(s)

    monkeypatch.setattr(synthetic, "generate", racing_generate)
    folder = tmp_path / f"synthetic-{spec.key()}"
    result = load_or_generate(spec, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]
    assert_same(result, real_generate(spec))
    assert isinstance(result.signal, np.memmap)


def test_incomplete_cache_is_reported(tmp_path: Path) -> None:
    (tmp_path / f"synthetic-{SMALL.key()}").mkdir()
    with pytest.raises(RuntimeError, match="incomplete"):
        load_or_generate(SMALL, tmp_path)


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"frame_size": 50}, "frame_size must be a multiple of downsample_factor"),
        ({"actor_size": 48}, "actor_size"),
        ({"actor_size": 4}, "actor_size"),
        ({"num_classes": 1}, "num_classes must be between 2 and 8"),
        ({"num_classes": 9}, "num_classes must be between 2 and 8"),
        ({"downsample_factor": 2, "num_classes": 4}, "num_classes must be <= 3"),
        ({"downsample_factor": 1}, "downsample_factor"),
        ({"train_per_class": 0}, "train_per_class must be > 0"),
        ({"val_per_class": -1}, "val_per_class"),
        ({"test_per_class": 0}, "test_per_class"),
        ({"num_frames": 1}, "num_frames"),
        ({"event_length": 200}, "event_length"),
        ({"max_speed": 0.5}, "max_speed"),
        ({"pixel_noise": -0.1}, "pixel_noise"),
        ({"num_distractors": -1}, "num_distractors"),
        ({"signal_channels": 0}, "signal_channels"),
        ({"num_frames": 2.5}, "num_frames must be an integer"),
        ({"texture_amplitude": float("nan")}, "texture_amplitude must be finite"),
    ],
)
def test_spec_validation(changes: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(SMALL, **changes)


def test_spec_rejects_non_numbers() -> None:
    with pytest.raises(TypeError, match="seed"):
        SyntheticSpec(seed="0")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="num_classes"):
        SyntheticSpec(num_classes=True)


def test_defaults() -> None:
    spec = SyntheticSpec()
    assert (spec.frame_size, spec.downsample_factor, spec.model_size) == (96, 3, 32)
    assert spec.num_clips == 700
    assert isinstance(spec.num_frames, int) and isinstance(spec.coarse_cue, float)
