"""Train and evaluate one configuration: the body of every trial, and the final-training command.

    python -m harness.train best/et.yaml [key=value ...] [--output DIR]

trains the configuration in the file (as `harness.sweep` exports it) and prints its test accuracy
and occlusion metrics. Inside a study, `trainables/` calls `train_and_evaluate` under Ray Tune.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from omegaconf import OmegaConf

from harness.data import iterate_batches, open_dataset
from harness.data.folders import DatasetError
from harness.evaluate import (
    OcclusionResult,
    TrainedModel,
    evaluate_accuracy,
    evaluate_occlusion,
    faithfulness_table,
    flat_faithfulness,
    method_for,
)
from harness.models import build_model, model_inputs

Report = Callable[[dict[str, float], Path | None], None]
STATE_FILE = "training_state.pt"


@dataclass
class TrainingState:
    """Where a training run stands after `epoch` epochs: the state dicts of `parts` (model,
    optimizer, LR schedule, training method: anything with `state_dict`/`load_state_dict`), the
    batch-shuffling generator, the global random generators and the epoch's metrics.

    Saved with `torch.save` as tensors and plain values only, and read back with
    `torch.load(weights_only=True)` (no pickled code runs on load). `run` names the run that
    writes the state (`run_fingerprint` of its config, and its steps per epoch): a state is only
    ever loaded into the run that wrote it. Its parts (the LR schedule's step count included)
    and its epoch are written together in one file, so they always agree."""

    parts: dict[str, Any]
    generator: torch.Generator
    run: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0
    metrics: dict[str, float] = field(default_factory=dict)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        state = {
            "run": self.run,
            "epoch": self.epoch,
            "metrics": self.metrics,
            "parts": {name: part.state_dict() for name, part in self.parts.items()},
            "random": {"generator": self.generator.get_state(), **_global_random_state()},
        }
        torch.save(state, folder / STATE_FILE)

    def load(self, folder: Path, device: torch.device) -> None:
        state = torch.load(folder / STATE_FILE, map_location=device, weights_only=True)
        if state.get("run") != self.run:
            raise ValueError(
                f"{folder / STATE_FILE}: a training state of another run ({state.get('run')}), "
                f"not of this one ({self.run}); it cannot be continued here"
            )
        for name, part in self.parts.items():
            part.load_state_dict(state["parts"][name])
        self.generator.set_state(state["random"]["generator"].cpu())
        _set_global_random_state(state["random"])
        self.epoch, self.metrics = int(state["epoch"]), dict(state["metrics"])


CheckpointHook = Callable[[TrainingState, Path | None], None]
# where and with how many threads a run trains changes none of its steps' definitions
_RUN_LOCATION_KEYS = {"train": ("device", "threads")}


def run_fingerprint(config: Mapping[str, Any]) -> str:
    """A digest of everything in a trial config that defines its training run (all of it but
    `_RUN_LOCATION_KEYS`): equal for a run and the same run restarted, different for any other
    configuration, seed included."""
    plain = json.loads(json.dumps(config, sort_keys=True, default=str))
    for section, keys in _RUN_LOCATION_KEYS.items():
        for key in keys:
            plain.get(section, {}).pop(key, None)
    return hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()[:16]


def _global_random_state() -> dict[str, Any]:
    numpy_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy_key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
        "numpy_rest": (numpy_state["state"]["pos"], numpy_state["has_gauss"], numpy_state["gauss"]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_global_random_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    pos, has_gauss, gauss = state["numpy_rest"]
    np.random.set_state({
        "bit_generator": "MT19937",
        "state": {"key": state["numpy_key"].cpu().numpy().astype(np.uint32), "pos": pos},
        "has_gauss": has_gauss, "gauss": gauss,
    })  # fmt: skip
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
VALIDATION_FAITHFULNESS = "val_occ_gap"  # with evaluation.validation_occlusion, at the last epoch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the training steps (None: fp32). `auto`: bf16 on a CUDA device that
    supports it, else fp32 (CPU, older GPUs; ask for fp16 explicitly there)."""
    if precision == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def print_report(metrics: dict[str, float], artifacts: Path | None) -> None:
    shown = {k: round(v, 4) for k, v in metrics.items() if not k.startswith("occ_") or "auc" in k}
    print(json.dumps(shown), flush=True)


def train_and_evaluate(
    config: Mapping[str, Any],
    report: Report = print_report,
    artifacts_dir: Path | None = None,
    *,
    checkpoint: CheckpointHook | None = None,
    resume_from: Path | None = None,
) -> dict[str, float]:
    """Train `config` for `train.epochs`, reporting after every epoch.

    The last report adds the test accuracy, the occlusion metrics and (in `artifacts_dir`) the
    model weights and an explanation gallery. `checkpoint(state, folder)` runs before each report
    (folder: `artifacts_dir` at the last report, else None); `resume_from` is a folder a
    `TrainingState` was saved to: training continues after its epoch, as if never stopped."""
    train_cfg, eval_cfg = config["train"], config["evaluation"]
    generator = seed_everything(int(config["seed"]))
    if train_cfg.get("threads"):
        torch.set_num_threads(int(train_cfg["threads"]))
    device = resolve_device(str(train_cfg.get("device", "auto")))
    dataset = open_dataset(config["data"], model_inputs(config["model"]))
    model = build_model(config["model"], dataset.num_classes, dataset.signal_channels).to(device)
    epochs = int(train_cfg["epochs"])
    method = method_for(config, model)
    batch_size, eval_batch_size = int(train_cfg["batch_size"]), int(train_cfg["eval_batch_size"])
    train_idx, val_idx = dataset.indices("train"), dataset.indices("val")
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=float(train_cfg["lr"]), weight_decay=float(train_cfg["weight_decay"])
    )
    steps_per_epoch = math.ceil(len(train_idx) / batch_size)
    steps = epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=float(train_cfg["lr"]), total_steps=max(steps, 1),
        pct_start=float(train_cfg["warmup"]),
    )  # fmt: skip

    def train_batches():
        return iterate_batches(dataset, train_idx, eval_batch_size, device=device)

    # Mixed precision for the training steps only (forward and loss under autocast, fp32 weights;
    # fp16 with loss scaling); every evaluation (validation, test, occlusion, explanations) runs
    # in fp32, so the study's measurements do not depend on the training precision.
    amp_dtype = autocast_dtype(str(train_cfg.get("precision", "auto")), device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    parts = {"model": model, "optimizer": optimizer, "schedule": schedule, "method": method}
    if scaler.is_enabled():
        parts["scaler"] = scaler
    run = {"config": run_fingerprint(config), "steps_per_epoch": steps_per_epoch}
    state = TrainingState(parts, generator, run)
    if resume_from is not None:
        state.load(resume_from, device)
    for epoch in range(state.epoch, epochs):
        started = time.perf_counter()
        method.start_epoch(model, epoch, train_batches)
        model.train()
        loss_sum, correct = 0.0, 0
        for batch in iterate_batches(
            dataset, train_idx, batch_size, shuffle=True, generator=generator, device=device
        ):
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss, logits = method.loss(model, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss {loss.item()} at epoch {epoch}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)  # clip the true gradients
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(train_cfg["grad_clip"]))
            scaler.step(optimizer)  # skipped by fp16 loss scaling when a gradient overflowed
            scaler.update()
            schedule.step()
            loss_sum += loss.item() * len(batch)
            correct += (logits.argmax(1) == batch.labels).sum().item()
        val = evaluate_accuracy(model, method, dataset, val_idx, eval_batch_size, device)
        state.epoch = epoch + 1
        state.metrics = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / len(train_idx),
            "train_accuracy": correct / len(train_idx),
            "val_loss": val.loss,
            "val_accuracy": val.accuracy,
            "epoch_seconds": time.perf_counter() - started,
        }
        if state.epoch < epochs:
            if checkpoint is not None:
                checkpoint(state, None)
            report(state.metrics, None)
    # The last epoch's report adds the test evaluation (a run restored after its last epoch
    # evaluates its restored model again and reports the same numbers) and, when the search asks
    # for it, the validation occlusion gap (the faithfulness objective of sweep.objective=pareto).
    metrics = dict(state.metrics)
    if eval_cfg.get("validation_occlusion"):
        metrics.update(
            evaluate_occlusion(
                model, method, dataset, val_idx, eval_cfg, eval_batch_size, device
            ).as_metrics("val_occ")
        )
    test = _evaluate_test(config, model, method, dataset, eval_batch_size, device, artifacts_dir)
    metrics.update(test.metrics)
    if artifacts_dir is not None:
        _save_artifacts(config, model, method, dataset, test.occlusion, artifacts_dir, device)
        test.save(artifacts_dir)
    if checkpoint is not None:
        checkpoint(state, artifacts_dir)
    report(metrics, artifacts_dir)
    return metrics


