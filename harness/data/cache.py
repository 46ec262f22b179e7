"""Decode-once cache of a real dataset: every clip decoded a single time into one memory-mappable
array that every trial shares.

``build_video_cache(samples, num_frames, size, sampling, cache_root, key_extra)`` writes::

    <cache_root>/<name>-<key>/
        video.npy     uint8 [N, num_frames, size, size, 3]  (read_clip's policy, see video_io)
        labels.npy    int64 [N]   index into meta.json's class_names
        split.npy     <U5 [N]     train / val / test
        signal.npy    float32 [N, signal_length, C]  (only when signal_length is given)
        index.csv     clip_id, label, split, group, path, signal_path (row order of the arrays)
        meta.json     settings, class names, counts per split and class, which decoder read
                      which clip, clips shorter than num_frames, dropped clips
        face_boxes.csv   with face crops: clip_id, path, frame_width, frame_height, x0, y0,
                      side (the clip's square box in native pixels, empty for a whole-frame
                      clip), detected (frames whose detection joined the track), status
                      (cropped | whole_frame)
        face_tracks.npy  with face crops: float32 [N, num_frames, 3], the smoothed track (cx,
                      cy, side per frame; NaN for a whole-frame clip)

and returns the folder; :func:`load_video_cache` opens it (arrays memory-mapped, read-only).

``key`` = the first 16 hex digits of a SHA-256 over: the cache format version, every sample's
(clip id, label, split, group, absolute path, size, mtime) and its signal's, the class names,
``num_frames``, ``size``, ``sampling``, the decoder choice, the signal settings, ``on_bad_file``,
the face-crop settings (with the OpenCV version; none without face crops) and ``key_extra``
(anything JSON-able the caller wants in the key, e.g. the layout options; mappings and
sequences compare by content, whatever their type).  A changed, added or removed
file or setting therefore gives a new folder; an existing complete folder is used as it is (no
decoding).  Writing goes to a temporary folder next to the final one that is renamed into
place, so readers never see a partial cache; if another process renamed its copy first, that
copy is used.  Clips are decoded by ``workers`` threads (decord, PyAV and
torch release the GIL), each writing its own row of the memory-mapped output.

With ``face_crop`` (:class:`~harness.data.faces.FaceCropSettings`, enabled) each clip's frames are
decoded at their native resolution, cut to the clip's square face box and resized to ``size``
(:func:`~harness.data.faces.crop_faces`); a clip without a face is a bad file like one that does
not decode (``on_bad_file``), or is kept whole (``face_crop.no_face="whole_frame"``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from harness.data.atomic import atomic_folder
from harness.data.faces import FaceCrop, FaceCropSettings, NoFaceError, crop_faces
from harness.data.folders import (
    SPLITS,
    DatasetError,
    DatasetIndex,
    Sample,
    Skipped,
    fit_length,
    index_folder,
    read_signal,
)
from harness.data.video_io import BACKENDS, decode_clip, sample_indices

__all__ = [
    "CACHE_VERSION",
    "CachedVideo",
    "build_video_cache",
    "cache_key",
    "load_video_cache",
    "open_folder_dataset",
]

#: Bump whenever the cached content for the same inputs changes (invalidates caches).
CACHE_VERSION = 1
_ARRAYS = ("video", "labels", "split")
_ABORT_AFTER = 20  # consecutive failures with no success: stop decoding (a broken set-up)


@dataclass(frozen=True)
class CachedVideo:
    """An opened cache: arrays are read-only memory maps."""

    folder: Path
    video: np.ndarray  # uint8 [N, T, S, S, 3]
    labels: np.ndarray  # int64 [N]
    split: np.ndarray  # <U5 [N]
    class_names: tuple[str, ...]
    clip_ids: tuple[str, ...]
    groups: tuple[str | None, ...]
    meta: dict
    signal: np.ndarray | None = None  # float32 [N, L, C]

    def __len__(self) -> int:
        return int(self.video.shape[0])


class _Read(NamedTuple):
    backend: str
    available: int
    fallback: str | None
    face: FaceCrop | None = None


def _samples_and_classes(
    samples: DatasetIndex | Sequence[Sample], class_names: Sequence[str] | None
) -> tuple[list[Sample], tuple[str, ...], str]:
    if isinstance(samples, DatasetIndex):
        classes = tuple(class_names) if class_names is not None else samples.class_names
        name = f"{samples.layout}-{samples.root.name}"
        samples = list(samples.samples)
    else:
        samples = list(samples)
        if class_names is not None:
            classes = tuple(class_names)
        else:
            classes = tuple(sorted({s.label for s in samples}))
        name = "video"
    if not samples:
        raise ValueError("no samples to cache")
    unknown = sorted({s.label for s in samples} - set(classes))
    if unknown:
        raise ValueError(f"labels {unknown} are not in the class names {list(classes)}")
    bad_split = sorted({s.split for s in samples} - set(SPLITS))
    if bad_split:
        raise ValueError(f"split values {bad_split} are not in {list(SPLITS)}")
    no_video = [s.clip_id for s in samples if s.path is None]
    if no_video:
        raise ValueError(
            f"{len(no_video)} samples have no video file (e.g. {no_video[0]!r}): a video cache "
            "needs modality 'video' or 'both'"
        )
    return samples, classes, name


def _file_stamp(path: Path | None) -> list | None:
    if path is None:
        return None
    path = Path(path).absolute()
    st = path.stat()  # FileNotFoundError names the path
    return [str(path), st.st_size, st.st_mtime_ns]


def cache_key(
    samples: DatasetIndex | Sequence[Sample],
    num_frames: int,
    size: int,
    sampling: str,
    key_extra: Any = None,
    *,
    class_names: Sequence[str] | None = None,
    backend: str = "auto",
    signal_length: int | None = None,
    signal_policy: str = "resample",
    on_bad_file: str = "error",
    face_crop: FaceCropSettings | None = None,
) -> str:
    """The 16-hex-digit key of a cache (see the module docstring for what goes in)."""
    rows, classes, _ = _samples_and_classes(samples, class_names)
    return _key(
        rows,
        classes,
        num_frames=num_frames,
        size=size,
        sampling=sampling,
        key_extra=key_extra,
        backend=backend,
        signal_length=signal_length,
        signal_policy=signal_policy,
        on_bad_file=on_bad_file,
        face_crop=face_crop,
    )


def _key(
    rows: list[Sample],
    classes: tuple[str, ...],
    *,
    num_frames: int,
    size: int,
    sampling: str,
    key_extra: Any,
    backend: str,
    signal_length: int | None,
    signal_policy: str,
    on_bad_file: str,
    face_crop: FaceCropSettings | None,
) -> str:
    material = {
        "version": CACHE_VERSION,
        "samples": [
            [s.clip_id, s.label, s.split, s.group, _file_stamp(s.path), _file_stamp(s.signal_path)]
            for s in rows
        ],
        "class_names": list(classes),
        "num_frames": int(num_frames),
        "size": int(size),
        "sampling": sampling,
        "backend": backend,
        "signal": None if signal_length is None else [int(signal_length), signal_policy],
        "on_bad_file": on_bad_file,
        "face_crop": face_crop.key() if face_crop is not None else None,
        "key_extra": _plain(key_extra),
    }
    blob = json.dumps(material, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _plain(value: Any) -> Any:
    """``value`` with every mapping a dict and every non-string sequence a list (so that an
    OmegaConf config and the plain dict a trial receives give the same key)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [_plain(v) for v in value]
    return value


