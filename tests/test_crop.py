import pytest
import torch
import torch.nn.functional as F

from harness.methods.crop import (
    CROP_POLICIES,
    downsample,
    get_crop_policy,
    pixel_box,
    salient_box,
)


def grid_map(cells: dict[tuple[int, int], float], shape: tuple[int, int] = (4, 4)) -> torch.Tensor:
    m = torch.zeros(shape)
    for ij, v in cells.items():
        m[ij] = v
    return m


def test_salient_box_one_blob() -> None:
    m = grid_map({(1, 1): 1.0, (1, 2): 1.0, (2, 1): 0.8, (2, 2): 0.6, (0, 3): 0.2})
    assert salient_box(m, 0.5, 0.0) == (1.0, 1.0, 3.0, 3.0)
    assert salient_box(m, 0.5, 0.25) == (0.5, 0.5, 3.5, 3.5)
    assert salient_box(m * 7, 0.5, 0.0) == (1.0, 1.0, 3.0, 3.0)  # scale-free


def test_salient_box_two_blobs_largest_vs_union() -> None:
    m = grid_map({(0, 0): 1.0, (0, 1): 1.0, (1, 0): 1.0, (3, 3): 1.0})
    assert salient_box(m, margin=0.0, region="largest") == (0.0, 0.0, 2.0, 2.0)
    assert salient_box(m, margin=0.0, region="union") == (0.0, 0.0, 4.0, 4.0)


def test_salient_box_eight_connected_and_ties() -> None:
    diagonal = grid_map({(0, 0): 1.0, (1, 1): 1.0, (3, 3): 1.0, (3, 2): 1.0, (3, 1): 1.0})
    assert salient_box(diagonal, margin=0.0) == (3.0, 1.0, 4.0, 4.0)  # 3 cells beat 2 diagonal
    diagonal[2, 2] = 1.0  # now one 6-cell 8-connected component
    assert salient_box(diagonal, margin=0.0) == (0.0, 0.0, 4.0, 4.0)
    tie = grid_map({(0, 0): 0.6, (0, 1): 0.6, (3, 2): 1.0, (3, 3): 0.9})
    assert salient_box(tie, margin=0.0) == (3.0, 2.0, 4.0, 4.0)  # equal size, larger mass


def test_salient_box_margin_clamped_and_fallbacks() -> None:
    m = grid_map({(0, 0): 1.0, (0, 1): 1.0, (1, 0): 1.0, (1, 1): 1.0})
    assert salient_box(m, margin=0.5) == (0.0, 0.0, 3.0, 3.0)
    assert salient_box(torch.zeros(4, 4)) == (0.0, 0.0, 4.0, 4.0)
    assert salient_box(m, threshold=1.5) == (0.0, 0.0, 4.0, 4.0)  # nothing salient
    with pytest.raises(ValueError, match="unknown region 'x'"):
        salient_box(m, region="x")


def test_pixel_box_scales_rounds_out_and_squares() -> None:
    assert pixel_box((1.0, 1.0, 3.0, 3.0), (4, 4), (64, 64)) == (16, 16, 48, 48)
    assert pixel_box((0.5, 0.5, 3.5, 3.5), (4, 4), (10, 10)) == (1, 1, 9, 9)
    assert pixel_box((1.0, 1.0, 2.0, 3.0), (4, 4), (64, 64)) == (8, 16, 40, 48)  # height grown
    assert pixel_box((0.0, 0.0, 1.0, 2.0), (4, 4), (64, 64)) == (0, 0, 32, 32)  # shifted in
    assert pixel_box((0.0, 0.0, 4.0, 4.0), (4, 4), (48, 64)) == (0, 0, 48, 64)  # can't square


@pytest.mark.parametrize("name", ["largest_region", "union_box"])
def test_box_crop_recovers_planted_square(name: str) -> None:
    torch.manual_seed(0)
    clips = torch.rand(2, 3, 3, 64, 64)
    colour = torch.tensor([0.2, 0.5, 0.8])[:, None, None]
    clips[0, :, :, 16:48, 32:64] = colour
    clips[1, :, :, 0:16, 0:16] = colour
    relevance = torch.zeros(2, 3, 4, 4)
    relevance[0, :, 1:3, 2:4] = 1.0
    relevance[1, 1, 0, 0] = 5.0
    out = get_crop_policy(name)(clips, relevance, 8, margin=0.0)
    assert out.shape == (2, 3, 3, 8, 8)
    torch.testing.assert_close(out, colour.expand_as(out), atol=1e-6, rtol=0)


