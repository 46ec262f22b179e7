"""Vanilla fine-tuning: cross-entropy on the whole clip, downsampled to the model's input."""

from harness.methods.base import TrainingMethod


class Vanilla(TrainingMethod):
    name = "vanilla"
