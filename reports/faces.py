"""The face crops of a decode cache (harness/data/faces.py), shown: `save_face_gallery` draws a few
clips, each a row: its first and last sampled frames at their native resolution with the
smoothed face track (thin, one box per frame) and the clip's crop box (thick), then the same two
frames as cached (cropped and resized)."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from reports.trends import save_figure  # noqa: E402

FACE_GALLERY = "face_crops.png"


def save_face_gallery(cache: Path, path: Path, clips: int = 4) -> Path | None:
    """The gallery of the first `clips` cropped clips of the cache folder `cache` (None when the
    cache has no face crops or no cropped clip). The native frames are decoded again from the
    clips' files, with the cache's own sampling."""
    from harness.data.cache import load_video_cache
    from harness.data.video_io import decode_clip

    cache = Path(cache)
    if not (cache / "face_boxes.csv").is_file():
        return None
    with open(cache / "face_boxes.csv", newline="") as fh:
        boxes = list(csv.DictReader(fh))
    tracks = np.load(cache / "face_tracks.npy")
    cached = load_video_cache(cache)
    shown = [i for i, row in enumerate(boxes) if row["status"] == "cropped"][:clips]
    if not shown:
        return None
    meta = cached.meta
    T = int(meta["num_frames"])
    fig, axes = plt.subplots(len(shown), 4, squeeze=False, figsize=(8.4, 2.2 * len(shown)))
    for ax_row, i in zip(axes, shown):
        row = boxes[i]
        native = decode_clip(row["path"], T, None, meta["sampling"], backend=meta["backend"])
        x0, y0, side = (int(row[k]) for k in ("x0", "y0", "side"))
        for ax, t in zip(ax_row[:2], (0, T - 1)):
            ax.imshow(native.frames[t])
            for cx, cy, s in tracks[i]:
                ax.add_patch(Rectangle((cx - s / 2, cy - s / 2), s, s, fill=False,
                                       edgecolor="yellow", linewidth=0.5))  # fmt: skip
            ax.add_patch(Rectangle((x0, y0), side, side, fill=False, edgecolor="red",
                                   linewidth=1.5))  # fmt: skip
            ax.set_title(f"{row['clip_id']} frame {int(native.indices[t])}", fontsize=6)
        for ax, t in zip(ax_row[2:], (0, T - 1)):
            ax.imshow(cached.video[i, t])
            ax.set_title(f"cached crop, sample {t + 1} of {T}", fontsize=6)
        for ax in ax_row:
            ax.set_xticks([])
            ax.set_yticks([])
        ax_row[0].set_ylabel(f"{row['detected']}/{T} detected", fontsize=6)
    fig.suptitle(
        f"face crops ({meta['face_crop']['detector']}, margin {meta['face_crop']['margin']}): "
        "yellow: the smoothed track per sampled frame, red: the clip's box", fontsize=7,
    )  # fmt: skip
    fig.tight_layout()
    return save_figure(fig, path)
