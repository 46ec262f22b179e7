"""Models: video (TimeSformer), signal (Linformer) and hybrid (both, late fusion).

Every classifier tells the training methods what it reads and how: `modalities` (its inputs:
"video", "signal"), `branch(modality)` (the sub-network reading that input, a classifier of its
own: the model itself for single-input models) and `fuse(logits per modality)` (the model's
logits from its branches' logits: the one branch's for single-input models). `build_model` maps a
model config to a module; architectures import lazily (a signal-only run never imports
transformers).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn


def _timesformer(num_classes: int, signal_channels: int | None, **cfg: Any) -> nn.Module:
    from harness.models.video import TimeSformerClassifier

    return TimeSformerClassifier.from_config(num_classes, **cfg)


def _linformer(num_classes: int, signal_channels: int | None, **cfg: Any) -> nn.Module:
    from harness.models.signal import SignalTransformer

    if cfg.get("channels") is None:  # from the data unless the config names it
        cfg["channels"] = signal_channels
    return SignalTransformer(num_classes, **cfg)


def _hybrid(
    num_classes: int, signal_channels: int | None, *, video: Mapping, signal: Mapping
) -> nn.Module:
    from harness.models.hybrid import HybridClassifier

    return HybridClassifier(
        build_model(video, num_classes, signal_channels),
        build_model(signal, num_classes, signal_channels),
    )


_ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "timesformer": _timesformer,
    "linformer": _linformer,
    "hybrid": _hybrid,
}
MODEL_INPUTS: dict[str, tuple[str, ...]] = {
    "timesformer": ("video",),
    "linformer": ("signal",),
    "hybrid": ("video", "signal"),
}


def model_inputs(cfg: Mapping[str, Any]) -> tuple[str, ...]:
    """The inputs the model of config `cfg` reads (what its dataset must hold)."""
    return MODEL_INPUTS[_name(cfg)]


def _name(cfg: Mapping[str, Any]) -> str:
    name = cfg["name"]
    if name not in _ARCHITECTURES:
        raise ValueError(f"unknown model {name!r}; expected one of: {', '.join(_ARCHITECTURES)}")
    return name


def build_model(
    cfg: Mapping[str, Any], num_classes: int, signal_channels: int | None = None
) -> nn.Module:
    """The model named by `cfg['name']`; the other keys are its constructor's keywords
    (`signal_channels`: the data's channel count, used where the config leaves it null)."""
    kwargs = {k: v for k, v in cfg.items() if k != "name"}
    return _ARCHITECTURES[_name(cfg)](num_classes, signal_channels, **kwargs)
