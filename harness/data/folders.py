"""Real datasets on disk: index (never decode) a folder into a table of samples.

Three layouts are understood (:func:`index_folder` picks one, or detects it with
``layout="auto"``).  Every check runs BEFORE anything is decoded, and every problem names the
file (and the field, line or pattern) at fault.

**BIRDS-style** (:func:`index_birds`)::

    <root>/annotations.csv          columns clip_id, label, split (+ any others, ignored)
    <root>/video/<clip_id>.<ext>    ext: mp4, avi, mkv, mov or webm (case-insensitive)
    <root>/signal/<clip_id>.csv     a header of channel names, then one row per time sample
    <root>/signal/<clip_id>.npy     or float [time, channels]

``modality`` = ``"video"`` (only ``video/`` is needed), ``"signal"`` (only ``signal/``) or
``"both"``.  ``split`` must be ``train``, ``val`` or ``test``; ``clip_id`` must be unique and a
plain file stem.  Classes are the sorted unique labels unless ``class_names`` is given (then
every label must be in it, and its order defines the label indices).  All signals must have
the same channel count, and all CSV signals the same header (the most common one is the
reference; a tie goes to the first in sorted order); every value must be a finite number (a
signal file is read in full here: a NaN or inf is a bad file, like a wrong header).
``group_column`` (optional) names a column of subject/recording ids: it is carried per sample
and a group found in two splits is an error (no subject leakage).

**UCF50** (:func:`index_ucf50`)::

    <root>/<Class>/v_<Class>_g<NN>_c<NN>.avi

The class is the folder; the file's class token must match it (case-insensitively).  Splits are
by GROUP (the ``gNN`` of the name, the recording session, so that clips of one session never
meet in two splits): ``test_groups`` (default ``1..5``) are test, ``val_groups`` (default
``6, 7``) validation, every other group train.  The standard 25-fold leave-one-group-out
protocol is ``test_groups=(k,)``.  ``class_names`` selects a subset of the class folders (the
other folders are ignored); by default every class folder is used.

**CREMA-D** (:func:`index_crema_d`)::

    <root>/<ActorID>_<Sentence>_<Emotion>_<Level>.<ext>     e.g. 1001_DFA_ANG_XX.flv

``ActorID`` 4 digits, ``Sentence`` 3 capitals, ``Emotion`` one of ANG DIS FEA HAP NEU SAD,
``Level`` one of LO MD HI XX; ext flv, mp4, avi, mkv, mov or webm.  The class is the emotion
(``class_names`` selects a subset, in label order; files of other emotions are ignored; by
default all six).  Splits are by ACTOR: ``test_actors`` / ``val_actors`` lists, or else
deterministic fractions (``test_fraction`` 0.2, ``val_fraction`` 0.1) of the sorted actor ids,
spread evenly over the sorted order (no seed): the test actors are the ones at positions
``floor((j + 0.5) * n / n_test)``, ``n_test = test_fraction * n`` rounded half up (at least 1),
the validation actors likewise among the remaining ones.  ``split_seed`` (an integer) draws
the fractions at random instead, as the 001 seed's 90/5/5 split did: the actor ids are
shuffled by ``numpy.random.default_rng(split_seed).permutation`` and the first ``n_test``
become test, the next ``n_val`` validation (``test_fraction=0.05, val_fraction=0.05,
split_seed=0``: the seed's split; its seed is not known).

**Bad files** (``on_bad_file``): a video/signal file missing for an annotated clip, an empty
(0-byte) file, an ambiguous clip (two files with the same stem), a file name that does not
match the layout's pattern, an unreadable signal header, a signal whose channels differ from
the others'.  ``"error"`` (default) raises a :class:`DatasetError` listing them all; ``"skip"``
drops them and lists them, with the reason, in ``DatasetIndex.skipped`` (for the report).
Hidden files are not looked at; other files without a video (or, for BIRDS, signal) extension
are never samples: they are listed in ``skipped`` too but never raise.  Problems of the
annotations themselves (a missing column, an unknown label or split, a duplicate clip id), of
the configuration (an unknown group/actor, overlapping test/val lists) and an empty split
always raise.

Signals: :func:`read_signal` (float32 ``[L, C]``) and :func:`fit_length` (the length policy).
"""

from __future__ import annotations

import csv
import inspect
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "BAD_FILE_POLICIES",
    "CREMA_D_EMOTIONS",
    "CREMA_D_LEVELS",
    "LAYOUTS",
    "LENGTH_POLICIES",
    "MODALITIES",
    "SIGNAL_EXTENSIONS",
    "SPLITS",
    "UCF50_TEST_GROUPS",
    "UCF50_VAL_GROUPS",
    "VIDEO_EXTENSIONS",
    "DatasetError",
    "DatasetIndex",
    "Sample",
    "Skipped",
    "detect_layout",
    "fit_length",
    "index_birds",
    "index_crema_d",
    "index_folder",
    "index_ucf50",
    "layout_options",
    "read_signal",
    "read_signal_header",
]

