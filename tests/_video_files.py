"""Test helper: real video files written with PyAV (no mocks), with known frame contents."""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


def identity_frames(clip: int, num_frames: int = 10, size: int = 32) -> np.ndarray:
    """:func:`indexed_frames` whose coloured half also carries the clip's number: its blue level
    is :func:`clip_level` ``(clip)``."""
    frames = indexed_frames(num_frames, size, size)
    frames[:, :, size // 2 :, 2] = clip_level(clip)
    return frames


def clip_level(clip: int) -> int:
    """The blue level that identifies clip ``clip`` in :func:`identity_frames` (steps of 20)."""
    return 20 * (clip % 12)


def ucf50_tree(
    root: Path, classes: Sequence[str], groups: Sequence[int], clips_per_group: int = 1,
    make: Callable[[int], np.ndarray] = identity_frames,
) -> dict[str, int]:  # fmt: skip
    """``<root>/<Class>/v_<Class>_gNN_cNN.avi`` for every class, group and clip; the frames of
    the i-th file written are ``make(i)``.  Returns ``{clip_id: i}``."""
    written: dict[str, int] = {}
    for cls in classes:
        for group in groups:
            for c in range(1, clips_per_group + 1):
                clip_id = f"v_{cls}_g{group:02d}_c{c:02d}"
                write_video(root / cls / f"{clip_id}.avi", make(len(written)))
                written[clip_id] = len(written)
    return written


def crema_d_tree(
    root: Path, actors: Sequence[int], emotions: Sequence[str], sentences: Sequence[str] = ("DFA",),
    make: Callable[[int], np.ndarray] = identity_frames,
) -> dict[str, int]:  # fmt: skip
    """``<root>/<Actor>_<Sentence>_<Emotion>_XX.mp4`` (libx264) for every actor, sentence and
    emotion; the frames of the i-th file written are ``make(i)``.  Returns ``{clip_id: i}``."""
    written: dict[str, int] = {}
    for actor in actors:
        for sentence in sentences:
            for emotion in emotions:
                clip_id = f"{actor}_{sentence}_{emotion}_XX"
                write_video(root / f"{clip_id}.mp4", make(len(written)), codec="libx264")
                written[clip_id] = len(written)
    return written


def birds_tree(
    root: Path, rows: Sequence[tuple[str, str, str]],
    make: Callable[[int], np.ndarray] = identity_frames,
) -> dict[str, int]:  # fmt: skip
    """``<root>/annotations.csv`` (clip_id, label, split and an extra ``subject`` column) and
    ``<root>/video/<clip_id>.avi`` for every ``(clip_id, label, split)`` row; the frames of the
    i-th clip are ``make(i)``.  Returns ``{clip_id: i}``."""
    root.mkdir(parents=True, exist_ok=True)
    lines = ["clip_id,label,split,subject"]
    written: dict[str, int] = {}
    for clip_id, label, split in rows:
        write_video(root / "video" / f"{clip_id}.avi", make(len(written)))
        written[clip_id] = len(written)
        lines.append(f"{clip_id},{label},{split},s{len(written)}")
    (root / "annotations.csv").write_text("\n".join(lines) + "\n")
    return written


#: The astronaut's face in scikit-image's ``astronaut()`` (512 x 512), read by eye from the
#: image: x0, y0, x1, y1 from the eyebrows to the chin, cheek to cheek.
ASTRONAUT_FACE = (178, 88, 268, 180)


def face_frames(
    num_frames: int = 10, height: int = 240, width: int = 320, photo: int = 192,
    background: int = 90,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """A real face photograph moving across a larger frame: scikit-image's astronaut (shipped in
    its wheel), resized to ``photo`` x ``photo`` and slid from the top-left corner to the
    bottom-right one over ``num_frames`` frames on a grey ``background``.  Returns the frames
    uint8 ``[T, height, width, 3]`` and the face's box per frame float ``[T, 4]`` (x0, y0, x1,
    y1 in frame pixels, from :data:`ASTRONAUT_FACE`)."""
    from skimage.data import astronaut
    from skimage.transform import resize

    image = (resize(astronaut(), (photo, photo), anti_aliasing=True) * 255).round()
    image = image.astype(np.uint8)
    frames = np.full((num_frames, height, width, 3), background, dtype=np.uint8)
    faces = np.empty((num_frames, 4))
    scale = photo / 512
    for t in range(num_frames):
        x = round(t * (width - photo) / max(num_frames - 1, 1))
        y = round(t * (height - photo) / max(num_frames - 1, 1))
        frames[t, y : y + photo, x : x + photo] = image
        faces[t] = np.array(ASTRONAUT_FACE) * scale + [x, y, x, y]
    return frames, faces


def no_face_frames(num_frames: int = 10, height: int = 240, width: int = 320) -> np.ndarray:
    """Frames without a face: a bright square moving over a textured grey background."""
    rng = np.random.default_rng(0)
    base = rng.integers(60, 120, size=(height, width, 1), dtype=np.uint8).repeat(3, axis=2)
    frames = np.repeat(base[None], num_frames, axis=0)
    for t in range(num_frames):
        frames[t, 40 : 100, 20 + 20 * t : 80 + 20 * t] = (230, 200, 40)
    return frames
