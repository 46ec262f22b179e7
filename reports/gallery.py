"""Explanation galleries: frames of a few clips with an explainer's relevance over them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


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
    heat = F.interpolate(relevance.float(), size=(S, S), mode="bilinear", align_corners=False)
    heat = heat / heat.flatten(1).amax(1).clamp(min=1e-12)[:, None, None, None]
    fig, axes = plt.subplots(B, T, figsize=(1.4 * T, 1.5 * B + 0.4), squeeze=False)
    for b in range(B):
        for t in range(T):
            ax = axes[b][t]
            ax.imshow(clips[b, t].permute(1, 2, 0).clamp(0, 1).numpy())
            ax.imshow(heat[b, t].numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[b][0].set_ylabel(
            f"{class_names[int(labels[b])]}\n→ {class_names[int(predicted[b])]}", fontsize=6
        )
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
