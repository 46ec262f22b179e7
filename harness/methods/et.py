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

In-forward pruning (`prune_after` = d >= 1, with `prune`; 0, the default, is the input pruning
above). A variant, not the poster's input pruning: token pruning inside the forward guided by the
model's own early attention, as EViT (Liang et al., "Not All Patches are What You Need", ICLR
2022) and DynamicViT (Rao et al., NeurIPS 2021) prune, but ranked by ET's explainer rather than a
learned or class-attention score. One forward per step and per prediction: blocks 1..d run on the
whole view with their attentions captured; the relevance is `explainer` (rollout or Rollout-FEM:
the pure functions of harness/explain on those d blocks' attentions only, no gradient through the
ranking) of the class token, or `random` (the study's chance control, a random ranking per
forward); the top `keep` share of the spatial patches (`top_patches`, as the
input pruning ranks) is kept, and blocks d+1..L run on the class token and the block-d outputs of
the kept patches, every frame (`Pruned.after`, the adapters' `prunes_in_forward`: TimeSformer
after d of its blocks, Pool-T after d of its spatial blocks, ranked through a uniform readout over
the frame tokens since its temporal blocks and pooling come later). No cache, no explaining pass,
no refresh: `refresh_every` and `full_input_weight`'s free refresh do not apply (a whole-view loss
term still runs with `full_input_weight` > 0); the warm-up epochs stay vanilla. The gradient
explainers (their score is the forward's end) and the feature-map ones are refused (config time
and here), and so are d >= the blocks it prunes in and a model that cannot prune in its forward.
`prune_after` is not in the default search spaces (the README's "Methods and explainers" says how
to search it).
A policy other than `prune` ignores `prune_after`, as it ignores `keep`.

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
* In-forward pruning (`prune_after` = d): every step and every prediction ranks on the current
  model's partial explanation (its first d blocks' attentions) in that forward's own mode (train
  mode in a step: dropout and stochastic depth as trained; eval at prediction), never stale; it
  is a partial rollout, not the whole model's explanation, and nothing is cached.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from harness.data import Batch
from harness.explain import (
    ATTENTION_EXPLAINERS,
    NEEDS_GRADIENTS,
    attention_relevance,
    explain_output,
    random_relevance,
)
from harness.methods.base import Inputs, TrainingMethod
from harness.models.base import Adapter, Pruned, Selector

# What in-forward pruning ranks with: the attention explainers that need no gradient (the first
# blocks' attentions alone define them; a gradient explainer's score is the end of the forward),
# and `random`, the study's chance control (`et (random relevance)`: a random ranking per forward).
IN_FORWARD_EXPLAINERS = (
    *(e for e in ATTENTION_EXPLAINERS if e not in NEEDS_GRADIENTS), "random"
)


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
        self.prune_after = int(self.cfg.get("prune_after", 0))
        # in-forward pruning: every step and prediction ranks in its own forward, no cache
        self.inside = self.prune_after > 0 and "prune" in self.policies.values()
        if self.inside:
            readers = {m: (a.policy_key, self.policies[m], a.adapter)
                       for m, a in self.modalities.items()}  # fmt: skip
            problem = prune_after_refusal(self.prune_after, self.explainer, readers)
            if problem:
                raise ValueError(problem)
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
        if self.inside:  # every step ranks in its own forward: nothing to refresh
            return
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

    def pruned_inside(self, model: nn.Module, inputs: Inputs) -> dict[str, Pruned]:
        """Each input's view, to be pruned inside the forward after `prune_after` blocks on the
        ranking of `selector`."""
        views = self.view(inputs)
        selectors = {m: self.selector(model.branch(m), m, x, views[m]) for m, x in inputs.items()}
        return {m: Pruned(views[m], selectors[m], after=self.prune_after) for m in inputs}

    def selector(self, branch: nn.Module, modality: str, x: Tensor, view: Tensor) -> Selector:
        """select(partial) -> keep: the explainer on a forward's first blocks' attentions
        (`attention_relevance`, no gradient), its regions kept by the `prune` policy itself."""

        def select(partial: Any) -> Tensor:
            with torch.no_grad():
                if self.explainer == "random":  # the chance control: a fresh random ranking
                    relevance = random_relevance((len(view), *branch.grid), device=view.device)
                else:
                    relevance = attention_relevance(
                        branch, partial, self.explainer, view.device, **self.explainer_kwargs
                    )
            pruned = self.restrict({modality: x}, {modality: relevance}, {modality: view})
            return pruned[modality].keep

        return select

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
        if not self.active:
            return self._view_loss(model, batch)
        if self.inside:
            restricted = self.pruned_inside(model, batch.inputs)
        else:
            cached = [self.relevance[i] for i in batch.index.tolist()]
            relevance = {m: torch.stack([c[m] for c in cached]) for m in batch.inputs}
            restricted = self.restrict(batch.inputs, relevance)
        logits, outputs = self.forward(model, restricted)
        loss = self.objective(logits, outputs, batch.labels)
        if self.full_input_weight:
            loss = loss + self.full_input_weight * self._view_loss(model, batch)[0]
        return loss, logits

    def predict(self, model: nn.Module, inputs: Inputs) -> Tensor:
        if not (self.active and self.explain_at_test):
            return super().predict(model, inputs)
        if self.inside:  # one forward, ranked on its own first blocks
            return self.forward(model, self.pruned_inside(model, inputs))[0]
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


def prune_after_refusal(
    after: int,
    explainer: str,
    readers: Mapping[str, tuple[str, str, Adapter]],
    depth: int | None = None,
) -> str | None:
    """Why in-forward pruning (`prune_after` = `after` >= 1) cannot run, or None (config time and
    here). `readers`: input -> (its policy key, its policy, the adapter of the architecture
    reading it); `depth`: the blocks the model prunes in (`Adapter.prune_depth`), None unknown."""
    again = "(or method.prune_after=0, the pruned-input forward)"
    if explainer not in IN_FORWARD_EXPLAINERS:
        return (
            f"method.prune_after: in-forward pruning ranks on the first blocks' attentions alone; "
            f"expected method.explainer one of {', '.join(IN_FORWARD_EXPLAINERS)}, got "
            f"{explainer!r} {again}"
        )
    for key, policy, reader in readers.values():
        if policy != "prune":
            return (
                f"method.prune_after: in-forward pruning prunes every input in one forward; "
                f"expected method.{key}=prune, got {policy!r} {again}"
            )
        if not reader.prunes_in_forward:
            return (
                f"method.prune_after: model {reader.name} cannot prune inside its forward; "
                f"expected method.prune_after=0 (the pruned-input forward), got {after}"
            )
    if depth is not None and not 0 < after < depth:
        return (
            f"method.prune_after: expected an integer in 1..{depth - 1} (fewer than the {depth} "
            f"blocks the model prunes in), got {after}"
        )
    return None
