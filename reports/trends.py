"""Per-class trends of explanations (see `harness.evaluate.trends`): tables and a figure, for
either input: the class-mean maps decide which (video [K, T, h, w], signal [K, n]).

`trend_table` makes one explainer's table (one row per class: its clips, its share of relevance per
region of the frame and per frame, or per time segment of the signal); `write_trends` writes the
tables of several explainers as one Markdown file and one CSV; `plot_class_trends` draws one
explainer's class-mean maps (one row per class: video: the mean map of each frame as a heatmap,
signal: the mean relevance per time token as a curve; then a bar chart of the frame or segment
shares).

On face crops (CREMA-D, the 001 seed): `face_trend_table` (per explainer and class, the share of
relevance on the eyes, nose, mouth and the rest of the face crop), `write_face_trends`
(face_trends.md|csv, face_trends_<model>.png), `plot_face_maps` (face_maps_<model>.png: the
class-mean maps over the crop, regions outlined) and `study_face_trends`, which computes them from a
study's final models (what `harness.sweep` puts in its report when `data.face_crop.enabled`).
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from harness.evaluate.trends import (  # noqa: E402
    FACE_REGION_NAMES,
    FACE_REGIONS,
    SIGNAL_SEGMENTS,
    face_region_areas,
    face_region_shares,
    frame_shares,
    region_names,
    region_shares,
    segment_index,
    segment_names,
    segment_shares,
    segment_token_shares,
)

SYNTHETIC_NOTE = "SYNTHETIC DATA: built-in generator, not a real dataset."


def frame_column(t: int) -> str:
    return f"frame_{t + 1}"


def trend_table(
    maps: torch.Tensor,
    class_names: Sequence[str],
    counts: Sequence[int],
    regions: tuple[int, int] = (2, 2),
    segments: int = SIGNAL_SEGMENTS,
) -> pd.DataFrame:
    """One row per class: `class`, `clips`, then for video maps [K, T, h, w] the share per region
    (columns named by `region_names`, e.g. top-left) and per frame (`frame_1`, ...), for signal
    maps [K, n] the share per time segment (`segment_1`, ...)."""
    table = pd.DataFrame({"class": list(class_names), "clips": [int(c) for c in counts]})
    if maps.dim() == 2:
        shares = {"signal": (segment_names(segments), segment_shares(maps.double(), segments))}
    else:
        by_frame = frame_shares(maps.double())
        shares = {"regions": (region_names(regions), region_shares(maps.double(), regions)),
                  "frames": ([frame_column(t) for t in range(by_frame.shape[1])], by_frame)}
    for names, values in shares.values():
        for j, name in enumerate(names):
            table[name] = values[:, j].numpy()
    return table


#: The share columns of a trend table, by prefix, and what the Markdown calls them (the rest of
#: its columns after class and clips are regions of the frame)
SHARE_GROUPS = {"frame_": "frame", "segment_": "time segment"}


def _markdown(table: pd.DataFrame, columns: list[str], rename: Mapping[str, str]) -> str:
    shown = table[["class", "clips", *columns]].rename(columns=dict(rename))
    return shown.to_markdown(index=False, floatfmt=".3f")


def write_trends(
    tables: Mapping[str, pd.DataFrame],
    folder: Path,
    title: str,
    *,
    synthetic: bool,
    notes: Mapping[str, str] | None = None,
    stem: str = "trends",
) -> dict[str, Path]:
    """`<stem>.md` (per explainer: a class x region table and a class x frame table) and
    `<stem>.csv` (the tables stacked, with `explainer` and `synthetic` columns)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", ""]
    if synthetic:
        lines += [f"**{SYNTHETIC_NOTE}**", ""]
    lines += [f"- {k}: {v}" for k, v in (notes or {}).items()]
    lines += [
        "",
        "Each clip's map is normalised to sum 1 (negative relevance clipped to 0), then the clips "
        "of each class are averaged; shares are of that class-mean map (rows sum to 1). Regions: "
        "a grid over the frame's patch grid, a patch belonging to the region holding its centre; "
        "time segments: the signal's window cut into consecutive parts, a time token belonging to "
        "the segment holding its centre (a uniform map gives each segment its share of the "
        "tokens).",
        "",
    ]
    for explainer, table in tables.items():
        grouped = {p: [c for c in table.columns if c.startswith(p)] for p in SHARE_GROUPS}
        regions = [c for c in table.columns
                   if c not in ("class", "clips", *sum(grouped.values(), []))]  # fmt: skip
        lines += [f"## {explainer}", ""]
        if regions:
            lines += ["Share of relevance per region:", "", _markdown(table, regions, {}), ""]
        for prefix, columns in grouped.items():
            if columns:
                rename = {c: c.replace(prefix, prefix[:-1] + " ") for c in columns}
                lines += [f"Share of relevance per {SHARE_GROUPS[prefix]}:", "",
                          _markdown(table, columns, rename), ""]  # fmt: skip
    paths = {"md": folder / f"{stem}.md", "csv": folder / f"{stem}.csv"}
    paths["md"].write_text("\n".join(lines))
    stacked = pd.concat(
        [table.assign(explainer=name, synthetic=synthetic) for name, table in tables.items()],
        ignore_index=True,
    )
    first = ["explainer", "class", "clips"]
    stacked = stacked[first + [c for c in stacked.columns if c not in first]]
    stacked.to_csv(paths["csv"], index=False)
    return paths


