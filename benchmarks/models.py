"""The video models side by side: forward, training step and explainers as ratios of the forward.

    python benchmarks/models.py [--size tiny|larger|both] [--batch-size 4] [--repeats 5]
        [--warmup 1] [--threads 1] [--device cpu|cuda] [--clock wall|cpu]

For each model (`timesformer`, `pool_t`, `video_swin_t`; their configs in harness/conf/model/ at
`tiny`, and a `larger` size: 64 x 64 frames, wider and deeper) it times, as the median of
`--repeats` runs after `--warmup` (CUDA synchronised around each run; `--clock cpu` reads the
process's CPU time, for a shared machine): the forward pass (the 1.0 of its row), one training
step (forward, backward, AdamW step), and every explainer end to end through
`harness.explain.explain` (its own forward included). It prints one Markdown table, one row per
(model, size); benchmarks/README.md has the numbers measured so far.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from explainers import Timer, add_timer_arguments, timer_from  # noqa: E402

from harness.explain import EXPLAINERS, explain  # noqa: E402
from harness.models import build_model  # noqa: E402

COMMON = {"num_frames": 8}
TINY = {  # harness/conf/model/<name>.yaml, 32 x 32 frames
    "timesformer": {"image_size": 32, "patch_size": 8, "hidden_size": 64, "num_layers": 2,
                    "num_heads": 4},
    "pool_t": {"image_size": 32, "patch_size": 8, "hidden_size": 64, "spatial_layers": 2,
               "temporal_layers": 1, "num_heads": 4},
    "video_swin_t": {"image_size": 32, "patch_size": [2, 4, 4], "embed_dim": 32, "depths": [2, 2],
                     "num_heads": [2, 4], "window_size": [2, 4, 4]},
}  # fmt: skip
LARGER = {  # 64 x 64 frames, about 4x the tokens and 2-3x the width
    "timesformer": {"image_size": 64, "patch_size": 8, "hidden_size": 192, "num_layers": 4,
                    "num_heads": 6},
    "pool_t": {"image_size": 64, "patch_size": 8, "hidden_size": 192, "spatial_layers": 4,
               "temporal_layers": 2, "num_heads": 6},
    "video_swin_t": {"image_size": 64, "patch_size": [2, 4, 4], "embed_dim": 96,
                     "depths": [2, 2, 2], "num_heads": [3, 6, 12], "window_size": [2, 4, 4]},
}  # fmt: skip
SIZES = {"tiny": TINY, "larger": LARGER}


def benchmark(name: str, size: str, args: argparse.Namespace, timer: Timer) -> dict[str, float]:
    cfg = {"name": name, **COMMON, **SIZES[size][name]}
    torch.manual_seed(0)
    model = build_model(cfg, 4).to(args.device)
    side = cfg["image_size"]
    clips = torch.rand(args.batch_size, 8, 3, side, side, device=args.device)
    labels = torch.arange(args.batch_size, device=args.device) % 4
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        optimiser.zero_grad()
        F.cross_entropy(model(clips).logits, labels).backward()
        optimiser.step()

    model.train()
    train_ms = timer.ms(step)
    model.eval()
    with torch.no_grad():
        forward_ms = timer.ms(lambda: model(clips))
    row = {"params (M)": sum(p.numel() for p in model.parameters()) / 1e6,
           "forward ms": forward_ms, "train step": train_ms / forward_ms}  # fmt: skip
    for explainer in EXPLAINERS:
        row[explainer] = timer.ms(lambda e=explainer: explain(model, clips, e)) / forward_ms
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "larger", "both"], default="both")
    parser.add_argument("--batch-size", type=int, default=4)
    add_timer_arguments(parser, repeats=5, warmup=1, clock="wall")
    args = parser.parse_args(argv)
    timer = timer_from(parser, args)
    sizes = ["tiny", "larger"] if args.size == "both" else [args.size]
    rows = [(m, s, benchmark(m, s, args, timer)) for s in sizes for m in TINY]
    columns = list(rows[0][2])
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} thread(s), batch {args.batch_size}, device {args.device}, "
          f"{args.clock} clock, median of {args.repeats}; ratios: x the forward")  # fmt: skip
    print("\n| model | size | " + " | ".join(columns) + " |")
    print("|" + "---|" * (len(columns) + 2))
    for model, size, row in rows:
        cells = [f"{v:.2f}" if k != "forward ms" else f"{v:.1f}" for k, v in row.items()]
        print(f"| {model} | {size} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
