"""Explanation galleries: frames of a few clips with an explainer's relevance over them.

`save_gallery`: a PNG grid (one row per clip, one column per frame); `save_clip_gif`: an animated
GIF of one clip, its frames in turn with the heatmap over them; `save_signal_gallery`: one panel
per signal, its channels over time on a band of its relevance per time token.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def save_gallery(
    clips: torch.Tensor,
    relevance: torch.Tensor,
    labels: torch.Tensor,
    predicted: torch.Tensor,
    class_names: Sequence[str],
    path: Path,
    title: str = "",
) -> Path:
    """PNG grid: one row per clip [T, 3, S, S], one column per frame, relevance [T, h, w]
    (normalised per clip, bilinearly upsampled) drawn over each frame."""
    B, T, _, S, _ = clips.shape
    heat = _heat(relevance, S)
    fig, axes = plt.subplots(B, T, figsize=(1.4 * T, 1.5 * B + 0.4), squeeze=False)
    for b in range(B):
        for t in range(T):
            ax = axes[b][t]
            ax.imshow(clips[b, t].permute(1, 2, 0).clamp(0, 1).numpy())
            ax.imshow(heat[b, t].numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        _label(axes[b][0], class_names, labels[b], predicted[b])
    return _save(fig, path, title)


def save_signal_gallery(
    signals: torch.Tensor,
    relevance: torch.Tensor,
    labels: torch.Tensor,
    predicted: torch.Tensor,
    class_names: Sequence[str],
    path: Path,
    title: str = "",
) -> Path:
    """PNG: one panel per signal [L, C] (channels as lines), relevance [n] per time token
    (normalised per signal) as a heat band behind them."""
    B, L, C = signals.shape
    heat = relevance.float().clamp(min=0)
    heat = heat / heat.amax(1, keepdim=True).clamp(min=1e-12)
    fig, axes = plt.subplots(B, 1, figsize=(7, 1.3 * B + 0.4), squeeze=False)
    for b in range(B):
        ax = axes[b][0]
        low, high = float(signals[b].min()), float(signals[b].max())
        ax.imshow(
            heat[b][None].numpy(), cmap="jet", alpha=0.35, vmin=0, vmax=1, aspect="auto",
            extent=(0, L, low, high), interpolation="nearest",
        )  # fmt: skip
        ax.plot(signals[b].numpy(), linewidth=0.6)
        ax.set_xlim(0, L)
        ax.set_yticks([])
        _label(ax, class_names, labels[b], predicted[b])
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
