"""Every explainer on one trained model: occlusion faithfulness, per-class trends, galleries.

    python -m harness.evaluate SOURCE [key=value ...] [--explainers a,b,...] [--output DIR]
                               [--protocol pipeline|like_for_like] [--split test|val]
                               [--batch-size N] [--regions RxC] [--segments N]
                               [--tracking-uri URI]

Video, signal and hybrid (video + signal) models alike: every output is made per input the model
reads, by one code path parameterised by the input (video relevance per (frame, patch) token,
signal relevance per time token).

SOURCE is
  * a trained-model folder holding model.pt and config.yaml (`python -m harness.train X.yaml
    --output DIR`, or a study's trial checkpoint <study>/ray/**/checkpoint_*/);
  * a trial config YAML (e.g. <study>/best/et.yaml): trained first, into <yaml folder>/<stem>/;
  * an MLflow run, runs:/<run_id> (with --tracking-uri): its model.pt and config.yaml artifacts
    are downloaded; the output folder is also logged to the run under evaluation/.

Each explainer's maps (of the predicted class of the unoccluded clip, on the method's view of it)
drive the occlusion test under one of two protocols (`--protocol`, `PROTOCOLS`): `pipeline`, the
default, the method's own prediction pipeline (`method.predict`, so ET explains, crops and
classifies as in training; the method's own explainer keeps its config parameters, k, heads), or
`like_for_like`, the model's plain forward of the whole inputs and every explainer with its
default parameters (the study's like-for-like protocol, the same for every method; what a study
report shows). Output (default <model folder>/evaluation; for runs:/ outputs/evaluation/<run_id>):

  explainers.md|.csv      one row per explainer, by gap: MoRF/LeRF accuracy AUCs, gap, target-
                          class probability AUCs (every input occluded), the 001 seed's protocol
                          (30% patches + 2 frames; video), per input its distinct values and
                          ground truth (and, on the hybrid, gap_<input>: only that input
                          occluded), MPRT, seconds
  occlusion_curves.png    MoRF and LeRF accuracy vs share occluded, one line per explainer (every
                          input occluded); occlusion_curves_<input>.png on the hybrid: one input
  occlusion_curves.csv    every curve point: explainer, input (what was occluded: video, signal,
                          or video+signal on the hybrid), direction, level, accuracy, probability
  trends.md|.csv          video: per explainer, per class: share of relevance per region and frame
  signal_trends.md|.csv   signal: per explainer, per class: share of relevance per time segment
                          (--segments, default 4: quarters of the window; harness/evaluate/
                          trends.py)
  trends/<explainer>.png, trends/signal_<explainer>.png   per class: the mean map of each frame
                          and the frame shares; the mean relevance per time token and the segment
                          shares
  face_trends.md|.csv|_<method>.png, face_maps_<method>.png   face-cropped data
                          (data.face_crop.enabled): per explainer, per class, the share of
                          relevance on the eyes, nose, mouth and rest; the class-mean maps
  galleries/<explainer>.png   the first evaluation.gallery_clips test samples: each clip's frames
                          with the heatmap, each signal's channels on a band of its relevance
                          (hybrid: the frames row above the signal row)
  galleries/<explainer>_clip<i>.gif   the same clips animated (video)
  explained.json          what the folder holds: explainers, protocol, inputs, split, seed
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from harness.evaluate.occlusion import DEFAULT_LEVELS
from harness.evaluate.trends import SIGNAL_SEGMENTS
from harness.explain import EXPLAINERS

RUN_PREFIX = "runs:/"
OCCLUSION_COLUMNS = (
    "morf_auc",
    "lerf_auc",
    "gap",
    "gap_rel",
    "morf_prob_auc",
    "lerf_prob_auc",
    "seed_morf_acc",
    "seed_lerf_acc",
)
VIDEO_ONLY_COLUMNS = ("seed_morf_acc", "seed_lerf_acc")  # the 001 seed's protocol
INPUT_PREFIX = {"video": "", "signal": "signal_"}  # per-input output files: trends.md, ...
PROTOCOLS = {  # how an explainer's occlusion test predicts: protocol -> what the notes say
    "pipeline": "the method's own prediction pipeline (ET: explain, restrict, classify); its own "
    "explainer with its config parameters",
    "like_for_like": "the model's plain forward of the whole inputs (no ET restriction), every "
    "explainer with its default parameters: the same protocol for every method",
}
EXPLAINED_FILE = "explained.json"  # what an evaluation folder holds (`explained_stamp`)


def input_file(name: str, modality: str) -> str:
    """The file of input `modality` among an evaluation's outputs (video: `name` itself, the
    files of a video model; signal: signal_<name>), e.g. trends.md, signal_trends.md."""
    return INPUT_PREFIX[modality] + name


def joint_input(inputs: Sequence[str]) -> str:
    """The name of the curve with every input occluded: 'video', 'signal', 'video+signal'."""
    return "+".join(inputs)


def table_columns(inputs: Sequence[str]) -> list[str]:
    """The explainer table's columns after `explainer` for a model reading `inputs`: the
    occlusion columns of every input occluded (the seed protocol's with video), per input its
    gap alone (`gap_<input>`, several inputs only), distinct values and ground truth, MPRT
    (`mprt_spearman`, per input too with several), seconds."""
    several = len(inputs) > 1
    columns = [c for c in OCCLUSION_COLUMNS if "video" in inputs or c not in VIDEO_ONLY_COLUMNS]
    for m in inputs:
        columns += [f"gap_{m}"] * several + [f"distinct_{m}", f"energy_{m}", f"hit_{m}"]
    columns += ["mprt_spearman", *(f"mprt_spearman_{m}" for m in inputs if several)]
    return [*columns, "mprt_flag", "seconds"]

EXPECTED = (
    "expected a trained-model folder holding model.pt and config.yaml, a trial config YAML, "
    "or runs:/<run_id> with --tracking-uri"
)


class SourceError(ValueError):
    """SOURCE (or another argument) is not what the command takes; the message says what was."""


@dataclass
class Source:
    """Where the model comes from: `config` (a YAML), `weights` (model.pt or None: train first),
    `model_dir` (where the model is or will be), `run_id` (MLflow)."""

    text: str
    config: Path
    weights: Path | None
    model_dir: Path
    default_output: Path
    run_id: str | None = None
    tracking_uri: str | None = None


def _parse_explainers(text: str | None) -> list[str]:
    if not text:
        return list(EXPLAINERS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in EXPLAINERS]
    if unknown or not names:
        raise SourceError(
            f"--explainers: unknown explainer {', '.join(map(repr, unknown)) or repr(text)}; "
            f"expected a comma-separated list of: {', '.join(EXPLAINERS)}"
        )
    return list(dict.fromkeys(names))


def _folder_source(text: str, folder: Path) -> Source:
    missing = [name for name in ("model.pt", "config.yaml") if not (folder / name).is_file()]
    if missing:
        raise SourceError(
            f"{text}: expected a trained-model folder holding model.pt and config.yaml (as "
            f"`python -m harness.train X.yaml --output DIR` writes); missing: {', '.join(missing)}"
        )
    return Source(text, folder / "config.yaml", folder / "model.pt", folder, folder / "evaluation")


def _run_source(text: str, tracking_uri: str | None, scratch: Path) -> Source:
    """Download a run's model.pt and config.yaml (runs:/<id> or runs:/<id>/<artifact folder>)."""
    if not tracking_uri:
        raise SourceError(
            f"{text}: an MLflow run needs --tracking-uri URI (the store that holds it, e.g. "
            "sqlite:///<study>/mlflow.db)"
        )
    run_id, _, subpath = text[len(RUN_PREFIX) :].strip("/").partition("/")
    if not run_id:
        raise SourceError(f"{text}: expected runs:/<run_id>")
    import mlflow
    from mlflow.exceptions import MlflowException

    from harness.tracking import mlflow_client

    try:
        mlflow_client(tracking_uri).get_run(run_id)
    except MlflowException as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SourceError(f"{text}: no such run in {tracking_uri}: {message}") from None
    for name in ("model.pt", "config.yaml"):
        try:
            mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=f"{subpath}/{name}" if subpath else name,
                dst_path=str(scratch), tracking_uri=tracking_uri,
            )  # fmt: skip
        except (MlflowException, OSError) as error:
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise SourceError(
                f"{text}: expected the run's artifacts to hold model.pt and config.yaml (a "
                f"study's trial runs do); {name}: {message}"
            ) from None
    folder = scratch / subpath if subpath else scratch
    return Source(
        text, folder / "config.yaml", folder / "model.pt", folder,
        Path("outputs") / "evaluation" / run_id, run_id=run_id, tracking_uri=tracking_uri,
    )  # fmt: skip


