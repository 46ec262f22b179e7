"""Vanilla fine-tuning: cross-entropy on the whole inputs (a clip downsampled to the model's
input, a signal as it is; for the hybrid, the combined loss of harness/methods/base.py)."""

from harness.methods.base import TrainingMethod


class Vanilla(TrainingMethod):
    name = "vanilla"
