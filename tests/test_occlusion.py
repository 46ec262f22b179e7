import math

import pytest
import torch

from harness.evaluate.occlusion import (
    OcclusionCurve,
    apply_occlusion,
    cut_is_tied,
    distinct_values,
    get_occlusion_fill,
    occlusion_curve,
    occlusion_mask,
    seed_protocol_accuracy,
    seed_protocol_mask,
    tie_order,
)


def test_occlusion_mask_counts_positions_and_ties() -> None:
    relevance = torch.tensor([[[0.1, 0.9, 0.5], [0.3, 0.8, 0.0]]])  # [1, 2, 3], no ties
    morf = occlusion_mask(relevance, 0.5)  # k = 3: 0.9 (idx 1), 0.8 (idx 4), 0.5 (idx 2)
    assert morf.tolist() == [[[False, True, True], [False, True, False]]]
    lerf = occlusion_mask(relevance, 0.34, most_relevant_first=False)  # k = round(2.04) = 2
    assert lerf.tolist() == [[[True, False, False], [False, False, True]]]
    assert not occlusion_mask(relevance, 0.0).any()
    assert occlusion_mask(relevance, 1.0).all()
    with pytest.raises(ValueError, match="fraction"):
        occlusion_mask(relevance, 1.5)


def test_ties_are_broken_uniformly_at_random() -> None:
    """All tied: every token is occluded at the same rate k / N under MoRF and LeRF (not the low
    indices first), the draws are reproducible from the generator, and a tied cut is detected."""
    flat = torch.zeros(4000, 8)
    gen = torch.Generator().manual_seed(0)
    morf = occlusion_mask(flat, 0.25, generator=gen).float().mean(0)  # k = 2 of 8
    lerf = occlusion_mask(flat, 0.25, False, generator=gen).float().mean(0)
    torch.testing.assert_close(morf, torch.full((8,), 0.25), atol=0.03, rtol=0)
    torch.testing.assert_close(lerf, torch.full((8,), 0.25), atol=0.03, rtol=0)
    again = occlusion_mask(flat[:5], 0.25, generator=torch.Generator().manual_seed(3))
    assert again.equal(occlusion_mask(flat[:5], 0.25, generator=torch.Generator().manual_seed(3)))
    order = tie_order(torch.tensor([[1.0, 2.0, 2.0, 0.0]]), torch.Generator().manual_seed(1))
    assert order[0, 2].item() == 0 and order[0, 3].item() == 3  # 2, 2 first (some order), 1, 0
    scores = torch.tensor([[3.0, 2.0, 2.0, 1.0], [4.0, 3.0, 2.0, 1.0]])
    assert cut_is_tied(scores, 2, True).tolist() == [True, False]  # 3 | 2, 2 splits the 2s
    assert cut_is_tied(scores, 1, True).tolist() == [False, False]
    assert cut_is_tied(scores, 2, False).tolist() == [True, False]  # 3, 2 | 2, 1
    assert cut_is_tied(scores, 0, True).tolist() == [False, False]
    assert distinct_values(torch.tensor([[0.0, 0.0, 1.0, 2.0], [5.0] * 4])).tolist() == [3, 1]


def test_a_constant_map_scores_like_random_in_expectation() -> None:
    """Planted model: p(class 1) = share of the planted tokens' mass left. A uniformly random
    k-subset of N tokens leaves (1 - k / N) of it in expectation, so the expected probability
    curve of `random` is 1 - level in both directions; a constant map's must be the same."""
    gen = torch.Generator().manual_seed(0)
    region = torch.rand(64, 4, 2, 2, generator=gen) < 0.4
    region[:, 0, 0, 0] = True  # at least one planted token per clip
    clips, predict_proba = planted(region)
    labels = torch.ones(64, dtype=torch.long)
    levels = (0.0, 0.25, 0.5, 0.75)  # k = 0, 4, 8, 12 of N = 16 tokens
    occlude = _occluder(clips, (2, 2))
    constant = torch.ones(64, 4, 4)
    random = torch.rand(64, 4, 4, generator=gen)
    expected = [1.0 - level for level in levels]
    for relevance in (constant, random):
        curve = occlusion_curve(
            predict_proba, clips, labels, {"v": relevance}, occlude, levels,
            tie_draws=16, generator=torch.Generator().manual_seed(1),
        )  # fmt: skip
        assert curve.morf_probability == pytest.approx(expected, abs=0.03)
        assert curve.lerf_probability == pytest.approx(expected, abs=0.03)
        assert abs(curve.gap) < 0.05


