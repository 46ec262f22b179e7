"""Checks of what a study will use, made before anything is written, decoded or started: the
output folder, the tracking store, the Ray cluster's address, the resources a trial asks of a
local Ray, and checkpoint paths. Each failure is a `ConfigError` naming the key."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from omegaconf import DictConfig, OmegaConf

from harness.config import ConfigError
from harness.resources import trial_resources


def check_before_start(cfg: DictConfig) -> None:
    """Raise ConfigError for the first thing the study described by `cfg` (composed, validated,
    paths resolved) could not use."""
    check_output_dir_writable(Path(cfg.study.output_dir))
    check_tracking_store(str(cfg.mlflow.tracking_uri))
    check_checkpoint_paths(OmegaConf.to_container(cfg.model, resolve=True))
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        check_ray_address(str(address), float(cfg.ray.connect_timeout_s))
    else:
        check_local_resources(cfg)


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_dir_writable(folder: Path, key: str = "study.output_dir") -> None:
    """The folder exists as a writable folder, or can be made: a probe folder is made in its
    nearest existing ancestor and removed at once."""
    base = _nearest_existing(folder)
    if not base.is_dir():
        raise ConfigError(f"{key}: {folder}: {base} is a file, not a folder")
    try:
        shutil.rmtree(tempfile.mkdtemp(prefix=".et-harness-probe-", dir=base))
    except OSError as error:
        raise ConfigError(
            f"{key}: {folder}: cannot create folders in {base} ({error.strerror or error})"
        ) from None


def check_tracking_store(uri: str) -> None:
    """A tracking server answers; a local store's folder is writable."""
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        from harness.tracking import last_line, mlflow_client

        try:
            mlflow_client(uri).search_experiments(max_results=1)
        except Exception as error:  # noqa: BLE001 - any failure means: not usable
            raise ConfigError(
                f"mlflow.tracking_uri: {uri} does not answer ({last_line(str(error))}); a study "
                "starts with its tracking store reachable"
            ) from None
    elif scheme == "sqlite":
        from harness.stores import artifact_location

        store = Path(urlparse(artifact_location(uri)).path).parent
        check_output_dir_writable(store, key="mlflow.tracking_uri")


def check_checkpoint_paths(model: dict[str, Any], where: str = "model") -> None:
    """Every `pretrained` value in the model config that names a file system path exists (a
    bare hub name, `org/name`, is left to the model's loader)."""
    for key, value in model.items():
        if isinstance(value, dict):
            check_checkpoint_paths(value, f"{where}.{key}")
        elif key == "pretrained" and value:
            text = str(value)
            pathlike = text.startswith(("/", "./", "../", "~")) or Path(text).suffix != ""
            if pathlike and not Path(text).expanduser().exists():
                raise ConfigError(f"{where}.pretrained: {text}: no such file or folder")


def check_ray_address(address: str, timeout_s: float) -> None:
    """A `host:port` address answers a TCP connection within `timeout_s` (Ray itself would retry
    for minutes); `auto` and `ray://` addresses are left to Ray, which fails fast for them."""
    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"ray.address: expected auto or host:port, got {address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as error:
        raise ConfigError(
            f"ray.address: {address}: no Ray cluster answers within ray.connect_timeout_s="
            f"{timeout_s:g} s ({error.strerror or error}); start one with `ray start --head`, "
            "or leave ray.address unset for a local Ray"
        ) from None


def check_local_resources(cfg: DictConfig) -> None:
    """A trial's CPUs and GPUs fit the local Ray the study will start (`ray.num_cpus`,
    `ray.num_gpus`; by default this machine's cores and CUDA devices)."""
    import torch

    cpus = cfg.ray.num_cpus if cfg.ray.num_cpus is not None else os.cpu_count() or 1
    gpus = cfg.ray.num_gpus if cfg.ray.num_gpus is not None else torch.cuda.device_count()
    trial_resources(cfg.sweep, [{"CPU": float(cpus), "GPU": float(gpus)}], joined=False)
