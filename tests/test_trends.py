"""Per-class trends: class-mean maps, region, frame and signal time-segment shares against hand
computations; the trend tables and figures; the galleries and the occlusion-curve figure."""

import math

import pandas as pd
import pytest
import torch
from PIL import Image

from harness.evaluate.occlusion import OcclusionCurve
from harness.evaluate.trends import (
    class_mean_maps,
    frame_shares,
    parse_regions,
    region_names,
    region_shares,
    segment_index,
    segment_names,
    segment_shares,
    segment_token_shares,
)
from reports.curves import plot_occlusion_curves
from reports.gallery import save_clip_gif, save_input_gallery
from reports.trends import plot_class_trends, trend_table, write_trends


def test_class_mean_maps_normalise_each_clip_then_average():
    relevance = torch.tensor(
        [[[[1.0, 3.0]]], [[[2.0, 2.0]]], [[[-1.0, 0.0]]], [[[0.5, 1.5]]]]
    )  # [N=4, T=1, h=1, w=2]
    labels = torch.tensor([0, 0, 1, 0])
    maps = class_mean_maps(relevance, labels, num_classes=3)
    assert maps.shape == (3, 1, 1, 2)
    # class 0: [.25, .75], [.5, .5], [.25, .75] -> mean; scale does not matter (clip 3 = clip 0 / 2)
    torch.testing.assert_close(maps[0].flatten(), torch.tensor([1 / 3, 2 / 3]))
    # class 1: no positive mass (negative clipped to 0) -> uniform
    torch.testing.assert_close(maps[1].flatten(), torch.tensor([0.5, 0.5]))
    assert torch.isnan(maps[2]).all()  # no clip of class 2
    with pytest.raises(ValueError, match="labels"):
        class_mean_maps(relevance, labels[:2], 3)


def test_region_assignment_by_centre_when_h_is_not_a_multiple_of_rows():
    maps = torch.arange(9.0).view(1, 1, 3, 3)  # [[0,1,2],[3,4,5],[6,7,8]], total 36
    # centres of rows/cols 0, 1, 2 at 1/6, 1/2, 5/6: region 0 | 1 | 1 (the boundary goes later)
    shares = region_shares(maps, (2, 2))
    expected = torch.tensor([[0.0, 1 + 2, 3 + 6, 4 + 5 + 7 + 8]]) / 36
    torch.testing.assert_close(shares, expected)
    # 2 cells into 3 regions: the middle one is empty
    two = torch.tensor([[[[1.0], [3.0]]]])  # h = 2, w = 1
    torch.testing.assert_close(region_shares(two, (3, 1)), torch.tensor([[0.25, 0.0, 0.75]]))
    # one region per cell
    torch.testing.assert_close(region_shares(maps, (3, 3)), maps.view(1, 9) / 36)
    assert region_shares(maps, (1, 1)).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 1 x 1"):
        region_shares(maps, (0, 2))


def test_planted_relevance_trends():
    # T = 3 frames of 4 x 4: background 1 everywhere; class 0 plants +12 on the top-left 2 x 2
    # of frame 0, class 1 on the bottom-right 2 x 2 of frame 2
    relevance = torch.ones(4, 3, 4, 4)
    relevance[0, 0, :2, :2] += 12
    relevance[1, 0, :2, :2] += 12
    relevance[2, 2, 2:, 2:] += 12
    relevance[1] *= 5.0  # scale of a clip does not matter
    labels = torch.tensor([0, 0, 1, 2])
    maps = class_mean_maps(relevance, labels, 3)
    # total 48 + 48 = 96: the planted region holds (3 frames * 4 cells + 48) / 96 = 0.625
    regions = region_shares(maps, (2, 2))
    torch.testing.assert_close(regions[0], torch.tensor([0.625, 0.125, 0.125, 0.125]))
    torch.testing.assert_close(regions[1], torch.tensor([0.125, 0.125, 0.125, 0.625]))
    torch.testing.assert_close(regions[2], torch.full((4,), 0.25))  # uniform background only
    frames = frame_shares(maps)
    torch.testing.assert_close(frames[0], torch.tensor([64 / 96, 16 / 96, 16 / 96]))
    torch.testing.assert_close(frames[1], torch.tensor([16 / 96, 16 / 96, 64 / 96]))
    torch.testing.assert_close(frames.sum(1), torch.ones(3))
    torch.testing.assert_close(regions.sum(1), torch.ones(3))


