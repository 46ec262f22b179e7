"""Face crops of video clips: one square face box per clip, from a face detector that ships inside
its package (no download, ever).

The 001 seed cropped CREMA-D's faces with FaceNet's detector (MTCNN, facenet-pytorch) before
training its TimeSformer. facenet-pytorch needs torchvision, which this project does not depend
on, so the detector here is **OpenCV's Viola-Jones Haar cascade** for frontal faces
(``haarcascade_frontalface_default.xml``, shipped in the ``opencv-python-headless`` wheel under
``cv2.data.haarcascades``; OpenCV 5 dropped the cascades, hence ``opencv-python-headless<5``).
It needs no GPU and no weights beyond its XML file, and suits CREMA-D's frontal, evenly lit
studio faces; it misses profiles and strongly tilted heads, which CREMA-D's recordings
rarely show (not measured on CREMA-D here: the data cannot be fetched; the cache's counts and
the report's gallery show how it did). ``detector="haar_alt2"`` selects
``haarcascade_frontalface_alt2.xml``, another frontal-face cascade of the same package. A
detector is one function ``gray uint8 [H, W] -> (boxes float [n, 4] as x0, y0, x1, y1, scores
[n])`` registered in :data:`DETECTORS`.

:func:`crop_faces` turns the sampled frames of a clip (at their native resolution) into the
face crop, in these steps (``settings`` = :class:`FaceCropSettings`):

1. **Detect** on every sampled frame (grayscale, histogram-equalised; faces smaller than
   ``min_face`` x the frame's short side are not searched; scale step 1.1, 5 neighbours). The
   score of a detection is the cascade's last-stage level weight.
2. **Track**: the anchor is the highest-scoring detection of the clip (ties: the larger box,
   then the earlier frame). From the anchor's frame, forwards then backwards, each frame keeps
   the detection nearest to the last kept box, if its centre is within ``k`` x that box's side,
   ``k`` the number of sampled frames since that box, and its side within a factor 1.5 of it
   (other detections, e.g. a second face or a false positive, are ignored). Fewer than
   ``min_detected`` x T frames kept: the clip has **no face** (:class:`NoFaceError`).
3. **Fill and smooth**: frames without a kept box get the centre and side linearly interpolated
   between their neighbours (the nearest kept box at the ends); then centre and side are
   averaged over a centred window of ``smooth`` frames (shrunk at the ends).
4. **One box per clip**: the smallest square that holds every frame's smoothed box (centred on
   their union's bounding box, side = its longer edge), widened by ``margin`` x side on each
   side (side x (1 + 2 margin)), rounded to whole pixels (halves up).
5. **Crop and resize**: that square is cut from every sampled frame; parts of it outside the
   frame are black (the box is never shifted, so the face stays where the box puts it, which
   the facial regions of :mod:`harness.evaluate.trends` rely on); the crop is resized to the
   cache's ``size`` with :func:`~harness.data.video_io.resize_frames`.

A clip with no face follows ``no_face``: ``"bad_file"`` (it is a bad file: ``data.on_bad_file``
stops the study naming it, or skips it and lists it) or ``"whole_frame"`` (the whole frame is
kept, resized as without face crops, and the clip is listed as uncropped).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import numpy as np

from harness.data.video_io import resize_frames

__all__ = [
    "DETECTORS",
    "NO_FACE_POLICIES",
    "FaceCrop",
    "FaceCropSettings",
    "NoFaceError",
    "clip_box",
    "crop_box",
    "crop_faces",
    "detect_faces",
    "track_faces",
]

NO_FACE_POLICIES: tuple[str, ...] = ("bad_file", "whole_frame")
_MAX_JUMP = 1.0  # a tracked box moves at most this share of its side per sampled frame
_MAX_SCALE = 1.5  # ... and changes its side by at most this factor

Detector = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


class NoFaceError(ValueError):
    """No face track in a clip (the message names the file and how many frames had one)."""


@dataclass(frozen=True)
class FaceCropSettings:
    """``data.face_crop`` (see the module docstring for what each value does)."""

    enabled: bool = False
    detector: str = "haar_default"
    margin: float = 0.25
    smooth: int = 3
    min_face: float = 0.1
    min_detected: float = 0.5
    no_face: str = "bad_file"

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any] | None, where: str = "data.face_crop"
    ) -> FaceCropSettings:
        """Settings from a config mapping (missing keys: the defaults); ValueError naming
        ``where.<key>``, the value and what was expected."""
        config = dict(config or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(
                f"{where}.{unknown[0]}: expected one of the keys {', '.join(sorted(known))}"
            )
        settings = cls(**config)
        checks = [
            ("enabled", isinstance(settings.enabled, bool), "true or false"),
            ("detector", settings.detector in DETECTORS, f"one of {', '.join(DETECTORS)}"),
            ("margin", _number(settings.margin) and 0 <= settings.margin <= 1, "in [0, 1]"),
            ("smooth", _whole(settings.smooth) and settings.smooth >= 1, "an integer >= 1"),
            ("min_face", _number(settings.min_face) and 0 < settings.min_face <= 1, "in (0, 1]"),
            ("min_detected", _number(settings.min_detected) and 0 < settings.min_detected <= 1,
             "a share of the sampled frames in (0, 1]"),
            ("no_face", settings.no_face in NO_FACE_POLICIES, " or ".join(NO_FACE_POLICIES)),
        ]  # fmt: skip
        for key, ok, expected in checks:
            if not ok:
                raise ValueError(f"{where}.{key}: expected {expected}, got {config[key]!r}")
        return settings

    def key(self) -> dict[str, Any] | None:
        """What the cache key holds of these settings (None when disabled), with the OpenCV
        version (another OpenCV may find other boxes)."""
        if not self.enabled:
            return None
        import cv2

        return {**asdict(self), "opencv": cv2.__version__}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ----------------------------------------------------------------------------- detectors

_cascades = threading.local()  # one classifier per thread (the cache decodes in threads)


def _haar(gray: np.ndarray, min_side: int, cascade: str) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's Haar cascade ``cascade`` (a file of ``cv2.data.haarcascades``)."""
    import cv2

    classifiers = _cascades.__dict__.setdefault("by_name", {})
    if cascade not in classifiers:
        classifier = cv2.CascadeClassifier(cv2.data.haarcascades + cascade)
        if classifier.empty():
            raise RuntimeError(f"OpenCV could not load {cv2.data.haarcascades + cascade}")
        classifiers[cascade] = classifier
    boxes, _, weights = classifiers[cascade].detectMultiScale3(
        cv2.equalizeHist(gray), scaleFactor=1.1, minNeighbors=5,
        minSize=(min_side, min_side), outputRejectLevels=True,
    )  # fmt: skip
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]  # x, y, w, h -> x0, y0, x1, y1
    return boxes, np.asarray(weights, dtype=np.float64).reshape(-1)


