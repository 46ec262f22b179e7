"""Training methods (vanilla, IFI, ET): how a batch becomes a loss. `METHODS` maps config names."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from harness.methods.base import TrainingMethod
from harness.methods.et import ET
from harness.methods.ifi import IFI
from harness.methods.vanilla import Vanilla

METHODS: dict[str, type[TrainingMethod]] = {"vanilla": Vanilla, "ifi": IFI, "et": ET}


def build_method(cfg: Mapping[str, Any], **kwargs: Any) -> TrainingMethod:
    """The method named by `cfg['name']`, configured by the rest of `cfg`."""
    name = cfg["name"]
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; expected one of: {', '.join(METHODS)}")
    return METHODS[name](cfg, **kwargs)
