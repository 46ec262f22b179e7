"""Models: one adapter per architecture, registered once here.

`ARCHITECTURES` maps a config's `model.name` to the adapter of that architecture ("module:class",
imported on first use: a signal-only run never imports transformers). The adapter
(harness/models/base.py) declares the model's inputs, builds it from its config, checks that config
before Ray starts, and tells the explainers, ET, IFI and the occlusion test how to read it.
Adding a model is one file (the module and its adapter) and one line here.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import import_module
from typing import Any

from torch import nn

from harness.models.base import Adapter

ARCHITECTURES: dict[str, str] = {
    "timesformer": "harness.models.video:TimeSformerAdapter",
    "pool_t": "harness.models.pool_t:PoolTAdapter",
    "video_swin_t": "harness.models.swin:VideoSwinAdapter",
    "linformer": "harness.models.signal:LinformerAdapter",
    "hybrid": "harness.models.hybrid:HybridAdapter",
}


def adapter_of(cfg: Mapping[str, Any], where: str = "model") -> Adapter:
    """The adapter of model config `cfg` (its `name`); ValueError naming `where` if unknown."""
    name = cfg.get("name")
    if name not in ARCHITECTURES:
        raise ValueError(
            f"{where}.name: unknown model {name!r}; expected one of: {', '.join(ARCHITECTURES)}"
        )
    module, cls = ARCHITECTURES[name].split(":")
    return getattr(import_module(module), cls)()


def model_inputs(cfg: Mapping[str, Any]) -> tuple[str, ...]:
    """The inputs the model of config `cfg` reads (what its dataset must hold)."""
    return adapter_of(cfg).inputs


def build_model(
    cfg: Mapping[str, Any], num_classes: int, signal_channels: int | None = None
) -> nn.Module:
    """The model named by `cfg['name']`; the other keys are its constructor's keywords
    (`signal_channels`: the data's channel count, used where the config leaves it null)."""
    kwargs = {k: v for k, v in cfg.items() if k != "name"}
    return adapter_of(cfg).build(num_classes, signal_channels, **kwargs)