SPLITS: tuple[str, ...] = ("train", "val", "test")
LAYOUTS: tuple[str, ...] = ("birds", "ucf50", "crema_d")
MODALITIES: tuple[str, ...] = ("video", "signal", "both")
VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".avi", ".mkv", ".mov", ".webm")
CREMA_D_EXTENSIONS: tuple[str, ...] = (".flv",) + VIDEO_EXTENSIONS
SIGNAL_EXTENSIONS: tuple[str, ...] = (".csv", ".npy")
BIRDS_COLUMNS: tuple[str, ...] = ("clip_id", "label", "split")
CREMA_D_EMOTIONS: tuple[str, ...] = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
CREMA_D_LEVELS: tuple[str, ...] = ("LO", "MD", "HI", "XX")
UCF50_TEST_GROUPS: tuple[int, ...] = (1, 2, 3, 4, 5)
UCF50_VAL_GROUPS: tuple[int, ...] = (6, 7)
LENGTH_POLICIES: tuple[str, ...] = ("resample", "crop", "pad")
BAD_FILE_POLICIES: tuple[str, ...] = ("error", "skip")

_UCF50_NAME = re.compile(r"^v_(?P<cls>[^_]+)_g(?P<group>\d+)_c(?P<clip>\d+)$")
_CREMA_D_NAME = re.compile(
    r"^(?P<actor>\d{4})_(?P<sentence>[A-Z]{3})_(?P<emotion>[A-Z]{3})_(?P<level>[A-Z]{2})$"
)
_MAX_LISTED = 25  # problems listed in one error message


class DatasetError(ValueError):
    """A dataset folder that cannot be used as it is (the message names the file and field)."""


@dataclass(frozen=True)
class Sample:
    """One clip: ``path`` is its video (``None`` for signal-only data), ``signal_path`` its
    signal (``None`` without signals), ``group`` the UCF50 group (``"g01"``), the CREMA-D actor
    (``"1001"``) or the BIRDS ``group_column`` value (``None`` otherwise)."""

    clip_id: str
    label: str
    split: str
    path: Path | None
    signal_path: Path | None = None
    group: str | None = None


@dataclass(frozen=True)
class Skipped:
    """A file that is not part of the index, and why."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class DatasetIndex:
    """The samples of a dataset folder (sorted by split order, then clip id) and its classes."""

    layout: str
    root: Path
    modality: str
    class_names: tuple[str, ...]
    samples: tuple[Sample, ...]
    skipped: tuple[Skipped, ...] = ()
    num_channels: int | None = None  # signal channels (None without signals)
    channel_names: tuple[str, ...] | None = None  # from the CSV headers (None: .npy only)
    options: dict = field(default_factory=dict)  # the split/class options used

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def labels(self) -> np.ndarray:
        """int64 [N]: index of each sample's label in ``class_names``."""
        lookup = {name: i for i, name in enumerate(self.class_names)}
        return np.array([lookup[s.label] for s in self.samples], dtype=np.int64)

    @property
    def splits(self) -> np.ndarray:
        return np.array([s.split for s in self.samples], dtype="<U5")

    @property
    def groups(self) -> np.ndarray | None:
        if all(s.group is None for s in self.samples):
            return None
        return np.array(["" if s.group is None else s.group for s in self.samples])

    def counts(self) -> dict[str, dict[str, int]]:
        """Samples per split and class."""
        out = {split: dict.fromkeys(self.class_names, 0) for split in SPLITS}
        for s in self.samples:
            out[s.split][s.label] += 1
        return out

    def table(self):
        """The samples as a ``pandas.DataFrame`` (clip_id, path, label, label_index, split,
        group, signal_path)."""
        import pandas as pd

        labels = self.labels
        return pd.DataFrame(
            {
                "clip_id": [s.clip_id for s in self.samples],
                "path": [None if s.path is None else str(s.path) for s in self.samples],
                "label": [s.label for s in self.samples],
                "label_index": labels,
                "split": [s.split for s in self.samples],
                "group": [s.group for s in self.samples],
                "signal_path": [
                    None if s.signal_path is None else str(s.signal_path) for s in self.samples
                ],
            }
        )


# ----------------------------------------------------------------------------- signals


