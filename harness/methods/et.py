"""ET, explanation-guided training (Ayyar, Benois-Pineau, Zemmari, "Explain to Train" poster).

An explainer (Rollout-FEM by default) marks the salient part of each training input; the model is
trained on the input restricted to it by a policy: for clips `crop_policy` (largest salient region
cropped from the full-resolution frames and resized, union box, mask, soft weighting, none, or
`prune`: the model runs on the top `keep` share of its patch tokens only), for signals
`signal_policy` (soft weighting by the relevance over time, the poster's reading; or the salient
window cut out and resampled, union window, mask, none, or `prune`: the model runs on the top
`keep` share of its time tokens only); the hybrid takes both keys, one per input, so it prunes
either input or both (one `keep` for both):

    every `refresh_every` epochs:  r_i = explain(model, view(x_i), target=y_i)   for all train x_i
    loss = L(model(restrict(x_i, r_i)), y_i) + full_input_weight * L(model(view(x_i)), y_i)

with L the method's loss (cross-entropy; the combined loss for the hybrid, whose branches are each
explained and restricted on their own input). The first `warmup_fraction` of the epochs are vanilla
(an untrained model's attention marks nothing in particular). Explanations during training are of
the true class; at prediction time (`explain_at_test`, default on) the model explains its own
prediction on the whole input and then classifies the restricted input, so validation and test
accuracy measure the pipeline the model was trained for. `full_input_weight` > 0 keeps the
whole-input view in training too (0 is the poster's reading). `prune` is the poster's "input
pruning [...] could reduce computation": the model's attention and MLP costs fall with `keep`.
Each architecture's adapter says whether and how it prunes (`Adapter.prunes`, `pruning`):
TimeSformer and Pool-T the same spatial patches in every frame (the pruned forward equals the full
one with the pruned patches' attention masked out), the Linformer its time tokens with E and F
reduced to the kept positions' columns (equal to the full forward with the pruned tokens' keys and
values zeroed, harness/models/signal.py); Video Swin-T cannot (its shifted windows and patch
merging need the whole grid): `prune` on an input whose architecture cannot prune is refused at
config time (harness/config.py) and here, naming the model and the policy key.

Which explanation each step uses, and how stale it can be:

* A refresh epoch (the first ET epoch, then every `refresh_every`-th) uses explanations of the
  model as it was at the end of the previous epoch, in eval mode: one explaining pass over the
  training set at the start of the epoch (a no-grad forward per clip for the gradient-free
  explainers), unless the previous epoch's steps already gave them (next point). Between refresh
  epochs an explanation is reused, up to `refresh_every` epochs old.
* Free refresh: when the previous epoch's training steps ran the whole view (its last warmup
  epoch, or every epoch with `full_input_weight` > 0) and the explainer needs no gradient
  (rollout, rollout_fem, fem, eigencam, random), those forwards captured their attentions and the
  cache was refreshed from them (`explain_output`, no extra forward): each clip's explanation is
  then of the model at that clip's step in the previous epoch, in train mode (dropout and
  stochastic depth as trained; the autocast precision), up to one epoch older than the pass would
  give, and the pass is skipped. The gradient explainers (rollout_grad, tibav, gradcam,
  gradcam_pp) need the true class's score gradient, not the loss's: they always take the pass.
* Prediction (`explain_at_test`): explained on the spot (no cache), one capturing forward of the
  whole view (every input); with `prune` the restricted forward reuses that forward's embedding
  of the clip or signal (`Explanation.embedded`) instead of embedding it again, so a prediction
  costs one whole forward plus the pruned one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from harness.data import Batch
from harness.explain import NEEDS_GRADIENTS, explain_output
from harness.methods.base import Inputs, TrainingMethod
from harness.models.base import Pruned


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
            reader = adapter.adapter
            if policy == "prune" and not reader.prunes:
                raise ValueError(prune_refusal(reader.name, reader.pruning, adapter.policy_key))
            self.policies[m] = policy
        self.refresh_every = int(self.cfg.get("refresh_every", 1))
        self.warmup_epochs = math.floor(float(self.cfg.get("warmup_fraction", 0.0)) * self.epochs)
        self.full_input_weight = float(self.cfg.get("full_input_weight", 0.0))
        self.explain_at_test = bool(self.cfg.get("explain_at_test", True))
        self.relevance: dict[int, dict[str, Tensor]] = {}  # dataset row -> relevance per input
        self.active = False
        # whether this epoch's steps refresh the cache from their whole-view forwards (the next
        # epoch then skips its explaining pass): see the module docstring
        self.step_refresh = False

    def restrict(
        self, inputs: Inputs, relevance: dict[str, Tensor], views: Inputs | None = None
    ) -> dict[str, Tensor]:
        """Each input restricted to its relevance by its policy: the model's inputs (`views`:
        the inputs' views when computed already, for the policies that start from the view)."""
        options = {
            "threshold": float(self.cfg.get("threshold", 0.5)),
            "margin": float(self.cfg.get("margin", 0.1)),
            "keep": float(self.cfg.get("keep", 0.5)),
        }
        given = {m: {"view": views[m]} for m in inputs} if views else {m: {} for m in inputs}
        return {
            m: self.modalities[m].restrict(x, relevance[m], self.policies[m], **options, **given[m])
            for m, x in inputs.items()
        }

    def _refresh_due(self, epoch: int) -> bool:
        since = epoch - self.warmup_epochs
        return since >= 0 and since % self.refresh_every == 0

    def start_epoch(
        self, model: nn.Module, epoch: int, train_batches: Callable[[], Iterable[Batch]]
    ) -> None:
        refreshed = self.step_refresh  # the last epoch's steps refreshed every training clip
        self.active = epoch >= self.warmup_epochs
        whole_view = not self.active or self.full_input_weight > 0
        self.step_refresh = (
            whole_view and self._refresh_due(epoch + 1) and self.explainer not in NEEDS_GRADIENTS
        )
        if not self._refresh_due(epoch) or refreshed:
            return
        was_training = model.training
        model.eval()
        for batch in train_batches():
            relevance = self.explain(model, batch.inputs, target=batch.labels)
            self._cache(batch, relevance)
        model.train(was_training)

    def _cache(self, batch: Batch, relevance: Mapping[str, Tensor]) -> None:
        for i, row in enumerate(batch.index.tolist()):
            self.relevance[row] = {m: r[i] for m, r in relevance.items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "relevance": self.relevance, "active": self.active, "step_refresh": self.step_refresh
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.relevance, self.active = dict(state["relevance"]), bool(state["active"])
        self.step_refresh = bool(state.get("step_refresh", False))

    def _view_loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
        """The whole-view loss; on a free-refresh step, the cache refreshed from its forward."""
        logits, outputs = self.forward(model, self.view(batch.inputs), capture=self.step_refresh)
        if self.step_refresh:
            self._cache(batch, {
                m: explain_output(
                    model.branch(m), out, self.explainer, target=batch.labels,
                    **self.explainer_kwargs,
                ).relevance.float()
                for m, out in outputs.items()
            })  # fmt: skip
        return self.objective(logits, outputs, batch.labels), logits

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
        if not self.active:
            return self._view_loss(model, batch)
        cached = [self.relevance[i] for i in batch.index.tolist()]
        relevance = {m: torch.stack([c[m] for c in cached]) for m in batch.inputs}
        logits, outputs = self.forward(model, self.restrict(batch.inputs, relevance))
        loss = self.objective(logits, outputs, batch.labels)
        if self.full_input_weight:
            loss = loss + self.full_input_weight * self._view_loss(model, batch)[0]
        return loss, logits

    def predict(self, model: nn.Module, inputs: Inputs) -> Tensor:
        if not (self.active and self.explain_at_test):
            return super().predict(model, inputs)
        views = self.view(inputs)
        explanations = self.explanations(model, inputs, views=views)
        relevance = {m: e.relevance for m, e in explanations.items()}
        restricted = self.restrict(inputs, relevance, views)
        for m, x in restricted.items():  # a pruned forward starts from the explaining one's tokens
            if isinstance(x, Pruned):
                restricted[m] = replace(x, tokens=explanations[m].embedded)
        return self.forward(model, restricted)[0]


def prune_refusal(model: str, pruning: str, key: str) -> str:
    """The error for `prune` as the policy `key` (crop_policy, signal_policy) on a model that
    cannot prune (config time and here)."""
    return (
        f"method.{key}: model {model} cannot prune tokens ({pruning}); expected another "
        f"{key.replace('_', ' ')}, got 'prune' (a search: space.et.method.{key}.choices without "
        "prune)"
    )
