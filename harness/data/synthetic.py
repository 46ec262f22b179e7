"""Built-in synthetic BIRDS-like dataset (videos + wearable-style signals).

BIRDS is a multimodal risk-of-fall dataset for frail adults (videos plus wearable sensor
signals).  This module generates a small, deterministic stand-in that embodies the mechanism
explanation-guided training (ET) relies on: the class is only readable from fine detail in a
small moving region, which a model working at a low input resolution cannot see unless it is
shown a tight full-resolution crop of that region.

Video mechanism (all sizes in full-resolution pixels, ``f = downsample_factor``):

* Clips are stored at ``frame_size`` (default 96) and the model sees them downsampled by ``f``
  (default 3, i.e. 32x32) with f x f area averaging aligned to the pixel grid.
* The CLASS is carried by a sinusoidal grating of period ``f`` px (``texture_amplitude``)
  inside a square "actor" of side ``actor_size``.  Class ``c`` uses the frequency vectors
  ``GRATING_COMPONENTS[c]`` (see :func:`grating`): class 0 ``sin(2 pi x / f)``, class 1
  ``sin(2 pi y / f)``, class 2 ``sin(2 pi (x + y) / f)``, class 3 ``sin(2 pi (x - y) / f)``.
  Any frequency vector ``(a, b)`` that is not ``(0, 0)`` modulo ``f`` sums to zero over every
  f x f block, for every phase, so the texture vanishes EXACTLY at the model's resolution.
  The texture is only drawn on the f x f grid blocks that lie fully inside the square, so no
  partial block leaks it.  On the integer grid only ``(f**2 - 1) / 2`` grating orientations
  are distinct for odd ``f`` (4 for ``f = 3``: e.g. ``x + 2y`` equals ``x - y`` modulo 3), so
  classes 4..7 use equal-power SUMS of two of the base gratings (``(x, y)``, ``(x+y, x-y)``,
  ``(x, x+y)``, ``(y, x-y)``), each component with its own random phase; they remain
  pairwise distinguishable by their spectra at full resolution and vanish when averaged.
* The actor's WHEREABOUTS stay visible at low resolution: the actor is ``actor_brightness``
  brighter than the mid-grey ``background_level`` and it MOVES (random start, random direction,
  speed ``min_speed``..``max_speed`` px/frame, bouncing at the borders); the texture moves
  with it.  Everything else is static.
* A WEAK coarse class cue survives downsampling: the actor's colour tint.  Class ``c`` has an
  RGB tint of norm ``coarse_cue`` in the chroma plane (orthogonal to grey) at angle
  ``2 pi c / num_classes``; each clip adds independent Gaussian noise of std ``coarse_noise``
  per RGB channel to it.  With the defaults (0.04 vs 0.04, 4 classes) even a perfect tint
  reader is right only ~58 % of the time, so vanilla low-resolution training is above chance
  but far from perfect.
* Class-independent clutter: a static, smooth grey background (std ``clutter_amplitude``,
  Gaussian-interpolated from a ``clutter_grid`` x ``clutter_grid`` lattice),
  ``num_distractors`` static squares that look exactly like actors of random classes (same
  size, brightness, grating and tint of a random class; only motion tells the actor apart), and
  per-pixel per-frame noise of std ``pixel_noise`` (Gaussian, drawn as one of 256 equiprobable
  quantiles for speed, so it is truncated at about +-2.9 std).
* Objects occlude each other (distractors in order, the actor on top).  So that occlusion
  never leaves a partial block of texture, a texture is also removed from every f x f block
  that a covering object merely touches: at the model's resolution the stored frame equals the
  same frame without any texture up to uint8 rounding (<= 1/255 after averaging) and the rare
  clipped value (``background_level`` 0.35 keeps actor + texture + tint below 1).
* Values are clipped to [0, 1] and stored as uint8 ``[N, T, H, W, 3]``; the actor box per
  frame is stored as int16 ``[N, T, 4]`` = (top, left, bottom, right), bottom/right exclusive.

Signal mechanism: float32 ``[N, L, C]`` (``signal_length``, ``signal_channels``; channels
0-2 "accelerometer", 3-5 "gyroscope").  Each channel holds band-limited Gaussian noise (std
``signal_noise``, Gaussian low-pass of ``signal_smoothing`` samples) plus a slow sinusoidal
drift (amplitude up to ``signal_drift``); channel 2 (acc z) additionally holds a gravity-like
constant ``gravity``.  A class-specific event of ``event_length`` samples starts at
``event_start``: a Hann-windowed sinusoid with ``EVENT_CYCLES[c]`` cycles per event, random
phase, peak amplitude ``event_amplitude`` on a fixed class-specific channel weighting
(:func:`event_channel_weights`).

Splits are balanced: ``train_per_class`` / ``val_per_class`` / ``test_per_class`` clips per
class; clips are ordered train, val, test and shuffled within each split.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import ClassVar

import numpy as np

from harness.data.atomic import atomic_folder

__all__ = [
    "CLASS_NAMES",
    "EVENT_CYCLES",
    "GENERATOR_VERSION",
    "GRATING_COMPONENTS",
    "SPLIT_NAMES",
    "SyntheticArrays",
    "SyntheticSpec",
    "class_tints",
    "event_channel_weights",
    "generate",
    "grating",
    "load_or_generate",
]

#: Bump whenever the generator's output for a given spec changes (invalidates caches).
GENERATOR_VERSION = 1

#: Risk categories of the ET poster (BIRDS); a spec uses the first ``num_classes``.
CLASS_NAMES: tuple[str, ...] = (
    "no_risk",
    "risk_of_fall_action",
    "risk_of_fall_environment",
    "fall",
    "domestic_accident",
    "taking_medication",
    "glass_of_water",
    "risk_of_fraud",
)

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")

#: Per class, the grating components ``(a, b)``: ``sin(2 pi (a x + b y) / f + phase)``.
#: Classes with two components use each at weight ``1/sqrt(2)`` (equal total power).
GRATING_COMPONENTS: tuple[tuple[tuple[int, int], ...], ...] = (
    ((1, 0),),
    ((0, 1),),
    ((1, 1),),
    ((1, -1),),
    ((1, 0), (0, 1)),
    ((1, 1), (1, -1)),
    ((1, 0), (1, 1)),
    ((0, 1), (1, -1)),
)

#: Cycles of the class-specific signal event per ``event_length`` samples.
EVENT_CYCLES: tuple[float, ...] = (2.0, 3.0, 4.0, 5.0, 2.5, 3.5, 4.5, 5.5)

_MAX_CLASSES = len(CLASS_NAMES)
_CHUNK = 32  # clips rendered per vectorised chunk (fixed: part of the determinism contract)
_EVENT_WEIGHT_SEED = 20240917  # seed-independent class channel patterns


def _canonical_direction(a: int, b: int, f: int) -> tuple[int, int]:
    """Frequency ``(a, b)`` modulo ``f`` and sign (phases are random, so ``-k ~ k``)."""
    p = (a % f, b % f)
    q = ((-a) % f, (-b) % f)
    return min(p, q)


def _num_distinct_patterns(f: int) -> int:
    """How many of the classes in ``GRATING_COMPONENTS`` are distinct and non-vanishing at
    full resolution for downsampling factor ``f`` (a prefix count)."""
    seen: set[frozenset[tuple[int, int]]] = set()
    for count, comps in enumerate(GRATING_COMPONENTS):
        dirs = frozenset(_canonical_direction(a, b, f) for a, b in comps)
        if (0, 0) in dirs or len(dirs) != len(comps) or dirs in seen:
            return count
        seen.add(dirs)
    return len(GRATING_COMPONENTS)


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of the synthetic dataset (sizes in full-resolution pixels, intensities on
    a [0, 1] image; see the module docstring for what each one controls).

    Video: ``num_classes`` (2..8), ``num_frames`` T, ``frame_size`` H = W, ``downsample_factor``
    f (model input ``frame_size // f``), ``actor_size``, ``background_level`` (grey level),
    ``actor_brightness`` (offset of actor and distractors), ``texture_amplitude`` (class
    grating), ``coarse_cue`` / ``coarse_noise`` (class tint norm / per-clip tint noise std),
    ``clutter_amplitude`` / ``clutter_grid`` (static smooth background), ``num_distractors``,
    ``pixel_noise`` (per pixel and frame), ``min_speed`` / ``max_speed`` (px per frame).
    Signals: ``signal_length`` L, ``signal_channels`` C, ``signal_noise`` (std of band-limited
    noise), ``signal_smoothing`` (its Gaussian low-pass, samples), ``signal_drift``,
    ``gravity`` (constant on channel 2), ``event_length``, ``event_amplitude``.
    Splits: ``train_per_class``, ``val_per_class``, ``test_per_class``.  ``seed``.

    Numbers are normalised (ints to int, the rest to float) so equal specs share a ``key``;
    invalid values raise ``ValueError`` naming the field (``TypeError`` for non-numbers).
    """

    num_classes: int = 4
    num_frames: int = 8
    frame_size: int = 96
    downsample_factor: int = 3
    actor_size: int = 18
    background_level: float = 0.35
    actor_brightness: float = 0.25
    texture_amplitude: float = 0.25
    coarse_cue: float = 0.04
    coarse_noise: float = 0.04
    clutter_amplitude: float = 0.08
    clutter_grid: int = 6
    num_distractors: int = 3
    pixel_noise: float = 0.03
    min_speed: float = 1.0
    max_speed: float = 2.0
    signal_length: int = 256
    signal_channels: int = 6
    signal_noise: float = 0.5
    signal_smoothing: float = 1.5
    signal_drift: float = 0.3
    gravity: float = 1.0
    event_length: int = 32
    event_amplitude: float = 1.0
    train_per_class: int = 100
    val_per_class: int = 25
    test_per_class: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise TypeError(f"{field.name} must be a number, got {value!r}")
            if field.type in ("int", int):
                if float(value) != int(value):
                    raise ValueError(f"{field.name} must be an integer, got {value!r}")
                object.__setattr__(self, field.name, int(value))
            else:
                if not np.isfinite(value):
                    raise ValueError(f"{field.name} must be finite, got {value!r}")
                object.__setattr__(self, field.name, float(value))
        self._validate()

    def _validate(self) -> None:
        f = self.downsample_factor

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        need(f >= 2, f"downsample_factor must be >= 2, got {f}")
        need(
            2 <= self.num_classes <= _MAX_CLASSES,
            f"num_classes must be between 2 and {_MAX_CLASSES}, got {self.num_classes}",
        )
        distinct = _num_distinct_patterns(f)
        need(
            self.num_classes <= distinct,
            f"num_classes must be <= {distinct} for downsample_factor={f} "
            f"(distinct gratings), got {self.num_classes}",
        )
        need(self.num_frames >= 2, f"num_frames must be >= 2, got {self.num_frames}")
        need(self.frame_size > 0, f"frame_size must be > 0, got {self.frame_size}")
        need(
            self.frame_size % f == 0,
            f"frame_size must be a multiple of downsample_factor ({f}), got {self.frame_size}",
        )
        need(
            2 * f <= self.actor_size < self.frame_size,
            f"actor_size must be >= 2*downsample_factor ({2 * f}) and < frame_size "
            f"({self.frame_size}), got {self.actor_size}",
        )
        for name in (
            "background_level",
            "actor_brightness",
            "texture_amplitude",
            "coarse_cue",
            "coarse_noise",
            "clutter_amplitude",
            "pixel_noise",
            "signal_noise",
            "signal_drift",
            "event_amplitude",
            "min_speed",
        ):
            need(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        need(
            0 <= self.background_level <= 1,
            f"background_level must be in [0, 1], got {self.background_level}",
        )
        need(
            self.max_speed >= self.min_speed,
            f"max_speed must be >= min_speed ({self.min_speed}), got {self.max_speed}",
        )
        need(self.clutter_grid >= 2, f"clutter_grid must be >= 2, got {self.clutter_grid}")
        need(self.num_distractors >= 0, f"num_distractors must be >= 0, got {self.num_distractors}")
        need(self.signal_channels >= 1, f"signal_channels must be >= 1, got {self.signal_channels}")
        need(
            self.signal_smoothing > 0,
            f"signal_smoothing must be > 0, got {self.signal_smoothing}",
        )
        need(
            4 <= self.event_length <= self.signal_length,
            f"event_length must be >= 4 and <= signal_length ({self.signal_length}), "
            f"got {self.event_length}",
        )
        for name in ("train_per_class", "val_per_class", "test_per_class"):
            need(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}")
        need(self.seed >= 0, f"seed must be >= 0, got {self.seed}")

    @property
    def class_names(self) -> tuple[str, ...]:
        """Names of the ``num_classes`` classes."""
        return CLASS_NAMES[: self.num_classes]

    @property
    def model_size(self) -> int:
        """Side of the model input (``frame_size // downsample_factor``)."""
        return self.frame_size // self.downsample_factor

    @property
    def per_class_counts(self) -> dict[str, int]:
        """Clips per class in each split."""
        return {
            "train": self.train_per_class,
            "val": self.val_per_class,
            "test": self.test_per_class,
        }

    @property
    def num_clips(self) -> int:
        """Total number of clips over all splits."""
        return self.num_classes * sum(self.per_class_counts.values())

    def to_dict(self) -> dict[str, int | float]:
        """The fields as a plain dict."""
        return dataclasses.asdict(self)

    def key(self) -> str:
        """Short stable hash of the fields and ``GENERATOR_VERSION`` (cache folder names)."""
        payload = {"generator_version": GENERATOR_VERSION, **self.to_dict()}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True, eq=False)