DETECTORS: dict[str, Detector] = {
    "haar_default": partial(_haar, cascade="haarcascade_frontalface_default.xml"),
    "haar_alt2": partial(_haar, cascade="haarcascade_frontalface_alt2.xml"),
}


def detect_faces(
    frames: np.ndarray, detector: str = "haar_default", min_face: float = 0.1
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per frame of uint8 ``[T, H, W, 3]`` RGB: ``(boxes [n, 4] x0 y0 x1 y1, scores [n])``."""
    import cv2

    if detector not in DETECTORS:
        raise ValueError(f"detector must be one of {', '.join(DETECTORS)}, got {detector!r}")
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames [T, H, W, 3], got shape {frames.shape}")
    min_side = max(1, int(round(min_face * min(frames.shape[1:3]))))
    detect = DETECTORS[detector]
    return [
        detect(cv2.cvtColor(np.ascontiguousarray(f, dtype=np.uint8), cv2.COLOR_RGB2GRAY), min_side)
        for f in frames
    ]


# ----------------------------------------------------------------------------- track and box


def _centre_side(box: np.ndarray) -> np.ndarray:
    """x0 y0 x1 y1 -> cx, cy, side (the longer edge)."""
    return np.array(
        [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2, max(box[2] - box[0], box[3] - box[1])]
    )


def track_faces(
    detections: list[tuple[np.ndarray, np.ndarray]], smooth: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """The face track of a clip: ``(track float [T, 3] of cx, cy, side per frame, filled and
    smoothed; kept bool [T], the frames whose own detection joined the track)`` (steps 2-3 of the
    module docstring). No detection at all: ``NoFaceError``."""
    T = len(detections)
    candidates = [(s, (b[2] - b[0]) * (b[3] - b[1]), -t, t, i)
                  for t, (boxes, scores) in enumerate(detections)
                  for i, (b, s) in enumerate(zip(boxes, scores))]  # fmt: skip
    if not candidates:
        raise NoFaceError(f"no face detected in any of the {T} sampled frames")
    *_, t0, i0 = max(candidates)
    raw = np.full((T, 3), np.nan)
    raw[t0] = _centre_side(detections[t0][0][i0])
    for order in (range(t0 + 1, T), range(t0 - 1, -1, -1)):
        last, t_last = raw[t0], t0
        for t in order:
            boxes = detections[t][0]
            if len(boxes) == 0:
                continue
            cs = np.stack([_centre_side(b) for b in boxes])
            distance = np.hypot(cs[:, 0] - last[0], cs[:, 1] - last[1])
            j = int(np.argmin(distance))
            ratio = cs[j, 2] / last[2]
            reach = _MAX_JUMP * last[2] * abs(t - t_last)
            if distance[j] <= reach and 1 / _MAX_SCALE <= ratio <= _MAX_SCALE:
                raw[t] = last = cs[j]
                t_last = t
    kept = ~np.isnan(raw[:, 0])
    frames = np.arange(T)
    filled = np.stack(
        [np.interp(frames, frames[kept], raw[kept, c]) for c in range(3)], axis=1
    )  # np.interp holds the end values: the nearest kept box at the ends
    half = int(smooth) // 2
    track = np.stack([filled[max(0, t - half) : t + half + 1].mean(0) for t in range(T)])
    return track, kept


def clip_box(track: np.ndarray, margin: float) -> tuple[int, int, int]:
    """The clip's square box ``(x0, y0, side)`` in pixels: the smallest square holding every
    frame's box of ``track`` [T, 3] (cx, cy, side), widened by ``margin`` x side on each side."""
    track = np.asarray(track, dtype=np.float64)
    x0 = (track[:, 0] - track[:, 2] / 2).min()
    x1 = (track[:, 0] + track[:, 2] / 2).max()
    y0 = (track[:, 1] - track[:, 2] / 2).min()
    y1 = (track[:, 1] + track[:, 2] / 2).max()
    side = max(x1 - x0, y1 - y0) * (1 + 2 * float(margin))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    size = max(1, int(np.floor(side + 0.5)))  # whole pixels, halves rounded up
    return int(np.floor(cx - size / 2 + 0.5)), int(np.floor(cy - size / 2 + 0.5)), size


def crop_box(frames: np.ndarray, box: tuple[int, int, int]) -> np.ndarray:
    """uint8 ``[T, H, W, 3]`` -> ``[T, side, side, 3]``: the square ``box`` (x0, y0, side), black
    where it leaves the frame."""
    x0, y0, side = box
    T, H, W, C = frames.shape
    out = np.zeros((T, side, side, C), dtype=frames.dtype)
    fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x0 + side, W), min(y0 + side, H)
    if fx1 > fx0 and fy1 > fy0:
        out[:, fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0] = frames[:, fy0:fy1, fx0:fx1]
    return out


