"""Decoding clips from video files: a fixed number of frames, resized to a square.

``read_clip(path, num_frames, size, sampling)`` returns ``uint8 [num_frames, size, size, 3]``
(RGB).  The policy, identical for every decoder:

* **Frame count.**  ``n`` = the number of frames the video has (decord: ``len(VideoReader)``;
  PyAV: the number of non-empty packets of the first video stream, corrected to the number of
  frames that actually decode when they differ).
* **Sampling** (:func:`sample_indices`; indices are 0-based positions in decoding order):

  - ``"uniform"`` (TSN-style, the default): the video is cut into ``num_frames`` equal segments
    and the centre frame of each is taken, ``index_i = floor((i + 0.5) * n / num_frames)``.
  - ``"center"``: ``num_frames`` consecutive frames from the middle of the video, starting at
    ``(n - num_frames) // 2``.
  - ``"random"`` is deliberately not offered: clips are decoded once into a cache shared by
    every trial, so sampling must be deterministic.

  A video with FEWER than ``num_frames`` frames is stretched by repeating frames: both policies
  then use the uniform formula, which takes every frame in order, each about
  ``num_frames / n`` times (e.g. 3 frames -> 8: ``0 0 0 1 1 2 2 2``).  Indices are always
  clamped to ``n - 1``.
* **Resizing**: the FULL frame is resized to ``size x size`` (no crop, the aspect ratio is not
  kept: a 320 x 240 frame is squeezed horizontally), bilinear with antialiasing (``torch``'s
  ``interpolate(mode="bilinear", antialias=True)``, the PIL-style filter: an area-like average
  when shrinking, plain bilinear when enlarging), rounded to uint8.  Frames already of the
  target size are returned unchanged.  ``size=None`` keeps the native resolution (the face
  crops of :mod:`harness.data.faces` are cut from it, then resized the same way).  We decode
  at the native resolution and resize ourselves (rather than ask decord to scale while
  decoding) so that every decoder gives the same pixels (decord's and PyAV's RGB frames agree
  exactly on our test files).  decord 0.6 fails to read
  some native frame sizes (e.g. 48 x 32: "The size must exactly match"): those files are read
  by PyAV.
* **Decoders**: decord (``decord.VideoReader`` + ``get_batch``) when it is installed, PyAV
  (``av``) otherwise (decord has no aarch64 wheels) and whenever decord fails on a file
  (``backend="auto"``); ``backend="decord"`` / ``"pyav"`` force one.  decord 0.6 can over-report
  the frame count of some containers: indices are clamped to ``len(vr) - 1`` and, when reading
  them fails, the frames that do decode are counted (sequential decoding) and the indices are
  sampled again from that count.  PyAV decodes sequentially and only converts the wanted frames.

Errors name the file: a missing file raises ``FileNotFoundError``; an empty, truncated or
otherwise unreadable file (or one without a decodable video frame) raises
``ValueError("cannot decode video <path>: <reason>")``.
"""

from __future__ import annotations

import errno
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "BACKENDS",
    "SAMPLING_POLICIES",
    "ClipRead",
    "decode_clip",
    "decord_available",
    "read_clip",
    "resize_frames",
    "sample_indices",
]

SAMPLING_POLICIES: tuple[str, ...] = ("uniform", "center")
BACKENDS: tuple[str, ...] = ("auto", "decord", "pyav")

_decord_lock = threading.Lock()
# decord's VideoReader constructor is not thread-safe: two opened at once in the cache's decoding
# threads aborted the process (`Fatal Python error: Aborted` in VideoReader.__init__, seen once in
# CI). Opening is serialised; the decoding (`get_batch`) still runs in parallel.
_decord_open_lock = threading.Lock()
_decord_module: object | None = None
_decord_checked = False


@dataclass(frozen=True)
class ClipRead:
    """What :func:`decode_clip` read: the frames and how they were obtained.

    ``available`` is the frame count the indices were sampled from; ``indices`` the frames
    taken (``len(indices) == num_frames``); ``backend`` the decoder that produced the frames;
    ``fallback`` why decord was not used (``None`` when it was, or when PyAV was requested).
    """

    frames: np.ndarray  # uint8 [T, size, size, 3] ([T, H, W, 3] native with size=None)
    indices: np.ndarray  # int64 [T]
    available: int
    backend: str
    fallback: str | None = None


def decord_available() -> bool:
    """Whether decord can be imported here (it has no wheels for aarch64, for one)."""
    return _decord() is not None


