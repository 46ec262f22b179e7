"""Every explainer on one trained model: occlusion faithfulness, per-class trends, galleries.

    python -m harness.evaluate SOURCE [key=value ...] [--explainers a,b,...] [--output DIR]
                               [--split test|val] [--batch-size N] [--regions RxC]
                               [--tracking-uri URI]

SOURCE is
  * a trained-model folder holding model.pt and config.yaml (`python -m harness.train X.yaml
    --output DIR`, or a study's trial checkpoint <study>/ray/**/checkpoint_*/);
  * a trial config YAML (e.g. <study>/best/et.yaml): trained first, into <yaml folder>/<stem>/;
  * an MLflow run, runs:/<run_id> (with --tracking-uri): its model.pt and config.yaml artifacts
    are downloaded; the output folder is also logged to the run under evaluation/.

Each explainer's maps (of the predicted class of the unoccluded clip, on the method's view of it)
drive the occlusion test through the method's own prediction pipeline (`method.predict`, so ET
explains, crops and classifies as in training); the method's own explainer keeps its config
parameters (k, heads). Output (default <model folder>/evaluation; for runs:/ outputs/evaluation/
<run_id>):

  explainers.md|.csv      one row per explainer, by gap: MoRF/LeRF accuracy AUCs, gap, target-
                          class probability AUCs, the 001 seed's protocol (30% patches + 2 frames),
                          seconds
  occlusion_curves.png    MoRF and LeRF accuracy vs share occluded, one line per explainer
  occlusion_curves.csv    every curve point: explainer, direction, level, accuracy, probability
  trends.md|.csv          per explainer, per class: share of relevance per region and per frame
  trends/<explainer>.png  per class: the mean map of each frame, and the frame shares
  face_trends.md|.csv|_<method>.png, face_maps_<method>.png   face-cropped data
                          (data.face_crop.enabled): per explainer, per class, the share of
                          relevance on the eyes, nose, mouth and rest; the class-mean maps
  galleries/<explainer>.png, galleries/<explainer>_clip<i>.gif   the first evaluation.gallery_clips
"""

from __future__ import annotations

import argparse
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
TABLE_COLUMNS = (
    *OCCLUSION_COLUMNS,
    "distinct_video",
    "energy_video",
    "hit_video",
    "mprt_spearman",
    "mprt_flag",
    "seconds",
)
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
    mprt: float, seconds: float,
) -> dict[str, Any]:  # fmt: skip
    from harness.evaluate.sanity import MPRT_THRESHOLD

    metrics = result.as_metrics("occ")
    row: dict[str, Any] = {"explainer": name}
    for column in OCCLUSION_COLUMNS:
        if column != "gap_rel":
            row[column] = float(metrics[f"occ_{column}"])
    row["gap_rel"] = row["gap"] / accuracy if accuracy > 0 else float("nan")
    row["distinct_video"] = float(metrics["occ_distinct_video"])
    row.update({k: ground_truth.get(k, float("nan")) for k in ("energy_video", "hit_video")})
    row["mprt_spearman"] = mprt
    row["mprt_flag"] = "fails" if mprt >= MPRT_THRESHOLD else "passes" if mprt == mprt else "n/a"
    row["seconds"] = seconds
    return row


