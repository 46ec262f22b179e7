"""IFI baseline: attention supervised by its own class-specific relevance.

Mallick, Benois-Pineau, Zemmari, "IFI: Interpreting for Improving", MMM 2024. The paper's loss is
not at hand; its abstract says the attention-gradient interpretability method "highlights important
attention weights along the training iterations", guiding the parameters "in a more optimal
direction". Our reading, per training iteration and for every attention map A (each TimeSformer
block's temporal and spatial attention, [.., H, n, n]; each Linformer block's attention over the
projected keys P, [B, H, N, k], see harness/methods/modality.py):

    G   = d y_c / d A                      gradient of the true class's logit (class-specific)
    R   = E_h((A * G)^+)                   the relevance of each attention weight (as in TIBAV)
    Q   = R / sum_j R                      row-normalised: where the attention *should* go
    L   = CE(logits, y) + weight * mean_rows KL(Q || E_h(A))

R is detached: it is a target, recomputed every iteration as the model changes. `rows` chooses which
attention rows are supervised: "all" (every query token) or "class" (the class token's row of the
spatial attentions, the only rows that read into the prediction directly). Rows whose relevance is
all zero are skipped. Prediction is plain (no explanation at test time). The hybrid model's
branches are both supervised, before fusion, with y_c its fused logit (the term is averaged over
every supervised attention map of both branches) and the combined loss in place of CE.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.data import Batch
from harness.methods.base import TrainingMethod

_EPS = 1e-8


def relevance_alignment(
    attention: torch.Tensor, gradient: torch.Tensor, class_row_only: bool
) -> torch.Tensor:
    """Mean over rows of KL(Q || E_h A), Q = row-normalised E_h((A * G)^+); heads on dim -3.
    Computed in fp32 whatever the autocast precision (fp16 would flush _EPS and the log to 0)."""
    attention, gradient = attention.float(), gradient.float()
    relevance = (attention.detach() * gradient).clamp(min=0).mean(-3)  # [..., n, n]
    predicted = attention.mean(-3)
    if class_row_only:
        relevance, predicted = relevance[..., :1, :], predicted[..., :1, :]
    total = relevance.sum(-1, keepdim=True)
    valid = total.squeeze(-1) > _EPS
    if not valid.any():
        return attention.new_zeros(())
    target = relevance / total.clamp(min=_EPS)
    kl = (target * (target.clamp(min=_EPS).log() - predicted.clamp(min=_EPS).log())).sum(-1)
    return kl[valid].mean()


class IFI(TrainingMethod):
    name = "ifi"

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        logits, outputs = self.forward(model, self.view(batch.inputs), capture=True)
        score = logits.gather(1, batch.labels[:, None]).sum()
        class_rows = self.cfg.get("rows", "all") == "class"
        pairs = [
            pair
            for m, out in outputs.items()
            for pair in self.modalities[m].attention(out, score, class_rows)
        ]
        alignment = torch.stack([relevance_alignment(a, g, class_rows) for a, g in pairs]).mean()
        loss = self.objective(logits, outputs, batch.labels)
        return loss + float(self.cfg.get("weight", 1.0)) * alignment, logits
