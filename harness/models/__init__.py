"""Models: the video transformer (TimeSformer). `build_model` maps a model config to a module."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from harness.models.video import DividedAttention, TimeSformerClassifier, VideoOutput

__all__ = ["DividedAttention", "TimeSformerClassifier", "VideoOutput", "build_model"]

_ARCHITECTURES = {"timesformer": TimeSformerClassifier.from_config}


def build_model(cfg: Mapping[str, Any], num_classes: int) -> TimeSformerClassifier:
    """The model named by `cfg['name']`; the other keys are its constructor's keywords."""
    kwargs = dict(cfg)
    name = kwargs.pop("name")
    if name not in _ARCHITECTURES:
        raise ValueError(f"unknown model {name!r}; expected one of: {', '.join(_ARCHITECTURES)}")
    return _ARCHITECTURES[name](num_classes, **kwargs)