def read_signal_header(path: str | os.PathLike) -> tuple[str, ...] | int:
    """Cheap structural check of a signal file (nothing but the header is parsed): the channel
    names of a CSV signal, or the channel count of a ``.npy`` one.  Raises
    :class:`DatasetError` naming the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: signal file not found")
    if path.stat().st_size == 0:
        raise DatasetError(f"{path}: empty file (0 bytes)")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as exc:
            raise DatasetError(f"{path}: not a readable .npy array ({exc})") from exc
        if arr.ndim != 2:
            raise DatasetError(f"{path}: shape {arr.shape}: expected [time, channels]")
        if arr.dtype.kind not in "biuf":
            raise DatasetError(f"{path}: dtype {arr.dtype}: expected numbers")
        if arr.shape[0] < 1 or arr.shape[1] < 1:
            raise DatasetError(f"{path}: shape {arr.shape}: no samples or no channels")
        return int(arr.shape[1])
    if suffix != ".csv":
        raise DatasetError(f"{path}: unknown signal format (expected .csv or .npy)")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
            first = next(reader, None)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DatasetError(f"{path}: not a readable CSV file ({exc})") from exc
    names = tuple(name.strip() for name in header)
    if not names or any(not name for name in names):
        raise DatasetError(f"{path}: header {list(names)}: every channel needs a name")
    if all(_is_number(name) for name in names):
        raise DatasetError(
            f"{path}: header {list(names)} is numeric: the first row must name the channels"
        )
    if len(set(names)) != len(names):
        dup = sorted(n for n, c in Counter(names).items() if c > 1)
        raise DatasetError(f"{path}: header: duplicate channel names {dup}")
    if first is None or not any(cell.strip() for cell in first):
        raise DatasetError(f"{path}: no data rows after the header")
    return names


def read_signal(path: str | os.PathLike) -> np.ndarray:
    """A signal file as float32 ``[L, C]``: a CSV (header row of channel names, then one row
    per time sample, every column a channel) or a ``.npy`` ``[time, channels]`` array.  Values
    must be finite numbers (the error names the file, row and channel otherwise)."""
    path = Path(path)
    read_signal_header(path)
    if path.suffix.lower() == ".npy":
        data = np.load(path, allow_pickle=False).astype(np.float32)
        names = [str(c) for c in range(data.shape[1])]
        first_row = 0
    else:
        import pandas as pd

        frame = pd.read_csv(path, skipinitialspace=True, encoding="utf-8-sig")
        names = [str(c).strip() for c in frame.columns]
        numeric = frame.apply(pd.to_numeric, errors="coerce")
        bad = numeric.isna() & frame.notna()
        if bad.to_numpy().any():
            row, col = np.argwhere(bad.to_numpy())[0]
            raise DatasetError(
                f"{path}: line {row + 2}, channel {names[col]!r}: "
                f"{frame.iat[row, col]!r} is not a number"
            )
        data = numeric.to_numpy(dtype=np.float32)
        first_row = 2
    bad = ~np.isfinite(data)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        where = f"line {row + first_row}" if first_row else f"row {row}"
        raise DatasetError(f"{path}: {where}, channel {names[col]!r}: not a finite number")
    return np.ascontiguousarray(data, dtype=np.float32)


def fit_length(signal: np.ndarray, length: int, policy: str = "resample") -> np.ndarray:
    """Bring a ``[L, C]`` signal to ``[length, C]`` (float32).

    * ``"resample"``: linear interpolation per channel at ``length`` points spanning the same
      interval (first and last samples kept; a single sample is repeated).
    * ``"crop"``: a longer signal keeps its ``length`` central samples (start
      ``(L - length) // 2``); a shorter one is zero-padded at the end.
    * ``"pad"``: a shorter signal is zero-padded at the end; a longer one is an error (this
      policy never drops samples).
    """
    if policy not in LENGTH_POLICIES:
        raise ValueError(f"policy must be one of {', '.join(LENGTH_POLICIES)}, got {policy!r}")
    if isinstance(length, bool) or int(length) != length or length < 1:
        raise ValueError(f"length must be an integer >= 1, got {length!r}")
    length = int(length)
    signal = np.asarray(signal, dtype=np.float32)
    if signal.ndim != 2 or signal.shape[0] < 1:
        raise ValueError(f"expected a signal [L >= 1, C], got shape {signal.shape}")
    n = signal.shape[0]
    if n == length:
        return np.ascontiguousarray(signal)
    if policy == "resample":
        if n == 1:
            return np.repeat(signal, length, axis=0)
        pos = np.linspace(0.0, n - 1, length)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, n - 1)
        w = (pos - lo).astype(np.float32)[:, None]
        return np.ascontiguousarray(signal[lo] * (1 - w) + signal[hi] * w, dtype=np.float32)
    if n > length:
        if policy == "pad":
            raise ValueError(
                f"signal of {n} samples is longer than length={length} and policy='pad' "
                "never drops samples (use 'crop' or 'resample')"
            )
        start = (n - length) // 2
        return np.ascontiguousarray(signal[start : start + length])
    out = np.zeros((length, signal.shape[1]), dtype=np.float32)
    out[:n] = signal
    return out


# ----------------------------------------------------------------------------- helpers


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_policy(on_bad_file: str) -> None:
    if on_bad_file not in BAD_FILE_POLICIES:
        raise ValueError(
            f"on_bad_file must be one of {', '.join(BAD_FILE_POLICIES)}, got {on_bad_file!r}"
        )


def _check_root(root: str | os.PathLike) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"dataset root {root}: no such folder")
    if not root.is_dir():
        raise DatasetError(f"dataset root {root}: not a folder")
    return root.resolve()


def _raise_problems(what: str, problems: Sequence[str], note: str | None = None) -> None:
    if not problems:
        return
    listed = [f"  - {p}" for p in problems[:_MAX_LISTED]]
    if len(problems) > _MAX_LISTED:
        listed.append(f"  ... and {len(problems) - _MAX_LISTED} more")
    if note:
        listed.append(note)
    plural = "s" if len(problems) > 1 else ""
    raise DatasetError(f"{what}: {len(problems)} problem{plural}:\n" + "\n".join(listed))


class _BadFiles:
    """Per-file problems under the ``on_bad_file`` policy."""

    def __init__(self, policy: str) -> None:
        _check_policy(policy)
        self.policy = policy
        self.bad: list[Skipped] = []
        self.ignored: list[Skipped] = []

    def add(self, path: Path, reason: str) -> None:
        self.bad.append(Skipped(path, reason))

    def ignore(self, path: Path, reason: str) -> None:
        self.ignored.append(Skipped(path, reason))

    def finish(self, what: str) -> tuple[Skipped, ...]:
        if self.bad and self.policy == "error":
            _raise_problems(
                what,
                [str(s) for s in self.bad],
                "(on_bad_file='skip' drops these files and lists them instead)",
            )
        return tuple(sorted(self.bad + self.ignored, key=lambda s: str(s.path)))


def _visible_entries(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)


def _split_order(samples: Iterable[Sample]) -> tuple[Sample, ...]:
    rank = {name: i for i, name in enumerate(SPLITS)}
    return tuple(sorted(samples, key=lambda s: (rank[s.split], s.clip_id)))


def _check_splits(what: str, samples: Sequence[Sample], how: str, skipped: int) -> None:
    present = {s.split for s in samples}
    empty = [split for split in SPLITS if split not in present]
    if empty:
        extra = f" ({skipped} bad files were skipped)" if skipped else ""
        raise DatasetError(
            f"{what}: split(s) {', '.join(repr(e) for e in empty)} have no samples "
            f"({how}){extra}; every one of {', '.join(SPLITS)} needs at least one"
        )


def _check_groups_disjoint(what: str, samples: Sequence[Sample], field_name: str) -> None:
    seen: dict[str, set[str]] = {}
    for s in samples:
        if s.group is not None:
            seen.setdefault(s.group, set()).add(s.split)
    leaks = sorted(g for g, splits in seen.items() if len(splits) > 1)
    if leaks:
        details = "; ".join(f"{g!r} in {sorted(seen[g])}" for g in leaks[:_MAX_LISTED])
        raise DatasetError(f"{what}: {field_name} found in more than one split: {details}")


def _files_by_stem(folder: Path, extensions: Sequence[str], bad: _BadFiles, kind: str):
    """``{stem: [path, ...]}`` for the files of ``folder`` with one of ``extensions``; other
    files are listed as ignored."""
    out: dict[str, list[Path]] = {}
    for entry in _visible_entries(folder):
        path = Path(entry.path)
        if entry.is_dir():
            bad.ignore(path, "a folder (not searched)")
        elif path.suffix.lower() in extensions:
            out.setdefault(path.stem, []).append(path)
        else:
            bad.ignore(path, f"not a {kind} file (extension not in {', '.join(extensions)})")
    return out


def _one_file(stem: str, files: list[Path] | None, bad: _BadFiles, kind: str, where: Path):
    """The single non-empty file of a clip, or ``None`` (recording the problem)."""
    if not files:
        hint = ""
        if (where / stem).is_file():
            hint = "; clip_id must not include the file extension"
        bad.add(where / stem, f"missing {kind} file (no {where.name}/{stem}.*){hint}")
        return None
    if len(files) > 1:
        names = ", ".join(p.name for p in files)
        bad.add(files[0], f"ambiguous {kind} file for clip {stem!r}: {names}")
        return None
    path = files[0]
    if path.stat().st_size == 0:
        bad.add(path, f"empty {kind} file (0 bytes)")
        return None
    return path


# ----------------------------------------------------------------------------- BIRDS


def index_birds(
    root: str | os.PathLike,
    *,
    modality: str = "video",
    class_names: Sequence[str] | None = None,
    group_column: str | None = None,
    on_bad_file: str = "error",
) -> DatasetIndex:
    """Index a BIRDS-style folder (layout and rules in the module docstring)."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    bad = _BadFiles(on_bad_file)
    root = _check_root(root)
    ann = root / "annotations.csv"
    required = BIRDS_COLUMNS + ((group_column,) if group_column else ())
    if not ann.is_file():
        raise DatasetError(
            f"{ann}: missing; a BIRDS-style dataset needs annotations.csv with the columns "
            f"{', '.join(required)}"
        )
    rows, columns = _read_annotations(ann)
    missing = [c for c in required if c not in columns]
    if missing:
        raise DatasetError(
            f"{ann}: missing column(s) {', '.join(repr(c) for c in missing)}; required columns: "
            f"{', '.join(required)} (found: {', '.join(columns) or 'none'})"
        )
    if not rows:
        raise DatasetError(f"{ann}: no rows after the header")

    classes = None if class_names is None else tuple(str(c) for c in class_names)
    if classes is not None:
        if not classes or len(set(classes)) != len(classes):
            raise ValueError(f"class_names must be non-empty and unique, got {list(classes)}")
    problems: list[str] = []
    first_line: dict[str, int] = {}
    for line, row in rows:
        clip_id, label, split = row["clip_id"], row["label"], row["split"]
        where = f"{ann.name} line {line}"
        if not clip_id:
            problems.append(f"{where}: clip_id is empty")
        elif clip_id in (".", "..") or "/" in clip_id or "\\" in clip_id:
            problems.append(f"{where}: clip_id {clip_id!r} must be a plain file name stem")
        elif clip_id in first_line:
            problems.append(f"{where}: clip_id {clip_id!r} duplicates line {first_line[clip_id]}")
        else:
            first_line[clip_id] = line
        if not label:
            problems.append(f"{where}: label is empty")
        elif classes is not None and label not in classes:
            problems.append(
                f"{where}: label {label!r} is not in the class list [{', '.join(classes)}]"
            )
        if split not in SPLITS:
            problems.append(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
        if group_column and not row[group_column]:
            problems.append(f"{where}: {group_column} is empty")
    _raise_problems(str(ann), problems)

    want_video = modality in ("video", "both")
    want_signal = modality in ("signal", "both")
    videos = signals = None
    for want, sub in ((want_video, "video"), (want_signal, "signal")):
        if want and not (root / sub).is_dir():
            raise DatasetError(
                f"{root / sub}: missing folder (modality={modality!r} needs <root>/{sub}/)"
            )
    if want_video:
        videos = _files_by_stem(root / "video", VIDEO_EXTENSIONS, bad, "video")
    if want_signal:
        signals = _files_by_stem(root / "signal", SIGNAL_EXTENSIONS, bad, "signal")

    candidates: list[Sample] = []
    for _, row in rows:
        clip_id = row["clip_id"]
        video_path = signal_path = None
        ok = True
        if videos is not None:
            video_path = _one_file(clip_id, videos.get(clip_id), bad, "video", root / "video")
            ok = video_path is not None
        if signals is not None:
            signal_path = _one_file(clip_id, signals.get(clip_id), bad, "signal", root / "signal")
            ok = ok and signal_path is not None
        if ok:
            group = row[group_column] if group_column else None
            candidates.append(
                Sample(clip_id, row["label"], row["split"], video_path, signal_path, group)
            )
    annotated = set(first_line)
    for files, kind in ((videos, "video"), (signals, "signal")):
        for stem, paths in (files or {}).items():
            if stem not in annotated:
                for path in paths:
                    bad.ignore(path, f"{kind} file of no annotated clip")

    num_channels = channel_names = None
    if want_signal:
        candidates, num_channels, channel_names = _check_signals(candidates, bad)
    skipped = bad.finish(f"{root} (BIRDS-style)")
    if classes is None:
        classes = tuple(sorted({s.label for s in candidates}))
    _check_splits(str(ann), candidates, "the split column", len(bad.bad))
    if group_column:
        _check_groups_disjoint(str(ann), candidates, f"{group_column} value(s)")
    return DatasetIndex(
        layout="birds",
        root=root,
        modality=modality,
        class_names=classes,
        samples=_split_order(candidates),
        skipped=skipped,
        num_channels=num_channels,
        channel_names=channel_names,
        options={"class_names": class_names, "group_column": group_column},
    )


def _read_annotations(path: Path) -> tuple[list[tuple[int, dict[str, str]]], list[str]]:
    """Rows (with their 1-based line numbers) and column names of a CSV, every value a
    stripped string."""
    if path.stat().st_size == 0:
        raise DatasetError(f"{path}: empty file (0 bytes)")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [c.strip() for c in next(reader, [])]
            rows = []
            for values in reader:
                if not any(v.strip() for v in values):
                    continue
                line = reader.line_num
                if len(values) > len(header):
                    raise DatasetError(
                        f"{path} line {line}: {len(values)} fields but the header has {len(header)}"
                    )
                values = [v.strip() for v in values] + [""] * (len(header) - len(values))
                rows.append((line, dict(zip(header, values))))
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not a readable CSV file ({exc})") from exc
    dup = sorted(c for c, n in Counter(header).items() if n > 1)
    if dup:
        raise DatasetError(f"{path}: duplicate column(s) {dup} in the header")
    return rows, header


def _check_signals(
    candidates: list[Sample], bad: _BadFiles
) -> tuple[list[Sample], int | None, tuple[str, ...] | None]:
    """Every signal read in full (a value that is not a finite number, NaN and inf included, is
    a bad file: signal files are small) and its header checked: the most common CSV header
    (and channel count) is the reference, the files that differ are bad files."""
    info: dict[str, tuple[str, ...] | int] = {}
    kept = []
    for s in candidates:
        try:
            info[s.clip_id] = read_signal_header(s.signal_path)
            read_signal(s.signal_path)
            kept.append(s)
        except DatasetError as exc:
            bad.add(s.signal_path, str(exc).split(": ", 1)[-1])
    if not kept:
        return kept, None, None

    def channels(h: tuple[str, ...] | int) -> int:
        return h if isinstance(h, int) else len(h)

    counts = Counter(channels(info[s.clip_id]) for s in kept)
    ref_channels = max(sorted(counts), key=lambda c: counts[c])
    headers = Counter(h for h in info.values() if isinstance(h, tuple) and len(h) == ref_channels)
    ref_header = max(sorted(headers), key=lambda h: headers[h]) if headers else None
    ref_file = {}
    for s in kept:
        h = info[s.clip_id]
        if channels(h) == ref_channels and "count" not in ref_file:
            ref_file["count"] = s.signal_path.name
        if h == ref_header and "header" not in ref_file:
            ref_file["header"] = s.signal_path.name
    out = []
    for s in kept:
        h = info[s.clip_id]
        if channels(h) != ref_channels:
            bad.add(
                s.signal_path,
                f"{channels(h)} channels, expected {ref_channels} (as {ref_file['count']})",
            )
        elif ref_header is not None and isinstance(h, tuple) and h != ref_header:
            bad.add(
                s.signal_path,
                f"header {list(h)} differs from {list(ref_header)} (as {ref_file['header']})",
            )
        else:
            out.append(s)
    return out, ref_channels, ref_header


# ----------------------------------------------------------------------------- UCF50


def _int_tuple(name: str, values: Iterable[int] | int) -> tuple[int, ...]:
    if isinstance(values, (int, np.integer)):
        values = (values,)
    out = []
    for v in values:
        if isinstance(v, bool) or int(v) != v or int(v) < 1:
            raise ValueError(f"{name}: group numbers must be integers >= 1, got {v!r}")
        out.append(int(v))
    return tuple(sorted(set(out)))


def index_ucf50(
    root: str | os.PathLike,
    *,
    test_groups: Iterable[int] | int = UCF50_TEST_GROUPS,
    val_groups: Iterable[int] | int = UCF50_VAL_GROUPS,
    class_names: Sequence[str] | None = None,
    on_bad_file: str = "error",
) -> DatasetIndex:
    """Index a UCF50 folder (layout and rules in the module docstring); ``group`` is
    ``"gNN"``."""
    bad = _BadFiles(on_bad_file)
    root = _check_root(root)
    test, val = _int_tuple("test_groups", test_groups), _int_tuple("val_groups", val_groups)
    both = sorted(set(test) & set(val))
    if both:
        raise ValueError(f"groups {both} are in both test_groups {test} and val_groups {val}")
    folders = {}
    for entry in _visible_entries(root):
        if entry.is_dir():
            folders[entry.name] = Path(entry.path)
        else:
            bad.ignore(Path(entry.path), "not in a class folder")
    if class_names is None:
        classes = tuple(folders)
    else:
        classes = tuple(str(c) for c in class_names)
        absent = [c for c in classes if c not in folders]
        if absent:
            raise DatasetError(
                f"{root}: no class folder for {', '.join(repr(c) for c in absent)} "
                f"(class_names); found: {', '.join(folders) or 'none'}"
            )
    if not classes:
        raise DatasetError(
            f"{root}: no class folders (expected <root>/<Class>/v_<Class>_gNN_cNN.avi)"
        )

    candidates: list[Sample] = []
    for cls in classes:
        for entry in _visible_entries(folders[cls]):
            path = Path(entry.path)
            if entry.is_dir():
                bad.ignore(path, "a folder (not searched)")
                continue
            if path.suffix.lower() not in VIDEO_EXTENSIONS:
                bad.ignore(path, "not a video file")
                continue
            m = _UCF50_NAME.match(path.stem)
            if not m:
                bad.add(path, f"name does not match v_{cls}_g<NN>_c<NN>{path.suffix}")
                continue
            if m["cls"].lower() != cls.lower():
                bad.add(path, f"class {m['cls']!r} in the name but the folder is {cls!r}")
                continue
            if path.stat().st_size == 0:
                bad.add(path, "empty video file (0 bytes)")
                continue
            group = int(m["group"])
            split = "test" if group in test else "val" if group in val else "train"
            candidates.append(Sample(path.stem, cls, split, path, None, f"g{group:02d}"))
    stems = Counter((s.label, s.clip_id) for s in candidates)
    for s in candidates:
        if stems[(s.label, s.clip_id)] > 1:
            bad.add(s.path, f"ambiguous: more than one file named {s.clip_id}.*")
    candidates = [s for s in candidates if stems[(s.label, s.clip_id)] == 1]
    skipped = bad.finish(f"{root} (UCF50)")

    present = {int(s.group[1:]) for s in candidates}
    for name, groups in (("test_groups", test), ("val_groups", val)):
        unknown = [g for g in groups if g not in present]
        if unknown:
            raise DatasetError(
                f"{root}: {name} {unknown} have no clips (groups present: "
                f"{', '.join(str(g) for g in sorted(present)) or 'none'})"
            )
    empty = [c for c in classes if not any(s.label == c for s in candidates)]
    if empty:
        raise DatasetError(f"{root}: class folder(s) {empty} hold no usable videos")
    how = f"test_groups={list(test)}, val_groups={list(val)}, other groups train"
    _check_splits(str(root), candidates, how, len(bad.bad))
    _check_groups_disjoint(str(root), candidates, "group(s)")
    return DatasetIndex(
        layout="ucf50",
        root=root,
        modality="video",
        class_names=classes,
        samples=_split_order(candidates),
        skipped=skipped,
        options={"test_groups": test, "val_groups": val, "class_names": class_names},
    )


# ----------------------------------------------------------------------------- CREMA-D


def _spread(items: Sequence[str], count: int) -> list[str]:
    """``count`` items evenly spread over ``items`` (positions ``floor((j + 0.5) n / count)``)."""
    n = len(items)
    if count <= 0 or n == 0:
        return []
    count = min(count, n)
    return [items[int((j + 0.5) * n / count)] for j in range(count)]


def _fraction_count(fraction: float, n: int) -> int:
    """``fraction * n`` rounded half up, at least 1 when ``fraction > 0``."""
    if fraction <= 0:
        return 0
    return max(1, int(np.floor(fraction * n + 0.5)))


def _actor_list(name: str, actors: Iterable[str | int] | None) -> tuple[str, ...] | None:
    if actors is None:
        return None
    if isinstance(actors, (str, int)):
        actors = (actors,)
    out = {str(a).strip() for a in actors}
    bad = sorted(a for a in out if not re.fullmatch(r"\d{4}", a))
    if bad:
        raise ValueError(f"{name}: actor ids are 4 digits (e.g. 1001), got {bad}")
    return tuple(sorted(out))


def index_crema_d(
    root: str | os.PathLike,
    *,
    test_actors: Iterable[str | int] | None = None,
    val_actors: Iterable[str | int] | None = None,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    split_seed: int | None = None,
    class_names: Sequence[str] | None = None,
    on_bad_file: str = "error",
) -> DatasetIndex:
    """Index a CREMA-D folder (layout and rules in the module docstring); ``group`` is the
    actor id."""
    bad = _BadFiles(on_bad_file)
    root = _check_root(root)
    emotions = CREMA_D_EMOTIONS
    if class_names is not None:
        emotions = tuple(str(e).upper() for e in class_names)
    unknown = [e for e in emotions if e not in CREMA_D_EMOTIONS]
    if unknown or not emotions or len(set(emotions)) != len(emotions):
        raise ValueError(
            f"class_names must be distinct CREMA-D emotions ({', '.join(CREMA_D_EMOTIONS)}), "
            f"got {list(emotions)}"
        )
    for name, frac in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not 0 <= frac < 1:
            raise ValueError(f"{name} must be in [0, 1), got {frac!r}")
    if split_seed is not None and (isinstance(split_seed, bool) or not isinstance(split_seed, int)
                                   or split_seed < 0):  # fmt: skip
        raise ValueError(f"split_seed must be null or an integer >= 0, got {split_seed!r}")
    test_list, val_list = (
        _actor_list("test_actors", test_actors),
        _actor_list("val_actors", val_actors),
    )
    if test_list is not None and val_list is not None and set(test_list) & set(val_list):
        raise ValueError(
            f"actors {sorted(set(test_list) & set(val_list))} are in both test_actors and "
            "val_actors"
        )

    by_stem: dict[str, list[Path]] = {}
    parsed: dict[str, re.Match] = {}
    subfolders = []
    for entry in _visible_entries(root):
        path = Path(entry.path)
        if entry.is_dir():
            subfolders.append(entry.name)
            bad.ignore(path, "a folder (not searched)")
            continue
        if path.suffix.lower() not in CREMA_D_EXTENSIONS:
            bad.ignore(path, "not a video file")
            continue
        m = _CREMA_D_NAME.match(path.stem)
        if not m:
            bad.add(
                path,
                "name does not match <ActorID>_<Sentence>_<Emotion>_<Level> (e.g. 1001_DFA_ANG_XX)",
            )
            continue
        if m["emotion"] not in CREMA_D_EMOTIONS:
            bad.add(path, f"unknown emotion {m['emotion']!r} (not in {' '.join(CREMA_D_EMOTIONS)})")
            continue
        if m["level"] not in CREMA_D_LEVELS:
            bad.add(path, f"unknown level {m['level']!r} (not in {' '.join(CREMA_D_LEVELS)})")
            continue
        if m["emotion"] not in emotions:
            continue  # a valid clip of an emotion not selected
        if path.stat().st_size == 0:
            bad.add(path, "empty video file (0 bytes)")
            continue
        by_stem.setdefault(path.stem, []).append(path)
        parsed[path.stem] = m
    clips = {}
    for stem, paths in by_stem.items():
        if len(paths) > 1:
            bad.add(paths[0], f"ambiguous: {', '.join(p.name for p in paths)}")
        else:
            clips[stem] = paths[0]
    skipped = bad.finish(f"{root} (CREMA-D)")
    if not clips:
        hint = ""
        if "VideoFlash" in subfolders:
            hint = f"; the videos may be in {root / 'VideoFlash'}"
        raise DatasetError(
            f"{root}: no CREMA-D clips (<ActorID>_<Sentence>_<Emotion>_<Level>.<ext> with ext "
            f"{', '.join(e[1:] for e in CREMA_D_EXTENSIONS)}){hint}"
        )

    actors = sorted({parsed[stem]["actor"] for stem in clips})
    for name, listed in (("test_actors", test_list), ("val_actors", val_list)):
        absent = [a for a in listed or () if a not in actors]
        if absent:
            raise DatasetError(
                f"{root}: {name} {absent} have no clips ({len(actors)} actors found)"
            )
    order = actors
    if split_seed is not None:
        order = [actors[i] for i in np.random.default_rng(split_seed).permutation(len(actors))]
    pick = _spread if split_seed is None else lambda items, count: list(items[:count])
    if test_list is None:
        rest = [a for a in order if a not in set(val_list or ())]
        test_list = tuple(pick(rest, _fraction_count(test_fraction, len(actors))))
    if val_list is None:
        rest = [a for a in order if a not in set(test_list)]
        val_list = tuple(pick(rest, _fraction_count(val_fraction, len(actors))))
    test_set, val_set = set(test_list), set(val_list)
    samples = []
    for stem, path in clips.items():
        actor = parsed[stem]["actor"]
        split = "test" if actor in test_set else "val" if actor in val_set else "train"
        samples.append(Sample(stem, parsed[stem]["emotion"], split, path, None, actor))
    how = (
        f"{len(actors)} actors: test {sorted(test_set)}, val {sorted(val_set)} "
        f"(test_fraction={test_fraction}, val_fraction={val_fraction}, split_seed={split_seed})"
    )
    _check_splits(str(root), samples, how, len(bad.bad))
    _check_groups_disjoint(str(root), samples, "actor(s)")
    return DatasetIndex(
        layout="crema_d",
        root=root,
        modality="video",
        class_names=emotions,
        samples=_split_order(samples),
        skipped=skipped,
        options={
            "test_actors": tuple(sorted(test_set)),
            "val_actors": tuple(sorted(val_set)),
            "class_names": emotions,
        },
    )


# ----------------------------------------------------------------------------- dispatch


def detect_layout(root: str | os.PathLike) -> str:
    """``"birds"`` (an annotations.csv), ``"crema_d"`` (CREMA-D file names at the top) or
    ``"ucf50"`` (class folders of v_<Class>_gNN_cNN files)."""
    root = _check_root(root)
    if (root / "annotations.csv").is_file():
        return "birds"
    entries = _visible_entries(root)
    for e in entries:
        if e.is_file() and _CREMA_D_NAME.match(Path(e.name).stem):
            return "crema_d"
    for e in entries:
        if e.is_dir():
            for f in _visible_entries(Path(e.path)):
                if f.is_file() and _UCF50_NAME.match(Path(f.name).stem):
                    return "ucf50"
    raise DatasetError(
        f"{root}: cannot tell the dataset layout: expected annotations.csv (BIRDS-style), "
        "<Class>/v_<Class>_gNN_cNN.avi folders (UCF50) or <ActorID>_<Sentence>_<Emotion>_"
        "<Level>.<ext> files (CREMA-D); set the layout explicitly"
    )


_INDEXERS = {"birds": index_birds, "ucf50": index_ucf50, "crema_d": index_crema_d}


def layout_options(layout: str) -> tuple[str, ...]:
    """The keyword options of ``layout``'s indexer (``class_names``, ``on_bad_file`` and its
    split options, e.g. ``test_groups`` for UCF50)."""
    if layout not in _INDEXERS:
        raise ValueError(f"layout must be auto or one of {', '.join(LAYOUTS)}, got {layout!r}")
    params = inspect.signature(_INDEXERS[layout]).parameters.values()
    return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def index_folder(root: str | os.PathLike, layout: str = "auto", **options) -> DatasetIndex:
    """Index ``root`` with :func:`index_birds`, :func:`index_ucf50` or :func:`index_crema_d`
    (``layout="auto"``: :func:`detect_layout`); ``options`` go to that function (an option it
    does not take raises a ``ValueError`` listing the ones it does)."""
    if layout == "auto":
        layout = detect_layout(root)
    known = layout_options(layout)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for the {layout} layout; "
            f"its options: {', '.join(known)}"
        )
    return _INDEXERS[layout](root, **options)
