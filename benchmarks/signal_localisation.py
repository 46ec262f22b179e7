"""Does the signal Linformer learn the synthetic task, and do its explanations find the event?

    python benchmarks/signal_localisation.py [--epochs 10] [--seeds 0 1 2] [--threads 1]
        [--lr 2e-3] [--weight-decay 0.05] [--batch-size 16] [--warmup 0.1] [key=value ...]

Data: the built-in synthetic signals (`harness.data.synthetic`, default `SyntheticSpec`, its `seed`
set by `--data-seed`): a 32-sample class-specific event at a random time in a 256-sample, 6-channel
noisy window; standardised per channel with the training split's mean and std, as `harness.data`
feeds the model. Model: `SignalTransformer(num_classes, **overrides)` (its defaults unless
`key=value` overrides name constructor keywords, e.g. `projection_init=xavier`). Training as
`harness.train` does it for vanilla: AdamW, one-cycle learning rate (`--warmup` share of the steps
rising), cross-entropy, gradient norm clipped to `--grad-clip`, shuffled batches; one model per
`--seeds` entry.

For every trained model and every explainer of `harness.explain.signal` (the predicted class
explained, relevance per time token upsampled to samples by `relevance_over_time`, the weights ET's
soft policy multiplies the signal by), on the test split:

* event mass: sum of the weights inside the event [event_start, event_start + event_length) over
  their sum, averaged over the signals; chance (a constant map) is event_length / L = 0.125;
* pointing: the share of signals whose highest-weighted sample lies inside the event;
* ms per signal: `explain_input` end to end (its forward, and backward where needed), batch 50.

The "token oracle" row is the best a token-level map can do: token t's relevance is the share of
its own patch [t p, (t+1) p) inside the event, put through the same `relevance_over_time`.
Prints Markdown tables (benchmarks/README.md has the numbers measured so far).
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import yaml

from harness.data.synthetic import SyntheticSpec, generate
from harness.explain import EXPLAINERS, explain_input
from harness.explain.signal import relevance_over_time
from harness.models.signal import SignalTransformer

ORACLE = "token oracle"
EXPLAIN_BATCH = 50


@dataclass(frozen=True)
class Split:
    signals: torch.Tensor  # [n, L, C] standardised
    labels: torch.Tensor  # [n]
    event_start: torch.Tensor  # [n]


def load_splits(spec: SyntheticSpec) -> dict[str, Split]:
    """The synthetic signals per split, standardised with the training split's channel stats."""
    arrays = generate(spec)
    train = arrays.signal[arrays.split == "train"]
    mean, std = train.mean(axis=(0, 1)), train.std(axis=(0, 1))
    splits = {}
    for name in ("train", "val", "test"):
        rows = arrays.split == name
        x = (arrays.signal[rows] - mean) / np.where(std > 0, std, 1.0)
        splits[name] = Split(
            torch.from_numpy(x.astype(np.float32)),
            torch.from_numpy(arrays.label[rows]),
            torch.from_numpy(arrays.event_start[rows].astype(np.int64)),
        )
    return splits


def train(model: SignalTransformer, data: Split, args: argparse.Namespace, seed: int) -> float:
    """Train in place as harness.train does for vanilla; returns the seconds it took."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps = args.epochs * math.ceil(len(data.labels) / args.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=steps, pct_start=args.warmup
    )
    started = time.perf_counter()
    model.train()
    for _ in range(args.epochs):
        order = torch.randperm(len(data.labels), generator=generator)
        for rows in order.split(args.batch_size):
            loss = torch.nn.functional.cross_entropy(
                model(data.signals[rows]).logits, data.labels[rows]
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            optimizer.step()
            schedule.step()
    model.eval()
    return time.perf_counter() - started


@torch.no_grad()
def accuracy(model: SignalTransformer, data: Split) -> float:
    return float((model(data.signals).logits.argmax(1) == data.labels).float().mean())


def event_mask(event_start: torch.Tensor, event_length: int, signal_length: int) -> torch.Tensor:
    """bool [n, L]: sample s of signal i lies in [event_start_i, event_start_i + event_length)."""
    samples = torch.arange(signal_length)
    offset = samples[None] - event_start[:, None]
    return (offset >= 0) & (offset < event_length)


def token_oracle(event_start: torch.Tensor, event_length: int, model: SignalTransformer):
    """[n, N-1]: the share of each token's own patch that lies inside the event."""
    inside = event_mask(event_start, event_length, model.signal_length).float()
    return inside.reshape(len(event_start), model.num_patches, model.patch_length).mean(-1)