@dataclass(frozen=True)
class _TestResult:
    metrics: dict[str, float]
    occlusion: OcclusionResult
    predictions: Any  # pd.DataFrame: per test clip, row, label, predicted, prob_<class>
    faithfulness: Any = None  # pd.DataFrame (evaluation.like_for_like): one row per explainer

    def save(self, folder: Path) -> None:
        """predictions.csv (and faithfulness.csv) beside the trial's other artifacts."""
        self.predictions.to_csv(folder / PREDICTIONS_FILE, index=False)
        if self.faithfulness is not None:
            self.faithfulness.to_csv(folder / FAITHFULNESS_FILE, index=False)


PREDICTIONS_FILE = "predictions.csv"
FAITHFULNESS_FILE = "faithfulness.csv"
EXPLAINED_DIR = "explained"  # evaluation.explain_model: the like-for-like evaluation's folder


def _evaluate_test(config, model, method, dataset, batch_size, device, artifacts_dir
                   ) -> _TestResult:  # fmt: skip
    """Test accuracy (and every clip's prediction), the occlusion test of the method's own
    pipeline and explainer, and with `evaluation.like_for_like` (the study's final stage) the
    like-for-like faithfulness of `evaluation.explainers` (`ff_<explainer>_<metric>`). With
    `evaluation.explain_model` too (the final stage's lowest seed of each method) that test is
    `python -m harness.evaluate --protocol like_for_like`'s, written to
    `<artifacts_dir>/explained/` (curves, trends, galleries, sanity check: what the study report
    shows of the model, so it need not explain the model again)."""
    eval_cfg, seed = config["evaluation"], int(config["seed"])
    test_idx = dataset.indices("test")
    test = evaluate_accuracy(
        model, method, dataset, test_idx, batch_size, device, keep_predictions=True
    )
    occlusion = evaluate_occlusion(
        model, method, dataset, test_idx, eval_cfg, batch_size, device, seed=seed
    )
    metrics = {"test_loss": test.loss, "test_accuracy": test.accuracy, **occlusion.as_metrics()}
    faithfulness = None
    if eval_cfg.get("like_for_like"):
        results = None
        if eval_cfg.get("explain_model") and artifacts_dir is not None:
            from harness.evaluate.__main__ import explain_model

            results = explain_model(
                TrainedModel(dataset, model, method), config, artifacts_dir / EXPLAINED_DIR,
                device, explainers=[str(e) for e in eval_cfg["explainers"]],
                protocol="like_for_like", batch_size=batch_size,
                source=f"the final trial's own model (seed {seed}), explained in the trial",
            ).results  # fmt: skip
        faithfulness = faithfulness_table(
            model, method, dataset, test_idx, eval_cfg, batch_size, device, seed=seed,
            results=results,
        )  # fmt: skip
        metrics.update(flat_faithfulness(faithfulness))
    return _TestResult(metrics, occlusion, test.predictions, faithfulness)


