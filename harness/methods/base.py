"""What a training method is: how a batch becomes a loss, and how the trained model predicts.

Clips arrive at their storage resolution (`Batch.clips`, [B, T, 3, H, W]); `view` is what a model
sees of a whole clip (area-downsampled to the model's input size). Vanilla and IFI train and
predict on that view; ET restricts the clip to its salient region first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from harness.data import Batch
from harness.explain.video import explain_video
from harness.methods.crop import downsample
from harness.models.video import TimeSformerClassifier

# explainer -> the method-config keys it takes
EXPLAINER_PARAMS: dict[str, tuple[str, ...]] = {
    "rollout": ("head_fusion", "discard_ratio"),
    "rollout_fem": ("k", "heads"),
    "fem": ("k",),
}


def explainer_kwargs(name: str, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters of explainer `name` found in a config (e.g. k and heads for rollout_fem)."""
    return {key: cfg[key] for key in EXPLAINER_PARAMS.get(name, ()) if key in cfg}


class TrainingMethod:
    """Vanilla fine-tuning; subclasses change `loss` (IFI) or the input (ET)."""

    name = "vanilla"

    def __init__(
        self,
        cfg: Mapping[str, Any],
        *,
        input_size: int,
        epochs: int,
        evaluation_explainer: str = "rollout_fem",
    ) -> None:
        self.cfg = dict(cfg)
        self.input_size = input_size
        self.epochs = epochs
        # The explainer whose maps the occlusion test and the galleries use.
        self.explainer = str(self.cfg.get("explainer", evaluation_explainer))
        self.explainer_kwargs = explainer_kwargs(self.explainer, self.cfg)

    def view(self, clips: torch.Tensor) -> torch.Tensor:
        return downsample(clips, self.input_size)

    def start_epoch(
        self, model: TimeSformerClassifier, epoch: int, train_batches: Callable[[], Iterable[Batch]]
    ) -> None:
        """Hook run before each training epoch (ET refreshes its explanations here)."""

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs of this method besides the model (ET: its explanations)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take back what `state_dict` returned."""

    def loss(self, model: TimeSformerClassifier, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(self.view(batch.clips)).logits
        return F.cross_entropy(logits, batch.labels), logits

    def predict(self, model: TimeSformerClassifier, clips: torch.Tensor) -> torch.Tensor:
        return model(self.view(clips)).logits

    def explain(
        self, model: TimeSformerClassifier, clips: torch.Tensor, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        """This method's explanation of whole clips: relevance [B, T, h, w]."""
        return explain_video(
            model, self.view(clips), self.explainer, target=target, **self.explainer_kwargs
        ).relevance
