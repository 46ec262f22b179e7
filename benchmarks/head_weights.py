"""What Rollout-FEM's head weights carry on a trained video model, and what `top<n>` selects.

    python benchmarks/head_weights.py <trial folder with model.pt and config.yaml> [--clips 64]

Reads a trained TimeSformer (a trial's checkpoint folder, e.g.
<study>/ray/search-vanilla/<trial>/checkpoint_000007), explains its first test clips and prints,
over the heads of each clip: the spread (max - min) / mean of the `mean` weight (the ET poster)
and of the `max` weight (the RFEM paper), the relevance each head's rollout keeps on the class
token (the mean weight is exactly (1 - that) / (N - 1)), and how often the two weightings pick the
same `top2` heads.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml

from harness.data import iterate_batches, open_dataset
from harness.explain.attention import head_rollouts
from harness.explain.video import divided_steps
from harness.methods.crop import downsample
from harness.models import build_model


def _spread(w: torch.Tensor) -> float:
    """Mean over clips of (max - min) / mean over the heads: w [B, H]."""
    return ((w.amax(1) - w.amin(1)) / w.mean(1)).mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="trial folder with model.pt and config.yaml")
    parser.add_argument("--clips", type=int, default=64, help="test clips to explain (64)")
    args = parser.parse_args()
    cfg = yaml.safe_load((args.folder / "config.yaml").read_text())
    dataset = open_dataset(cfg["data"])
    model = build_model(cfg["model"], dataset.num_classes)
    model.load_state_dict(torch.load(args.folder / "model.pt"))
    model.eval()
    rows = dataset.indices("test")[: args.clips]
    batch = next(iterate_batches(dataset, rows, len(rows)))
    with torch.no_grad():
        out = model(downsample(batch.inputs["video"], model.image_size), capture=True)
        a = head_rollouts(divided_steps(out.attention))  # [B, H, N-1]
    mean, peak = a.mean(-1), a.amax(-1)
    top = [w.topk(2, 1).indices.sort(1).values for w in (mean, peak)]
    kept = (1 - a.sum(-1)).mean(0)
    print(f"{args.folder}: {len(rows)} test clips, {a.shape[1]} heads, N-1 = {a.shape[-1]} tokens")
    print(f"head weight spread, (max - min) / mean over heads: mean {_spread(mean):.3f}, "
          f"max {_spread(peak):.3f}")  # fmt: skip
    print(f"relevance kept on the class token, per head: {[round(k, 3) for k in kept.tolist()]}")
    print(f"top2 by mean = top2 by max on {(top[0] == top[1]).all(1).float().mean():.2f} of clips")


if __name__ == "__main__":
    main()
