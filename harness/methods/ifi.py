"""IFI baseline: attention guided by its own class-specific relevance, three readings.

Mallick, Benois-Pineau, Zemmari, "IFI: Interpreting for Improving", MMM 2024. The paper's loss is
not at hand; its abstract (quoted in the spec) says "an interpretability method based on attention
gradients [is used] to highlight important attention weights along the training iterations. This
guides the transformer parameters to evolve in a more optimal direction", first on the video part,
then "applied to the sensor data [...] before fusion", with "the late fusion via a combined loss".
Every reading below uses, per training iteration and for every attention map A (each TimeSformer
block's temporal and spatial attention, [.., H, n, n]; each Linformer block's attention over the
projected keys P, [B, H, N, k], see harness/methods/modality.py), the relevance of TIBAV:

    G = d y_c / d A        the gradient of the true class's logit (class-specific: "attention
                           gradients"), computed on the same batch
    R = (A * G)^+          per head; E_h R its head mean ("important attention weights")

and differs in how that relevance "guides the parameters" (``method.variant``):

* ``align`` (the default; a supervision reading): Q = E_h R / sum_j E_h R, row-normalised and
  detached, is where the attention should go, and the head-mean attention is pulled to it:
      L = CE(logits, y) + weight * mean_rows KL(Q || E_h A).
  Only the head mean is supervised, so heads may offset one another.
* ``align_heads``: the same term per head, L = CE + weight * mean_{h, rows} KL(Q_h || A_h),
  Q_h = R_h / sum_j R_h: each head is pulled to its own relevance.
* ``gate`` (a re-weighting reading: the relevance "highlights" the weights in the forward pass
  itself): a first pass of the batch gives R (its gradient taken with respect to the attention
  maps only, ``torch.autograd.grad``; no parameter gradient, then detached), and the training
  pass re-weights every attention map as
      A' = rownorm(A * (1 + gate_strength * R^)),   R^ = E_h R / max_row(E_h R)
  (R^ in [0, 1]: the row's most relevant weight is multiplied by 1 + gate_strength; a row with no
  positive relevance is left as it is); the loss is the plain CE (combined loss) of that pass, so
  the gradients flow through the re-weighted attention. The gate goes through the model's
  `attention_gate` (harness/models/base.py).

Prediction is plain in every reading (no explanation or gate at test time). `rows` (the ``align``
readings) chooses which attention rows are supervised: "all" (every query token) or "class" (the
class token's row of the spatial attentions, the only rows that read into the prediction
directly). Rows whose relevance is all zero are skipped. The hybrid model's branches are both
guided, before fusion, with y_c its fused logit (the term is averaged over every supervised
attention map of both branches) and the combined loss in place of CE.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from harness.data import Batch
from harness.methods.base import TrainingMethod
from harness.models.base import AttentionGate

_EPS = 1e-8
VARIANTS = ("align", "align_heads", "gate")


def relevance_alignment(
    attention: torch.Tensor, gradient: torch.Tensor, class_row_only: bool, per_head: bool = False
) -> torch.Tensor:
    """Mean over rows of KL(Q || E_h A), Q = row-normalised E_h((A * G)^+), heads on dim -3; with
    `per_head`, mean over heads and rows of KL(Q_h || A_h), Q_h = row-normalised (A_h * G_h)^+.
    Computed in fp32 whatever the autocast precision (fp16 would flush _EPS and the log to 0)."""
    attention, gradient = attention.float(), gradient.float()
    relevance = (attention.detach() * gradient).clamp(min=0)  # [..., H, n, n]
    predicted = attention
    if not per_head:
        relevance, predicted = relevance.mean(-3), attention.mean(-3)  # [..., n, n]
    if class_row_only:
        relevance, predicted = relevance[..., :1, :], predicted[..., :1, :]
    total = relevance.sum(-1, keepdim=True)
    valid = total.squeeze(-1) > _EPS
    if not valid.any():
        return attention.new_zeros(())
    target = relevance / total.clamp(min=_EPS)
    kl = (target * (target.clamp(min=_EPS).log() - predicted.clamp(min=_EPS).log())).sum(-1)
    return kl[valid].mean()


def gate_relevance(attention: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """R^ = E_h((A * G)^+) divided by its row maximum (0 where a row has no positive relevance):
    [..., H, n, m] -> [..., 1, n, m], detached, in [0, 1]."""
    relevance = (attention.detach().float() * gradient.float()).clamp(min=0).mean(-3, keepdim=True)
    peak = relevance.amax(-1, keepdim=True)
    return (relevance / peak.clamp(min=_EPS)).where(peak > _EPS, 0)


def gated_attention(
    attention: torch.Tensor, relevance: torch.Tensor, strength: float
) -> torch.Tensor:
    """rownorm(A * (1 + strength * R^)): the attention with its relevant weights amplified."""
    gated = attention * (1 + strength * relevance.to(attention.dtype))
    return gated / gated.sum(-1, keepdim=True)


@contextmanager
def attention_gates(gates: Mapping[nn.Module, AttentionGate]) -> Iterator[None]:
    """Each module's `attention_gate` set for the duration of the block (then None again)."""
    try:
        for module, gate in gates.items():
            module.attention_gate = gate
        yield
    finally:
        for module in gates:
            module.attention_gate = None


