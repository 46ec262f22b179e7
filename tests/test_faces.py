"""Face crops (harness/data/faces.py) on real images: scikit-image's astronaut photograph, moving
across a larger frame and encoded to a real video with PyAV, is cropped to a box that holds the
face in every sampled frame; a clip without a face follows on_bad_file (or is kept whole); the
cache key follows the face-crop settings; the facial regions against OpenCV's eye and smile
cascades and against hand-computed overlaps."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from _video_files import ASTRONAUT_FACE, face_frames, no_face_frames, write_video

from harness.data.cache import build_video_cache, cache_key, load_video_cache, open_folder_dataset
from harness.data.faces import (
    FaceCropSettings,
    NoFaceError,
    clip_box,
    crop_box,
    crop_faces,
    track_faces,
)
from harness.data.folders import index_folder
from harness.data.video_io import decode_clip, resize_frames, sample_indices
from harness.evaluate.trends import (
    FACE_REGIONS,
    face_region_areas,
    face_region_shares,
    face_region_weights,
)

FRAMES = 8
CROP = FaceCropSettings(enabled=True)


def _inside(face: np.ndarray, box: tuple[int, int, int]) -> bool:
    x0, y0, side = box
    return face[0] >= x0 and face[1] >= y0 and face[2] <= x0 + side and face[3] <= y0 + side


@pytest.fixture(scope="module")
def face_clip(tmp_path_factory):
    """A 320 x 240 clip of 10 frames: the astronaut (224 px, her face about 40 px) sliding from
    the top-left to the bottom-right corner."""
    frames, faces = face_frames(height=240, width=320, photo=224)
    path = write_video(tmp_path_factory.mktemp("faces") / "astronaut.mp4", frames,
                       codec="libx264")  # fmt: skip
    return path, frames, faces


def test_the_moving_face_is_inside_the_crop_in_every_sampled_frame(face_clip):
    path, _, faces = face_clip
    read = decode_clip(path, FRAMES, None)
    assert read.frames.shape == (FRAMES, 240, 320, 3)  # native resolution
    crop = crop_faces(read.frames, CROP, 96, str(path))
    assert crop.detected == FRAMES and crop.frame_size == (320, 240)
    for t, frame in enumerate(read.indices):
        assert _inside(faces[frame], crop.box), (t, faces[frame], crop.box)
        cx, cy, side = crop.track[t]  # the track follows the face: its centre in the face box
        assert faces[frame][0] < cx < faces[frame][2] and faces[frame][1] < cy < faces[frame][3]
        assert 0.7 < side / (faces[frame][2] - faces[frame][0]) < 1.5
    # one square box: the union of the track's boxes widened by the margin on each side
    x0, y0, side = crop.box
    low = (crop.track[:, :2] - crop.track[:, 2:] / 2).min(0)
    high = (crop.track[:, :2] + crop.track[:, 2:] / 2).max(0)
    assert side == np.floor((high - low).max() * (1 + 2 * CROP.margin) + 0.5)
    # the cached frames are that box cut from the native frames (black outside) and resized
    expected = resize_frames(crop_box(read.frames, crop.box), 96)
    np.testing.assert_array_equal(crop.frames, expected)
    if y0 < 0:  # the box leaves the frame at the top: black there, never shifted
        assert crop_box(read.frames, crop.box)[:, : -y0].max() == 0


def test_a_still_face_is_cropped_tightly_and_its_features_fall_in_their_regions(tmp_path):
    import cv2

    frames, faces = face_frames(num_frames=1, height=330, width=330, photo=320)
    crop = crop_faces(frames, CROP, 192, "still")  # one frame: the box of one detection, widened
    assert _inside(faces[0], crop.box)
    face_side = faces[0][2] - faces[0][0]
    assert crop.box[2] < 1.7 * face_side  # tight: the face fills most of the crop
    gray = cv2.cvtColor(crop.frames[0], cv2.COLOR_RGB2GRAY)
    m, span = CROP.margin, 1 + 2 * CROP.margin

    def in_region(name: str, x: float, y: float) -> bool:
        rx0, ry0, rx1, ry1 = FACE_REGIONS[name]
        u, v = x / 192 * span - m, y / 192 * span - m  # crop pixels -> face-box units
        return rx0 <= u <= rx1 and ry0 <= v <= ry1

    # OpenCV's own eye and smile cascades, other detectors of the features: their centres. Each
    # fires on the other's feature too (an eye on a mouth corner, a smile on hair), so the eyes
    # are searched in the crop's upper half and the mouth in its lower half; the test asks
    # where in that half, and how far apart, they are
    eyes = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_eye.xml")
    found = eyes.detectMultiScale(gray[:96], 1.05, 10, minSize=(20, 20))
    assert len(found) == 2
    assert all(in_region("eyes", x + w / 2, y + h / 2) for x, y, w, h in found)
    assert sorted(x + w / 2 < 96 for x, _, w, _ in found) == [False, True]  # left and right
    smile = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_smile.xml")
    mouths = smile.detectMultiScale(gray[96:], 1.05, 20, minSize=(30, 15))
    assert len(mouths) >= 1
    x, y, w, h = max(mouths, key=lambda b: b[2] * b[3])
    assert in_region("mouth", x + w / 2, 96 + y + h / 2)


def test_track_ignores_a_second_face_and_fills_missed_frames():
    def box(cx, cy, side):
        return np.array([[cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]])

    empty = (np.zeros((0, 4)), np.zeros(0))
    detections = [
        (box(100, 100, 40), np.array([2.0])),
        empty,  # a miss: interpolated between its neighbours
        (np.concatenate([box(110, 100, 40), box(300, 50, 44)]), np.array([3.0, 9.0])),
        (box(115, 100, 40), np.array([5.0])),
    ]
    # the anchor is the highest score (the far box at 300, 50); the face at 100..115 is a jump
    # of > 1 side from it, so the anchor's track holds that box alone
    track, kept = track_faces(detections, smooth=1)
    assert kept.tolist() == [False, False, True, False]
    detections[2] = (detections[2][0], np.array([9.0, 3.0]))  # now the face is the anchor
    track, kept = track_faces(detections, smooth=1)
    assert kept.tolist() == [True, False, True, True]
    np.testing.assert_allclose(track[:, 0], [100, 105, 110, 115])  # the miss interpolated
    smooth, _ = track_faces(detections, smooth=3)
    np.testing.assert_allclose(smooth[:, 0], [102.5, 105, 110, 112.5])  # window shrunk at ends
    # the union is x 80..135, y 80..120: a square of side 55 centred on (107.5, 100)
    assert clip_box(track, 0.0) == (80, 73, 55)  # y0 = 100 - 27.5, rounded half up
    assert clip_box(track, 0.5)[2] == 110
    with pytest.raises(NoFaceError, match="no face detected in any of the 2 sampled frames"):
        track_faces([empty, empty])


def _tree(root, face_clips=4, no_face=True):
    """A CREMA-D-style tree: actors 1001..1004 with a face clip each, plus a faceless clip."""
    frames, _ = face_frames(height=240, width=320, photo=224)
    for a in range(1001, 1001 + face_clips):
        write_video(root / f"{a}_DFA_ANG_XX.mp4", frames, codec="libx264")
    if no_face:
        write_video(root / "1001_IEO_HAP_XX.mp4", no_face_frames(), codec="libx264")
    return root


SPLIT = {"test_actors": [1003], "val_actors": [1002], "class_names": ["ANG", "HAP"]}


def test_no_face_follows_on_bad_file(tmp_path):
    root = _tree(tmp_path / "CREMA-D")
    faceless = root / "1001_IEO_HAP_XX.mp4"
    with pytest.raises(ValueError, match=r"1 of 5 clips have no face; on_bad_file='skip'") as error:
        open_folder_dataset(root, num_frames=FRAMES, size=64, cache_root=tmp_path / "c",
                            face_crop=CROP, **SPLIT)  # fmt: skip
    assert f"no face found in {faceless}: no face detected in any of the 8" in str(error.value)
    assert not list((tmp_path / "c").glob("*/video.npy"))  # nothing half-written

    index, cached = open_folder_dataset(root, num_frames=FRAMES, size=64, on_bad_file="skip",
                                        cache_root=tmp_path / "c", face_crop=CROP,
                                        **SPLIT)  # fmt: skip
    assert faceless.stem not in cached.clip_ids and len(cached) == 4
    reasons = [(s.path, s.reason.split(":")[0]) for s in index.skipped]
    assert reasons == [(faceless, "no face found")]
    meta = cached.meta["face_crop"]
    assert meta["cropped"] == 4 and meta["dropped_no_face"] == 1 and meta["whole_frame"] == []
    assert cached.meta["dropped"][0]["kind"] == "no_face"
    rows = list(csv.DictReader((cached.folder / "face_boxes.csv").open()))
    assert [r["clip_id"] for r in rows] == list(cached.clip_ids)  # the arrays' row order
    assert {r["status"] for r in rows} == {"cropped"} and rows[0]["frame_width"] == "320"
    tracks = np.load(cached.folder / "face_tracks.npy")
    assert tracks.shape == (4, FRAMES, 3) and np.isfinite(tracks).all()

    whole = FaceCropSettings(enabled=True, no_face="whole_frame")
    _, kept = open_folder_dataset(root, num_frames=FRAMES, size=64, cache_root=tmp_path / "c",
                                  face_crop=whole, **SPLIT)  # fmt: skip
    assert len(kept) == 5 and kept.meta["face_crop"]["whole_frame"] == [faceless.stem]
    row = kept.clip_ids.index(faceless.stem)
    plain = decode_clip(faceless, FRAMES, 64).frames  # the whole frame, resized as without crops
    np.testing.assert_array_equal(kept.video[row], plain)
    status = {r["clip_id"]: r for r in csv.DictReader((kept.folder / "face_boxes.csv").open())}
    assert status[faceless.stem]["status"] == "whole_frame" and status[faceless.stem]["side"] == ""
    assert np.isnan(np.load(kept.folder / "face_tracks.npy")[row]).all()


def test_too_few_frames_with_a_face_is_no_face(tmp_path):
    frames, _ = face_frames(height=240, width=320, photo=224)
    frames[2:] = no_face_frames(8, 240, 320)  # the face in the first 2 of 10 frames only
    path = write_video(tmp_path / "x.mp4", frames, codec="libx264")
    read = decode_clip(path, FRAMES, None)  # sampled frames 0, 1, 3, ...: 2 of 8 show her
    with pytest.raises(NoFaceError, match=r"a face in only 2 of the 8 sampled frames .*asks for 4"):
        crop_faces(read.frames, CROP, 64, str(path))
    assert crop_faces(read.frames, FaceCropSettings(enabled=True, min_detected=0.25), 64).box


def test_the_cache_key_follows_the_face_crop_settings(tmp_path):
    root = _tree(tmp_path / "CREMA-D", face_clips=3, no_face=False)
    index = index_folder(root, "crema_d", test_actors=[1003], val_actors=[1002])

    def key(face_crop):
        return cache_key(index, FRAMES, 64, "uniform", face_crop=face_crop)

    plain = key(None)
    assert key(FaceCropSettings(enabled=False)) == plain  # disabled: the un-cropped cache
    cropped = key(CROP)
    assert cropped != plain
    assert key(FaceCropSettings(enabled=True, margin=0.3)) != cropped
    assert key(FaceCropSettings(enabled=True, detector="haar_alt2")) != cropped
    a = build_video_cache(index, FRAMES, 64, "uniform", tmp_path / "c")
    b = build_video_cache(index, FRAMES, 64, "uniform", tmp_path / "c", face_crop=CROP)
    assert a != b and load_video_cache(a).meta["face_crop"] is None
    assert not (a / "face_boxes.csv").exists()
    assert json.loads((b / "meta.json").read_text())["face_crop"]["opencv"]
    assert not np.array_equal(load_video_cache(a).video, load_video_cache(b).video)
    assert b.name.endswith(cropped)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"margin": 2}, r"data.face_crop.margin: expected in \[0, 1\], got 2"),
        ({"detector": "mtcnn"}, "data.face_crop.detector: expected one of haar_default, haar_alt2"),
        ({"no_face": "skip"}, "data.face_crop.no_face: expected bad_file or whole_frame"),
        ({"smooth": 0}, "data.face_crop.smooth: expected an integer >= 1, got 0"),
        ({"min_detected": 0}, r"data.face_crop.min_detected: expected a share .* got 0"),
        ({"size": 3}, "data.face_crop.size: expected one of the keys detector, enabled"),
    ],
)
def test_bad_settings_name_the_key(config, message):
    with pytest.raises(ValueError, match=message):
        FaceCropSettings.from_config(config)


def test_face_region_weights_against_hand_computed_overlaps():
    # margin 0: the crop is the face box. 4 x 4 cells of 0.25: eyes x 0.10-0.90 y 0.20-0.50
    weights = face_region_weights(4, 4, 0.0)
    eyes_rows = torch.tensor([0.05, 0.25, 0.0, 0.0]) / 0.25  # y overlap per row
    eyes_cols = torch.tensor([0.15, 0.25, 0.25, 0.15]) / 0.25
    torch.testing.assert_close(weights[0], eyes_rows[:, None] * eyes_cols[None, :].double())
    torch.testing.assert_close(weights.sum(0), torch.ones(4, 4, dtype=torch.float64))
    assert (weights >= 0).all()
    # areas: eyes 0.8 x 0.3, nose 0.4 x 0.18, mouth 0.6 x 0.27 of the box; the margin shrinks them
    torch.testing.assert_close(face_region_areas(0.0), torch.tensor(
        [0.24, 0.072, 0.162, 1 - 0.24 - 0.072 - 0.162], dtype=torch.float64))  # fmt: skip
    torch.testing.assert_close(face_region_areas(0.25)[:3], face_region_areas(0.0)[:3] / 1.5**2)
    # a uniform map gets the areas; a map on one cell gets that cell's weights
    torch.testing.assert_close(face_region_shares(torch.ones(1, 3, 4, 4).double(), 0.25)[0],
                               face_region_areas(0.25))  # fmt: skip
    one = torch.zeros(2, 2, 4, 4, dtype=torch.float64)
    one[0, 1, 3, 1] = 5.0  # bottom row: mouth y 0.68-0.95 covers 0.2 of 0.25; x col 1 fully
    one[1, 0, 1, 2] = 1.0
    shares = face_region_shares(one, 0.0)
    torch.testing.assert_close(shares[0], torch.tensor([0.0, 0.0, 0.8, 0.2], dtype=torch.float64))
    torch.testing.assert_close(shares[1], weights[:, 1, 2])
    torch.testing.assert_close(shares.sum(1), torch.ones(2, dtype=torch.float64))


def test_the_astronaut_face_box_is_where_the_helper_says():
    frames, faces = face_frames(num_frames=2, height=240, width=320, photo=224)
    scale = 224 / 512
    np.testing.assert_allclose(faces[0], np.array(ASTRONAUT_FACE) * scale)
    np.testing.assert_allclose(faces[1], np.array(ASTRONAUT_FACE) * scale + [96, 16, 96, 16])
    x0, y0, x1, y1 = (round(v) for v in faces[1])
    skin = frames[1, y0:y1, x0:x1].astype(float).mean((0, 1))
    assert skin[0] > skin[2] + 30  # her face (reddish skin), not the grey background
    assert sample_indices(10, FRAMES).tolist() == [0, 1, 3, 4, 5, 6, 8, 9]


def test_face_region_shares_against_a_pixel_count():
    # naive reference: the maps upsampled nearest-neighbour to a 600-pixel crop, each pixel
    # centre assigned to the region box that holds it (face-box units), relevance summed
    maps = torch.rand(3, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    margin, pixels = 0.25, 600
    per_pixel = maps.sum(1).repeat_interleave(150, 1).repeat_interleave(150, 2)  # [3, 600, 600]
    u = (torch.arange(pixels, dtype=torch.float64) + 0.5) / pixels * (1 + 2 * margin) - margin
    expected = []
    for x0, y0, x1, y1 in FACE_REGIONS.values():
        mask = ((u >= y0) & (u < y1))[:, None] & ((u >= x0) & (u < x1))[None, :]
        expected.append((per_pixel * mask).sum((1, 2)) / per_pixel.sum((1, 2)))
    expected = torch.stack(expected, 1)
    expected = torch.cat([expected, 1 - expected.sum(1, keepdim=True)], 1)
    torch.testing.assert_close(face_region_shares(maps, margin), expected, atol=3e-3, rtol=0)