def test_a_two_valued_map_favours_no_frame() -> None:
    """A Rollout-FEM-like map: 2 of 16 patches high in every frame, the rest tied at 0. Beyond
    the high tokens' share, MoRF and LeRF both cut into the tied zeros: the mean frame index of the
    occluded tokens must be the same under both (about (T - 1) / 2), as the "model" here reports.
    (A fixed index order put MoRF's occlusion on the first frames and LeRF's on the last.)"""
    T, P = 8, 16
    relevance = torch.zeros(32, T, P)
    relevance[:, :, [3, 9]] = 1.0
    clips = torch.ones(32, T, 1, 4, 4)
    frame = torch.arange(T, dtype=torch.float)[None, :]

    def mean_occluded_frame(x: torch.Tensor) -> torch.Tensor:
        hidden = (x == 0).flatten(2).float().mean(2)  # [B, T] share of each frame occluded
        p = (hidden * frame).sum(1) / hidden.sum(1).clamp_min(1e-9) / (T - 1)
        return torch.stack([1 - p, p], dim=1)

    levels = (0.0, 0.3, 0.6)
    curve = occlusion_curve(
        mean_occluded_frame, clips, torch.ones(32, dtype=torch.long), {"v": relevance},
        _occluder(clips, (4, 4)), levels, tie_draws=4, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    for morf, lerf in zip(curve.morf_probability[1:], curve.lerf_probability[1:], strict=True):
        assert morf == pytest.approx(0.5, abs=0.03) and lerf == pytest.approx(0.5, abs=0.03)
    mask = occlusion_mask(relevance, 0.5, generator=torch.Generator().manual_seed(0))
    assert mask[:, :, [3, 9]].all()  # the high tokens go first under MoRF


def test_tie_draws_cost_only_where_the_cut_is_tied() -> None:
    calls = []
    clips = torch.ones(4, 2, 1, 4, 4)

    def predict_proba(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return torch.full((len(x), 2), 0.5)

    occlude = _occluder(clips, (2, 2))
    labels = torch.ones(4, dtype=torch.long)
    distinct = torch.arange(32.0).view(4, 2, 4)  # no ties: one draw
    occlusion_curve(predict_proba, clips, labels, {"v": distinct}, occlude, (0.0, 0.5),
                    tie_draws=5)  # fmt: skip
    assert len(calls) == 3
    calls.clear()
    occlusion_curve(predict_proba, clips, labels, {"v": torch.zeros(4, 2, 4)}, occlude, (0.0, 0.5),
                    tie_draws=5)  # fmt: skip
    assert len(calls) == 1 + 2 * 5
    with pytest.raises(ValueError, match="tie_draws"):
        occlusion_curve(predict_proba, clips, labels, {"v": distinct}, occlude, tie_draws=0)


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.3, 0.4, 0.5])
def test_morf_lerf_disjoint_and_complementary(fraction: float) -> None:
    relevance = torch.randint(0, 3, (5, 4, 4)).float()  # many ties
    morf = occlusion_mask(relevance, fraction)
    lerf = occlusion_mask(relevance, fraction, most_relevant_first=False)
    assert morf.flatten(1).sum(1).eq(round(fraction * 16)).all()
    assert not (morf & lerf).any()
    if fraction == 0.5:
        assert (morf ^ lerf).all()