def _decord():
    global _decord_module, _decord_checked
    with _decord_lock:
        if not _decord_checked:
            try:
                import decord  # optional dependency, imported on first use
            except ImportError:
                decord = None
            _decord_module, _decord_checked = decord, True
    return _decord_module


def sample_indices(available: int, num_frames: int, sampling: str = "uniform") -> np.ndarray:
    """The frame indices (int64 ``[num_frames]``) taken from a video of ``available`` frames
    (see the module docstring for the policies)."""
    _check_sampling(sampling)
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if available < 1:
        raise ValueError(f"a video needs at least one frame, got {available}")
    if sampling == "center" and available >= num_frames:
        start = (available - num_frames) // 2
        return np.arange(start, start + num_frames, dtype=np.int64)
    idx = np.floor((np.arange(num_frames) + 0.5) * available / num_frames).astype(np.int64)
    return np.clip(idx, 0, available - 1)


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``[T, H, W, 3]`` -> uint8 ``[T, size, size, 3]``: the full frame, bilinear with
    antialiasing (unchanged when already ``size x size``)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames [T, H, W, 3], got shape {frames.shape}")
    if frames.shape[1] == size and frames.shape[2] == size:
        return np.ascontiguousarray(frames, dtype=np.uint8)
    import torch  # imported here to keep `import harness.data.video_io` light
    import torch.nn.functional as F

    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
        y = F.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        out = y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return np.ascontiguousarray(out.numpy())


def read_clip(
    path: str | os.PathLike,
    num_frames: int,
    size: int,
    sampling: str = "uniform",
    *,
    backend: str = "auto",
) -> np.ndarray:
    """``num_frames`` frames of the video at ``path``, resized to ``size x size``: uint8
    ``[num_frames, size, size, 3]`` RGB (policies in the module docstring)."""
    return decode_clip(path, num_frames, size, sampling, backend=backend).frames


def decode_clip(
    path: str | os.PathLike,
    num_frames: int,
    size: int | None,
    sampling: str = "uniform",
    *,
    backend: str = "auto",
) -> ClipRead:
    """:func:`read_clip` with the details (indices, frame count, decoder used); ``size=None``:
    the frames at their native resolution."""
    path = Path(path)
    _check_sampling(sampling)
    if isinstance(num_frames, bool) or int(num_frames) != num_frames or num_frames < 1:
        raise ValueError(f"num_frames must be an integer >= 1, got {num_frames!r}")
    if size is not None and (isinstance(size, bool) or int(size) != size or size < 1):
        raise ValueError(f"size must be an integer >= 1 or None, got {size!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    num_frames, size = int(num_frames), None if size is None else int(size)
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, f"video file not found: {path}", str(path))
    if not path.is_file():
        raise ValueError(f"cannot decode video {path}: not a regular file")
    if path.stat().st_size == 0:
        raise ValueError(f"cannot decode video {path}: empty file (0 bytes)")

    decord = _decord() if backend in ("auto", "decord") else None
    if backend == "decord" and decord is None:
        raise ModuleNotFoundError("backend='decord' was requested but decord is not installed")
    fallback = None
    if decord is not None:
        try:
            frames, indices, available = _read_decord(decord, path, num_frames, size, sampling)
            return ClipRead(frames, indices, available, "decord")
        except Exception as exc:  # decord raises bare RuntimeErrors/DECORDErrors
            if backend == "decord":
                raise ValueError(f"cannot decode video {path}: decord: {_brief(exc)}") from exc
            fallback = f"decord failed: {_brief(exc)}"
    elif backend == "auto":
        fallback = "decord is not installed"
    try:
        frames, indices, available = _read_pyav(path, num_frames, size, sampling)
    except Exception as exc:  # av.error.* and our ValueErrors alike
        reason = f"pyav: {_brief(exc)}"
        if fallback and fallback.startswith("decord failed"):
            reason = f"{fallback}; {reason}"
        raise ValueError(f"cannot decode video {path}: {reason}") from exc
    return ClipRead(frames, indices, available, "pyav", fallback)


def _check_sampling(sampling: str) -> None:
    if sampling == "random":
        raise ValueError(
            "sampling='random' is not supported: clips are decoded once into a shared cache, "
            f"so sampling must be deterministic; use one of {', '.join(SAMPLING_POLICIES)}"
        )
    if sampling not in SAMPLING_POLICIES:
        raise ValueError(
            f"sampling must be one of {', '.join(SAMPLING_POLICIES)}, got {sampling!r}"
        )


