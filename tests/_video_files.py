"""Test helper: real video files written with PyAV (no mocks), with known frame contents."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from av.codec.context import Flags


def write_video(path: str | Path, frames: np.ndarray, fps: int = 8, codec: str = "mpeg4") -> Path:
    """Encode uint8 ``[T, H, W, 3]`` RGB frames at high quality (yuv420p; mpeg4 at qscale 1, or
    libx264 at crf 1).  H and W must be even (4:2:0 chroma)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.asarray(frames, dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        if codec == "mpeg4":
            stream.codec_context.qscale = 1
            stream.codec_context.flags |= Flags.qscale
        elif codec == "libx264":
            stream.options = {"crf": "1"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def frame_level(index: int) -> int:
    """The grey level that encodes frame ``index`` in :func:`indexed_frames` (steps of 12)."""
    return 16 + 12 * index


def indexed_frames(num_frames: int, height: int = 32, width: int = 32) -> np.ndarray:
    """Frames whose content encodes their index: the left half a grey of level
    ``frame_level(i)``, the right half a fixed colour (so a crop or a flip would show)."""
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for i in range(num_frames):
        frames[i, :, : width // 2] = frame_level(i)
        frames[i, :, width // 2 :] = (200, 120, 40)
    return frames


def decoded_index(frame: np.ndarray) -> int:
    """The frame index a decoded (possibly resized) :func:`indexed_frames` frame carries."""
    width = frame.shape[1]
    left = frame[:, : max(1, width // 2 - 2)].astype(np.float64).mean()
    return int(round((left - 16) / 12))
