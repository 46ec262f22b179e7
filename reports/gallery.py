"""Explanation galleries: a few inputs with an explainer's relevance over them.

`save_input_gallery`: a PNG of the inputs of a few samples (a clip: one row of frames with the
heatmap over them; a signal: one panel, its channels over time on a band of its relevance per
time token; a hybrid sample: its frames row above its signal row); `save_clip_gif`: an animated
GIF of one clip, its frames in turn with the heatmap over them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402


def _heat(relevance: torch.Tensor, size: int) -> torch.Tensor:
    """[B, T, h, w] -> [B, T, size, size]: bilinear upsampling, each clip divided by its max."""
    heat = F.interpolate(relevance.float(), size=(size, size), mode="bilinear", align_corners=False)
    return heat / heat.flatten(1).amax(1).clamp(min=1e-12)[:, None, None, None]


def _label(ax, class_names: Sequence[str], label: torch.Tensor, predicted: torch.Tensor) -> None:
    ax.set_ylabel(f"{class_names[int(label)]}\n→ {class_names[int(predicted)]}", fontsize=6)


def _save(fig, path: Path, title: str) -> Path:
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


ROW_HEIGHT = {"video": 1.5, "signal": 1.3}  # inches per gallery row of each input


def _draw_frames(axes: Sequence, clip: torch.Tensor, heat: torch.Tensor) -> None:
    """Frame t of `clip` [T, 3, S, S] in axes[t], its heat [T, S, S] (in [0, 1]) over it."""
    for t, ax in enumerate(axes):
        ax.imshow(clip[t].permute(1, 2, 0).clamp(0, 1).numpy())
        ax.imshow(heat[t].numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])


def _draw_signal(ax, signal: torch.Tensor, heat: torch.Tensor) -> None:
    """The channels of `signal` [L, C] as lines over a band of its heat [n] per time token."""
    length = signal.shape[0]
    low, high = float(signal.min()), float(signal.max())
    ax.imshow(
        heat[None].numpy(), cmap="jet", alpha=0.35, vmin=0, vmax=1, aspect="auto",
        extent=(0, length, low, high), interpolation="nearest",
    )  # fmt: skip
    ax.plot(signal.numpy(), linewidth=0.6)
    ax.set_xlim(0, length)
    ax.set_yticks([])


def _signal_heat(relevance: torch.Tensor) -> torch.Tensor:
    """[B, n] -> [B, n]: negative relevance clipped to 0, each signal divided by its max."""
    heat = relevance.float().clamp(min=0)
    return heat / heat.amax(1, keepdim=True).clamp(min=1e-12)


def save_input_gallery(
    inputs: Mapping[str, torch.Tensor],
    relevance: Mapping[str, torch.Tensor],
    labels: torch.Tensor,
    predicted: torch.Tensor,
    class_names: Sequence[str],
    path: Path,
    title: str = "",
) -> Path:
    """PNG: for each sample, one row per input (video first): clips [B, T, 3, S, S] one panel per
    frame with relevance [B, T, h, w] over it (normalised per clip, bilinearly upsampled);
    signals [B, L, C] one panel across the row, channels as lines on a heat band of relevance
    [B, n] per time token (normalised per signal). Each sample's first row is labelled with its
    true and predicted class."""
    names = [m for m in ("video", "signal") if m in inputs]
    if not names or set(inputs) - set(names) or set(names) - set(relevance):
        raise ValueError(f"expected video and/or signal inputs with their relevance, got inputs "
                         f"{sorted(inputs)} and relevance {sorted(relevance)}")  # fmt: skip
    B = len(labels)
    frames = int(inputs["video"].shape[1]) if "video" in inputs else 1
    heats = {}
    if "video" in inputs:
        heats["video"] = _heat(relevance["video"], int(inputs["video"].shape[-1]))
    if "signal" in inputs:
        heats["signal"] = _signal_heat(relevance["signal"])
    width = max(1.4 * frames if "video" in inputs else 0.0, 7.0 if "signal" in inputs else 0.0)
    height = B * sum(ROW_HEIGHT[m] for m in names) + 0.4
    fig = plt.figure(figsize=(width, height))
    grid = fig.add_gridspec(B * len(names), frames)
    for b in range(B):
        for i, m in enumerate(names):
            row = b * len(names) + i
            if m == "video":
                axes = [fig.add_subplot(grid[row, t]) for t in range(frames)]
                _draw_frames(axes, inputs[m][b], heats[m][b])
            else:
                axes = [fig.add_subplot(grid[row, :])]
                _draw_signal(axes[0], inputs[m][b], heats[m][b])
            if i == 0:
                _label(axes[0], class_names, labels[b], predicted[b])
            elif len(names) > 1:
                axes[0].set_ylabel(m, fontsize=6)
    return _save(fig, path, title)


def save_clip_gif(
    clip: torch.Tensor,
    relevance: torch.Tensor,
    path: Path,
    title: str = "",
    *,
    fps: float = 2.0,
    min_side: int = 192,
    alpha: float = 0.45,
) -> Path:
    """Animated GIF of one clip [T, 3, S, S] (floats in [0, 1]), drawn with PIL: frame t with
    relevance [T, h, w] over it (bilinearly upsampled, normalised by the clip's max and coloured
    as in `save_gallery`), enlarged (nearest) to at least `min_side` px, under a caption band with
    `title` (may hold newlines) and "frame t/T"; loops forever."""
    T, _, S, _ = clip.shape
    if relevance.shape[0] != T:
        raise ValueError(f"relevance has {relevance.shape[0]} frames, the clip {T}")
    heat = _heat(relevance[None], S)[0].clamp(0, 1).numpy()
    colours = matplotlib.colormaps["jet"](heat)[..., :3]  # [T, S, S, 3]
    frames = clip.permute(0, 2, 3, 1).clamp(0, 1).numpy()
    blended = np.rint(255 * ((1 - alpha) * frames + alpha * colours)).astype(np.uint8)
    scale = max(1, -(-min_side // S))
    font = ImageFont.load_default()
    lines = [*title.splitlines()] if title else []
    line_height = 12
    band = line_height * (len(lines) + 1) + 6
    images = []
    for t in range(T):
        picture = Image.fromarray(blended[t]).resize((S * scale, S * scale), Image.NEAREST)
        canvas = Image.new("RGB", (picture.width, picture.height + band), "white")
        canvas.paste(picture, (0, band))
        draw = ImageDraw.Draw(canvas)
        for row, text in enumerate([*lines, f"frame {t + 1}/{T}"]):
            draw.text((4, 3 + row * line_height), text, fill="black", font=font)
        images.append(canvas)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(
        path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0
    )
    return path