def resolve_source(text: str, tracking_uri: str | None, scratch: Path) -> Source:
    """Check SOURCE (cheaply: no data, no model) and say where its config and weights are."""
    if text.startswith(RUN_PREFIX):
        return _run_source(text, tracking_uri, scratch)
    path = Path(text).expanduser()
    if path.is_dir():
        return _folder_source(text, path)
    if path.is_file():
        if path.suffix.lower() not in (".yaml", ".yml"):
            raise SourceError(f"{text}: not a .yaml file; {EXPECTED}")
        model_dir = path.parent / path.stem
        return Source(text, path, None, model_dir, model_dir / "evaluation")
    raise SourceError(f"{text}: no such file or folder; {EXPECTED}")


def _overridden(overrides: Sequence[str], key: str) -> bool:
    return any(o.split("=", 1)[0].strip().lstrip("+~") == key for o in overrides)


def _title(method: str, split: str, clips: int, synthetic: bool) -> str:
    return f"{method} model, {split} split ({clips} clips)" + (
        " — SYNTHETIC data" if synthetic else ""
    )


def _explainer_row(
    name: str, result: Any, accuracy: float, ground_truth: Mapping[str, float],
    mprt: Mapping[str, float], seconds: float,
) -> dict[str, Any]:  # fmt: skip
    """One explainer's row (see `table_columns`); `mprt`: input -> mean rank correlation."""
    from harness.evaluate.sanity import MPRT_THRESHOLD

    metrics = result.as_metrics("occ")
    inputs = list(result.distinct)
    row: dict[str, Any] = {"explainer": name}
    for column in OCCLUSION_COLUMNS:
        if column != "gap_rel" and f"occ_{column}" in metrics:
            row[column] = float(metrics[f"occ_{column}"])
    row["gap_rel"] = row["gap"] / accuracy if accuracy > 0 else float("nan")
    for m in inputs:
        if len(inputs) > 1:
            row[f"gap_{m}"] = result.by_input[m].gap
        row[f"distinct_{m}"] = float(metrics[f"occ_distinct_{m}"])
        row.update({k: ground_truth.get(k, float("nan")) for k in (f"energy_{m}", f"hit_{m}")})
    values = [v for v in mprt.values() if v == v]
    row["mprt_spearman"] = max(values) if values else float("nan")  # the least model-bound input
    if len(inputs) > 1:
        row.update({f"mprt_spearman_{m}": v for m, v in mprt.items()})
    worst = row["mprt_spearman"]
    row["mprt_flag"] = "fails" if worst >= MPRT_THRESHOLD else "passes" if worst == worst else "n/a"
    row["seconds"] = seconds
    return row