@dataclass(frozen=True)
class FaceCrop:
    """What :func:`crop_faces` made of a clip: ``frames`` uint8 [T, size, size, 3]; ``box``
    (x0, y0, side) in the native frame's pixels, None for a whole-frame clip; ``track`` [T, 3]
    (cx, cy, side; None without a face); ``detected`` frames whose detection joined the track;
    ``frame_size`` the native (width, height)."""

    frames: np.ndarray
    box: tuple[int, int, int] | None
    track: np.ndarray | None
    detected: int
    frame_size: tuple[int, int]


def crop_faces(
    frames: np.ndarray, settings: FaceCropSettings, size: int, source: str = "clip"
) -> FaceCrop:
    """The face crop of a clip's sampled native-resolution frames uint8 ``[T, H, W, 3]``,
    resized to ``size`` (module docstring). A clip without a face track raises
    :class:`NoFaceError` naming ``source``, unless ``settings.no_face == "whole_frame"``."""
    frames = np.asarray(frames)
    T, H, W = frames.shape[:3]
    detections = detect_faces(frames, settings.detector, settings.min_face)
    try:
        track, kept = track_faces(detections, settings.smooth)
        needed = int(np.ceil(settings.min_detected * T - 1e-9))
        if kept.sum() < needed:
            raise NoFaceError(
                f"a face in only {int(kept.sum())} of the {T} sampled frames (data.face_crop."
                f"min_detected={settings.min_detected} asks for {needed})"
            )
    except NoFaceError as error:
        if settings.no_face == "whole_frame":
            return FaceCrop(resize_frames(frames, size), None, None, 0, (W, H))
        raise NoFaceError(f"no face found in {source}: {error} ({settings.detector})") from None
    box = clip_box(track, settings.margin)
    return FaceCrop(resize_frames(crop_box(frames, box), size), box, track, int(kept.sum()), (W, H))