def _brief(exc: BaseException) -> str:
    """A one-line reason from a decoder exception (decord's carry a C++ stack trace)."""
    text = str(exc).strip() or type(exc).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # decord: "[time] /path/file.cc:123: <message>" then "Stack trace: ..."
    for line in lines:
        if line.startswith("Stack trace"):
            break
        text = line
    if "] " in text and text.startswith("["):
        text = text.split("] ", 1)[1]
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}"


def _fit(frames: np.ndarray, size: int | None) -> np.ndarray:
    """Frames resized to ``size`` (native, as decoded, with ``size=None``)."""
    return np.ascontiguousarray(frames) if size is None else resize_frames(frames, size)


# ----------------------------------------------------------------------------- decord


def _to_numpy(batch) -> np.ndarray:
    # decord returns its own NDArray with the default bridge, a tensor with another bridge
    if hasattr(batch, "asnumpy"):
        return batch.asnumpy()
    if hasattr(batch, "numpy"):
        return batch.numpy()
    return np.asarray(batch)


def _decord_decodable_length(decord, path: Path, limit: int) -> int:
    """How many frames decode from the start (sequential reads, at most ``limit``)."""
    vr = _open_decord(decord, path)
    count = 0
    try:
        vr.seek(0)
        while count < limit:
            vr.next()
            count += 1
    except Exception:  # StopIteration at the end, DECORDError on a bad frame
        pass
    return count


def _open_decord(decord, path: Path):
    """A one-thread decord VideoReader of `path`, opened under `_decord_open_lock`."""
    with _decord_open_lock:
        return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)


def _read_decord(
    decord, path: Path, num_frames: int, size: int | None, sampling: str
) -> tuple[np.ndarray, np.ndarray, int]:
    vr = _open_decord(decord, path)
    available = len(vr)
    if available < 1:
        raise ValueError("no video frames")
    indices = np.minimum(sample_indices(available, num_frames, sampling), available - 1)
    try:
        frames = _to_numpy(vr.get_batch(indices.tolist()))
    except Exception:  # over-reported length: re-sample from what decodes
        del vr
        decodable = _decord_decodable_length(decord, path, available)
        if decodable < 1 or decodable >= available:
            raise
        available = decodable
        indices = sample_indices(available, num_frames, sampling)
        vr = _open_decord(decord, path)
        frames = _to_numpy(vr.get_batch(indices.tolist()))
    if frames.ndim != 4 or frames.shape[0] != num_frames or frames.shape[-1] != 3:
        raise ValueError(f"decord returned frames of shape {frames.shape}")
    return _fit(frames, size), indices, available


# ----------------------------------------------------------------------------- PyAV


def _pyav_count_packets(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        return sum(1 for packet in container.demux(stream) if packet.size)


def _pyav_decode(
    path: Path, wanted: set[int], size: int | None
) -> tuple[dict[int, np.ndarray], int]:
    """Decode sequentially; convert (and resize) only the frames in ``wanted``.  Returns the
    converted frames and how many frames decoded (a decoding error ends the stream there)."""
    import av

    frames: dict[int, np.ndarray] = {}
    count = 0
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        stream.thread_count = 1
        try:
            for frame in container.decode(stream):
                if count in wanted:
                    rgb = frame.to_ndarray(format="rgb24")
                    frames[count] = _fit(rgb[None], size)[0]
                count += 1
        except av.error.FFmpegError:
            if count == 0:
                raise
            # a damaged tail: keep the frames that decoded
    return frames, count


def _read_pyav(
    path: Path, num_frames: int, size: int | None, sampling: str
) -> tuple[np.ndarray, np.ndarray, int]:
    available = _pyav_count_packets(path)
    frames: dict[int, np.ndarray] = {}
    decoded = -1
    if available >= 1:
        indices = sample_indices(available, num_frames, sampling)
        frames, decoded = _pyav_decode(path, set(indices.tolist()), size)
    if decoded != available:
        # the packet count was not the frame count (or nothing was demuxed): decode again
        # knowing the real count
        if decoded < 0:
            _, decoded = _pyav_decode(path, set(), size)
        if decoded < 1:
            raise ValueError("no decodable video frames")
        available = decoded
        indices = sample_indices(available, num_frames, sampling)
        frames, _ = _pyav_decode(path, set(indices.tolist()), size)
    missing = [i for i in indices.tolist() if i not in frames]
    if missing:
        raise ValueError(f"frames {missing[:5]} did not decode")
    return np.stack([frames[i] for i in indices.tolist()]), indices, available
