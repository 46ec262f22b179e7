"""ET, explanation-guided training (Ayyar, Benois-Pineau, Zemmari, "Explain to Train" poster).

An explainer (Rollout-FEM by default) marks the salient part of each training input; the model is
trained on the input restricted to it by a policy: for clips `crop_policy` (largest salient region
cropped from the full-resolution frames and resized, union box, mask, soft weighting, none), for
signals `signal_policy` (soft weighting by the relevance over time, the poster's reading; or the
salient window cut out and resampled, union window, mask, none):

    every `refresh_every` epochs:  r_i = explain(model, view(x_i), target=y_i)   for all train x_i
    loss = L(model(restrict(x_i, r_i)), y_i) + full_input_weight * L(model(view(x_i)), y_i)

with L the method's loss (cross-entropy; the combined loss for the hybrid, whose branches are each
explained and restricted on their own input). The first `warmup_fraction` of the epochs are vanilla
(an untrained model's attention marks nothing in particular). Explanations during training are of
the true class; at prediction time (`explain_at_test`, default on) the model explains its own
prediction on the whole input and then classifies the restricted input, so validation and test
accuracy measure the pipeline the model was trained for. `full_input_weight` > 0 keeps the
whole-input view in training too (0 is the poster's reading).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from harness.data import Batch
from harness.methods.base import Inputs, TrainingMethod


class ET(TrainingMethod):
    name = "et"

    def __init__(self, cfg, **kwargs) -> None:
        super().__init__(cfg, **kwargs)
        self.policies = {}
        for m, adapter in self.modalities.items():  # an unknown name fails here, not mid-training
            policy = str(self.cfg.get(adapter.policy_key, adapter.default_policy))
            if policy not in adapter.policies:
                raise ValueError(
                    f"method.{adapter.policy_key}: unknown policy {policy!r}; expected one of: "
                    + ", ".join(adapter.policies)
                )
            self.policies[m] = policy
        self.refresh_every = int(self.cfg.get("refresh_every", 1))
        self.warmup_epochs = math.floor(float(self.cfg.get("warmup_fraction", 0.0)) * self.epochs)
        self.full_input_weight = float(self.cfg.get("full_input_weight", 0.0))
        self.explain_at_test = bool(self.cfg.get("explain_at_test", True))
        self.relevance: dict[int, dict[str, Tensor]] = {}  # dataset row -> relevance per input
        self.active = False

    def restrict(self, inputs: Inputs, relevance: dict[str, Tensor]) -> dict[str, Tensor]:
        """Each input restricted to its relevance by its policy: the model's inputs."""
        options = {
            "threshold": float(self.cfg.get("threshold", 0.5)),
            "margin": float(self.cfg.get("margin", 0.1)),
        }
        return {
            m: self.modalities[m].restrict(x, relevance[m], self.policies[m], **options)
            for m, x in inputs.items()
        }

    def start_epoch(
        self, model: nn.Module, epoch: int, train_batches: Callable[[], Iterable[Batch]]
    ) -> None:
        self.active = epoch >= self.warmup_epochs
        if not self.active or (epoch - self.warmup_epochs) % self.refresh_every:
            return
        was_training = model.training
        model.eval()
        for batch in train_batches():
            relevance = self.explain(model, batch.inputs, target=batch.labels)
            for i, row in enumerate(batch.index.tolist()):
                self.relevance[row] = {m: r[i] for m, r in relevance.items()}
        model.train(was_training)

    def state_dict(self) -> dict[str, Any]:
        return {"relevance": self.relevance, "active": self.active}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.relevance, self.active = dict(state["relevance"]), bool(state["active"])

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
        if not self.active:
            return super().loss(model, batch)
        cached = [self.relevance[i] for i in batch.index.tolist()]
        relevance = {m: torch.stack([c[m] for c in cached]) for m in batch.inputs}
        logits, outputs = self.forward(model, self.restrict(batch.inputs, relevance))
        loss = self.objective(logits, outputs, batch.labels)
        if self.full_input_weight:
            loss = loss + self.full_input_weight * super().loss(model, batch)[0]
        return loss, logits

    def predict(self, model: nn.Module, inputs: Inputs) -> Tensor:
        if not (self.active and self.explain_at_test):
            return super().predict(model, inputs)
        return self.forward(model, self.restrict(inputs, self.explain(model, inputs)))[0]