def test_region_names_and_parsing():
    assert region_names((2, 2)) == ["top-left", "top-right", "bottom-left", "bottom-right"]
    assert region_names((1, 3)) == ["left", "centre", "right"]
    assert region_names((1, 1)) == ["all"]
    assert region_names((4, 1))[:2] == ["r0c0", "r1c0"]
    assert parse_regions("3x2") == (3, 2)
    for bad in ("2", "0x2", "axb", "2x2x2"):
        with pytest.raises(ValueError, match="ROWSxCOLS"):
            parse_regions(bad)


def test_trend_tables_and_figures(tmp_path):
    relevance = torch.rand(6, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 0, 1, 0, 0])
    maps = class_mean_maps(relevance, labels, 3)
    table = trend_table(maps, ["a", "b", "c"], [4, 2, 0], (2, 2))
    assert list(table.columns) == [
        "class", "clips", "top-left", "top-right", "bottom-left", "bottom-right",
        "frame_1", "frame_2",
    ]  # fmt: skip
    assert table.loc[:1, "top-left":"bottom-right"].sum(axis=1).tolist() == pytest.approx([1, 1])
    assert math.isnan(table.loc[2, "frame_1"])
    paths = write_trends({"x": table, "y": table}, tmp_path, "T", synthetic=True)
    text = paths["md"].read_text()
    assert "SYNTHETIC" in text and "## x" in text and "## y" in text and "frame 2" in text
    stacked = pd.read_csv(paths["csv"])
    assert stacked["explainer"].tolist() == ["x"] * 3 + ["y"] * 3
    assert stacked["synthetic"].all()
    figure = plot_class_trends(maps, ["a", "b", "c"], tmp_path / "t" / "x.png", "T", [4, 2, 0])
    assert figure.stat().st_size > 0


def test_signal_segment_shares_by_hand():
    # 6 time tokens into 4 segments by centre: floor((2i + 1) * 4 / 12) = 0, 1, 1, 2, 3, 3
    assert segment_index(6, 4).tolist() == [0, 1, 1, 2, 3, 3]
    maps = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [0.0, 0.0, 0.0, 0.0, 0.0, 7.0]])
    torch.testing.assert_close(
        segment_shares(maps, 4), torch.tensor([[1 / 21, 5 / 21, 4 / 21, 11 / 21], [0, 0, 0, 1.0]])
    )
    torch.testing.assert_close(segment_token_shares(6, 4),
                               torch.tensor([1, 2, 1, 2], dtype=torch.float64) / 6)  # fmt: skip
    # the synthetic signals' 16 tokens: quarters of 4 tokens; one segment: everything
    assert segment_token_shares(16).tolist() == [0.25] * 4
    assert segment_shares(maps, 1).tolist() == [[1.0], [1.0]]
    assert segment_names(3) == ["segment_1", "segment_2", "segment_3"]
    for bad in (0, 7):
        with pytest.raises(ValueError, match="between 1 and the 6 time tokens"):
            segment_shares(maps, bad)
    with pytest.raises(ValueError, match=r"\[K, n\]"):
        segment_shares(maps[None], 2)


def test_planted_signal_relevance_trends(tmp_path):
    # 8 time tokens, background 1; class 0 plants +8 on tokens 0-1 (segment 1 of 4), class 1 on
    # tokens 6-7 (segment 4); class 2 is flat. Per clip: total 24, the planted segment
    # (2 + 16) / 24 = 0.75, the others 2 / 24
    relevance = torch.ones(4, 8)
    relevance[0, :2] += 8
    relevance[1, :2] += 8
    relevance[2, 6:] += 8
    relevance[1] *= 3.0  # the scale of a clip does not matter
    labels = torch.tensor([0, 0, 1, 2])
    maps = class_mean_maps(relevance, labels, 3)
    assert maps.shape == (3, 8)
    torch.testing.assert_close(maps[0], torch.tensor([9, 9, 1, 1, 1, 1, 1, 1]) / 24.0)
    table = trend_table(maps, ["a", "b", "c"], [2, 1, 1], segments=4)
    assert list(table.columns) == ["class", "clips", *segment_names(4)]
    rest = 2 / 24
    assert table.loc[0, "segment_1":].tolist() == pytest.approx([0.75, rest, rest, rest])
    assert table.loc[1, "segment_1":].tolist() == pytest.approx([rest, rest, rest, 0.75])
    assert table.loc[2, "segment_1":].tolist() == pytest.approx([0.25] * 4)
    paths = write_trends({"x": table}, tmp_path, "T", synthetic=True, stem="signal_trends")
    text = paths["md"].read_text()
    assert "Share of relevance per time segment" in text and "segment 4" in text
    assert "per region" not in text and "per frame" not in text
    assert pd.read_csv(paths["csv"])["segment_1"].tolist() == pytest.approx([0.75, rest, 0.25])
    figure = plot_class_trends(maps, ["a", "b", "c"], tmp_path / "s.png", "T", [2, 1, 1], 4)
    assert Image.open(figure).size[0] > 0