def test_box_crop_is_antialiased_resize_of_the_box() -> None:
    torch.manual_seed(0)
    clips = torch.rand(1, 2, 3, 64, 64)
    relevance = torch.zeros(1, 2, 4, 4)
    relevance[0, :, 1:3, 1:3] = 1.0
    out = get_crop_policy("largest_region")(clips, relevance, 8, margin=0.0)
    ref = F.interpolate(clips[0, :, :, 16:48, 16:48], size=(8, 8), mode="bilinear", antialias=True)
    torch.testing.assert_close(out[0], ref)


def test_mask_zeros_exactly_non_salient_cells() -> None:
    torch.manual_seed(0)
    clips = torch.rand(2, 2, 3, 64, 64) + 0.1
    relevance = torch.rand(2, 2, 4, 4) * 0.1
    relevance[0, :, 0, 1] = 1.0
    relevance[0, :, 2, 3] = 1.0
    relevance[1, :, 3, 0] = 1.0
    out = get_crop_policy("mask")(clips, relevance, 16)
    keep = torch.zeros(2, 4, 4, dtype=torch.bool)
    keep[0, 0, 1] = keep[0, 2, 3] = keep[1, 3, 0] = True
    keep = keep.repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None, None]  # [B,1,1,16,16]
    torch.testing.assert_close(out, torch.where(keep, downsample(clips, 16), 0.0))
    assert (out[keep.expand_as(out)] > 0).all()


def test_soft_weights_by_normalised_relevance() -> None:
    clips = torch.ones(1, 2, 1, 8, 8)
    relevance = torch.zeros(1, 2, 2, 2)
    relevance[0, 0] = 4.0
    relevance[0, 1] = 2.0
    out = get_crop_policy("soft")(clips, relevance, 4)
    torch.testing.assert_close(out[0, 0], torch.ones(1, 4, 4))
    torch.testing.assert_close(out[0, 1], torch.full((1, 4, 4), 0.5))


def test_none_is_area_downsample_and_zero_relevance_falls_back() -> None:
    torch.manual_seed(0)
    clips = torch.rand(2, 3, 3, 64, 64)
    zero = torch.zeros(2, 3, 4, 4)
    area = F.interpolate(clips.flatten(0, 1), size=(16, 16), mode="area").view(2, 3, 3, 16, 16)
    torch.testing.assert_close(get_crop_policy("none")(clips, zero, 16), area)
    for name in ("mask", "soft"):
        torch.testing.assert_close(get_crop_policy(name)(clips, zero, 16), area)
    full = F.interpolate(clips.flatten(0, 1), size=(16, 16), mode="bilinear", antialias=True)
    torch.testing.assert_close(
        get_crop_policy("largest_region")(clips, zero, 16), full.view(2, 3, 3, 16, 16)
    )


@pytest.mark.parametrize("name", list(CROP_POLICIES))
def test_output_shapes(name: str) -> None:
    out = get_crop_policy(name)(torch.rand(3, 4, 3, 48, 64), torch.rand(3, 4, 3, 4), 32)
    if name == "prune":  # the whole view, and the 6 of 12 patches the model runs on
        assert out.keep.shape == (3, 6) and out.keep.dtype == torch.int64
        out = out.view
    assert out.shape == (3, 4, 3, 32, 32)
    assert out.dtype == torch.float32


def test_policy_names_and_unknown_policy() -> None:
    names = ["largest_region", "union_box", "mask", "soft", "none", "prune"]
    assert list(CROP_POLICIES) == names
    with pytest.raises(
        ValueError,
        match="unknown crop policy 'x'; expected one of: largest_region, union_box, mask, soft, "
        "none, prune",
    ):
        get_crop_policy("x")