def _recorder(maps: list[torch.Tensor]) -> AttentionGate:
    """A gate that changes nothing and keeps every map it sees (in the forward graph)."""

    def record(i: int, attention: torch.Tensor) -> torch.Tensor:
        maps.append(attention)
        return attention

    return record


def _gate(relevance: list[torch.Tensor], strength: float) -> AttentionGate:
    def gate(i: int, attention: torch.Tensor) -> torch.Tensor:
        return gated_attention(attention, relevance[i], strength)

    return gate


class IFI(TrainingMethod):
    name = "ifi"

    def __init__(self, cfg, **kwargs) -> None:
        super().__init__(cfg, **kwargs)
        self.variant = str(self.cfg.get("variant", "align"))
        if self.variant not in VARIANTS:
            raise ValueError(
                f"method.variant: unknown IFI variant {self.variant!r}; expected one of: "
                + ", ".join(VARIANTS)
            )

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        if self.variant == "gate":
            return self._gated_loss(model, batch)
        logits, outputs = self.forward(model, self.view(batch.inputs), capture=True)
        score = logits.gather(1, batch.labels[:, None]).sum()
        class_rows = self.cfg.get("rows", "all") == "class"
        per_head = self.variant == "align_heads"
        pairs = [
            pair
            for m, out in outputs.items()
            for pair in self.modalities[m].attention(out, score, class_rows)
        ]
        alignment = torch.stack(
            [relevance_alignment(a, g, class_rows, per_head) for a, g in pairs]
        ).mean()
        loss = self.objective(logits, outputs, batch.labels)
        return loss + float(self.cfg.get("weight", 1.0)) * alignment, logits

    def _gated_loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        views = self.view(batch.inputs)
        branches = {m: model.branch(m) for m in views}
        maps: dict[str, list[torch.Tensor]] = {m: [] for m in views}
        with attention_gates({branches[m]: _recorder(maps[m]) for m in views}):
            logits = self.forward(model, views)[0]
        score = logits.gather(1, batch.labels[:, None]).sum()
        flat = [a for m in views for a in maps[m]]
        # A map the score does not reach (no gradient) has no relevance: its gate is the identity.
        grads = iter(torch.autograd.grad(score, flat, allow_unused=True, materialize_grads=True))
        relevance = {m: [gate_relevance(a, next(grads)) for a in maps[m]] for m in views}
        del flat, maps, logits, score  # the first pass's graph is freed here
        strength = float(self.cfg.get("gate_strength", 1.0))
        with attention_gates({branches[m]: _gate(relevance[m], strength) for m in views}):
            logits, outputs = self.forward(model, views)
        return self.objective(logits, outputs, batch.labels), logits
