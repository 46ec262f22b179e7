"""The occlusion test's cost with random tie orders: `evaluation.tie_draws` draws against one.

    python benchmarks/tie_draws.py [--epochs 2] [--draws 1,3,8] [--clips 64] [--threads 1]

Trains the default study's tiny TimeSformer (vanilla, `--epochs` epochs on the built-in SYNTHETIC
data), then runs the study's occlusion test (levels 0, 0.2, ..., 0.8 and the seed protocol, on
`--clips` test clips) for each explainer and each number of draws, through the plain forward
(`plain=True`, as the final stage's like-for-like test). A (level, direction) whose cut splits no
tied group is predicted once whatever the draws (a continuous map costs one draw), so the ratio
depends on how tied each explainer's maps are: the table gives the mean number of distinct values
per map (of 128 tokens), the forward passes (batches of 32; the explanations' own included) and
the seconds (wall clock), each as a ratio to one draw.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from harness.config import compose, resolve_paths, trial_config
from harness.evaluate import evaluate_occlusion, load_trained
from harness.train import train_and_evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--draws", default="1,3,8")
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--explainers", default="rollout,rollout_fem,tibav,random")
    parser.add_argument("--output", default="/tmp/tie_draws_model")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = compose("birds_video", [f"train.epochs={args.epochs}", "sweep=default"])
    resolve_paths(cfg)
    config = trial_config(cfg, "vanilla")
    config["train"]["threads"] = args.threads
    config["evaluation"]["validation_occlusion"] = False
    folder = Path(args.output)
    train_and_evaluate(config, report=lambda *_: None, artifacts_dir=folder)
    trained = load_trained(config, folder / "model.pt")
    indices = trained.dataset.indices("test")[: args.clips]
    draws = [int(d) for d in args.draws.split(",")]
    print(f"tiny TimeSformer, vanilla, {args.epochs} epochs; {len(indices)} test clips; "
          f"{args.threads} thread(s); SYNTHETIC data\n")  # fmt: skip
    print("| explainer | distinct values / 128 | draws | forwards | x fwd | seconds | x time |")
    print("|---|---|---|---|---|---|---|")
    for name in args.explainers.split(","):
        base_calls = base_seconds = None
        for n in draws:
            calls: list[int] = []
            branch = trained.model.branch("video")
            hook = branch.register_forward_pre_hook(lambda *_, calls=calls: calls.append(1))
            started = time.perf_counter()
            result = evaluate_occlusion(
                trained.model, trained.method, trained.dataset, indices,
                dict(config["evaluation"], tie_draws=n), 32, explainer=name,
                explainer_params={}, plain=True,
            )  # fmt: skip
            seconds = time.perf_counter() - started
            hook.remove()
            base_calls = base_calls or len(calls)
            base_seconds = base_seconds or seconds
            print(
                f"| {name} | {result.distinct['video']:.1f} | {n} | {len(calls)} | "
                f"{len(calls) / base_calls:.2f} | {seconds:.1f} | {seconds / base_seconds:.2f} |"
            )


if __name__ == "__main__":
    main()
