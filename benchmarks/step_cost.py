"""What a training method costs: per step, per epoch (ET's refresh included), per prediction, and
the step's activation memory, as ratios to vanilla measured in one run.

    python benchmarks/step_cost.py [--models timesformer,pool_t,video_swin_t,linformer,hybrid]
        [--size tiny|larger|both] [--batch-size 16] [--larger-batch-size 4] [--batches 3]
        [--repeats 3] [--warmup 1] [--threads 1] [--device cpu|cuda] [--clock cpu|wall]

For every video model (at the `tiny` size of harness/conf/model/ and the `larger` size of
benchmarks/models.py), the signal model (`linformer`, harness/conf/model/linformer_tiny.yaml on
the synthetic data's 256 x 6 signals) and the hybrid (the tiny TimeSformer and that Linformer),
both at the tiny size only, and every method row (vanilla; IFI as configured in
harness/conf/method/ifi.yaml; ET as in harness/conf/method/et.yaml with each policy, the same
name for every input the model reads (the hybrid's `prune` rows prune both), `prune` at keep
0.25 / 0.5 / 0.75, prune at 0.5 with `full_input_weight=0.5` (its cache refreshed free from the
whole-view forwards) and with `refresh_every=2`; and in-forward pruning, `prune_after=1` at keep
0.25 / 0.5 / 0.75: one forward per step and per prediction, no explaining pass), on random clips
stored at 3x the model's input
side (as the synthetic data), random standard-normal signals and random labels, in this one
process:

* step: one training step (`method.loss`, backward, AdamW step), ET's cache already filled;
* epoch: `method.start_epoch` (ET's explaining pass over the training set, when it is due) and one
  step per batch of a `--batches`-batch training set, averaged over `refresh_every` epochs;
* predict: `method.predict` in eval mode without autograd (ET: explain the whole view, then
  classify the restricted clip);
* predict FLOPs: the floating-point operations of one prediction's matrix products, convolutions
  and attentions as torch's `FlopCounterMode` counts them: the work, which no load moves;
* memory: the bytes the step's forward saves for backward (distinct storages, via
  `torch.autograd.graph.saved_tensors_hooks`): the activation memory, what pruning cuts. On CUDA
  also the step's peak allocated memory (`torch.cuda.max_memory_allocated`).

Every time is the fastest of `--repeats` interleaved rounds (each round runs every row's step,
epoch and prediction in turn, after `--warmup` runs of each: a change of load reaches every row
alike, and load only ever adds time); `--clock cpu` (the default) reads this process's CPU time,
which on a shared machine with one thread measures the work rather than the waiting. The
model weights are random, so the relevance (and ET's crops) are those of an untrained model: the
costs of the box crops depend a little on the boxes; the pruned forward's does not. Video Swin-T
cannot prune and the Linformer (and so the hybrid) cannot prune inside its forward (config-time
refusals): those rows say so. benchmarks/README.md has the numbers.
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

from explainers import Timer, add_timer_arguments, timer_from  # noqa: E402
from models import COMMON, SIZES  # noqa: E402

from harness.data import Batch  # noqa: E402
from harness.methods import build_method  # noqa: E402
from harness.methods.modality import POLICY_KEYS, modalities_of  # noqa: E402
from harness.models import adapter_of, build_model  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "harness" / "conf"
METHOD_CONF = CONF / "method"
SIGNAL = {"signal_length": 256, "channels": 6}  # the synthetic data's signals
EPOCHS = 10  # the schedule ET reads its warm-up from; warm-up 0 here, every epoch is ET's
ROWS: dict[str, tuple[str, dict]] = {
    "vanilla": ("vanilla", {}),
    "IFI": ("ifi", {}),
    **{f"ET {p}": ("et", {"policy": p})
       for p in ("largest_region", "union_box", "mask", "soft", "none")},
    **{f"ET prune {k}": ("et", {"policy": "prune", "keep": k}) for k in (0.25, 0.5, 0.75)},
    "ET prune 0.5, full_input_weight 0.5": (
        "et", {"policy": "prune", "keep": 0.5, "full_input_weight": 0.5}),
    "ET prune 0.5, refresh_every 2": (
        "et", {"policy": "prune", "keep": 0.5, "refresh_every": 2}),
    **{f"ET prune {k}, prune_after 1": ("et", {"policy": "prune", "keep": k, "prune_after": 1})
       for k in (0.25, 0.5, 0.75)},
}  # fmt: skip


def method_config(name: str, changes: dict, inputs: tuple[str, ...]) -> dict:
    """The method's config with a row's changes, `policy` as every input's policy key."""
    cfg = yaml.safe_load((METHOD_CONF / f"{name}.yaml").read_text())
    changes = dict(changes)
    policy = changes.pop("policy", None)
    if policy is not None:
        changes.update({POLICY_KEYS[m]: policy for m in inputs})
    return {**cfg, "warmup_fraction": 0.0, **changes}


def model_config(name: str, size: str) -> dict | None:
    """The benchmarked config of model `name` at `size` (None: no such size; the signal and
    hybrid models have the tiny one only)."""
    if name in SIZES[size]:
        return {"name": name, **COMMON, **SIZES[size][name]}
    if size != "tiny" or name not in ("linformer", "hybrid"):
        return None
    signal = {**yaml.safe_load((CONF / "model" / "linformer_tiny.yaml").read_text()), **SIGNAL}
    if name == "linformer":
        return signal
    return {"name": "hybrid", "video": model_config("timesformer", size), "signal": signal}