def _strip(frames: np.ndarray) -> np.ndarray:
    """[T, h, w] -> [h, T * (w + 1) - 1]: the frames side by side, NaN columns between them."""
    T, h, w = frames.shape
    strip = np.full((h, T * (w + 1) - 1), np.nan)
    for t in range(T):
        strip[:, t * (w + 1) : t * (w + 1) + w] = frames[t]
    return strip


def plot_class_trends(
    maps: torch.Tensor,
    class_names: Sequence[str],
    path: Path,
    title: str = "",
    counts: Sequence[int] | None = None,
    segments: int = SIGNAL_SEGMENTS,
) -> Path:
    """One row per class: the class-mean map (one scale for the whole figure, so classes compare),
    then a bar chart of its shares (dashed: what a uniform map gets). Video maps [K, T, h, w]:
    the map of each frame as a heatmap, frames side by side, and the frame shares; signal maps
    [K, n]: the relevance per time token as a curve (dotted: the segment borders), and the shares
    of the `segments` time segments."""
    signal = maps.dim() == 2
    values = maps.double().numpy()
    finite = values[np.isfinite(values)]
    vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    if signal:
        K, n = maps.shape
        shares = segment_shares(maps.double(), segments).numpy()
        uniform = segment_token_shares(n, segments).numpy()
        strip_width, unit = 6.0, "segment"
        borders = np.flatnonzero(np.diff(segment_index(n, segments).numpy())) + 0.5
    else:
        K, T, h, w = maps.shape
        shares = frame_shares(maps.double()).numpy()
        uniform = np.full(T, 1 / T)
        strip_width, unit = T * (w + 1) / max(h, 1), "frame"  # aspect of a row's heatmap strip
        centres = [t * (w + 1) + (w - 1) / 2 for t in range(T)]
    top = float(np.nanmax(shares)) if np.isfinite(shares).any() else 0.0
    bars = np.arange(1, shares.shape[1] + 1)
    fig, axes = plt.subplots(
        K, 2, squeeze=False, figsize=(min(1.0 * strip_width + 3.2, 16), 1.1 * K + 0.8),
        gridspec_kw={"width_ratios": [strip_width, 1.6]},
    )  # fmt: skip
    cmap = plt.get_cmap("magma").with_extremes(bad="white")
    image = None
    for k in range(K):
        ax = axes[k][0]
        last = k == K - 1
        if signal:
            ax.fill_between(np.arange(n), values[k], color="tab:orange", alpha=0.35, step="mid")
            ax.plot(np.arange(n), values[k], color="tab:orange", drawstyle="steps-mid")
            for border in borders:
                ax.axvline(border, color="0.5", linewidth=0.6, linestyle=":")
            ax.set_xlim(-0.5, n - 0.5)
            ax.set_ylim(0, vmax * 1.1)
            ax.tick_params(labelsize=6, labelbottom=last)
        else:
            image = ax.imshow(_strip(values[k]), cmap=cmap, vmin=0, vmax=vmax)
            ax.set_yticks([])
            ax.set_xticks(centres if last else [])
            ax.set_xticklabels([str(t + 1) for t in range(T)] if last else [], fontsize=6)
        label = textwrap.fill(class_names[k].replace("_", " "), 14)
        label += f"\n({counts[k]} clips)" if counts is not None else ""
        ax.set_ylabel(label, fontsize=7)
        bar = axes[k][1]
        bar.bar(bars, shares[k], color="tab:blue")
        bar.step(np.r_[bars - 0.5, bars[-1] + 0.5], np.r_[uniform, uniform[-1]], where="post",
                 color="0.4", linewidth=0.8, linestyle="--")  # fmt: skip
        bar.set_ylim(0, max(top, float(uniform.max())) * 1.15)
        bar.set_xticks(bars)
        bar.tick_params(labelsize=6)
    axes[K - 1][0].set_xlabel(
        "time token (class-mean share of relevance per token)" if signal
        else "frame (class-mean share of relevance per patch)", fontsize=7,
    )  # fmt: skip
    axes[K - 1][1].set_xlabel(unit, fontsize=7)
    axes[0][1].set_title(f"{unit} shares (-- uniform)", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=0.1, right=0.88, top=1 - 0.45 / fig.get_figheight(), bottom=0.12,
                        wspace=0.15, hspace=0.25)  # fmt: skip
    if image is not None:
        colourbar = fig.colorbar(image, cax=fig.add_axes([0.9, 0.15, 0.015, 0.7]))
        colourbar.ax.tick_params(labelsize=6)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- facial regions

