"""What the training methods ask of every classifier (see harness/models/__init__.py)."""

from __future__ import annotations

from collections.abc import Callable

import torch

# gate(i, A) -> A': re-weights the i-th attention map of a forward pass (first layer first, in the
# order the model captures its maps) before it mixes the values; same shape, heads on dim -3.
# Every model has an `attention_gate` attribute applied this way (None: plain attention); IFI's
# `gate` reading sets it for a training pass (harness/methods/ifi.py).
AttentionGate = Callable[[int, torch.Tensor], torch.Tensor]


class SingleInput:
    """Mixin of a classifier of one input: it is its own (only) branch, its logits that branch's."""

    modalities: tuple[str, ...]

    def branch(self, modality: str) -> SingleInput:
        if modality not in self.modalities:
            raise KeyError(f"no {modality!r} branch; this model reads {list(self.modalities)}")
        return self

    def fuse(self, logits: dict[str, torch.Tensor]) -> torch.Tensor:
        return logits[self.modalities[0]]