def localisation(weights: torch.Tensor, inside: torch.Tensor) -> tuple[float, float]:
    """(mean share of the weights inside the event, share of argmax samples inside it)."""
    mass = (weights * inside).sum(-1) / weights.sum(-1)
    hits = inside.gather(1, weights.argmax(-1, keepdim=True)).float()
    return float(mass.mean()), float(hits.mean())


def explain_all(
    model: SignalTransformer, data: Split, name: str, seed: int
) -> tuple[torch.Tensor, float]:
    """Relevance [n, N-1] of every test signal by `name`, and the milliseconds per signal."""
    generator = torch.Generator().manual_seed(seed)
    maps = []
    started = time.perf_counter()
    for rows in torch.arange(len(data.labels)).split(EXPLAIN_BATCH):
        maps.append(explain_input(model, data.signals[rows], name, generator=generator).relevance)
    return torch.cat(maps), 1000 * (time.perf_counter() - started) / len(data.labels)


def parse_override(item: str) -> tuple[str, object]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise SystemExit(f"model override {item!r}: expected key=value (a constructor keyword)")
    return key, yaml.safe_load(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/signal_localisation.py",
        description="Train the signal Linformer on the synthetic signals and measure how much of "
        "each explainer's relevance falls inside the class event.",
    )
    parser.add_argument("overrides", nargs="*", help="model keywords, e.g. projection_init=xavier")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data-seed", type=int, default=0, help="SyntheticSpec.seed")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--warmup", type=float, default=0.1)
    parser.add_argument("--grad-clip", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    overrides = dict(parse_override(item) for item in args.overrides)
    torch.set_num_threads(args.threads)

    spec = SyntheticSpec(seed=args.data_seed)
    splits = load_splits(spec)
    _, length, channels = splits["train"].signals.shape
    test = splits["test"]
    inside = event_mask(test.event_start, spec.event_length, length).float()
    chance = spec.event_length / length
    print(
        f"# signal_localisation: {len(splits['train'].labels)} train / {len(splits['val'].labels)}"
        f" val / {len(test.labels)} test signals [L={length}, C={channels}], {spec.num_classes} "
        f"classes, event {spec.event_length} samples (chance {chance:.3f}); model overrides "
        f"{overrides or 'none'}; {args.epochs} epochs, lr {args.lr}, wd {args.weight_decay}, "
        f"batch {args.batch_size}, {args.threads} thread(s); torch {torch.__version__}, "
        f"Python {platform.python_version()}",
        flush=True,
    )

    rows_acc, rows_loc = [], {name: [] for name in (*EXPLAINERS, ORACLE)}
    for seed in args.seeds:
        torch.manual_seed(seed)
        model = SignalTransformer(
            spec.num_classes, **({"signal_length": length, "channels": channels} | overrides)
        )
        seconds = train(model, splits["train"], args, seed)
        val, test_acc = accuracy(model, splits["val"]), accuracy(model, test)
        rows_acc.append((seed, val, test_acc, seconds))
        print(f"seed {seed}: val {val:.3f} test {test_acc:.3f} ({seconds:.1f} s)", flush=True)
        for name in EXPLAINERS:
            relevance, ms = explain_all(model, test, name, seed)
            weights = relevance_over_time(relevance, length)
            rows_loc[name].append((*localisation(weights, inside), ms))
        oracle = token_oracle(test.event_start, spec.event_length, model)
        rows_loc[ORACLE].append((*localisation(relevance_over_time(oracle, length), inside), 0.0))

    print("\n| seed | val accuracy | test accuracy | training s |\n|---:|---:|---:|---:|")
    for seed, val, test_acc, seconds in rows_acc:
        print(f"| {seed} | {val:.3f} | {test_acc:.3f} | {seconds:.1f} |")
    print(
        f"\nTest split, mean over {len(args.seeds)} model(s) (min to max); chance {chance:.3f}.\n"
        "\n| explainer | event mass | × chance | pointing | ms / signal |"
        "\n|---|---:|---:|---:|---:|"
    )
    for name, values in rows_loc.items():
        mass, hits, ms = (list(column) for column in zip(*values))
        spread = f" ({min(mass):.3f} to {max(mass):.3f})" if len(mass) > 1 else ""
        timing = "" if name == ORACLE else f"{statistics.mean(ms):.2f}"
        print(
            f"| {name} | {statistics.mean(mass):.3f}{spread} | "
            f"{statistics.mean(mass) / chance:.2f} | {statistics.mean(hits):.3f} | {timing} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