class SyntheticArrays:
    """The generated dataset; arrays share the clip axis ``N``.

    Attributes:
        video: uint8 ``[N, T, H, W, 3]`` full-resolution clips.
        signal: float32 ``[N, L, C]`` wearable-style signals.
        label: int64 ``[N]`` class indices.
        split: ``<U5`` ``[N]`` split names ("train", "val", "test").
        actor_box: int16 ``[N, T, 4]`` actor box per frame (top, left, bottom, right),
            full-resolution pixels, bottom/right exclusive.
        event_start: int32 ``[N]`` first sample of the signal event.
        class_names: names of the classes.
    """

    video: np.ndarray
    signal: np.ndarray
    label: np.ndarray
    split: np.ndarray
    actor_box: np.ndarray
    event_start: np.ndarray
    class_names: tuple[str, ...]

    ARRAY_NAMES: ClassVar[tuple[str, ...]] = (
        "video",
        "signal",
        "label",
        "split",
        "actor_box",
        "event_start",
    )

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def split_indices(self, name: str) -> np.ndarray:
        """Indices (int64) of the clips in split ``name``."""
        if name not in SPLIT_NAMES:
            raise ValueError(f"split must be one of {SPLIT_NAMES}, got {name!r}")
        return np.flatnonzero(np.asarray(self.split) == name)