def test_the_gallery_of_every_input(tmp_path):
    """A hybrid sample: a row of frames over its signal row; signal or video alone; inputs
    without relevance are refused."""
    clips, signals = torch.rand(2, 3, 3, 12, 12), torch.randn(2, 32, 3)
    relevance = {"video": torch.rand(2, 3, 2, 2), "signal": torch.rand(2, 4)}
    labels, names = torch.tensor([0, 1]), ["a", "b"]
    sizes = {}
    for inputs in ({"video": clips, "signal": signals}, {"video": clips}, {"signal": signals}):
        path = tmp_path / f"{'_'.join(inputs)}.png"
        save_input_gallery(inputs, relevance, labels, labels, names, path, "t (SYNTHETIC)")
        sizes[tuple(inputs)] = Image.open(path).size
    # the hybrid's figure is as tall as its two rows per sample
    assert sizes[("video", "signal")][1] > max(sizes[("video",)][1], sizes[("signal",)][1])
    with pytest.raises(ValueError, match="relevance"):
        save_input_gallery({"signal": signals}, {"video": relevance["video"]}, labels, labels,
                           names, tmp_path / "bad.png")  # fmt: skip


def test_clip_gif_has_one_frame_per_clip_frame(tmp_path):
    clip = torch.rand(3, 3, 12, 12)
    relevance = torch.rand(3, 2, 2)
    path = save_clip_gif(clip, relevance, tmp_path / "g" / "c.gif", title="x (SYNTHETIC)")
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames == 3
    with pytest.raises(ValueError, match="frames"):
        save_clip_gif(clip, relevance[:2], tmp_path / "bad.gif")


def test_occlusion_curves_figure(tmp_path):
    curve = OcclusionCurve([0.0, 0.5], 2, [2, 0], [2, 1], [1.8, 0.2], [1.8, 1.0])
    path = plot_occlusion_curves({"a": curve, "random": curve}, tmp_path / "c.png", "title")
    assert path.stat().st_size > 0
    plot_occlusion_curves({"a": curve}, tmp_path / "p.png", "t", metric="probability")
    with pytest.raises(ValueError, match="metric"):
        plot_occlusion_curves({"a": curve}, tmp_path / "q.png", metric="loss")


def test_face_trends_on_the_synthetic_stand_in_are_produced_and_labelled_synthetic(tmp_path):
    import csv

    import yaml

    from harness.config import compose, resolve_paths, trial_config
    from harness.evaluate.trends import face_region_areas
    from harness.models import build_model
    from reports.trends import study_face_trends

    cfg = compose("cremad_video", ["sweep=smoke", f"data.cache_dir={tmp_path / 'cache'}",
                                   f"study.output_dir={tmp_path}"])  # fmt: skip
    resolve_paths(cfg)
    config = trial_config(cfg, "vanilla")
    run = tmp_path / "run"  # a final run's folder: model.pt and config.yaml (untrained weights)
    run.mkdir()
    torch.manual_seed(0)
    torch.save(build_model(config["model"], 6, None).state_dict(), run / "model.pt")
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    paths = study_face_trends({"vanilla": [run]}, tmp_path / "report", "cremad_video: vanilla",
                              explainers=["rollout", "random"])  # fmt: skip
    markdown = paths["md"].read_text()
    assert "**SYNTHETIC DATA" in markdown and "the synthetic clips hold no face" in markdown
    assert (tmp_path / "report" / "face_trends_vanilla.png").stat().st_size > 0
    assert (tmp_path / "report" / "face_maps_vanilla.png").stat().st_size > 0
    rows = list(csv.DictReader(paths["csv"].open()))
    assert {r["synthetic"] for r in rows} == {"True"} and len(rows) == 1 + 2 * 6
    areas = face_region_areas(0.25).tolist()  # data.face_crop.margin of cremad_video
    regions = ("eyes", "nose", "mouth", "rest")
    assert [float(rows[0][k]) for k in regions] == pytest.approx(areas)
    assert [r["class"] for r in rows[1:7]] == ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]
    assert {int(r["clips"]) for r in rows[1:]} == {8}  # smoke: 8 test clips per class
    for r in rows[1:]:
        shares = [float(r[k]) for k in regions]
        assert sum(shares) == pytest.approx(1.0) and min(shares) >= 0
        if r["explainer"] == "random":  # 8 clips x 8 frames of uniform noise: close to the areas
            assert shares == pytest.approx(areas, abs=0.03)