def _save_artifacts(config, model, method, dataset, occlusion, folder: Path, device) -> None:
    """model.pt (state dict), config.yaml (the trial config: the folder is self-describing), the
    occlusion curves of the method's explainer and an explanation gallery of a few test inputs
    per modality (gallery_<explainer>.png for clips, signal_gallery_<explainer>.png for signals)."""
    from reports.curves import plot_occlusion_curves
    from reports.gallery import save_input_gallery

    eval_cfg = config["evaluation"]
    label = " (SYNTHETIC)" if dataset.synthetic else ""
    folder.mkdir(parents=True, exist_ok=True)
    plot_occlusion_curves(
        {method.explainer: occlusion.curve},
        folder / "occlusion_curves.png",
        f"{method.name}: occlusion test of {method.explainer}{label}",
    )
    torch.save(model.state_dict(), folder / "model.pt")
    (folder / "config.yaml").write_text(yaml.safe_dump(dict(config), sort_keys=False))
    rows = dataset.indices("test")[: int(eval_cfg["gallery_clips"])]
    batch = next(iterate_batches(dataset, rows, len(rows), device=device))
    model.eval()
    relevance = method.explain(model, batch.inputs)
    with torch.enable_grad():
        predicted = method.predict(model, batch.inputs).argmax(1).cpu()
    views = method.view(batch.inputs)
    title = f"{method.name} / {method.explainer}{label}"
    stems = {"video": "gallery", "signal": "signal_gallery"}
    for m, stem in stems.items():
        if m in views:
            save_input_gallery(
                {m: views[m].cpu()}, {m: relevance[m].cpu()}, batch.labels.cpu(), predicted,
                dataset.class_names, folder / f"{stem}_{method.explainer}.png", title=title,
            )  # fmt: skip


def load_config(path: Path, overrides: list[str]) -> dict[str, Any]:
    """A trial config file (as `best/<method>.yaml`), with dotted `key=value` overrides."""
    from harness.config import ConfigError, validate_trial_config
    from harness.overrides import check_trial_file

    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None
    check_trial_file(loaded, overrides, str(path))
    cfg = OmegaConf.merge(OmegaConf.create(loaded), OmegaConf.from_dotlist(overrides))
    config = OmegaConf.to_container(cfg, resolve=True)
    validate_trial_config(config, source=str(path))
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.train",
        description="Train and evaluate one exported configuration (e.g. a study's best/et.yaml) "
        "and print its test accuracy and occlusion metrics.",
    )
    parser.add_argument("config", type=Path, help="a trial config YAML (e.g. <study>/best/et.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. seed=3 train.epochs=5")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="folder for the trained model and its explanation gallery",
    )
    args = parser.parse_args(argv)
    from harness.config import ConfigError

    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not config["data"].get("root"):
        print("note: training on the built-in SYNTHETIC data", flush=True)
    try:  # the dataset is opened (checked, decoded if needed) before any training starts
        metrics = train_and_evaluate(config, artifacts_dir=args.output)
    except DatasetError as error:
        print(f"error: data.root: {error}", file=sys.stderr)
        return 2
    print(f"test accuracy: {metrics['test_accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