def explainer_table(rows: Sequence[Mapping[str, Any]], inputs: Sequence[str]) -> pd.DataFrame:
    """Rows sorted by gap (descending; ties by name; reference rows without a gap last), the
    `table_columns(inputs)` after `explainer`."""
    table = pd.DataFrame(list(rows), columns=["explainer", *table_columns(inputs)])
    return table.sort_values(["gap", "explainer"], ascending=[False, True], ignore_index=True,
                             na_position="last")  # fmt: skip


def _mprt(trained: Any, randomised: Any, name: str, params: Mapping[str, Any] | None, indices,
          batch_size, device, seed) -> dict[str, float]:  # fmt: skip
    """Per input, the mean Spearman correlation of `name`'s maps (of the trained model's
    predicted class) on the trained and the randomised model (harness/evaluate/sanity.py); NaN
    where every map is flat."""
    from harness.data import iterate_batches
    from harness.evaluate import explain_inputs, plain_predict
    from harness.evaluate.sanity import rank_correlation

    dataset, model, method = trained.dataset, trained.model, trained.method
    correlations: dict[str, list[np.ndarray]] = {m: [] for m in method.modalities}
    generators = [torch.Generator().manual_seed(seed) for _ in range(2)]  # random: same draws
    for batch in iterate_batches(dataset, indices, batch_size, device=device):
        with torch.no_grad():
            target = plain_predict(method, model, batch.inputs).argmax(1)
        maps = [
            explain_inputs(method, net, batch.inputs, name, params, generator, target)
            for net, generator in ((model, generators[0]), (randomised, generators[1]))
        ]
        for m in correlations:
            correlations[m].append(rank_correlation(maps[0][m], maps[1][m]))
    values = {m: np.concatenate(parts) for m, parts in correlations.items()}
    return {m: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
            for m, v in values.items()}  # fmt: skip