# ----------------------------------------------------------------------------- class patterns


def grating(
    cls: int,
    phases: np.ndarray | float | tuple[float, ...],
    height: int,
    width: int,
    factor: int,
) -> np.ndarray:
    """Pure texture of class ``cls`` (float64 ``[height, width]``, amplitude 1).

    ``phases`` holds (at least) one phase per component of ``GRATING_COMPONENTS[cls]``; extra
    entries are ignored and a scalar is used for all.  Pixel ``(y, x)`` uses coordinates
    relative to the top-left corner.
    """
    comps = GRATING_COMPONENTS[cls]
    ph = np.atleast_1d(np.asarray(phases, dtype=np.float64))
    ph = np.broadcast_to(ph, (len(comps),)) if ph.size == 1 else ph[: len(comps)]
    y = np.arange(height, dtype=np.float64)[:, None]
    x = np.arange(width, dtype=np.float64)[None, :]
    weight = 1.0 / np.sqrt(len(comps))
    out = np.zeros((height, width))
    for (a, b), p in zip(comps, ph, strict=True):
        out += weight * np.sin(2 * np.pi * (a * x + b * y) / factor + p)
    return out


def class_tints(num_classes: int, coarse_cue: float) -> np.ndarray:
    """RGB tint per class (float64 ``[K, 3]``): norm ``coarse_cue``, orthogonal to grey."""
    e1 = np.array([1.0, -1.0, 0.0]) / np.sqrt(2.0)
    e2 = np.array([1.0, 1.0, -2.0]) / np.sqrt(6.0)
    angle = 2 * np.pi * np.arange(num_classes) / num_classes
    return coarse_cue * (np.cos(angle)[:, None] * e1 + np.sin(angle)[:, None] * e2)


