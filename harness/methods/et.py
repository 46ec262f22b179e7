"""ET, explanation-guided training (Ayyar, Benois-Pineau, Zemmari, "Explain to Train" poster).

An explainer (Rollout-FEM by default) marks the salient part of each training clip; the model is
trained on the clip restricted to it by a crop policy (largest salient region cropped from the
full-resolution frames and resized, union box, mask, soft weighting, none):

    every `refresh_every` epochs:  r_i = explain(model, view(x_i), target=y_i)   for all train clips
    loss = CE(model(restrict(x_i, r_i)), y_i) + full_input_weight * CE(model(view(x_i)), y_i)

The first `warmup_fraction` of the epochs are vanilla (an untrained model's attention marks
nothing in particular). Explanations during training are of the true class; at prediction time
(`explain_at_test`, default on) the model explains its own prediction on the whole clip and then
classifies the restricted clip, so validation and test accuracy measure the pipeline the model was
trained for. `full_input_weight` > 0 keeps the whole-clip view in training too (0 is the poster's
reading).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from harness.data import Batch
from harness.methods.base import TrainingMethod
from harness.methods.crop import get_crop_policy
from harness.models.video import TimeSformerClassifier


class ET(TrainingMethod):
    name = "et"

    def __init__(self, cfg, **kwargs) -> None:
        super().__init__(cfg, **kwargs)
        self.policy = get_crop_policy(self.cfg.get("crop_policy", "largest_region"))
        self.refresh_every = int(self.cfg.get("refresh_every", 1))
        self.warmup_epochs = math.floor(float(self.cfg.get("warmup_fraction", 0.0)) * self.epochs)
        self.full_input_weight = float(self.cfg.get("full_input_weight", 0.0))
        self.explain_at_test = bool(self.cfg.get("explain_at_test", True))
        self.relevance: dict[int, torch.Tensor] = {}  # dataset row -> [T, h, w]
        self.active = False

    def restrict(self, clips: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
        return self.policy(
            clips,
            relevance,
            self.input_size,
            threshold=float(self.cfg.get("threshold", 0.5)),
            margin=float(self.cfg.get("margin", 0.1)),
        )

    def start_epoch(
        self, model: TimeSformerClassifier, epoch: int, train_batches: Callable[[], Iterable[Batch]]
    ) -> None:
        self.active = epoch >= self.warmup_epochs
        if not self.active or (epoch - self.warmup_epochs) % self.refresh_every:
            return
        was_training = model.training
        model.eval()
        for batch in train_batches():
            relevance = self.explain(model, batch.clips, target=batch.labels)
            self.relevance.update(zip(batch.index.tolist(), relevance))
        model.train(was_training)

    def state_dict(self) -> dict[str, Any]:
        return {"relevance": self.relevance, "active": self.active}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.relevance, self.active = dict(state["relevance"]), bool(state["active"])

    def loss(self, model: TimeSformerClassifier, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.active:
            return super().loss(model, batch)
        relevance = torch.stack([self.relevance[i] for i in batch.index.tolist()])
        logits = model(self.restrict(batch.clips, relevance)).logits
        loss = F.cross_entropy(logits, batch.labels)
        if self.full_input_weight:
            loss = loss + self.full_input_weight * super().loss(model, batch)[0]
        return loss, logits

    def predict(self, model: TimeSformerClassifier, clips: torch.Tensor) -> torch.Tensor:
        if not (self.active and self.explain_at_test):
            return super().predict(model, clips)
        return model(self.restrict(clips, self.explain(model, clips))).logits
