"""What a training method is: how a batch becomes a loss, and how the trained model predicts.

Inputs arrive as the dataset stores them (`Batch.inputs`: clips [B, T, 3, H, W] at storage
resolution, standardised signals [B, L, C]); each input's adapter (harness/methods/modality.py)
gives the model's `view` of it (a clip area-downsampled to the model's input size, a signal as it
is). Vanilla and IFI train and predict on the views; ET restricts each input to its salient part
first. A model with several inputs (the hybrid) is trained with the combined loss

    L = CE(fused logits, y) + branch_weight * sum_m CE(branch_m logits, y)

so each branch stays a classifier that can be explained on its own; with one input, L = CE.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.data import Batch
from harness.explain import Explanation
from harness.methods.modality import Modality, views
from harness.models.base import run_branch

# explainer -> the method-config keys it takes
EXPLAINER_PARAMS: dict[str, tuple[str, ...]] = {
    "rollout": ("head_fusion", "discard_ratio"),
    "rollout_fem": ("k", "heads", "head_weight", "normalise"),
    "fem": ("k",),
}

Inputs = Mapping[str, Tensor]  # modality -> batch of that input


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
        modalities: Mapping[str, Modality],
        epochs: int,
        evaluation_explainer: str = "rollout_fem",
        branch_weight: float = 1.0,
    ) -> None:
        self.cfg = dict(cfg)
        self.modalities = dict(modalities)
        self.epochs = epochs
        self.branch_weight = branch_weight
        # The explainer whose maps the occlusion test and the galleries use.
        self.explainer = str(self.cfg.get("explainer", evaluation_explainer))
        self.explainer_kwargs = explainer_kwargs(self.explainer, self.cfg)

    def view(self, inputs: Inputs) -> dict[str, Tensor]:
        """What the model sees of whole inputs."""
        return views(self.modalities, inputs)

    def forward(
        self, model: nn.Module, inputs: Inputs, capture: bool = False
    ) -> tuple[Tensor, dict[str, Any]]:
        """Fused logits and each branch's output on model inputs (views or restricted inputs)."""
        outputs = {m: run_branch(model.branch(m), x, capture) for m, x in inputs.items()}
        return model.fuse({m: out.logits for m, out in outputs.items()}), outputs

    def objective(self, logits: Tensor, outputs: Mapping[str, Any], labels: Tensor) -> Tensor:
        """The combined loss (see the module docstring)."""
        loss = F.cross_entropy(logits, labels)
        if len(outputs) > 1:
            branches = sum(F.cross_entropy(out.logits, labels) for out in outputs.values())
            loss = loss + self.branch_weight * branches
        return loss

    def start_epoch(
        self, model: nn.Module, epoch: int, train_batches: Callable[[], Iterable[Batch]]
    ) -> None:
        """Hook run before each training epoch (ET refreshes its explanations here)."""

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs of this method besides the model (ET: its explanations)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take back what `state_dict` returned."""

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
        logits, outputs = self.forward(model, self.view(batch.inputs))
        return self.objective(logits, outputs, batch.labels), logits

    def predict(self, model: nn.Module, inputs: Inputs) -> Tensor:
        return self.forward(model, self.view(inputs))[0]

    def explain(
        self,
        model: nn.Module,
        inputs: Inputs,
        target: Tensor | None = None,
        *,
        explainer: str | None = None,
        explainer_params: Mapping[str, Any] | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Relevance of whole inputs per modality (video [B, T, h, w], signal [B, n]): the
        `relevance` of `explanations`."""
        found = self.explanations(
            model, inputs, target, explainer=explainer, explainer_params=explainer_params,
            generator=generator,
        )  # fmt: skip
        return {m: e.relevance.to(inputs[m].device) for m, e in found.items()}

    def explanations(
        self,
        model: nn.Module,
        inputs: Inputs,
        target: Tensor | None = None,
        *,
        explainer: str | None = None,
        explainer_params: Mapping[str, Any] | None = None,
        generator: torch.Generator | None = None,
        views: Inputs | None = None,
    ) -> dict[str, Explanation]:
        """The explanation of whole inputs per modality (relevance, logits, the explaining
        forward's embedding); `views`: the inputs' views, when computed already.

        Each branch is explained on its view, for class `target` (default: the model's predicted
        class, fused over the branches). `explainer` (default: this method's own) with
        `explainer_params` (default: that explainer's keys in the method config); `generator`
        seeds `random`.
        """
        name = explainer or self.explainer
        if explainer_params is None:
            explainer_params = (
                self.explainer_kwargs if explainer is None else explainer_kwargs(name, self.cfg)
            )
        views = self.view(inputs) if views is None else views
        if target is None and len(inputs) > 1:
            with torch.no_grad():
                target = self.forward(model, views)[0].argmax(1)
        return {
            m: self.modalities[m].explain(
                model.branch(m), views[m], name,
                target=target, generator=generator, **dict(explainer_params),
            )
            for m in inputs
        }  # fmt: skip