class SavedBytes:
    """Bytes of the distinct storages autograd saves for backward while it is active."""

    def __init__(self) -> None:
        self.storages: dict[int, int] = {}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def random_inputs(cfg: dict, inputs: tuple[str, ...], batch_size: int, generator) -> dict:
    """Random inputs as the synthetic data stores them: clips at 3x the video model's side,
    standard-normal signals."""
    found = {}
    if "video" in inputs:
        side = cfg.get("video", cfg)["image_size"]
        found["video"] = torch.rand(batch_size, 8, 3, 3 * side, 3 * side, generator=generator)
    if "signal" in inputs:
        found["signal"] = torch.randn(batch_size, SIGNAL["signal_length"], SIGNAL["channels"],
                                      generator=generator)  # fmt: skip
    return found


def measure(cfg: dict, batch_size: int, args) -> dict[str, dict]:
    adapter = adapter_of(cfg)
    generator = torch.Generator().manual_seed(0)
    batches = [
        Batch(
            {m: x.to(args.device)
             for m, x in random_inputs(cfg, adapter.inputs, batch_size, generator).items()},
            torch.randint(0, 4, (batch_size,), generator=generator).to(args.device),
            torch.arange(b * batch_size, (b + 1) * batch_size, device=args.device),
        )
        for b in range(args.batches)
    ]  # fmt: skip
    readers = [adapter.reader(cfg, m) for m in adapter.inputs]
    runs: dict[str, dict[str, Callable[[], object]]] = {}
    results: dict[str, dict] = {}
    for row, (name, changes) in ROWS.items():
        results[row] = {}
        if changes.get("policy") == "prune" and not all(r.prunes for r in readers):
            results[row]["refused"] = "cannot prune"
        elif changes.get("prune_after") and not all(r.prunes_in_forward for r in readers):
            results[row]["refused"] = "cannot prune in its forward"
        if results[row]:
            continue
        torch.manual_seed(0)
        model = build_model(cfg, 4, SIGNAL["channels"]).to(args.device)
        method = build_method(
            method_config(name, changes, adapter.inputs), modalities=modalities_of(model),
            epochs=EPOCHS,
        )  # fmt: skip
        optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(batch=batches[0], method=method, model=model, optimiser=optimiser) -> None:
            model.train()
            optimiser.zero_grad(set_to_none=True)
            method.loss(model, batch)[0].backward()
            optimiser.step()

        every = getattr(method, "refresh_every", 1)

        def epochs(method=method, model=model, step=step, every=every) -> None:
            for epoch in range(1, 1 + every):  # epoch 0 primed the cache
                method.start_epoch(model, epoch, lambda: iter(batches))
                for batch in batches:
                    step(batch)

        def predict(method=method, model=model) -> None:
            model.eval()
            with torch.no_grad():
                method.predict(model, batches[0].inputs)

        method.start_epoch(model, 0, lambda: iter(batches))  # ET: the first explaining pass
        saved = SavedBytes()
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
            if args.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(args.device)
            step()
        results[row]["memory"] = saved.total
        with FlopCounterMode(display=False) as counted:  # what no load moves
            predict()
        results[row]["predict FLOPs"] = counted.get_total_flops()
        if args.device.type == "cuda":
            results[row]["peak"] = torch.cuda.max_memory_allocated(args.device)
        runs[row] = {"step": step, "epoch": epochs, "predict": predict}
        results[row]["every"] = every
    # interleaved rounds: every row's runs in turn, so a change of load reaches all rows alike
    once = Timer(args.device, 1, 0, args.clock)
    for fns in runs.values():
        for fn in fns.values():
            for _ in range(args.warmup):
                fn()
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):
        for row, fns in runs.items():
            for key, fn in fns.items():
                times.setdefault((row, key), []).extend(once.samples(fn))
    for (row, key), samples in times.items():
        per_epoch = results[row]["every"] if key == "epoch" else 1
        results[row][key] = min(samples) / per_epoch
    return results


def table(results: dict[str, dict]) -> list[str]:
    base = results["vanilla"]
    columns = ["step", "epoch", "predict", "predict FLOPs", "memory"]
    columns += ["peak"] if "peak" in base else []
    lines = ["| method | " + " | ".join(f"{c} x vanilla" for c in columns) + " |",
             "|---|" + "---:|" * len(columns)]  # fmt: skip
    for row, result in results.items():
        if "refused" in result:
            cells = [f"refused: {result['refused']}"] + ["-"] * (len(columns) - 1)
        else:
            cells = [f"{result[c] / base[c]:.2f}" for c in columns]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="timesformer,pool_t,video_swin_t,linformer,hybrid")
    parser.add_argument("--size", choices=["tiny", "larger", "both"], default="both")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--larger-batch-size", type=int, default=4)
    parser.add_argument("--batches", type=int, default=3)
    add_timer_arguments(parser, repeats=3, warmup=1, clock="cpu")
    args = parser.parse_args(argv)
    timer_from(parser, args)  # threads and device; the rounds below time with their own Timer
    sizes = ["tiny", "larger"] if args.size == "both" else [args.size]
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} thread(s), device {args.device}, {args.clock} clock, fastest of "
          f"{args.repeats} rounds, {args.batches} batches per epoch")  # fmt: skip
    for size in sizes:
        batch_size = args.batch_size if size == "tiny" else args.larger_batch_size
        for model in args.models.split(","):
            cfg = model_config(model, size)
            if cfg is None:
                print(f"\n**{model}, {size}**: no {size} size (tiny only)")
                continue
            results = measure(cfg, batch_size, args)
            base = results["vanilla"]
            print(
                f"\n**{model}, {size}** (batch {batch_size}; vanilla: step "
                f"{base['step']:.0f} ms, epoch {base['epoch']:.0f} ms, predict "
                f"{base['predict']:.0f} ms, {base['memory'] / 2**20:.0f} MiB saved)\n"
            )
            print("\n".join(table(results)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
