"""Every explainer's cost as a ratio of the model's forward pass on the same batch.

    python benchmarks/explainers.py [--model tiny|base|both] [--batch-size 8] [--repeats 10]
        [--warmup 2] [--reference-repeats 3] [--threads 1] [--device cpu|cuda] [--clock wall|cpu]

For each model (the project's tiny TimeSformer and a bigger "base" one) it times, as the median of
`--repeats` runs after `--warmup` runs (CUDA work is synchronised before each clock reading; on a
shared CPU, `--clock cpu` reads the process's CPU time instead of the wall clock):

* the forward pass without capture (the 1.0 baseline), with the attentions captured, and with the
  autograd graph kept (what the gradient explainers run); the backward to the attentions
  (rollout_grad, tibav) and to the tokens entering the last block (gradcam, gradcam_pp), each
  on its own;
* every explainer given the already-captured tensors (and gradients): the block path that
  `explain_input` runs (`divided_steps` + the explainer) and, for the attention explainers, the
  dense reference (`compose_divided` + the same explainer; `--reference-repeats` runs: slow);
* every explainer end to end: `explain_input(model, clips, name)`, its own forward included;
* the row-vector rollout (`harness.explain.rollout`, on the dense composed steps and on the block
  steps) against the naive full-matrix product, whose agreement to 1e-5 is asserted.

It prints Markdown tables (benchmarks/README.md has the numbers measured so far). Speed targets
live here, not in the tests: rollout and rollout_fem under 5% of a forward pass.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from harness.explain import (
    ATTENTION_EXPLAINERS,
    EXPLAINERS,
    FEATURE_EXPLAINERS,
    NEEDS_GRADIENTS,
    explain_input,
    random_relevance,
    rollout,
)
from harness.explain.video import compose_divided, divided_steps, tokens_to_grid
from harness.models.video import TimeSformerClassifier

TARGET = 0.05  # rollout and rollout_fem, given the captured attentions, as a fraction of a forward
TARGETED = ("rollout", "rollout_fem")

# name -> (description, TimeSformerClassifier.from_config keywords, clip side)
MODELS: dict[str, tuple[str, dict[str, int], int]] = {
    "tiny": (
        "8 frames 32x32, patch 8 (16 patches/frame, N=129), width 64, 2 blocks, 4 heads",
        {},
        32,
    ),
    "base": (
        "8 frames 64x64, patch 8 (64 patches/frame, N=513), width 192, 4 blocks, 6 heads",
        {"image_size": 64, "hidden_size": 192, "num_layers": 4, "num_heads": 6},
        64,
    ),
}


def add_timer_arguments(parser: argparse.ArgumentParser, *, repeats: int, warmup: int,
                        clock: str) -> None:  # fmt: skip
    """The timing options every timing benchmark takes (`timer_from` reads them)."""
    parser.add_argument("--repeats", type=int, default=repeats, help="timed runs")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed runs before")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:<i>")
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default=clock,
        help="wall: elapsed time; cpu: the process's CPU time (CPU only; with --threads 1 it is "
        "robust to other work on a shared machine)",
    )  # fmt: skip


def timer_from(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Timer:
    """Apply the timing options (threads, device: `args.device` becomes a torch.device) and
    return their Timer; a CUDA device that is not there, or the CPU clock on one, is refused."""
    args.device = torch.device(args.device)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.device.type == "cuda" and args.clock == "cpu":
        parser.error("--clock cpu measures CPU work only; use --clock wall with --device cuda")
    torch.set_num_threads(args.threads)
    return Timer(args.device, args.repeats, args.warmup, args.clock)


class Timer:
    """Median time of a callable, synchronising CUDA around every run. clock: "wall" (elapsed
    time) or "cpu" (this process's CPU time: what one thread costs, whatever else runs)."""

    def __init__(self, device: torch.device, repeats: int, warmup: int, clock: str) -> None:
        self.device, self.repeats, self.warmup = device, repeats, warmup
        self.clock = time.perf_counter if clock == "wall" else time.process_time

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def samples(self, fn: Callable[[], object], repeats: int | None = None) -> list[float]:
        """Milliseconds of each of `repeats` runs after the warm-up runs."""
        for _ in range(self.warmup):
            fn()
        times = []
        for _ in range(repeats or self.repeats):
            self._sync()
            start = self.clock()
            fn()
            self._sync()
            times.append(1e3 * (self.clock() - start))
        return times

    def ms(self, fn: Callable[[], object], repeats: int | None = None) -> float:
        return statistics.median(self.samples(fn, repeats))


def full_matrix_rollout(steps: list[torch.Tensor]) -> torch.Tensor:
    """The naive rollout: fuse heads (mean), A' = (A + I) / rowsum, the product A'_L ... A'_1 of
    all N x N matrices, its class row over tokens 1..N-1: [B, N-1]."""
    n = steps[0].shape[-1]
    eye = torch.eye(n, dtype=steps[0].dtype, device=steps[0].device)
    product = None
    for a in steps:
        m = a.mean(1) + eye
        m = m / m.sum(-1, keepdim=True)
        product = m if product is None else m @ product
    return product[:, 0, 1:]


def benchmark_model(name: str, args: argparse.Namespace, timer: Timer) -> dict[str, object]:
    description, config, side = MODELS[name]
    torch.manual_seed(0)
    model = TimeSformerClassifier.from_config(4, **config).to(args.device).eval()
    clips = torch.rand(args.batch_size, 8, 3, side, side, device=args.device)
    grid = model.grid
    rows: list[tuple[str, float]] = []

    # Settle the allocator and caches first: every path once or twice, untimed.
    for _ in range(2):
        explain_input(model, clips, "tibav")
        explain_input(model, clips, "rollout")

    # The forward passes and the backward passes. The baseline is timed before and after all the
    # rest and its median taken over both, so that a drift in the machine's load shows less.
    with torch.no_grad():
        baseline = timer.samples(lambda: model(clips))
        captured_ms = timer.ms(lambda: model(clips, capture=True))
        rows.append(("forward with attention capture", captured_ms))
        out = model(clips, capture=True)
    with torch.enable_grad():
        rows.append(
            (
                "forward with capture and autograd graph (gradient explainers)",
                timer.ms(lambda: model(clips, capture=True)),
            )
        )
        graph = model(clips, capture=True)
        target = graph.logits.argmax(-1)
        score = graph.logits.gather(1, target[:, None]).sum()
        rows.append(
            (
                "backward to the attentions (rollout_grad, tibav)",
                timer.ms(lambda: graph.attention.gradients(score, retain_graph=True)),
            )
        )
        rows.append(
            (
                "backward to the last block's input tokens (gradcam, gradcam_pp)",
                timer.ms(lambda: torch.autograd.grad(score, graph.features, retain_graph=True)),
            )
        )
        grads = graph.attention.gradients(score, retain_graph=True)
        (feature_grads,) = torch.autograd.grad(score, graph.features)
    att = out.attention
    features = out.features

    # Every explainer on the captured tensors, then end to end.
    captured: dict[str, float] = {}
    with torch.no_grad():
        for explainer in EXPLAINERS:
            grad = explainer in NEEDS_GRADIENTS
            if explainer in ATTENTION_EXPLAINERS:
                fn = ATTENTION_EXPLAINERS[explainer]

                def run(compose, fn=fn, grad=grad) -> torch.Tensor:
                    if grad:
                        return fn(compose(att), compose(grads, gradient=True))
                    return fn(compose(att))

                ms = captured[explainer] = timer.ms(lambda run=run: run(divided_steps))
                rows.append((f"{explainer}: on captured tensors (divided_steps + explainer)", ms))
                ms = timer.ms(lambda run=run: run(compose_divided), args.reference_repeats)
                rows.append((f"{explainer}: dense reference (compose_divided + explainer)", ms))
            else:
                if explainer == "random":

                    def run() -> torch.Tensor:
                        return random_relevance((args.batch_size, *grid), device=args.device)

                else:
                    fn = FEATURE_EXPLAINERS[explainer]

                    def run(fn=fn, grad=grad) -> torch.Tensor:
                        maps = tokens_to_grid(features, grid)
                        if grad:
                            return fn(maps, tokens_to_grid(feature_grads, grid))
                        return fn(maps)

                ms = captured[explainer] = timer.ms(run)
                rows.append((f"{explainer}: on captured tensors", ms))
            rows.append(
                (
                    f"{explainer}: explain_input end to end",
                    timer.ms(lambda e=explainer: explain_input(model, clips, e)),
                )
            )

        baseline += timer.samples(lambda: model(clips))
        forward = statistics.median(baseline)
        rows.insert(0, ("forward, no capture (the baseline)", forward))

        # Row-vector rollout against the full-matrix product, on the same composed steps.
        steps = compose_divided(att)
        blocks = divided_steps(att)
        naive = full_matrix_rollout(steps)
        for other in (rollout(steps), rollout(blocks)):
            torch.testing.assert_close(other, naive, atol=1e-5, rtol=1e-5)
        versus = {
            "full": timer.ms(lambda: full_matrix_rollout(steps), repeats=args.reference_repeats),
            "row": timer.ms(lambda: rollout(steps)),
            "block": timer.ms(lambda: rollout(blocks)),
            "diff": max(
                float((rollout(steps) - naive).abs().max()),
                float((rollout(blocks) - naive).abs().max()),
            ),
        }
    return {
        "name": name,
        "description": description,
        "forward": forward,
        "rows": rows,
        "captured": captured,
        "versus": versus,
    }


def device_name(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU ({cpu}), {threads} thread(s)"


def markdown(results: list[dict[str, object]], args: argparse.Namespace) -> str:
    lines = [
        f"Device: {device_name(args.device, args.threads)}; torch {torch.__version__}; "
        f"batch {args.batch_size}; {args.clock} clock; median of {args.repeats} runs after "
        f"{args.warmup} warm-up (the baseline: {args.repeats} before and {args.repeats} after the "
        f"other rows; dense reference and full-matrix rows: {args.reference_repeats}).",
        "",
    ]
    for res in results:
        lines += [
            f"### {res['name']}: {res['description']}",
            "",
            "| step | ms | x forward |",
            "|---|---:|---:|",
        ]
        for label, ms in res["rows"]:
            lines.append(f"| {label} | {ms:.2f} | {ms / res['forward']:.3f} |")
        lines.append("")
    lines += [
        "### Row-vector rollout against the full-matrix product (same composed steps)",
        "",
        "| model | full matrix ms | row vector, dense steps ms | speed-up | row vector, block "
        "steps ms | speed-up | max abs diff |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        v = res["versus"]
        lines.append(
            f"| {res['name']} | {v['full']:.2f} | {v['row']:.2f} | {v['full'] / v['row']:.1f}x | "
            f"{v['block']:.2f} | {v['full'] / v['block']:.1f}x | {v['diff']:.1e} |"
        )
    lines += ["", f"### Targets: {', '.join(TARGETED)} under {TARGET:.0%} of a forward pass", ""]
    for res in results:
        for name in TARGETED:
            ratio = res["captured"][name] / res["forward"]
            verdict = "met" if ratio < TARGET else "MISSED"
            lines.append(f"- {res['name']} {name}: {ratio:.1%} of a forward pass: {verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("tiny", "base", "both"), default="both")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--reference-repeats", type=int, default=3, help="timed runs of the slow dense references"
    )
    add_timer_arguments(parser, repeats=10, warmup=2, clock="wall")
    args = parser.parse_args(argv)
    timer = timer_from(parser, args)
    names = ("tiny", "base") if args.model == "both" else (args.model,)
    results = [benchmark_model(name, args, timer) for name in names]
    print(markdown(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
