"""Ground truth: the generator's actor boxes against the rendered pixels, the coverage of tokens,
the energy pointing game and the pointing game against hand-computed values, and the model-free
motion oracle on real synthetic clips."""

import dataclasses

import numpy as np
import pytest
import torch

from harness.data import open_dataset
from harness.data.synthetic import SyntheticSpec, generate
from harness.evaluate import ground_truth_scores
from harness.evaluate.localisation import (
    box_coverage,
    motion_relevance,
    pointing_hit,
    relevance_mass,
    window_coverage,
)

BARE = SyntheticSpec(  # the actor alone on a flat background: its pixels are exactly the box's
    num_classes=4, frame_size=48, actor_size=12, clutter_amplitude=0.0, num_distractors=0,
    pixel_noise=0.0, coarse_noise=0.0, texture_amplitude=0.0, train_per_class=2,
    val_per_class=1, test_per_class=1,
)  # fmt: skip


def test_the_actor_box_is_where_the_actor_is_rendered():
    data = generate(BARE)
    background = round(255 * BARE.background_level)
    for n in range(len(data.label)):
        for t in range(BARE.num_frames):
            actor = np.abs(data.video[n, t].astype(int) - background).max(-1) > 2  # [H, W]
            rows, cols = np.flatnonzero(actor.any(1)), np.flatnonzero(actor.any(0))
            top, left, bottom, right = (int(v) for v in data.actor_box[n, t])
            assert (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1) == (top, left, bottom, right)
            assert actor[top:bottom, left:right].all()  # and every pixel of the box is the actor


def test_box_and_window_coverage_against_a_pixel_count():
    boxes = torch.tensor([[[0, 0, 12, 12], [6, 18, 18, 24]]])  # [1, T=2, 4], frame 24 px
    coverage = box_coverage(boxes, 24, (2, 2))  # 12 x 12 px cells
    assert coverage[0, 0].tolist() == [[1.0, 0.0], [0.0, 0.0]]
    # frame 1: rows 6:18, cols 18:24 -> cell (0, 1) 6 x 6 of 144 px, cell (1, 1) 6 x 6
    assert coverage[0, 1].tolist() == [[0.0, 0.25], [0.0, 0.25]]
    window = window_coverage(torch.tensor([4, 0]), 8, 16, 4)  # tokens of 4 samples
    assert window.tolist() == [[0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]]


def test_energy_and_pointing_game_hand_computed():
    coverage = torch.tensor([[1.0, 0.5, 0.0, 0.0]])
    relevance = torch.tensor([[2.0, 2.0, 4.0, -1.0]])  # negatives do not count
    assert relevance_mass(relevance, coverage).item() == pytest.approx((2 + 1) / 8)
    assert relevance_mass(torch.zeros(1, 4), coverage).item() == pytest.approx(1.5 / 4)  # uniform
    assert pointing_hit(relevance, coverage).item() == 0.0  # the max (4.0) is outside
    assert pointing_hit(torch.tensor([[3.0, 3.0, 3.0, 0.0]]), coverage).item() == pytest.approx(
        2 / 3
    )
    video = torch.zeros(1, 2, 2, 2)
    video[0, 0, 0, 0], video[0, 1, 1, 1] = 1.0, 1.0  # frame 0 hits, frame 1 misses
    cover = torch.zeros(1, 2, 2, 2)
    cover[0, :, 0, 0] = 1.0
    assert pointing_hit(video, cover).item() == 0.5


def test_the_motion_oracle_finds_the_actor(tmp_path):
    spec = dataclasses.replace(BARE, pixel_noise=0.03, clutter_amplitude=0.08, num_distractors=2,
                               texture_amplitude=0.25, frame_size=96, actor_size=18)  # fmt: skip
    data = {"name": "s", "cache_dir": str(tmp_path), "synthetic": dataclasses.asdict(spec)}
    dataset = open_dataset(data, ("video", "signal"))
    rows = np.arange(len(dataset.labels))
    clips = torch.from_numpy(np.asarray(dataset.video[rows])).permute(0, 1, 4, 2, 3).float() / 255
    oracle = motion_relevance(clips, (4, 4))
    scores = ground_truth_scores(dataset, {"video": oracle}, rows)
    uniform = ground_truth_scores(dataset, {"video": torch.ones_like(oracle)}, rows)
    assert scores["hit_video"] > 0.9 and scores["energy_video"] > 2 * uniform["energy_video"]
    window = dataset.event_window
    assert (window[:, 1] - window[:, 0] == spec.event_length).all()
    signal = torch.zeros(len(rows), 8)  # all relevance on the event's first token
    signal[torch.arange(len(rows)), torch.from_numpy(window[:, 0] // 32)] = 1.0
    assert ground_truth_scores(dataset, {"signal": signal}, rows)["hit_signal"] == 1.0
