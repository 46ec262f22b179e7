"""What the training methods ask of every classifier (see harness/models/__init__.py)."""

from __future__ import annotations

import torch


class SingleInput:
    """Mixin of a classifier of one input: it is its own (only) branch, its logits that branch's."""

    modalities: tuple[str, ...]

    def branch(self, modality: str) -> SingleInput:
        if modality not in self.modalities:
            raise KeyError(f"no {modality!r} branch; this model reads {list(self.modalities)}")
        return self

    def fuse(self, logits: dict[str, torch.Tensor]) -> torch.Tensor:
        return logits[self.modalities[0]]