#: The explainers the 001 seed compared on CREMA-D, and the random floor.
SEED_TREND_EXPLAINERS = ("gradcam", "rollout", "rollout_grad", "tibav", "random")
FACE_TRENDS_STEM = "face_trends"
TOP_LIFT = 1.25  # a region "stands out" when its share is at least 25% above its area


def face_trend_table(
    maps: Mapping[str, torch.Tensor],
    class_names: Sequence[str],
    counts: Sequence[int],
    margin: float,
) -> pd.DataFrame:
    """One row per (explainer, class) of the class-mean maps `maps[explainer]` [K, T, h, w] of
    face crops: `explainer`, `class`, `clips`, the share of relevance on each facial region
    (`eyes`, `nose`, `mouth`, `rest`; rows sum to 1), each share over the region's area
    (`<region>_lift`: 1 = what a uniform map gives) and `top`, the region of highest lift when
    that lift is at least `TOP_LIFT` (else blank: no region stands out). A first row
    `uniform (area)` holds the areas themselves."""
    areas = face_region_areas(margin).numpy()
    rows = [{"explainer": "uniform (area)", "class": "all", "clips": int(sum(counts)),
             **dict(zip(FACE_REGION_NAMES, areas)), **{f"{r}_lift": 1.0 for r in
                                                       FACE_REGION_NAMES}, "top": ""}]  # fmt: skip
    for explainer, class_maps in maps.items():
        shares = face_region_shares(class_maps.double(), margin).numpy()
        for k, name in enumerate(class_names):
            lift = shares[k] / areas
            rows.append({
                "explainer": explainer, "class": name, "clips": int(counts[k]),
                **dict(zip(FACE_REGION_NAMES, shares[k])),
                **{f"{r}_lift": v for r, v in zip(FACE_REGION_NAMES, lift)},
                "top": FACE_REGION_NAMES[int(np.argmax(lift))]
                if np.isfinite(lift).all() and lift.max() >= TOP_LIFT else "",
            })  # fmt: skip
    return pd.DataFrame(rows)


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Write `fig` to `path` (its folder made as needed, 90 dpi) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_face_trends(table: pd.DataFrame, path: Path, title: str = "") -> Path:
    """One panel per explainer: per class, a bar per facial region of its share over its area
    (dashed: 1, a uniform map)."""
    explainers = [e for e in dict.fromkeys(table["explainer"]) if e != "uniform (area)"]
    fig, axes = plt.subplots(1, max(len(explainers), 1), squeeze=False, sharey=True,
                             figsize=(2.6 * max(len(explainers), 1) + 0.6, 2.8))  # fmt: skip
    width = 0.8 / len(FACE_REGION_NAMES)
    for ax, explainer in zip(axes[0], explainers):
        rows = table[table["explainer"] == explainer]
        x = np.arange(len(rows))
        for j, region in enumerate(FACE_REGION_NAMES):
            ax.bar(x + (j - 1.5) * width, rows[f"{region}_lift"], width, label=region)
        ax.axhline(1.0, color="0.4", linewidth=0.8, linestyle="--")
        ax.set_xticks(x, list(rows["class"]), fontsize=7, rotation=45)
        ax.set_title(explainer, fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    axes[0][0].set_ylabel("share / area (-- uniform)", fontsize=7)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.suptitle(title, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1 - 0.7 / fig.get_figwidth(), 1))
    fig.legend(handles, labels, loc="center right", fontsize=6, frameon=False)
    return save_figure(fig, path)