def test_seed_protocol_mask() -> None:
    relevance = torch.zeros(1, 4, 10)  # T = 4 frames, P = 10 patches
    relevance[0, :, [7, 2, 5]] = torch.tensor([3.0, 2.0, 1.0])  # spatial ranking 7 > 2 > 5
    relevance[0, 1] += 1.0  # frame ranking 1 > 0 = 2 = 3 (the second frame: one of the ties)
    for seed in range(5):
        gen = torch.Generator().manual_seed(seed)
        morf = seed_protocol_mask(relevance, generator=gen)  # 3 patches + 2 frames
        assert morf[0, :, [7, 2, 5]].all() and morf[0, 1].all()
        whole = morf[0].all(1)
        assert whole.sum() == 2 and whole[1]  # frame 1 and one of the tied others
        assert morf[0].sum() == 2 * 10 + 2 * 3
        lerf = seed_protocol_mask(relevance, 0.3, 2, most_relevant_first=False, generator=gen)
        kept = ~lerf[0].all(1)  # frames not occluded whole: frame 1 and one of the others
        assert kept.sum() == 2 and kept[1]
        assert not lerf[0][kept][:, [7, 2, 5]].any()
        assert lerf[0][kept].sum() == 2 * 3  # 3 of the 7 tied zero patches in each kept frame
    frames = torch.stack([
        seed_protocol_mask(relevance, 0.0, 1, generator=torch.Generator().manual_seed(s))[0, :, 0]
        for s in range(300)
    ])  # fmt: skip
    assert frames[:, 1].all()  # frame 1 is the only top frame


def test_apply_occlusion_values_at_masked_pixels() -> None:
    torch.manual_seed(0)
    clips = torch.rand(2, 2, 3, 8, 8) + 1.0
    mask = torch.zeros(2, 2, 4, dtype=torch.bool)
    mask[0, 1, 2] = True  # frame 1, patch (1, 0): rows 4:8, cols 0:4
    mask[1, 0, 1] = True  # frame 0, patch (0, 1): rows 0:4, cols 4:8
    pixels = torch.zeros(2, 2, 1, 8, 8, dtype=torch.bool)
    pixels[0, 1, :, 4:8, 0:4] = True
    pixels[1, 0, :, 0:4, 4:8] = True
    pixels = pixels.expand_as(clips)
    for value in ("zero", "mean", "blur"):
        out = apply_occlusion(clips, mask, (2, 2), value)
        assert out[~pixels].equal(clips[~pixels])
        assert not torch.isclose(out[pixels], clips[pixels]).any()
    zero = apply_occlusion(clips, mask, (2, 2), "zero")
    assert (zero[pixels] == 0).all()
    mean = apply_occlusion(clips, mask, (2, 2), "mean")
    channel_mean = clips.mean(dim=(1, 3, 4))  # [B, C]
    torch.testing.assert_close(mean[0, 1, :, 5, 1], channel_mean[0])
    torch.testing.assert_close(mean[1, 0, :, 0, 7], channel_mean[1])
    with pytest.raises(ValueError, match="unknown occlusion value 'x'; expected one of: zero"):
        get_occlusion_fill("x")
    with pytest.raises(ValueError, match="mask shape"):
        apply_occlusion(clips, mask, (3, 1))


