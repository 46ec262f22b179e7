"""Datasets: clips, signals, labels and splits held in memory-mapped arrays shared by trials.

A study prepares its dataset once in the driver (`prepare_dataset`: generate or decode, then cache
to disk); every trial opens the cached arrays memory-mapped (`open_dataset`), so trials neither
decode nor copy clips. A dataset holds the inputs its model reads (`inputs`: "video", "signal" or
both): clips at their storage resolution (uint8 [N, T, H, W, 3]) and signals (float32 [N, L, C]).
The training methods decide how an input becomes the model's (a clip downsampled whole or cropped
to its salient region first; a signal whole, weighted or cropped to its salient window).

Signals are standardised per channel with the mean and standard deviation of the training split
(`Dataset.signal_stats`), so real sensor units (m/s^2, deg/s) and the synthetic ones give the model
inputs of the same scale; the statistics come from training data only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.data.synthetic import SyntheticSpec, load_or_generate
from harness.data.video_io import read_clip

__all__ = ["Dataset", "check_splits", "iterate_batches", "open_dataset", "prepare_dataset",
           "read_clip"]  # fmt: skip

SPLITS = ("train", "val", "test")
INPUTS = ("video", "signal")


@dataclass(frozen=True)
class Dataset:
    name: str
    synthetic: bool
    class_names: tuple[str, ...]
    labels: np.ndarray  # int64 [N]
    split: np.ndarray  # str [N], one of SPLITS
    video: np.ndarray | None = None  # uint8 [N, T, H, W, 3]
    signal: np.ndarray | None = None  # float32 [N, L, C]
    actor_box: np.ndarray | None = None  # int16 [N, T, 4] (synthetic only)
    event_window: np.ndarray | None = None  # int64 [N, 2]: signal event [start, stop) (synthetic)
    skipped: tuple = ()  # folders.Skipped (path, reason): files left out of a real folder
    cache: Path | None = None  # the decode cache folder of a real video dataset (cache.py)
    signal_stats: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(name for name in INPUTS if getattr(self, name) is not None)

    @property
    def signal_channels(self) -> int | None:
        return None if self.signal is None else int(self.signal.shape[-1])

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)


@dataclass
class Batch:
    inputs: dict[str, torch.Tensor]  # "video": float [B, T, 3, H, W] in [0, 1]; "signal": [B, L, C]
    labels: torch.Tensor  # int64 [B]
    index: torch.Tensor  # int64 [B], rows of the dataset

    @property
    def clips(self) -> torch.Tensor:
        return self.inputs["video"]

    def __len__(self) -> int:
        return len(self.labels)


def synthetic_spec(data: Mapping[str, Any]) -> SyntheticSpec:
    return SyntheticSpec(**dict(data["synthetic"]))


def prepare_dataset(data: Mapping[str, Any], inputs: Sequence[str] = ("video",)) -> Dataset:
    """Generate/decode the dataset described by the `data` config into its cache (driver side),
    and check that a study can learn and be measured on it (`check_splits`)."""
    dataset = open_dataset(data, inputs)
    check_splits(dataset)
    return dataset


def check_splits(dataset: Dataset) -> None:
    """Raise DatasetError unless the dataset has at least two classes, every class has training
    samples, and the validation and test splits are not empty (selection and evaluation need
    them). A class missing from the validation or test split is announced, not refused (small
    real datasets have such splits; its accuracy is then not measured)."""
    from harness.data.folders import DatasetError

    names = dataset.class_names
    counts = {s: np.bincount(dataset.labels[dataset.indices(s)], minlength=len(names))
              for s in SPLITS}  # fmt: skip
    where = f"{dataset.name}: " + (f"{len(dataset.skipped)} files skipped; " if dataset.skipped
                                   else "")  # fmt: skip
    if len(names) < 2:
        raise DatasetError(f"{where}{len(names)} class ({', '.join(names)}): a study needs "
                           "at least two")  # fmt: skip
    empty = [names[c] for c in np.flatnonzero(counts["train"] == 0)]
    if empty:
        raise DatasetError(f"{where}class(es) {', '.join(empty)} have no training samples "
                           "(a label typo in the annotation table?)")  # fmt: skip
    for split in ("val", "test"):
        if not counts[split].sum():
            raise DatasetError(f"{where}the {split} split is empty")
        missing = [names[c] for c in np.flatnonzero(counts[split] == 0)]
        if missing:
            print(f"warning: {where}no {split} samples of class(es) {', '.join(missing)}",
                  flush=True)  # fmt: skip


def open_dataset(data: Mapping[str, Any], inputs: Sequence[str] = ("video",)) -> Dataset:
    """Open the cached dataset of the `data` config with the `inputs` a model reads (memory-mapped;
    built on first use).

    With `data.root` unset: the built-in synthetic data. With `data.root` a folder: a BIRDS-style,
    UCF50 or CREMA-D tree (`data.layout`, default auto-detected; see harness/data/folders.py), its
    clips decoded once (`data.num_frames` frames sampled by `data.sampling`, resized to
    `data.frame_size`) into a cache under `data.cache_dir`; its signals (BIRDS-style only) brought
    to `data.signal_length` samples by `data.signal_policy`; with `data.face_crop.enabled` each
    clip cut to its face first (harness/data/faces.py; the synthetic data is never cropped).
    Problems with the folder raise `DatasetError` naming the file, before any decoding.
    """
    unknown = sorted(set(inputs) - set(INPUTS))
    if unknown or not inputs:
        raise ValueError(f"inputs {list(inputs)}: expected some of {list(INPUTS)}")
    dataset = _open_folder(data, inputs) if data.get("root") else _open_synthetic(data, inputs)
    if dataset.signal is None:
        return dataset
    train = dataset.signal[dataset.indices("train")]
    std = train.std(axis=(0, 1))
    stats = (train.mean(axis=(0, 1)), np.where(std > 0, std, 1.0))
    return replace(dataset, signal_stats=stats)


def _open_synthetic(data: Mapping[str, Any], inputs: Sequence[str]) -> Dataset:
    spec = synthetic_spec(data)
    arrays = load_or_generate(spec, Path(data["cache_dir"]))
    return Dataset(
        name=str(data["name"]),
        synthetic=True,
        class_names=tuple(data.get("class_names") or arrays.class_names),
        labels=np.asarray(arrays.label),
        split=np.asarray(arrays.split),
        video=arrays.video if "video" in inputs else None,
        signal=arrays.signal if "signal" in inputs else None,
        actor_box=arrays.actor_box,
        event_window=np.stack(
            [arrays.event_start, arrays.event_start + spec.event_length], 1
        ).astype(np.int64),
    )


def _open_folder(data: Mapping[str, Any], inputs: Sequence[str]) -> Dataset:
    from harness.data.cache import open_folder_dataset
    from harness.data.faces import FaceCropSettings
    from harness.data.folders import fit_length, index_folder, read_signal

    options = dict(data.get("options") or {})
    wants_signal = "signal" in inputs
    if wants_signal:
        options["modality"] = "both" if "video" in inputs else "signal"
    signal_length = int(data["signal_length"]) if wants_signal else None
    signal_policy = str(data.get("signal_policy", "resample"))
    layout = str(data.get("layout", "auto"))
    options.update(
        on_bad_file=str(data.get("on_bad_file", "error")), class_names=data.get("class_names")
    )
    if "video" in inputs:
        index, cached = open_folder_dataset(
            data["root"],
            layout=layout,
            num_frames=int(data["num_frames"]),
            size=int(data["frame_size"]),
            sampling=str(data.get("sampling", "uniform")),
            cache_root=data["cache_dir"],
            signal_length=signal_length,
            signal_policy=signal_policy,
            face_crop=FaceCropSettings.from_config(data.get("face_crop")),
            **options,
        )
        class_names, video, signal = cached.class_names, cached.video, cached.signal
        cache = cached.folder
        labels, split = np.asarray(cached.labels), np.asarray(cached.split)
    else:  # signals only: small files, read as they are (no decode cache needed)
        index = index_folder(data["root"], layout, **options)
        class_names, video, cache = index.class_names, None, None
        signal = np.stack(
            [fit_length(read_signal(s.signal_path), signal_length, signal_policy)
             for s in index.samples]
        )  # fmt: skip
        labels, split = index.labels, index.splits
    return Dataset(
        name=Path(data["root"]).name,
        synthetic=False,
        class_names=tuple(class_names),
        labels=labels,
        split=split,
        video=video,
        signal=signal,
        skipped=index.skipped,
        cache=cache,
    )


def to_clips(video: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 [B, T, H, W, 3] -> float [B, T, 3, H, W] in [0, 1]."""
    clips = torch.from_numpy(np.ascontiguousarray(video)).to(device)
    return clips.permute(0, 1, 4, 2, 3).float().div_(255.0)


def to_signals(
    signal: np.ndarray,
    stats: tuple[np.ndarray, np.ndarray] | None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """float [B, L, C] -> standardised per channel, (x - mean) / std, as float32 [B, L, C]."""
    x = np.asarray(signal, dtype=np.float32)
    if stats is not None:
        x = (x - stats[0].astype(np.float32)) / stats[1].astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(x)).to(device)


def iterate_batches(
    dataset: Dataset,
    indices: np.ndarray,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Iterator[Batch]:
    """Batches of `indices` (sorted within a batch so memory-mapped reads stay sequential)."""
    order = indices
    if shuffle:
        order = indices[torch.randperm(len(indices), generator=generator).numpy()]
    for start in range(0, len(order), batch_size):
        rows = np.sort(order[start : start + batch_size])
        inputs = {}
        if dataset.video is not None:
            inputs["video"] = to_clips(dataset.video[rows], device)
        if dataset.signal is not None:
            inputs["signal"] = to_signals(dataset.signal[rows], dataset.signal_stats, device)
        yield Batch(
            inputs=inputs,
            labels=torch.from_numpy(dataset.labels[rows].astype(np.int64)).to(device),
            index=torch.from_numpy(rows.astype(np.int64)).to(device),
        )