def event_channel_weights(num_classes: int, channels: int) -> np.ndarray:
    """Fixed, seed-independent channel weighting of each class's signal event
    (float64 ``[K, C]``, max abs 1 per class)."""
    rng = np.random.default_rng(_EVENT_WEIGHT_SEED)
    w = rng.uniform(-1.0, 1.0, size=(_MAX_CLASSES, max(channels, 1)))[:num_classes, :channels]
    if channels == 1:
        w = np.where(np.arange(num_classes)[:, None] % 2 == 0, 1.0, -1.0)
    return w / np.abs(w).max(axis=1, keepdims=True)


# ----------------------------------------------------------------------------- generation


def _labels_and_splits(spec: SyntheticSpec, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    labels, splits = [], []
    for name, count in spec.per_class_counts.items():
        lab = np.repeat(np.arange(spec.num_classes, dtype=np.int64), count)
        labels.append(lab[rng.permutation(lab.size)])
        splits.append(np.full(lab.size, name, dtype="<U5"))
    return np.concatenate(labels), np.concatenate(splits)


def _fold(p: np.ndarray, upper: float) -> np.ndarray:
    """Reflect positions into ``[0, upper]`` (bouncing at both ends)."""
    if upper <= 0:
        return np.zeros_like(p)
    q = np.mod(p, 2 * upper)
    return np.where(q > upper, 2 * upper - q, q)


def _draw_phases(rng: np.random.Generator, shape: tuple[int, ...], f: int) -> np.ndarray:
    if f == 2:  # sin(pi k + phi) = +-sin(phi): keep full contrast
        return np.pi / 2 + np.pi * rng.integers(0, 2, size=shape)
    return rng.uniform(0.0, 2 * np.pi, size=shape)


def _clutter_matrix(size: int, grid: int) -> np.ndarray:
    """Gaussian interpolation ``[size, grid + 2]`` with unit-L2 rows (unit pixel variance)."""
    spacing = size / grid
    centres = (np.arange(grid + 2) - 0.5) * spacing
    pos = np.arange(size) + 0.5
    m = np.exp(-0.5 * ((pos[:, None] - centres[None, :]) / spacing) ** 2)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def _grating_tables() -> tuple[np.ndarray, np.ndarray]:
    """Components ``[K_max, 2, 2]`` (a, b) and weights ``[K_max, 2]`` (0 for unused)."""
    comps = np.zeros((_MAX_CLASSES, 2, 2))
    weights = np.zeros((_MAX_CLASSES, 2))
    for c, cc in enumerate(GRATING_COMPONENTS):
        for k, ab in enumerate(cc):
            comps[c, k] = ab
            weights[c, k] = 1.0 / np.sqrt(len(cc))
    return comps, weights


def _full_blocks(start: np.ndarray, size: int, f: int) -> np.ndarray:
    """Per box start (shape S): mask ``[*S, size]`` of the offsets whose f-grid block lies
    fully inside ``[start, start + size)``."""
    absolute = start[..., None] + np.arange(size)
    block0 = (absolute // f) * f
    return (block0 >= start[..., None]) & (block0 + f <= start[..., None] + size)


def _patch_texture(
    cls: np.ndarray, phases: np.ndarray, top: np.ndarray, left: np.ndarray, spec: SyntheticSpec
) -> np.ndarray:
    """Class texture (amplitude 1) of boxes of shape S as float32 ``[*S, size, size]``, in
    box-relative coordinates and restricted to the f-grid blocks fully inside each box."""
    f, size = spec.downsample_factor, spec.actor_size
    comps, weights = _grating_tables()
    rel = np.arange(size, dtype=np.float64)
    full_y = _full_blocks(top, size, f)
    full_x = _full_blocks(left, size, f)
    tex = np.zeros(cls.shape + (size, size), dtype=np.float32)
    for k in range(2):
        w = weights[cls, k][..., None]
        u = 2 * np.pi * comps[cls, k, 0][..., None] * rel / f  # [*S, size] along x
        v = 2 * np.pi * comps[cls, k, 1][..., None] * rel / f + phases[..., k, None]
        wy_sin = (w * np.sin(v) * full_y).astype(np.float32)
        wy_cos = (w * np.cos(v) * full_y).astype(np.float32)
        sx = (np.sin(u) * full_x).astype(np.float32)
        cx = (np.cos(u) * full_x).astype(np.float32)
        tex += wy_cos[..., :, None] * sx[..., None, :] + wy_sin[..., :, None] * cx[..., None, :]
    return tex


def _noise_table(std: float) -> np.ndarray:
    """256 equiprobable Gaussian quantiles scaled to std ``std`` (float32): indexing it with
    random bytes gives (quantised, +-2.9 sigma) Gaussian noise much faster than sampling."""
    quantiles = np.array([NormalDist().inv_cdf((i + 0.5) / 256) for i in range(256)])
    return (std * quantiles / quantiles.std()).astype(np.float32)


def _pixel_rows(
    image: np.ndarray,
    top: np.ndarray,
    left: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    hw: int,
) -> np.ndarray:
    """Flat pixel indices ``[*S, len(rows), len(cols)]`` into images viewed as ``[-1, 3]``
    (``image`` = index of the image, ``top``/``left`` = box origin, all of shape S)."""
    yy = (top[..., None] + rows)[..., :, None]
    xx = (left[..., None] + cols)[..., None, :]
    return (image[..., None, None] * hw + yy) * hw + xx


def _paste(
    dst: np.ndarray, image: np.ndarray, top: np.ndarray, left: np.ndarray, values: np.ndarray
) -> None:
    """``dst[image, top:top+s, left:left+s] = values`` for every box at once, with ``dst``
    viewed as ``[-1, H, W, 3]``; ``values`` is ``[*top.shape, s, s, 3]``."""
    size, hw = values.shape[-2], dst.shape[-2]
    off = np.arange(size)
    flat = _pixel_rows(image, top, left, off, off, hw)
    dst.reshape(-1, 3)[flat.ravel()] = values.reshape(-1, 3)


def _untexture(
    dst: np.ndarray,
    image: np.ndarray,
    top: np.ndarray,
    left: np.ndarray,
    src: np.ndarray,
    src_image: np.ndarray,
    size: int,
    f: int,
) -> None:
    """Copy ``src`` into ``dst`` on every f-grid block that the box ``[top, top+size) x
    [left, left+size)`` touches (the box grown outwards to the grid).

    ``src`` is the same scene without textures: this removes the texture of any object that
    the box is about to partially cover, so textures always fill whole f x f blocks and
    therefore still vanish under f x f area averaging.  Images are addressed as in
    :func:`_paste`."""
    hw = dst.shape[-2]
    off = np.arange(-(f - 1), size + f - 1)

    def inside(start: np.ndarray) -> np.ndarray:
        coord = start[..., None] + off
        lo = (start[..., None] // f) * f
        hi = -((-(start[..., None] + size)) // f) * f
        return (coord >= lo) & (coord < hi)

    mask = inside(top)[..., :, None] & inside(left)[..., None, :]
    dst_rows = _pixel_rows(image, top, left, off, off, hw)[mask]
    src_rows = _pixel_rows(src_image, top, left, off, off, hw)[mask]
    dst.reshape(-1, 3)[dst_rows] = src.reshape(-1, 3)[src_rows]


def _generate_video(
    spec: SyntheticSpec,
    labels: np.ndarray,
    rng_layout: np.random.Generator,
    rng_noise: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    n, t_len, hw, size = labels.size, spec.num_frames, spec.frame_size, spec.actor_size
    f, k, d = spec.downsample_factor, spec.num_classes, spec.num_distractors
    span = hw - size
    tints = class_tints(k, spec.coarse_cue)
    base = spec.background_level + spec.actor_brightness

    # --- per-clip layout (drawn at once, in a fixed order) -----------------------------
    start = rng_layout.uniform(0.0, span, size=(n, 2))
    angle = rng_layout.uniform(0.0, 2 * np.pi, size=n)
    speed = rng_layout.uniform(spec.min_speed, spec.max_speed, size=n)
    actor_phase = _draw_phases(rng_layout, (n, 2), f)
    actor_tint_noise = rng_layout.normal(0.0, 1.0, size=(n, 3))
    dis_cls = rng_layout.integers(0, k, size=(n, d))
    dis_pos = rng_layout.integers(0, span + 1, size=(n, d, 2))
    dis_phase = _draw_phases(rng_layout, (n, d, 2), f)
    dis_tint_noise = rng_layout.normal(0.0, 1.0, size=(n, d, 3))
    clutter_ctrl = rng_layout.standard_normal((n, spec.clutter_grid + 2, spec.clutter_grid + 2))

    steps = np.arange(t_len, dtype=np.float64)
    vel = speed[:, None] * np.stack([np.sin(angle), np.cos(angle)], axis=1)  # (dy, dx)
    pos = start[:, None, :] + steps[None, :, None] * vel[:, None, :]
    pos = np.rint(_fold(pos, float(span))).astype(np.int64)  # [n, T, 2]
    boxes = np.concatenate([pos, pos + size], axis=2).astype(np.int16)

    # everything is rendered in units of 1/255 so the uint8 conversion is a rint + clip
    scale = 255.0
    actor_colour = scale * (base + tints[labels] + spec.coarse_noise * actor_tint_noise)
    dis_colour = scale * (base + tints[dis_cls] + spec.coarse_noise * dis_tint_noise)
    amp = np.float32(scale * spec.texture_amplitude)
    cm = _clutter_matrix(hw, spec.clutter_grid)
    table = _noise_table(scale * spec.pixel_noise)

    video = np.empty((n, t_len, hw, hw, 3), dtype=np.uint8)
    chunk = min(_CHUNK, n)
    frames_buf = np.empty((chunk, t_len, hw, hw, 3), dtype=np.float32)  # reused: no page faults
    noise_buf = np.empty_like(frames_buf) if spec.pixel_noise > 0 else frames_buf
    for lo in range(0, n, _CHUNK):
        sl = slice(lo, min(lo + _CHUNK, n))
        m = sl.stop - sl.start
        clip_idx = np.arange(m)
        clutter = np.einsum("hi,nij,wj->nhw", cm, clutter_ctrl[sl], cm, optimize=True)
        grey = scale * (spec.background_level + spec.clutter_amplitude * clutter)
        # the static scene with (``static``) and without (``plain``) textures
        plain = np.repeat(grey.astype(np.float32)[..., None], 3, axis=3)  # [m, H, W, 3]
        static = plain.copy()
        if d:
            dtex = _patch_texture(
                dis_cls[sl], dis_phase[sl], dis_pos[sl, :, 0], dis_pos[sl, :, 1], spec
            )
            dcol = np.broadcast_to(
                dis_colour[sl, :, None, None, :].astype(np.float32), dtex.shape + (3,)
            )
            dval = dcol + amp * dtex[..., None]
            for j in range(d):  # one at a time: later distractors cover earlier ones
                dtop, dleft = dis_pos[sl, j, 0], dis_pos[sl, j, 1]
                _paste(plain, clip_idx, dtop, dleft, dcol[:, j])
                _untexture(static, clip_idx, dtop, dleft, plain, clip_idx, size, f)
                _paste(static, clip_idx, dtop, dleft, dval[:, j])
        frames = frames_buf[:m]
        frames[...] = static[:, None]
        atop, aleft = pos[sl, :, 0], pos[sl, :, 1]
        image = clip_idx[:, None] * t_len + np.arange(t_len)[None, :]  # [m, T] in frames
        src_image = np.repeat(clip_idx[:, None], t_len, axis=1)  # [m, T] in plain
        _untexture(frames, image, atop, aleft, plain, src_image, size, f)
        atex = _patch_texture(
            np.repeat(labels[sl, None], t_len, axis=1),
            np.repeat(actor_phase[sl, None], t_len, axis=1),
            atop,
            aleft,
            spec,
        )
        aval = actor_colour[sl, None, None, None, :].astype(np.float32) + amp * atex[..., None]
        _paste(frames, image, atop, aleft, aval)
        if spec.pixel_noise > 0:
            noise_idx = np.frombuffer(rng_noise.bytes(frames.size), dtype=np.uint8)
            noise = noise_buf[:m]
            np.take(table, noise_idx.reshape(frames.shape), out=noise)
            frames += noise
        np.rint(frames, out=frames)
        np.clip(frames, 0.0, scale, out=frames)
        video[sl] = frames
    return video, boxes


def _generate_signal(
    spec: SyntheticSpec, labels: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    n, length, ch, ev = labels.size, spec.signal_length, spec.signal_channels, spec.event_length
    white = rng.standard_normal((n, ch, length))
    drift_freq = rng.uniform(0.25, 1.0, size=(n, ch, 1))
    drift_amp = rng.uniform(-1.0, 1.0, size=(n, ch, 1))
    drift_phase = rng.uniform(0.0, 2 * np.pi, size=(n, ch, 1))
    event_start = rng.integers(0, length - ev + 1, size=n)
    event_phase = rng.uniform(0.0, 2 * np.pi, size=n)

    # band-limited noise: circular convolution with a unit-L2 Gaussian kernel (unit variance)
    lag = np.minimum(np.arange(length), length - np.arange(length))
    kernel = np.exp(-0.5 * (lag / spec.signal_smoothing) ** 2)
    kernel /= np.linalg.norm(kernel)
    noise = np.fft.irfft(np.fft.rfft(white, axis=-1) * np.fft.rfft(kernel), n=length, axis=-1)
    t = np.arange(length, dtype=np.float64)
    drift = drift_amp * np.sin(2 * np.pi * drift_freq * t / length + drift_phase)
    sig = spec.signal_noise * noise + spec.signal_drift * drift
    if ch >= 3:
        sig[:, 2, :] += spec.gravity

    cycles = np.asarray(EVENT_CYCLES)[labels]
    i = np.arange(ev, dtype=np.float64)
    burst = np.hanning(ev)[None, :] * np.sin(
        2 * np.pi * cycles[:, None] * i[None, :] / ev + event_phase[:, None]
    )
    weights = event_channel_weights(spec.num_classes, ch)[labels]  # [n, C]
    idx = event_start[:, None] + np.arange(ev)[None, :]  # [n, E]
    event = spec.event_amplitude * weights[:, :, None] * burst[:, None, :]  # [n, C, E]
    rows = np.arange(n)[:, None, None]
    sig[rows, np.arange(ch)[None, :, None], idx[:, None, :]] += event
    return np.ascontiguousarray(sig.transpose(0, 2, 1), dtype=np.float32), event_start.astype(
        np.int32
    )


def generate(spec: SyntheticSpec) -> SyntheticArrays:
    """Generate the dataset for ``spec`` (deterministic in the spec, numpy only)."""
    seeds = np.random.SeedSequence([spec.seed, 0x5B1D5]).spawn(4)
    rng_split, rng_layout, rng_noise, rng_signal = (np.random.default_rng(s) for s in seeds)
    labels, splits = _labels_and_splits(spec, rng_split)
    video, boxes = _generate_video(spec, labels, rng_layout, rng_noise)
    signal, event_start = _generate_signal(spec, labels, rng_signal)
    return SyntheticArrays(
        video=video,
        signal=signal,
        label=labels,
        split=splits,
        actor_box=boxes,
        event_start=event_start,
        class_names=spec.class_names,
    )


# ----------------------------------------------------------------------------- cache


def _meta(spec: SyntheticSpec, arrays: SyntheticArrays) -> dict:
    counts = {
        name: np.bincount(
            np.asarray(arrays.label)[np.asarray(arrays.split) == name], minlength=spec.num_classes
        ).tolist()
        for name in SPLIT_NAMES
    }
    return {
        "synthetic": True,
        "generator_version": GENERATOR_VERSION,
        "key": spec.key(),
        "spec": spec.to_dict(),
        "class_names": list(arrays.class_names),
        "split_names": list(SPLIT_NAMES),
        "counts": counts,
        "num_clips": len(arrays),
        "shapes": {name: list(getattr(arrays, name).shape) for name in SyntheticArrays.ARRAY_NAMES},
    }


def _load(folder: Path) -> SyntheticArrays:
    meta = json.loads((folder / "meta.json").read_text())
    loaded = {
        name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in SyntheticArrays.ARRAY_NAMES
    }
    return SyntheticArrays(class_names=tuple(meta["class_names"]), **loaded)


def load_or_generate(spec: SyntheticSpec, cache_dir: str | Path) -> SyntheticArrays:
    """Return the dataset for ``spec`` from ``<cache_dir>/synthetic-<key>/``, generating and
    writing it first when absent.

    Arrays are opened with ``np.load(mmap_mode="r")`` so processes share pages.  Writing goes
    to a temporary folder in ``cache_dir`` that is renamed into place, so concurrent callers
    never see a partial cache; if another process wins the race, its copy is used.
    """
    cache_dir = Path(cache_dir)
    folder = cache_dir / f"synthetic-{spec.key()}"
    if (folder / "meta.json").is_file():
        return _load(folder)
    if folder.exists():
        raise RuntimeError(f"incomplete synthetic cache at {folder} (no meta.json); delete it")
    arrays = generate(spec)
    with atomic_folder(folder) as tmp:
        for name in SyntheticArrays.ARRAY_NAMES:
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(getattr(arrays, name)))
        (tmp / "meta.json").write_text(json.dumps(_meta(spec, arrays), indent=2) + "\n")
    return _load(folder)