def explainer_table(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows sorted by gap (descending; ties by name; reference rows without a gap last), the
    TABLE_COLUMNS after `explainer`."""
    table = pd.DataFrame(list(rows), columns=["explainer", *TABLE_COLUMNS])
    return table.sort_values(["gap", "explainer"], ascending=[False, True], ignore_index=True,
                             na_position="last")  # fmt: skip


def _mprt(trained: Any, randomised: Any, name: str, indices, batch_size, device, seed) -> float:
    """Mean Spearman correlation of `name`'s maps (of the trained model's predicted class) on the
    trained and the randomised model (harness/evaluate/sanity.py); NaN if every map is flat."""
    from harness.data import iterate_batches
    from harness.evaluate import explain_inputs, plain_predict
    from harness.evaluate.sanity import rank_correlation

    dataset, model, method = trained.dataset, trained.model, trained.method
    correlations = []
    generators = [torch.Generator().manual_seed(seed) for _ in range(2)]  # random: same draws
    for batch in iterate_batches(dataset, indices, batch_size, device=device):
        with torch.no_grad():
            target = plain_predict(method, model, batch.inputs).argmax(1)
        maps = [
            explain_inputs(method, net, batch.inputs, name, None, generator, target)["video"]
            for net, generator in ((model, generators[0]), (randomised, generators[1]))
        ]
        correlations.append(rank_correlation(*maps))
    values = np.concatenate(correlations)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def _curve_points(curves: Mapping[str, Any]) -> pd.DataFrame:
    points = []
    for name, curve in curves.items():
        for direction in ("morf", "lerf"):
            accuracy = getattr(curve, f"{direction}_accuracy")
            probability = getattr(curve, f"{direction}_probability")
            for level, acc, prob in zip(curve.levels, accuracy, probability, strict=True):
                points.append((name, direction, level, acc, prob))
    return pd.DataFrame(
        points, columns=["explainer", "direction", "level", "accuracy", "probability"]
    )


def write_explainer_table(
    table: pd.DataFrame, folder: Path, title: str, notes: Mapping[str, str], synthetic: bool
) -> str:
    """explainers.md and explainers.csv; returns the Markdown."""
    lines = [f"# {title}", ""]
    if synthetic:
        lines += ["**SYNTHETIC DATA: built-in generator, not a real dataset.**", ""]
    lines += [f"- {k}: {v}" for k, v in notes.items()]
    floatfmt = ("", *[".3f"] * (len(OCCLUSION_COLUMNS)), ".1f", ".3f", ".3f", ".3f", "", ".1f")
    lines += ["", table.to_markdown(index=False, floatfmt=floatfmt), ""]
    lines += [
        "Occlusion: each explainer's relevance of the predicted class, on the whole clip, ranks "
        "the (frame, patch) tokens; the most (MoRF) or least (LeRF) relevant share is occluded in "
        "the full-resolution clip and the method's own prediction pipeline classifies it. "
        "AUC: area under accuracy (prob: target-class probability) vs share occluded, divided by "
        "the level range; gap = LeRF - MoRF (higher = more faithful; random: the chance reference, "
        "gap about 0). "
        "seed_*: accuracy under the 001 seed's protocol (the 30% most/least relevant spatial "
        "patches in every frame plus the 2 most/least relevant frames). Tokens of equal relevance "
        "are ranked in random order, curves averaged over evaluation.tie_draws draws; "
        "distinct_video: mean distinct relevance values per map (a flat map has 1). gap_rel: gap "
        "/ the accuracy on the whole clips. Ground truth (synthetic data): energy_video = share of "
        "positive relevance inside the actor's box, hit_video = share of frames whose most "
        "relevant token touches the box; motion_oracle: a model-free frame-difference map "
        "(ground truth only). mprt_spearman: rank correlation of the maps on the trained model "
        "and on the model with every layer re-initialised (Adebayo et al. 2018's model-parameter "
        "randomisation, its last step); `fails` at >= 0.5 (our threshold): the maps do not "
        "depend on what the model learnt. seconds: the explainer's occlusion test "
        "(explanations and all predictions).",
        "",
    ]
    text = "\n".join(lines)
    (folder / "explainers.md").write_text(text)
    table.assign(synthetic=synthetic).to_csv(folder / "explainers.csv", index=False)
    return text


def evaluate_explainers(
    config: Mapping[str, Any],
    weights: Path,
    output: Path,
    *,
    explainers: Sequence[str] = EXPLAINERS,
    split: str = "test",
    batch_size: int | None = None,
    regions: tuple[int, int] = (2, 2),
    source: str = "",
) -> tuple[pd.DataFrame, str]:
    """Evaluate every explainer in `explainers` on the trained model; write everything to
    `output`; return the table and its Markdown."""
    from harness.data import iterate_batches
    from harness.evaluate import (
        FAITHFULNESS_REFERENCE,
        evaluate_accuracy,
        evaluate_occlusion,
        ground_truth_scores,
        load_trained,
    )
    from harness.evaluate.localisation import motion_relevance
    from harness.evaluate.sanity import randomised_copy
    from harness.evaluate.trends import class_mean_maps
    from harness.train import resolve_device, seed_everything
    from reports.curves import plot_occlusion_curves
    from reports.gallery import save_clip_gif, save_gallery
    from reports.trends import (
        face_trend_table,
        plot_class_trends,
        plot_face_maps,
        trend_table,
        write_face_trends,
        write_trends,
    )

    train_cfg, eval_cfg = config["train"], config["evaluation"]
    if train_cfg.get("threads"):
        torch.set_num_threads(int(train_cfg["threads"]))
    device = resolve_device(str(train_cfg.get("device", "auto")))
    seed = int(config.get("seed", 0))
    try:
        trained = load_trained(config, weights, device)
    except ValueError as error:  # data.root not supported, weights that do not fit the model
        raise SourceError(str(error)) from None
    dataset, model, method = trained.dataset, trained.model, trained.method
    if "video" not in method.modalities:
        raise SourceError(
            f"the model reads {list(method.modalities)}: this command's trends and galleries are "
            "of video relevance (video and hybrid models); a signal model's occlusion metrics "
            "are in its trial's MLflow run"
        )
    synthetic = bool(dataset.synthetic) or not config["data"].get("root")
    batch_size = int(batch_size or train_cfg["eval_batch_size"])
    indices = dataset.indices(split)
    if len(indices) == 0:
        raise SourceError(f"--split {split}: the dataset has no {split} clips")
    title = _title(method.name, split, len(indices), synthetic)
    output.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)
    accuracy = evaluate_accuracy(model, method, dataset, indices, batch_size, device)
    print(f"{title}: accuracy {accuracy.accuracy:.4f}", flush=True)

    gallery_rows = indices[: int(eval_cfg.get("gallery_clips", 4))]
    gallery = None
    if len(gallery_rows):
        gallery = next(iterate_batches(dataset, gallery_rows, len(gallery_rows), device=device))
        with torch.enable_grad():
            predicted = method.predict(model, gallery.inputs).argmax(1).cpu()
    names = dataset.class_names
    randomised = randomised_copy(model, seed)
    rows, curves, tables, class_maps = [], {}, {}, {}
    for i, name in enumerate(explainers):
        seed_everything(seed)
        started = time.perf_counter()
        result = evaluate_occlusion(
            model, method, dataset, indices, eval_cfg, batch_size, device,
            explainer=name, seed=seed, keep_relevance=True,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        ground_truth = ground_truth_scores(dataset, result.relevance, result.rows)
        mprt = _mprt(trained, randomised, name, indices, batch_size, device, seed)
        rows.append(_explainer_row(name, result, accuracy.accuracy, ground_truth, mprt, seconds))
        curves[name] = result.curve
        print(
            f"[{i + 1}/{len(explainers)}] {name}: MoRF AUC {result.curve.morf_auc:.3f}, "
            f"LeRF AUC {result.curve.lerf_auc:.3f}, gap {result.curve.gap:.3f} ({seconds:.1f} s)",
            flush=True,
        )
        labels = torch.from_numpy(dataset.labels[result.rows].astype(np.int64))
        maps = class_mean_maps(result.relevance["video"], labels, dataset.num_classes)
        counts = torch.bincount(labels, minlength=dataset.num_classes).tolist()
        tables[name] = trend_table(maps, names, counts, regions)
        class_maps[name] = maps
        plot_class_trends(
            maps, names, output / "trends" / f"{name}.png",
            f"{name}: class-mean relevance ({title})", counts,
        )  # fmt: skip
        if gallery is not None:
            position = {int(r): j for j, r in enumerate(result.rows)}
            relevance = result.relevance["video"][[position[int(r)] for r in gallery_rows]]
            clips, truth = gallery.clips.cpu(), gallery.labels.cpu()
            (output / "galleries").mkdir(parents=True, exist_ok=True)
            save_gallery(
                clips, relevance, truth, predicted, names, output / "galleries" / f"{name}.png",
                title=f"{method.name} / {name}" + (" (SYNTHETIC)" if synthetic else ""),
            )  # fmt: skip
            for j, row in enumerate(gallery_rows):
                save_clip_gif(
                    clips[j], relevance[j], output / "galleries" / f"{name}_clip{j}.gif",
                    title=f"{name}{' (SYNTHETIC)' if synthetic else ''}, clip {row}\n"
                    f"{names[int(truth[j])]} -> {names[int(predicted[j])]}",
                )  # fmt: skip

    if dataset.actor_box is not None:  # the model-free reference: ground truth only
        grid = method.modalities["video"].grid[1:]
        batches = list(iterate_batches(dataset, indices, batch_size, device=device))
        motion = torch.cat([motion_relevance(b.clips, grid).cpu() for b in batches])
        order = np.concatenate([b.index.cpu().numpy() for b in batches])
        rows.append({"explainer": FAITHFULNESS_REFERENCE,
                     **ground_truth_scores(dataset, {"video": motion}, order)})  # fmt: skip
    table = explainer_table(rows)
    levels = ", ".join(f"{x:g}" for x in eval_cfg["occlusion_levels"])
    protocol = eval_cfg["seed_protocol"]
    notes = {
        "source": source or str(weights.parent),
        "method": method.name + f" (its own explainer: {method.explainer})",
        f"{split} accuracy": f"{accuracy.accuracy:.4f}"
        + (" (the 0% point of every curve)" if 0.0 in eval_cfg["occlusion_levels"] else ""),
        "occlusion": f"levels {levels}; fill {eval_cfg['occlusion_value']}; seed protocol "
        f"{float(protocol['spatial_fraction']):.0%} of spatial patches + {protocol['frames']} "
        f"frames",
    }
    markdown = write_explainer_table(table, output, f"Explainers on the {title}", notes, synthetic)
    _curve_points(curves).to_csv(output / "occlusion_curves.csv", index=False)
    plot_occlusion_curves(curves, output / "occlusion_curves.png", f"Occlusion curves: {title}")
    write_trends(
        tables, output, f"Per-class trends of the explanations: {title}", synthetic=synthetic,
        notes={"regions": f"{regions[0]} x {regions[1]} grid over the patch grid",
               "explained class": "the predicted one; clips grouped by their true class"},
    )  # fmt: skip
    face_crop = config["data"].get("face_crop") or {}
    if face_crop.get("enabled"):
        margin = float(face_crop.get("margin", 0.0))
        face = face_trend_table(class_maps, names, counts, margin)
        plot_face_maps(class_maps, names, margin, output / f"face_maps_{method.name}.png", title)
        notes = {"source": source or str(weights.parent)}
        write_face_trends({method.name: face}, output, f"Facial-region trends: {title}",
                          synthetic=synthetic, notes=notes)  # fmt: skip
    return table, markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.evaluate",
        description="Evaluate every explainer on a trained model: occlusion curves (MoRF/LeRF "
        "accuracy and target-class probability, AUCs, gap, the 001 seed's protocol), per-class "
        "trends and galleries.",
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
    parser.add_argument("--split", choices=("test", "val"), default="test")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="default: the config's train.eval_batch_size"
    )
    parser.add_argument(
        "--regions", default="2x2", help="ROWSxCOLS grid of the per-class trends (default 2x2)"
    )
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
                config, source.weights, output, explainers=explainers, split=args.split,
                batch_size=args.batch_size, regions=regions, source=source.text,
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
