"""read_clip on real files written with PyAV: frame contents, sampling, decoders, errors."""

from __future__ import annotations

import numpy as np
import pytest
from _video_files import decoded_index, frame_level, indexed_frames, write_video

from harness.data.video_io import (
    decode_clip,
    decord_available,
    read_clip,
    resize_frames,
    sample_indices,
)

needs_decord = pytest.mark.skipif(not decord_available(), reason="decord is not installed")
BACKENDS = ["pyav", pytest.param("decord", marks=needs_decord)]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """10 indexed frames, 32 x 40 (not square: checks the full-frame resize), two codecs."""
    folder = tmp_path_factory.mktemp("videos")
    frames = indexed_frames(10, height=32, width=40)
    return frames, {
        "avi": write_video(folder / "clip.avi", frames, codec="mpeg4"),
        "mp4": write_video(folder / "clip.mp4", frames, codec="libx264"),
    }


def test_sample_indices_policies():
    assert sample_indices(10, 4, "uniform").tolist() == [1, 3, 6, 8]
    assert sample_indices(100, 4, "uniform").tolist() == [12, 37, 62, 87]
    assert sample_indices(10, 4, "center").tolist() == [3, 4, 5, 6]
    assert sample_indices(8, 8, "uniform").tolist() == list(range(8))
    # shorter than num_frames: every frame in order, repeated (both policies)
    assert sample_indices(3, 8, "uniform").tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    assert sample_indices(3, 8, "center").tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    with pytest.raises(ValueError, match="not supported.*deterministic"):
        sample_indices(10, 4, "random")
    with pytest.raises(ValueError, match="sampling must be one of"):
        sample_indices(10, 4, "middle")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("container", ["avi", "mp4"])
def test_read_clip_frames_match_encoded(videos, backend, container):
    frames, paths = videos
    read = decode_clip(paths[container], 4, 32, "uniform", backend=backend)
    assert read.backend == backend and read.available == 10
    assert read.frames.dtype == np.uint8 and read.frames.shape == (4, 32, 32, 3)
    assert read.indices.tolist() == [1, 3, 6, 8]
    assert [decoded_index(f) for f in read.frames] == [1, 3, 6, 8]
    # the whole frame squeezed to 32 x 32 (no crop), within codec error
    expected = resize_frames(frames[[1, 3, 6, 8]], 32).astype(np.float64)
    assert np.abs(read.frames - expected).mean() < 8  # i.e. 8 / 255 on a [0, 1] scale
    for frame, index in zip(read.frames, [1, 3, 6, 8]):
        left = frame[:, :14].astype(np.float64)  # away from the blurred half boundary
        assert np.abs(left - frame_level(index)).mean() < 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_center_and_repeat_when_short(videos, backend):
    _, paths = videos
    center = read_clip(paths["avi"], 4, 16, "center", backend=backend)
    assert center.shape == (4, 16, 16, 3)
    assert [decoded_index(f) for f in center] == [3, 4, 5, 6]
    long = decode_clip(paths["avi"], 16, 16, "uniform", backend=backend)
    assert long.frames.shape == (16, 16, 16, 3)
    expected = [0, 0, 1, 2, 2, 3, 4, 4, 5, 5, 6, 7, 7, 8, 9, 9]
    assert long.indices.tolist() == expected
    assert [decoded_index(f) for f in long.frames] == expected


@needs_decord
def test_decord_and_pyav_agree(videos):
    _, paths = videos
    for path in paths.values():
        a = read_clip(path, 5, 24, backend="decord").astype(np.int16)
        b = read_clip(path, 5, 24, backend="pyav").astype(np.int16)
        assert np.abs(a - b).mean() <= 1.0


@needs_decord
def test_auto_falls_back_to_pyav_when_decord_fails(tmp_path):
    # decord 0.6 cannot read 48 x 32 frames ("The size must exactly match"): PyAV takes over
    frames = indexed_frames(6, height=32, width=48)
    path = write_video(tmp_path / "wide.avi", frames)
    read = decode_clip(path, 3, 32, backend="auto")
    if read.backend == "decord":  # a decord build without that bug: nothing to fall back from
        assert read.fallback is None
    else:
        assert read.backend == "pyav" and read.fallback.startswith("decord failed")
    assert [decoded_index(f) for f in read.frames] == [1, 3, 5]


def test_missing_empty_and_truncated_files(tmp_path, videos):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        read_clip(missing, 4, 32)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"cannot decode video .*empty\.mp4: empty file"):
        read_clip(empty, 4, 32)
    _, paths = videos
    for name, source in (("cut.mp4", paths["mp4"]), ("cut.avi", paths["avi"])):
        data = source.read_bytes()
        cut = tmp_path / name
        cut.write_bytes(data[: len(data) // 2])
        for backend in ("auto", "pyav"):
            with pytest.raises(ValueError, match=rf"cannot decode video .*{name}: "):
                read_clip(cut, 4, 32, backend=backend)
    garbage = tmp_path / "noise.mkv"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    with pytest.raises(ValueError, match=r"cannot decode video .*noise\.mkv"):
        read_clip(garbage, 4, 32)


def test_argument_errors(videos):
    _, paths = videos
    with pytest.raises(ValueError, match="num_frames"):
        read_clip(paths["avi"], 0, 32)
    with pytest.raises(ValueError, match="size"):
        read_clip(paths["avi"], 4, 0)
    with pytest.raises(ValueError, match="backend"):
        read_clip(paths["avi"], 4, 32, backend="opencv")
    with pytest.raises(ValueError, match="random"):
        read_clip(paths["avi"], 4, 32, sampling="random")


@needs_decord
def test_decord_decodable_length_counts_real_frames(videos):
    # the guard used when decord over-reports a length: sequential decoding counts the frames
    import decord

    from harness.data.video_io import _decord_decodable_length

    _, paths = videos
    assert _decord_decodable_length(decord, paths["avi"], 100) == 10
    assert _decord_decodable_length(decord, paths["mp4"], 4) == 4