def _curve_sets(result: Any, inputs: Sequence[str]) -> dict[str, Any]:
    """What was occluded -> its curve: every input (`joint_input`), and on a model with several
    inputs each input alone."""
    several = {m: result.by_input[m] for m in inputs} if len(inputs) > 1 else {}
    return {joint_input(inputs): result.curve, **several}


def _curve_points(curves: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Tidy curve points of `curves` (explainer -> occluded input -> curve)."""
    points = []
    for name, by_input in curves.items():
        for occluded, curve in by_input.items():
            for direction in ("morf", "lerf"):
                accuracy = getattr(curve, f"{direction}_accuracy")
                probability = getattr(curve, f"{direction}_probability")
                for level, acc, prob in zip(curve.levels, accuracy, probability, strict=True):
                    points.append((name, occluded, direction, level, acc, prob))
    return pd.DataFrame(
        points, columns=["explainer", "input", "direction", "level", "accuracy", "probability"]
    )


def _floatfmt(column: str) -> str:
    if column in ("explainer", "mprt_flag"):
        return ""
    return ".1f" if column == "seconds" or column.startswith("distinct_") else ".3f"


def _table_note(inputs: Sequence[str], protocol: str = "pipeline") -> str:
    """What explainers.md's columns mean, for a model reading `inputs` tested under `protocol`."""
    tokens = {"video": "(frame, patch) tokens", "signal": "time tokens"}
    parts = [
        "Occlusion: each explainer's relevance of the predicted class, on the whole input, ranks "
        f"the {' and the '.join(tokens[m] for m in inputs)}; the most (MoRF) or least (LeRF) "
        "relevant share is occluded in the full-resolution input"
        + (" (each input by its own relevance, both at the same share)" if len(inputs) > 1
           else "")
        + (" and the method's own prediction pipeline classifies it" if protocol == "pipeline"
           else " and the model's plain forward classifies it (like for like)")
        + ". AUC: area under accuracy "
        "(prob: target-class probability) vs share occluded, divided by the level range; gap = "
        "LeRF - MoRF (higher = more faithful; random: the chance reference, gap about 0).",
    ]
    if len(inputs) > 1:
        parts.append(f"gap_<input> ({', '.join(f'gap_{m}' for m in inputs)}): the gap with only "
                     "that input occluded, the other left whole (its own tie draws).")
    if "video" in inputs:
        parts.append("seed_*: accuracy under the 001 seed's protocol (the 30% most/least "
                     "relevant spatial patches in every frame plus the 2 most/least relevant "
                     "frames).")
    parts.append(
        "Tokens of equal relevance are ranked in random order, curves averaged over "
        "evaluation.tie_draws draws; distinct_<input>: mean distinct relevance values per map "
        "(a flat map has 1). gap_rel: gap / the accuracy on the whole inputs."
    )
    truth = {"video": "energy_video = share of positive relevance inside the actor's box, "
                      "hit_video = share of frames whose most relevant token touches the box; "
                      "motion_oracle: a model-free frame-difference map (ground truth only)",
             "signal": "energy_signal = share of positive relevance inside the event's time "
                       "window, hit_signal = share of signals whose most relevant time token "
                       "touches it"}  # fmt: skip
    parts.append(f"Ground truth (synthetic data): {'; '.join(truth[m] for m in inputs)}.")
    parts.append(
        "mprt_spearman: rank correlation of the maps on the trained model and on the model with "
        "every layer re-initialised (Adebayo et al. 2018's model-parameter randomisation, its "
        "last step)"
        + ("; with several inputs the largest of the per-input correlations (mprt_spearman_"
           "<input>)" if len(inputs) > 1 else "")
        + "; `fails` at >= 0.5 (our threshold): the maps do not depend on what the model learnt. "
        "seconds: the explainer's occlusion test (explanations and all predictions)."
    )
    return " ".join(parts)


def write_explainer_table(
    table: pd.DataFrame, folder: Path, title: str, notes: Mapping[str, str], synthetic: bool,
    inputs: Sequence[str] = ("video",), protocol: str = "pipeline",
) -> str:  # fmt: skip
    """explainers.md and explainers.csv; returns the Markdown."""
    lines = [f"# {title}", ""]
    if synthetic:
        lines += ["**SYNTHETIC DATA: built-in generator, not a real dataset.**", ""]
    lines += [f"- {k}: {v}" for k, v in notes.items()]
    floatfmt = tuple(_floatfmt(c) for c in table.columns)
    lines += ["", table.to_markdown(index=False, floatfmt=floatfmt), ""]
    lines += [_table_note(inputs, protocol), ""]
    text = "\n".join(lines)
    (folder / "explainers.md").write_text(text)
    table.assign(synthetic=synthetic).to_csv(folder / "explainers.csv", index=False)
    return text


def explained_stamp(explainers: Sequence[str], protocol: str, inputs: Sequence[str], split: str,
                    seed: int) -> dict[str, Any]:  # fmt: skip
    """What an evaluation folder holds (its `EXPLAINED_FILE`): whoever reuses the folder compares
    it with what it wants."""
    return {"explainers": list(explainers), "protocol": protocol, "inputs": list(inputs),
            "split": split, "seed": int(seed)}  # fmt: skip


@dataclass
class Explained:
    """`explain_model`'s result: the explainer table, its Markdown, and each explainer's
    occlusion test (relevance kept), e.g. for the like-for-like table of the same model."""

    table: pd.DataFrame
    markdown: str
    results: dict[str, Any]  # explainer -> harness.evaluate.OcclusionResult


def evaluate_explainers(
    config: Mapping[str, Any], weights: Path, output: Path, *, source: str = "", **options: Any
) -> tuple[pd.DataFrame, str]:
    """Evaluate every explainer on the trained model in `weights` (video, signal or hybrid);
    write everything to `output` (the module docstring); return the table and its Markdown.
    `options`: `explain_model`'s (explainers, protocol, split, batch_size, regions, segments)."""
    from harness.evaluate import load_trained
    from harness.train import resolve_device

    train_cfg = config["train"]
    if train_cfg.get("threads"):
        torch.set_num_threads(int(train_cfg["threads"]))
    device = resolve_device(str(train_cfg.get("device", "auto")))
    try:
        trained = load_trained(config, weights, device)
    except ValueError as error:  # data.root not supported, weights that do not fit the model
        raise SourceError(str(error)) from None
    explained = explain_model(trained, config, output, device,
                              source=source or str(weights.parent), **options)  # fmt: skip
    return explained.table, explained.markdown


def explain_model(
    trained: Any,
    config: Mapping[str, Any],
    output: Path,
    device: torch.device | str = "cpu",
    *,
    explainers: Sequence[str] = EXPLAINERS,
    protocol: str = "pipeline",
    split: str = "test",
    batch_size: int | None = None,
    regions: tuple[int, int] = (2, 2),
    segments: int = SIGNAL_SEGMENTS,
    source: str = "",
) -> Explained:
    """`evaluate_explainers` on a model in memory (`trained`: a `harness.evaluate.TrainedModel`
    of `config`), e.g. a final trial's own model at the end of its training: every explainer in
    `explainers` under `protocol` (`PROTOCOLS`) on `split`."""
    from harness.data import iterate_batches
    from harness.evaluate import (
        FAITHFULNESS_REFERENCE,
        evaluate_accuracy,
        evaluate_occlusion,
        ground_truth_scores,
        predict_logits,
    )
    from harness.evaluate.localisation import motion_relevance
    from harness.evaluate.sanity import randomised_copy
    from harness.evaluate.trends import class_mean_maps
    from harness.train import seed_everything
    from reports.curves import plot_occlusion_curves
    from reports.gallery import save_clip_gif, save_input_gallery
    from reports.trends import (
        face_trend_table,
        plot_class_trends,
        plot_face_maps,
        trend_table,
        write_face_trends,
        write_trends,
    )

    if protocol not in PROTOCOLS:
        raise SourceError(f"--protocol: expected one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    plain = protocol == "like_for_like"
    params: dict[str, Any] | None = {} if plain else None  # None: the own explainer's config
    train_cfg, eval_cfg = config["train"], config["evaluation"]
    seed = int(config.get("seed", 0))
    dataset, model, method = trained.dataset, trained.model, trained.method
    inputs = [m for m in INPUT_PREFIX if m in method.modalities]
    synthetic = bool(dataset.synthetic) or not config["data"].get("root")
    batch_size = int(batch_size or train_cfg["eval_batch_size"])
    indices = dataset.indices(split)
    if len(indices) == 0:
        raise SourceError(f"--split {split}: the dataset has no {split} clips")
    if "signal" in inputs and not 1 <= segments <= method.modalities["signal"].tokens:
        raise SourceError(f"--segments: expected 1 to the signal's "
                          f"{method.modalities['signal'].tokens} time tokens, got {segments}")
    title = _title(method.name, split, len(indices), synthetic)
    label = " (SYNTHETIC)" if synthetic else ""
    output.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)
    accuracy = evaluate_accuracy(model, method, dataset, indices, batch_size, device, plain=plain)
    print(f"{title}: accuracy {accuracy.accuracy:.4f}", flush=True)

    gallery_rows = indices[: int(eval_cfg.get("gallery_clips", 4))]
    gallery = None
    if len(gallery_rows):
        gallery = next(iterate_batches(dataset, gallery_rows, len(gallery_rows), device=device))
        with torch.set_grad_enabled(not plain):  # ET's pipeline explains before it predicts
            predicted = predict_logits(method, model, gallery.inputs, plain).argmax(1).cpu()
    names = dataset.class_names
    randomised = randomised_copy(model, seed)
    rows, curves, results = [], {}, {}
    tables: dict[str, dict[str, pd.DataFrame]] = {m: {} for m in inputs}
    class_maps: dict[str, torch.Tensor] = {}  # video: for the facial regions
    for i, name in enumerate(explainers):
        seed_everything(seed)
        started = time.perf_counter()
        result = evaluate_occlusion(
            model, method, dataset, indices, eval_cfg, batch_size, device,
            explainer=name, explainer_params=params, seed=seed, keep_relevance=True, plain=plain,
            per_input=True,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        results[name] = result
        ground_truth = ground_truth_scores(dataset, result.relevance, result.rows)
        mprt = _mprt(trained, randomised, name, params, indices, batch_size, device, seed)
        rows.append(_explainer_row(name, result, accuracy.accuracy, ground_truth, mprt, seconds))
        curves[name] = _curve_sets(result, inputs)
        print(
            f"[{i + 1}/{len(explainers)}] {name}: MoRF AUC {result.curve.morf_auc:.3f}, "
            f"LeRF AUC {result.curve.lerf_auc:.3f}, gap {result.curve.gap:.3f} ({seconds:.1f} s)",
            flush=True,
        )
        labels = torch.from_numpy(dataset.labels[result.rows].astype(np.int64))
        counts = torch.bincount(labels, minlength=dataset.num_classes).tolist()
        for m in inputs:
            maps = class_mean_maps(result.relevance[m], labels, dataset.num_classes)
            tables[m][name] = trend_table(maps, names, counts, regions, segments)
            plot_class_trends(
                maps, names, output / "trends" / f"{input_file(name, m)}.png",
                f"{name}: class-mean {m} relevance ({title})", counts, segments,
            )  # fmt: skip
            if m == "video":
                class_maps[name] = maps
        if gallery is not None:
            where = {int(r): j for j, r in enumerate(result.rows)}  # dataset row -> map
            position = [where[int(r)] for r in gallery_rows]
            relevance = {m: result.relevance[m][position] for m in inputs}
            shown = {m: gallery.inputs[m].cpu() for m in inputs}
            truth = gallery.labels.cpu()
            (output / "galleries").mkdir(parents=True, exist_ok=True)
            save_input_gallery(
                shown, relevance, truth, predicted, names, output / "galleries" / f"{name}.png",
                title=f"{method.name} / {name}{label}",
            )  # fmt: skip
            for j, row in enumerate(gallery_rows if "video" in inputs else ()):
                save_clip_gif(
                    shown["video"][j], relevance["video"][j],
                    output / "galleries" / f"{name}_clip{j}.gif",
                    title=f"{name}{label}, clip {row}\n"
                    f"{names[int(truth[j])]} -> {names[int(predicted[j])]}",
                )  # fmt: skip

    if "video" in inputs and dataset.actor_box is not None:  # model-free: ground truth only
        grid = method.modalities["video"].grid[1:]
        batches = list(iterate_batches(dataset, indices, batch_size, device=device))
        motion = torch.cat([motion_relevance(b.clips, grid).cpu() for b in batches])
        order = np.concatenate([b.index.cpu().numpy() for b in batches])
        rows.append({"explainer": FAITHFULNESS_REFERENCE,
                     **ground_truth_scores(dataset, {"video": motion}, order)})  # fmt: skip
    table = explainer_table(rows, inputs)
    levels = ", ".join(f"{x:g}" for x in eval_cfg["occlusion_levels"])
    seed_protocol = eval_cfg["seed_protocol"]
    notes = {
        "source": source,
        "method": method.name + f" (its own explainer: {method.explainer})",
        "protocol": f"{protocol}: {PROTOCOLS[protocol]}",
        "inputs": ", ".join(inputs),
        f"{split} accuracy": f"{accuracy.accuracy:.4f}"
        + (" (the 0% point of every curve)" if 0.0 in eval_cfg["occlusion_levels"] else ""),
        "occlusion": f"levels {levels}; fill {eval_cfg['occlusion_value']}"
        + (f"; seed protocol {float(seed_protocol['spatial_fraction']):.0%} of spatial patches + "
           f"{seed_protocol['frames']} frames" if "video" in inputs else ""),
    }  # fmt: skip
    markdown = write_explainer_table(table, output, f"Explainers on the {title}", notes, synthetic,
                                     inputs, protocol)  # fmt: skip
    _curve_points(curves).to_csv(output / "occlusion_curves.csv", index=False)
    for occluded in curves[explainers[0]] if explainers else ():
        joint = occluded == joint_input(inputs)
        stem = "occlusion_curves" if joint else f"occlusion_curves_{occluded}"
        what = "every input occluded" if joint and len(inputs) > 1 else f"{occluded} occluded"
        plot_occlusion_curves({n: c[occluded] for n, c in curves.items()},
                              output / f"{stem}.png", f"Occlusion curves ({what}): {title}")
    for m in inputs:
        if m == "video":
            notes = {"regions": f"{regions[0]} x {regions[1]} grid over the patch grid"}
        else:
            tokens = method.modalities[m].tokens
            notes = {"time segments": f"{segments} consecutive parts of the {tokens} time tokens"}
        notes["explained class"] = "the predicted one; clips grouped by their true class"
        write_trends(tables[m], output, f"Per-class trends of the {m} explanations: {title}",
                     synthetic=synthetic, stem=input_file("trends", m), notes=notes)  # fmt: skip
    face_crop = config["data"].get("face_crop") or {}
    if face_crop.get("enabled") and class_maps:
        margin = float(face_crop.get("margin", 0.0))
        face = face_trend_table(class_maps, names, counts, margin)
        plot_face_maps(class_maps, names, margin, output / f"face_maps_{method.name}.png", title)
        notes = {"source": source}
        write_face_trends({method.name: face}, output, f"Facial-region trends: {title}",
                          synthetic=synthetic, notes=notes)  # fmt: skip
    stamp = explained_stamp(explainers, protocol, inputs, split, seed)
    (output / EXPLAINED_FILE).write_text(json.dumps(stamp, indent=1))
    return Explained(table, markdown, results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.evaluate",
        description="Evaluate every explainer on a trained model (video, signal or hybrid): "
        "occlusion curves (MoRF/LeRF accuracy and target-class probability, AUCs, gap, per "
        "input; the 001 seed's protocol on video), per-class trends and galleries per input.",
        epilog="Example: python -m harness.evaluate outputs/birds_video/best/et.yaml "
        "evaluation.occlusion_levels=[0,0.2,0.4] --explainers rollout_fem,random",
    )
    parser.add_argument(
        "source",
        help="a trained-model folder (model.pt + config.yaml), a trial config YAML (trained "
        "first, into <yaml folder>/<stem>/) or runs:/<run_id> (with --tracking-uri)",
    )
    parser.add_argument(
        "overrides", nargs="*",
        help="dotted config overrides, e.g. evaluation.occlusion_levels=[0,0.1,0.2] "
        "data.cache_dir=/data/cache (occlusion levels default to 0, 0.1, ..., 0.9 here)",
    )  # fmt: skip
    parser.add_argument(
        "--explainers", default=None,
        help=f"comma-separated explainers (default: all: {','.join(EXPLAINERS)})",
    )  # fmt: skip
    parser.add_argument(
        "--output", type=Path, default=None,
        help="output folder (default: <model folder>/evaluation; outputs/evaluation/<run_id> "
        "for runs:/)",
    )  # fmt: skip
    parser.add_argument(
        "--protocol", choices=tuple(PROTOCOLS), default="pipeline",
        help="pipeline: predict through the method's own pipeline (ET explains, restricts, "
        "classifies; the default); like_for_like: the model's plain forward, every explainer "
        "with its default parameters (a study report's)",
    )  # fmt: skip
    parser.add_argument("--split", choices=("test", "val"), default="test")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="default: the config's train.eval_batch_size"
    )
    parser.add_argument(
        "--regions", default="2x2", help="ROWSxCOLS grid of the per-class trends (default 2x2)"
    )
    parser.add_argument(
        "--segments", type=int, default=SIGNAL_SEGMENTS,
        help=f"time segments of a signal's per-class trends (default {SIGNAL_SEGMENTS}: "
        "quarters of the window)",
    )  # fmt: skip
    parser.add_argument("--tracking-uri", default=None, help="MLflow store of a runs:/ SOURCE")
    args = parser.parse_intermixed_args(argv)

    from omegaconf.errors import OmegaConfBaseException

    from harness.config import ConfigError
    from harness.evaluate.trends import parse_regions
    from harness.train import load_config, train_and_evaluate

    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="et-evaluate-")))
        try:
            explainers = _parse_explainers(args.explainers)
            try:
                regions = parse_regions(args.regions)
            except ValueError as error:
                raise SourceError(f"--regions: {error}") from None
            if args.segments < 1:
                raise SourceError(f"--segments: expected an integer >= 1, got {args.segments}")
            if args.batch_size is not None and args.batch_size < 1:
                raise SourceError(f"--batch-size: expected an integer >= 1, got {args.batch_size}")
            source = resolve_source(args.source, args.tracking_uri, scratch)
            config = load_config(source.config, list(args.overrides))
        except (SourceError, ConfigError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        except OmegaConfBaseException as error:
            print(f"error: {args.source}: bad override: {error}", file=sys.stderr)
            return 2
        output = args.output or source.default_output
        synthetic = not config["data"].get("root")
        if source.weights is None:
            print(f"training {source.config} into {source.model_dir}", flush=True)
            if synthetic:
                print("note: training on the built-in SYNTHETIC data", flush=True)
            train_and_evaluate(config, artifacts_dir=source.model_dir)
            source.weights = source.model_dir / "model.pt"
        if not _overridden(args.overrides, "evaluation.occlusion_levels"):
            config["evaluation"]["occlusion_levels"] = list(DEFAULT_LEVELS)
        try:
            _, markdown = evaluate_explainers(
                config, source.weights, output, explainers=explainers, protocol=args.protocol,
                split=args.split,
                batch_size=args.batch_size, regions=regions, segments=args.segments,
                source=source.text,
            )  # fmt: skip
        except SourceError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        if source.run_id is not None:
            import mlflow

            client = mlflow.MlflowClient(source.tracking_uri)
            client.log_artifacts(source.run_id, str(output), artifact_path="evaluation")
            print(f"logged {output} to run {source.run_id} under evaluation/", flush=True)
    print(f"\nwritten to {output}\n")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
