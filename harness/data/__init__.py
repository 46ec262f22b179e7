"""Datasets: clips (and their labels and splits) held in memory-mapped arrays shared by trials.

A study prepares its dataset once in the driver (`prepare_dataset`: generate or decode, then cache
to disk); every trial opens the cached arrays memory-mapped (`open_dataset`), so trials neither
decode nor copy clips. Clips are kept at their storage resolution (uint8 [N, T, H, W, 3]); the
training methods decide how a clip becomes the model's input (downsampled whole, or cropped to its
salient region first).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.data.synthetic import SyntheticSpec, load_or_generate

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class VideoDataset:
    name: str
    synthetic: bool
    class_names: tuple[str, ...]
    video: np.ndarray  # uint8 [N, T, H, W, 3]
    labels: np.ndarray  # int64 [N]
    split: np.ndarray  # str [N], one of SPLITS
    actor_box: np.ndarray | None = None  # int16 [N, T, 4] (synthetic only)
    skipped: tuple = ()  # folders.Skipped (path, reason) of files left out (real data only)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)


@dataclass
class Batch:
    clips: torch.Tensor  # float [B, T, 3, H, W] in [0, 1], storage resolution
    labels: torch.Tensor  # int64 [B]
    index: torch.Tensor  # int64 [B], rows of the dataset


def synthetic_spec(data: Mapping[str, Any]) -> SyntheticSpec:
    return SyntheticSpec(**dict(data["synthetic"]))


def prepare_dataset(data: Mapping[str, Any]) -> VideoDataset:
    """Generate/decode the dataset described by the `data` config into its cache (driver side)."""
    return open_dataset(data)


def open_dataset(data: Mapping[str, Any]) -> VideoDataset:
    """Open the cached dataset of the `data` config (memory-mapped; built on first use).

    With `data.root` unset: the built-in synthetic data. With `data.root` a folder: a
    BIRDS-style, UCF50 or CREMA-D tree (`data.layout`, default auto-detected; see
    harness/data/folders.py), its clips decoded once (`data.num_frames` frames sampled by
    `data.sampling`, resized to `data.frame_size`) into a cache under `data.cache_dir`.
    Problems with the folder raise `DatasetError` naming the file, before any decoding.
    """
    if data.get("root"):
        from harness.data.cache import open_folder_dataset

        index, cached = open_folder_dataset(
            data["root"],
            layout=str(data.get("layout", "auto")),
            num_frames=int(data["num_frames"]),
            size=int(data["frame_size"]),
            sampling=str(data.get("sampling", "uniform")),
            cache_root=data["cache_dir"],
            on_bad_file=str(data.get("on_bad_file", "error")),
            class_names=data.get("class_names"),
            **dict(data.get("options") or {}),
        )
        return VideoDataset(
            name=Path(data["root"]).name,
            synthetic=False,
            class_names=tuple(cached.class_names),
            video=cached.video,
            labels=np.asarray(cached.labels),
            split=np.asarray(cached.split),
            skipped=index.skipped,
        )
    arrays = load_or_generate(synthetic_spec(data), Path(data["cache_dir"]))
    return VideoDataset(
        name=str(data["name"]),
        synthetic=True,
        class_names=tuple(data.get("class_names") or arrays.class_names),
        video=arrays.video,
        labels=np.asarray(arrays.label),
        split=np.asarray(arrays.split),
        actor_box=arrays.actor_box,
    )


def to_clips(video: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 [B, T, H, W, 3] -> float [B, T, 3, H, W] in [0, 1]."""
    clips = torch.from_numpy(np.ascontiguousarray(video)).to(device)
    return clips.permute(0, 1, 4, 2, 3).float().div_(255.0)


def iterate_batches(
    dataset: VideoDataset,
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
        yield Batch(
            clips=to_clips(dataset.video[rows], device),
            labels=torch.from_numpy(dataset.labels[rows].astype(np.int64)).to(device),
            index=torch.from_numpy(rows.astype(np.int64)).to(device),
        )