def plot_face_maps(
    maps: Mapping[str, torch.Tensor], class_names: Sequence[str], margin: float, path: Path,
    title: str = "",
) -> Path:  # fmt: skip
    """The class-mean maps themselves, over the face crop: one row per explainer, one column per
    class, each map [T, h, w] summed over frames and drawn over the crop's square with the facial
    regions outlined (one colour scale per explainer)."""
    K = len(class_names)
    fig, axes = plt.subplots(len(maps), K, squeeze=False,
                             figsize=(1.3 * K + 0.8, 1.35 * len(maps) + 0.5))  # fmt: skip
    span = 1 + 2 * float(margin)
    for axes_row, (explainer, class_maps) in zip(axes, maps.items()):
        values = class_maps.double().sum(1).numpy()  # [K, h, w], each a distribution
        top = float(np.nanmax(values)) if np.isfinite(values).any() else 1.0
        for k, ax in enumerate(axes_row):
            ax.imshow(values[k], cmap="magma", vmin=0, vmax=top, extent=(0, 1, 1, 0))
            for x0, y0, x1, y1 in FACE_REGIONS.values():
                u0, v0 = (x0 + margin) / span, (y0 + margin) / span
                ax.add_patch(Rectangle((u0, v0), (x1 - x0) / span, (y1 - y0) / span,
                                       fill=False, edgecolor="cyan", linewidth=0.6))  # fmt: skip
            ax.set_xticks([])
            ax.set_yticks([])
            if explainer == next(iter(maps)):
                ax.set_title(class_names[k], fontsize=7)
        axes_row[0].set_ylabel(explainer, fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


FACE_TRENDS_NOTE = (
    "Relevance of the predicted class on each test clip's face crop (the method's view), each "
    "clip's map normalised to sum 1 (negative relevance clipped to 0), averaged per true class; "
    "shares of that class-mean map on the facial regions (fixed boxes of the face box, "
    "harness/evaluate/trends.py: eyes x 0.10-0.90, y 0.20-0.50; nose x 0.30-0.70, y 0.50-0.68; "
    "mouth x 0.20-0.80, y 0.68-0.95; rest: the rest of the crop, margin included), relevance "
    "spread evenly over each patch. `uniform (area)`: each region's share of the crop, what a "
    "map without preference gets; `top`: the region most above its area, when at least 25% "
    "above it (blank: none). Compare each row with `random`, the explainer-free floor. Not "
    "covered: how "
    "sure a share is (no interval across clips or seeds), how well the fixed boxes fit each "
    "face (one box per clip, no landmarks), and whether the model needs the region (that is "
    "the occlusion test's question)."
)


def write_face_trends(
    tables: Mapping[str, pd.DataFrame],
    folder: Path,
    title: str,
    *,
    synthetic: bool,
    notes: Mapping[str, str] | None = None,
) -> dict[str, Path]:
    """`face_trends.md` (per table, e.g. per method: explainer x class rows of facial-region
    shares), `face_trends.csv` (stacked, with `model` and `synthetic` columns) and
    `face_trends_<name>.png` per table (:func:`plot_face_maps` draws the maps themselves)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", ""]
    if synthetic:
        lines += [
            f"**{SYNTHETIC_NOTE} The regions are those of a face crop; the synthetic clips hold "
            "no face, so these numbers only show the table's form.**",
            "",
        ]
    lines += [f"- {k}: {v}" for k, v in (notes or {}).items()]
    lines += ["", FACE_TRENDS_NOTE, ""]
    shown = ["explainer", "class", "clips", *FACE_REGION_NAMES, "top"]
    for name, table in tables.items():
        lines += [f"## {name}", "", table[shown].to_markdown(index=False, floatfmt=".3f"), ""]
        plot_face_trends(table, folder / f"{FACE_TRENDS_STEM}_{name}.png",
                         f"{name}: facial-region share / area" + (" (SYNTHETIC)" if synthetic
                                                                   else ""))  # fmt: skip
    paths = {"md": folder / f"{FACE_TRENDS_STEM}.md", "csv": folder / f"{FACE_TRENDS_STEM}.csv"}
    paths["md"].write_text("\n".join(lines))
    stacked = pd.concat([t.assign(model=name, synthetic=synthetic) for name, t in tables.items()],
                        ignore_index=True)  # fmt: skip
    stacked[["model", *[c for c in stacked.columns if c != "model"]]].to_csv(
        paths["csv"], index=False
    )
    return paths


def study_face_trends(
    checkpoints: Mapping[str, Sequence[Path]],
    folder: Path,
    title: str,
    *,
    explainers: Sequence[str] = SEED_TREND_EXPLAINERS,
    split: str = "test",
) -> dict[str, Path]:
    """The facial-region trends of a study's trained models: per method (`checkpoints[method]`:
    the folders of its final runs, each holding model.pt and config.yaml), the relevance of
    every explainer on the `split` clips of every run, pooled over the runs (each clip of each
    run weighs the same), as :func:`write_face_trends` tables."""
    from harness.evaluate import explain_split, load_trained
    from harness.evaluate.trends import class_mean_maps
    from harness.train import resolve_device

    tables, synthetic, runs = {}, False, []
    for method, folders in checkpoints.items():
        relevance: dict[str, list[torch.Tensor]] = {name: [] for name in explainers}
        labels, names, margin = [], (), 0.0
        for run in folders:
            config = yaml.safe_load((Path(run) / "config.yaml").read_text())
            device = resolve_device(str(config["train"].get("device", "auto")))
            trained = load_trained(config, Path(run) / "model.pt", device)
            dataset = trained.dataset
            rows = np.sort(dataset.indices(split))
            maps = explain_split(trained.model, trained.method, dataset, rows, explainers,
                                 int(config["train"]["eval_batch_size"]), device,
                                 seed=int(config.get("seed", 0)))  # fmt: skip
            for name in explainers:
                relevance[name].append(maps[name])
            labels.append(torch.from_numpy(dataset.labels[rows].astype(np.int64)))
            names, synthetic = dataset.class_names, synthetic or dataset.synthetic
            margin = float((config["data"].get("face_crop") or {}).get("margin", 0.0))
        if not labels:
            continue
        runs.append(f"{method} {len(folders)}")
        label = torch.cat(labels)
        counts = torch.bincount(label, minlength=len(names)).tolist()
        class_maps = {name: class_mean_maps(torch.cat(relevance[name]), label, len(names))
                      for name in explainers}  # fmt: skip
        tables[method] = face_trend_table(class_maps, names, counts, margin)
        plot_face_maps(class_maps, names, margin, folder / f"face_maps_{method}.png",
                       f"{method}: class-mean relevance over the face crop"
                       + (" (SYNTHETIC)" if synthetic else ""))  # fmt: skip
    notes = {"models": ", ".join(runs) + " final run(s), clips pooled over the runs",
             "split": split, "explainers": ", ".join(explainers)}  # fmt: skip
    return write_face_trends(tables, folder, title, synthetic=synthetic, notes=notes)