def planted(region: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips [B, T, 1, 2h, 2w] that are 1 on the region tokens [B, T, h, w], else 0, and a
    2-class "model" with p(class 1) = fraction of the region's pixel mass left."""
    clips = region.float().repeat_interleave(2, 2).repeat_interleave(2, 3)[:, :, None]
    mass = clips.sum(dim=(1, 2, 3, 4))

    def predict_proba(x: torch.Tensor) -> torch.Tensor:
        p = x.sum(dim=(1, 2, 3, 4)) / mass
        return torch.stack([1 - p, p], dim=1)

    return clips, predict_proba


def _occluder(clips, grid):
    """Occlude the clips by the one relevance map there is, whatever its key."""
    return lambda masks: apply_occlusion(clips, next(iter(masks.values())), grid)


def test_occlusion_curve_hand_computed() -> None:
    region = torch.zeros(2, 2, 2, 2, dtype=torch.bool)  # B = 2, T = 2, 2x2 grid: N = 8 tokens
    region[0].view(-1)[[1, 4, 6]] = True  # 3 planted tokens
    region[1].view(-1)[[0, 2, 3, 5, 7]] = True  # 5 planted tokens
    clips, predict_proba = planted(region)
    relevance = region.float().flatten(2)  # perfect relevance [B, T, P]
    labels = torch.ones(2, dtype=torch.long)
    levels = (0.0, 0.25, 0.5, 0.75)  # k = 0, 2, 4, 6 tokens
    curve = occlusion_curve(
        predict_proba, clips, labels, {"video": relevance}, _occluder(clips, (2, 2)), levels
    )
    # MoRF tokens left: s0 3,1,0,0 (p 1,1/3,0,0); s1 5,3,1,0 (p 1,.6,.2,0)
    # LeRF tokens left: s0 3,3,3,2 (p 1,1,1,2/3); s1 5,5,4,2 (p 1,1,.8,.4)
    assert curve.morf_accuracy == [1.0, 0.5, 0.0, 0.0]
    assert curve.lerf_accuracy == [1.0, 1.0, 1.0, 0.5]
    assert curve.morf_probability == pytest.approx([1.0, (1 / 3 + 0.6) / 2, 0.1, 0.0])
    assert curve.lerf_probability == pytest.approx([1.0, 1.0, 0.9, (2 / 3 + 0.4) / 2])
    assert curve.morf_auc == pytest.approx(0.25 * (0.75 + 0.25) / 0.75)
    assert curve.lerf_auc == pytest.approx(0.25 * (1 + 1 + 0.75) / 0.75)
    assert curve.gap == pytest.approx(curve.lerf_auc - curve.morf_auc)
    metrics = curve.as_metrics()
    assert metrics["occ_morf_auc"] == curve.morf_auc
    assert metrics["occ_gap"] == curve.gap
    assert metrics["occ_morf_acc_25"] == 0.5
    assert metrics["occ_lerf_acc_75"] == 0.5
    assert metrics["occ_lerf_prob_50"] == pytest.approx(0.9)
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    # predict_proba normalises by the full batch's masses: rebuild per-sample models
    halves = [
        occlusion_curve(planted(region[i : i + 1])[1], clips[i : i + 1], labels[i : i + 1],
                        {"video": relevance[i : i + 1]}, _occluder(clips[i : i + 1], (2, 2)),
                        levels)
        for i in (0, 1)
    ]  # fmt: skip
    merged = OcclusionCurve.merge(halves)
    assert merged.count == 2
    assert merged.morf_accuracy == curve.morf_accuracy
    assert merged.lerf_probability == pytest.approx(curve.lerf_probability)


def test_planted_relevance_beats_random_and_call_count() -> None:
    gen = torch.Generator().manual_seed(0)
    region = torch.rand(16, 4, 4, 4, generator=gen) < 0.3
    clips, model = planted(region)
    calls = []

    def predict_proba(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return model(x)

    labels = torch.ones(16, dtype=torch.long)
    perfect = region.float().flatten(2) + 0.01 * torch.rand(16, 4, 16, generator=gen)
    noise = torch.rand(16, 4, 16, generator=gen)
    good = occlusion_curve(predict_proba, clips, labels, {"v": perfect}, _occluder(clips, (4, 4)))
    assert calls == [16] * 19  # 1 + 2 * (10 - 1), each over the whole batch
    bad = occlusion_curve(predict_proba, clips, labels, {"v": noise}, _occluder(clips, (4, 4)))
    assert good.gap > bad.gap + 0.3
    assert good.morf_auc < bad.morf_auc and good.lerf_auc > bad.lerf_auc


def test_seed_protocol_accuracy() -> None:
    region = torch.zeros(2, 4, 2, 2, dtype=torch.bool)
    region[:, 1:3, 0, :] = True  # frames 1, 2, top row: 4 tokens
    clips, predict_proba = planted(region)
    relevance = region.float().flatten(2)  # P = 4: 1 patch (round(1.2)) + 2 frames
    labels = torch.ones(2, dtype=torch.long)
    calls = []

    def counted(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return predict_proba(x)

    occlude = lambda mask: apply_occlusion(clips, mask, (2, 2))  # noqa: E731
    assert seed_protocol_accuracy(counted, labels, relevance, occlude) == (0.0, 1.0)
    assert len(calls) == 2