def build_video_cache(
    samples: DatasetIndex | Sequence[Sample],
    num_frames: int,
    size: int,
    sampling: str,
    cache_root: str | os.PathLike,
    key_extra: Any = None,
    *,
    name: str | None = None,
    class_names: Sequence[str] | None = None,
    workers: int = 2,
    backend: str = "auto",
    signal_length: int | None = None,
    signal_policy: str = "resample",
    on_bad_file: str = "error",
    face_crop: FaceCropSettings | None = None,
    progress: Callable[[int, int, Sample], None] | None = None,
) -> Path:
    """Decode every sample's clip once into ``<cache_root>/<name>-<key>/`` and return that
    folder (an existing complete one is returned without decoding anything).

    ``samples``: a :class:`DatasetIndex` (its class names and ``<layout>-<root name>`` as the
    default ``name``) or a sequence of :class:`Sample` (classes: sorted unique labels unless
    ``class_names``).  ``signal_length``: also store every sample's signal brought to that
    length by ``signal_policy`` (see :func:`fit_length`).  ``on_bad_file``: ``"error"`` raises a
    ``ValueError`` listing every clip that failed to decode (after trying them all, unless the
    first 20 all fail); ``"skip"`` drops those clips (listed in meta.json's ``dropped``).
    ``face_crop``: cut every clip to its face (see the module docstring; a clip without a face
    counts as a failure, unless ``face_crop.no_face == "whole_frame"``).
    ``progress(done, total, sample)`` is called as each clip is decoded (``done`` counts up to
    ``total``)."""
    rows, classes, default_name = _samples_and_classes(samples, class_names)
    sample_indices(max(1, num_frames), num_frames, sampling)  # validates num_frames / sampling
    if isinstance(size, bool) or int(size) != size or size < 1:
        raise ValueError(f"size must be an integer >= 1, got {size!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if on_bad_file not in ("error", "skip"):
        raise ValueError(f"on_bad_file must be 'error' or 'skip', got {on_bad_file!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if face_crop is not None and not face_crop.enabled:
        face_crop = None
    if signal_length is not None:
        fit_length(np.zeros((1, 1), np.float32), signal_length, signal_policy)  # validates
        no_signal = [s.clip_id for s in rows if s.signal_path is None]
        if no_signal:
            raise ValueError(
                f"signal_length is set but {len(no_signal)} samples have no signal file "
                f"(e.g. {no_signal[0]!r})"
            )
    key = _key(
        rows,
        classes,
        num_frames=num_frames,
        size=size,
        sampling=sampling,
        key_extra=key_extra,
        backend=backend,
        signal_length=signal_length,
        signal_policy=signal_policy,
        on_bad_file=on_bad_file,
        face_crop=face_crop,
    )
    label = re.sub(r"[^A-Za-z0-9._-]+", "_", name or default_name).strip("._") or "video"
    cache_root = Path(cache_root).expanduser()
    folder = cache_root / f"{label}-{key}"
    if (folder / "meta.json").is_file():
        return folder
    if folder.exists():
        raise RuntimeError(f"incomplete video cache at {folder} (no meta.json); delete it")
    with atomic_folder(folder) as tmp:
        _write(
            tmp,
            rows,
            classes,
            num_frames=int(num_frames),
            size=int(size),
            sampling=sampling,
            backend=backend,
            workers=workers,
            signal_length=signal_length,
            signal_policy=signal_policy,
            on_bad_file=on_bad_file,
            face_crop=face_crop,
            progress=progress,
            header={"key": key, "name": label, "key_extra": _plain(key_extra)},
        )
    return folder


def _write(
    tmp: Path,
    rows: list[Sample],
    classes: tuple[str, ...],
    *,
    num_frames: int,
    size: int,
    sampling: str,
    backend: str,
    workers: int,
    signal_length: int | None,
    signal_policy: str,
    on_bad_file: str,
    face_crop: FaceCropSettings | None,
    progress: Callable[[int, int, Sample], None] | None,
    header: Mapping[str, Any],
) -> None:
    started = time.time()
    signals = None
    if signal_length is not None:  # cheap, and its errors should come before any decoding
        signals = [
            fit_length(read_signal(s.signal_path), signal_length, signal_policy) for s in rows
        ]
        widths = {sig.shape[1] for sig in signals}
        if len(widths) > 1:
            raise ValueError(f"signals have different channel counts: {sorted(widths)}")

    n = len(rows)
    video = np.lib.format.open_memmap(
        tmp / "video.npy", mode="w+", dtype=np.uint8, shape=(n, num_frames, size, size, 3)
    )
    reads: dict[int, _Read] = {}
    failures: dict[int, str] = {}
    no_face: set[int] = set()  # the failures that are clips without a face

    def work(i: int, out: np.ndarray = video) -> _Read:
        native = face_crop is not None
        read = decode_clip(rows[i].path, num_frames, None if native else size, sampling,
                           backend=backend)  # fmt: skip
        face = crop_faces(read.frames, face_crop, size, str(rows[i].path)) if native else None
        out[i] = read.frames if face is None else face.frames  # each worker writes its own row
        return _Read(read.backend, read.available, read.fallback, face)

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="video-cache")
    try:
        futures = {pool.submit(work, i): i for i in range(n)}
        for done, future in enumerate(as_completed(futures), start=1):
            i = futures[future]
            try:
                read = future.result()
            except (ValueError, OSError) as exc:
                failures[i] = str(exc)
                if isinstance(exc, NoFaceError):
                    no_face.add(i)
                if not reads and len(failures) >= _ABORT_AFTER:
                    for f in futures:
                        f.cancel()
                    break
                continue
            reads[i] = read
            if progress is not None:
                progress(done, n, rows[i])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    video.flush()
    del work, video  # close the memory map before the file is compacted or renamed

    if failures and (on_bad_file == "error" or not reads):
        listed = [f"  - {msg}" for _, msg in sorted(failures.items())[:25]]
        if len(failures) > 25:
            listed.append(f"  ... and {len(failures) - 25} more")
        aborted = ""
        if len(failures) + len(reads) < n:
            aborted = f" (stopped after the first {len(failures)} clips all failed)"
        hint = "" if on_bad_file == "skip" else "; on_bad_file='skip' skips and lists them"
        if no_face:
            hint += "; face_crop.no_face='whole_frame' keeps a clip without a face uncropped"
        broken = len(failures) - len(no_face)
        what = "could not be decoded" if not no_face else "have no face" if not broken else (
            f"could not be used ({broken} not decodable, {len(no_face)} without a face)"
        )  # fmt: skip
        raise ValueError(
            f"{len(failures)} of {n} clips {what}{aborted}{hint}:\n" + "\n".join(listed)
        )
    keep = [i for i in range(n) if i in reads]
    if failures:
        _compact(tmp / "video.npy", keep)
    kept_rows = [rows[i] for i in keep]

    lookup = {c: i for i, c in enumerate(classes)}
    labels = np.array([lookup[s.label] for s in kept_rows], dtype=np.int64)
    split = np.array([s.split for s in kept_rows], dtype="<U5")
    np.save(tmp / "labels.npy", labels)
    np.save(tmp / "split.npy", split)
    if signals is not None:
        np.save(tmp / "signal.npy", np.stack([signals[i] for i in keep]).astype(np.float32))
    with open(tmp / "index.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["clip_id", "label", "split", "group", "path", "signal_path"])
        for s in kept_rows:
            writer.writerow(
                [s.clip_id, s.label, s.split, s.group or "", s.path or "", s.signal_path or ""]
            )

    decoders: dict[str, int] = {}
    for i in keep:
        decoders[reads[i].backend] = decoders.get(reads[i].backend, 0) + 1
    meta = {
        **header,
        "version": CACHE_VERSION,
        "synthetic": False,
        "num_clips": len(keep),
        "num_frames": num_frames,
        "size": size,
        "sampling": sampling,
        "backend": backend,
        "signal_length": signal_length,
        "signal_policy": signal_policy if signal_length is not None else None,
        "class_names": list(classes),
        "split_names": list(SPLITS),
        "counts": {
            name: np.bincount(labels[split == name], minlength=len(classes)).tolist()
            for name in SPLITS
        },
        "shapes": {"video": [len(keep), num_frames, size, size, 3]},
        "decoders": decoders,
        "fallbacks": [
            {"clip_id": rows[i].clip_id, "reason": reads[i].fallback}
            for i in keep
            if reads[i].fallback and reads[i].fallback.startswith("decord failed")
        ],
        "short_clips": [
            {"clip_id": rows[i].clip_id, "frames": reads[i].available}
            for i in keep
            if reads[i].available < num_frames
        ],
        "dropped": [
            {"clip_id": rows[i].clip_id, "path": str(rows[i].path), "reason": msg,
             "kind": "no_face" if i in no_face else "decode"}
            for i, msg in sorted(failures.items())
        ],  # fmt: skip
        "face_crop": None,
        "decode_seconds": round(time.time() - started, 3),
    }
    if face_crop is not None:
        faces = [reads[i].face for i in keep]
        meta["face_crop"] = {
            **face_crop.key(),
            "cropped": sum(f.box is not None for f in faces),
            "whole_frame": [rows[i].clip_id for i, f in zip(keep, faces) if f.box is None],
            "dropped_no_face": len(no_face),
        }
        _write_faces(tmp, kept_rows, faces, num_frames)
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")


FACE_COLUMNS = ("clip_id", "path", "frame_width", "frame_height", "x0", "y0", "side", "detected",
                "status")  # fmt: skip


def _write_faces(tmp: Path, rows: list[Sample], faces: list[FaceCrop], num_frames: int) -> None:
    """face_boxes.csv and face_tracks.npy (see the module docstring), in the arrays' row order."""
    tracks = np.full((len(rows), num_frames, 3), np.nan, dtype=np.float32)
    with open(tmp / "face_boxes.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(FACE_COLUMNS)
        for j, (s, face) in enumerate(zip(rows, faces)):
            box = face.box or ("", "", "")
            status = "cropped" if face.box is not None else "whole_frame"
            writer.writerow([s.clip_id, s.path, *face.frame_size, *box, face.detected, status])
            if face.track is not None:
                tracks[j] = face.track
    np.save(tmp / "face_tracks.npy", tracks)


def _compact(path: Path, keep: list[int]) -> None:
    """Rewrite the array at ``path`` with only the rows ``keep`` (in order)."""
    src = np.load(path, mmap_mode="r")
    tmp = path.with_name(path.stem + ".compact.npy")
    dst = np.lib.format.open_memmap(
        tmp, mode="w+", dtype=src.dtype, shape=(len(keep),) + src.shape[1:]
    )
    for j, i in enumerate(keep):
        dst[j] = src[i]
    dst.flush()
    del dst, src
    os.replace(tmp, path)


def load_video_cache(folder: str | os.PathLike) -> CachedVideo:
    """Open a folder written by :func:`build_video_cache` (arrays memory-mapped, read-only)."""
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"no video cache at {folder} (no meta.json)")
    meta = json.loads(meta_path.read_text())
    arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in _ARRAYS}
    signal = None
    if (folder / "signal.npy").is_file():
        signal = np.load(folder / "signal.npy", mmap_mode="r")
    with open(folder / "index.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    return CachedVideo(
        folder=folder,
        video=arrays["video"],
        labels=arrays["labels"],
        split=arrays["split"],
        class_names=tuple(meta["class_names"]),
        clip_ids=tuple(r["clip_id"] for r in table),
        groups=tuple(r["group"] or None for r in table),
        meta=meta,
        signal=signal,
    )


def open_folder_dataset(
    root: str | os.PathLike,
    *,
    num_frames: int,
    size: int,
    cache_root: str | os.PathLike,
    sampling: str = "uniform",
    layout: str = "auto",
    on_bad_file: str = "error",
    workers: int = 2,
    backend: str = "auto",
    signal_length: int | None = None,
    signal_policy: str = "resample",
    face_crop: FaceCropSettings | None = None,
    progress: Callable[[int, int, Sample], None] | None = None,
    **layout_options: Any,
) -> tuple[DatasetIndex, CachedVideo]:
    """Index ``root`` (:func:`~harness.data.folders.index_folder` with ``layout`` and
    ``layout_options``, e.g. ``modality``, ``class_names``, ``test_groups``, ``test_actors``),
    build its cache if needed and open it.  The layout and its options are part of the cache
    key.

    ``on_bad_file`` is the policy for the indexer's bad files AND for clips that fail to
    decode (or, with ``face_crop``, have no face).  The returned index describes the cache: its
    samples are the cached clips (in the cache's row order) and its ``skipped`` lists every file
    left out, the clips that did not decode included (reason ``"cannot decode: ..."``, or
    ``"no face found: ..."``)."""
    index = index_folder(root, layout, on_bad_file=on_bad_file, **layout_options)
    extra = {"layout": index.layout, "options": layout_options}
    folder = build_video_cache(
        index,
        num_frames,
        size,
        sampling,
        cache_root,
        extra,
        workers=workers,
        backend=backend,
        on_bad_file=on_bad_file,
        signal_length=signal_length,
        signal_policy=signal_policy,
        face_crop=face_crop,
        progress=progress,
    )
    cached = load_video_cache(folder)
    dropped = {d["clip_id"]: d for d in cached.meta["dropped"]}
    empty = [name for name in SPLITS if not (cached.split == name).any()]
    if empty:
        raise DatasetError(
            f"{index.root}: split(s) {', '.join(empty)} have no samples left after "
            f"{len(dropped)} clip(s) failed to decode (listed in {folder / 'meta.json'})"
        )
    if dropped:
        kept = tuple(s for s in index.samples if s.clip_id not in dropped)
        lost = tuple(Skipped(Path(d["path"]), f"{_WHAT[d.get('kind', 'decode')]}: {_why(d)}")
                     for d in dropped.values())  # fmt: skip
        index = replace(
            index,
            samples=kept,
            skipped=tuple(sorted(index.skipped + lost, key=lambda s: str(s.path))),
        )
    return index, cached


_WHAT = {"decode": "cannot decode", "no_face": "no face found"}


def _why(dropped: Mapping[str, str]) -> str:
    """The reason without its 'cannot decode video <path>: ' (or 'no face found in <path>: ')
    prefix."""
    return dropped["reason"].split(f"{dropped['path']}: ", 1)[-1]
