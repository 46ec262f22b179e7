"""The decode-once cache: the data-loading share of a trial's time, against decoding in every trial.

A study decodes every clip once (in the driver) into a memory-mapped cache; each trial then only
opens it (index the folder, compute the cache key, memory-map the arrays) and reads its batches.
This benchmark writes a UCF50-style tree of real encoded videos (PyAV, mpeg4 .avi like UCF50's
xvid files: a smooth moving scene plus per-frame noise), runs the harness's own code on it with
the `ucf50_video` experiment's trial config (vanilla, the tiny TimeSformer, 1 torch thread like a
trial with `sweep.cpus_per_trial=1`), and for each setting (source resolution and length) prints:

- build: the driver's one decode of every clip into the cache (`open_dataset`, 2 decoder threads);
- decode: what a trial without the cache would spend first: `read_clip` on every clip, 1 thread;
- open: a later trial's `open_dataset` (the cache exists: nothing is decoded);
- batches: every batch the trial reads (`iterate_batches`: train split shuffled each epoch, val
  each epoch, test once), without the model;
- train: the trial's epochs (`epoch_seconds`: training plus the validation pass);
- trial: the whole trial (`train_and_evaluate`: epochs, test, occlusion test, as in a study);
- share with the cache = (open + batches) / trial (open alone: open / trial); share decoding in
  every trial = (decode + batches) / (decode + trial).

    python benchmarks/decode_cache.py [--clips 160] [--epochs 2] [--trials 2]
        [--settings 160x120x48 320x240x48 320x240x150] [--workdir DIR]

`--workdir` keeps the video trees for another run (the cache is always built afresh).  The trial
after the build is timed `--trials` times (medians shown).  Target: the share with
the cache under 5%.  Videos are written with the tests' writer (tests/_video_files.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _video_files import ucf50_tree  # noqa: E402  (the tests' PyAV writer)

from harness.config import compose, resolve_paths, trial_config  # noqa: E402
from harness.data import iterate_batches, open_dataset  # noqa: E402
from harness.data.folders import index_folder  # noqa: E402
from harness.data.video_io import read_clip  # noqa: E402
from harness.train import train_and_evaluate  # noqa: E402

CLASSES = ("Basketball", "Biking", "Diving", "Fencing", "Kayaking", "Punch", "Rowing", "Skiing")
GROUPS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)  # test: groups 1-2, val: 3, train: 4-10


def scene(clip: int, num_frames: int, height: int, width: int) -> np.ndarray:
    """A smooth background, a bright disc moving across it, and per-frame noise (std 6)."""
    rng = np.random.default_rng(clip)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 90 + 40 * np.sin(x / width * (2 + clip % 3) + y / height * 3)
    tint = rng.uniform(0.8, 1.2, 3).astype(np.float32)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    cy, cx, r = rng.uniform(0.3, 0.7) * height, rng.uniform(0.1, 0.3) * width, height / 6
    for t in range(num_frames):
        px = cx + t * 0.6 * width / num_frames
        disc = 100 * ((y - cy) ** 2 + (x - px) ** 2 < r**2)
        noise = rng.normal(0, 6, (height, width)).astype(np.float32)
        frame = (base + disc + noise)[..., None] * tint
        frames[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return frames


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def read_every_batch(config: dict, epochs: int) -> float:
    """Seconds for a trial's batch reads without the model (`open_dataset` not included)."""
    dataset = open_dataset(config["data"])
    size, eval_size = int(config["train"]["batch_size"]), int(config["train"]["eval_batch_size"])
    generator = torch.Generator().manual_seed(0)
    reads = [("test", eval_size, False)]
    for _ in range(epochs):
        reads[:0] = [("train", size, True), ("val", eval_size, False)]
    started = time.perf_counter()
    for split, batch_size, shuffle in reads:  # each batch is read and converted, as in a trial
        for _ in iterate_batches(dataset, dataset.indices(split), batch_size, shuffle=shuffle,
                                 generator=generator):  # fmt: skip
            pass
    return time.perf_counter() - started


def measure(setting: str, workdir: Path, cache: Path, clips: int, epochs: int, trials: int) -> dict:
    width, height, frames = (int(v) for v in setting.split("x"))
    root = workdir / f"UCF50-{setting}"
    per_group = max(1, round(clips / (len(CLASSES) * len(GROUPS))))
    if not root.is_dir():
        ucf50_tree(root, CLASSES, GROUPS, per_group,
                   make=lambda i: scene(i, frames, height, width))  # fmt: skip
    cfg = compose("ucf50_video", [
        f"data.root={root}", f"data.cache_dir={cache}", f"train.epochs={epochs}",
        "train.threads=1", "data.options.test_groups=[1,2]", "data.options.val_groups=[3]",
    ])  # fmt: skip
    resolve_paths(cfg)
    config = trial_config(cfg, "vanilla")
    torch.set_num_threads(1)
    data = config["data"]
    build, dataset = timed(lambda: open_dataset(data))
    paths = [s.path for s in index_folder(root, "ucf50", **data["options"]).samples]
    rows = []
    for _ in range(trials):
        decode, _ = timed(lambda: [read_clip(p, data["num_frames"], data["frame_size"],
                                             data["sampling"]) for p in paths])  # fmt: skip
        opened, _ = timed(lambda: open_dataset(data))
        batches = read_every_batch(config, epochs)
        epoch_seconds = []

        def report(metrics, _artifacts, seconds=epoch_seconds):
            seconds.append(metrics["epoch_seconds"])

        trial, _ = timed(lambda report=report: train_and_evaluate(config, report))
        rows.append(dict(decode=decode, open=opened, batches=batches, train=sum(epoch_seconds),
                         trial=trial))  # fmt: skip
    out = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
    size = sum(p.stat().st_size for p in paths) / len(paths) / 1e6
    out.update(setting=f"{width}x{height}, {frames} frames ({size:.2f} MB/clip)",
               clips=len(dataset.labels), build=build)  # fmt: skip
    out["share_cache"] = (out["open"] + out["batches"]) / out["trial"]
    out["share_decode"] = (out["decode"] + out["batches"]) / (out["decode"] + out["trial"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=160, help="clips per setting (about)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per trial")
    parser.add_argument("--trials", type=int, default=2, help="timed trials per setting")
    parser.add_argument("--settings", nargs="+", default=["160x120x48", "320x240x48",
                        "320x240x150"], help="source videos: WIDTHxHEIGHTxFRAMES")  # fmt: skip
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where the trees and the cache go (default: a temporary folder)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="decode-cache-") as tmp:
        workdir, cache = args.workdir or Path(tmp), Path(tmp) / "cache"  # a fresh cache each run
        rows = [measure(s, workdir, cache, args.clips, args.epochs, args.trials)
                for s in args.settings]  # fmt: skip
    print(f"\nucf50_video trial (vanilla, {args.epochs} epochs, 1 thread), 8 frames at 96 x 96 "
          f"cached per clip; medians of {args.trials} trials\n")  # fmt: skip
    print("| source videos | clips | build (once) s | decode s | open s | batches s | train s | "
          "trial s | share with cache | open alone | share decoding per trial |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['setting']} | {r['clips']} | {r['build']:.1f} | {r['decode']:.1f} | "
              f"{r['open']:.3f} | {r['batches']:.2f} | {r['train']:.1f} | {r['trial']:.1f} | "
              f"**{100 * r['share_cache']:.1f}%** | {100 * r['open'] / r['trial']:.1f}% | "
              f"{100 * r['share_decode']:.1f}% |")  # fmt: skip


if __name__ == "__main__":
    main()
