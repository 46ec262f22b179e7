"""What one trial asks of Ray, and how many trials fit at once."""

from __future__ import annotations

import math

from omegaconf import DictConfig

from harness.config import ConfigError

AUTO_GPU_SHARE = 0.25  # sweep.gpus_per_trial=auto: a quarter of a GPU per trial where GPUs exist


def trial_resources(
    sweep: DictConfig, nodes: list[dict[str, float]], joined: bool
) -> tuple[dict[str, float], int]:
    """Per-trial resources (`sweep.cpus_per_trial`, `sweep.gpus_per_trial`) and the number of
    trials that fit at once, counted node by node (`nodes`: each node's Ray resources; a trial's
    resources must all be on one node). No node fitting a trial is an error on a local Ray; on a
    joined cluster a warning (an autoscaler may still add such nodes)."""
    gpus = sweep.gpus_per_trial
    if gpus == "auto":
        gpus = AUTO_GPU_SHARE if any(node.get("GPU", 0) > 0 for node in nodes) else 0
    cpus, gpus = float(sweep.cpus_per_trial), float(gpus)

    def fit(have: float, need: float) -> int:
        return math.floor(have / need + 1e-9) if need else 1 << 30

    fits = sum(min(fit(n.get("CPU", 0), cpus), fit(n.get("GPU", 0), gpus)) for n in nodes)
    if not fits:
        have = "; ".join(f"{n.get('CPU', 0):g} CPU, {n.get('GPU', 0):g} GPU" for n in nodes)
        message = (
            f"sweep.cpus_per_trial={cpus:g}, sweep.gpus_per_trial={gpus:g}: no Ray node has that "
            f"much for a trial (nodes: {have})"
        )
        if not joined:
            raise ConfigError(message)
        print(f"warning: {message}; trials wait until the cluster has such a node", flush=True)
    concurrent = int(sweep.max_concurrent or max(fits, 1))
    return {"cpu": cpus, "gpu": gpus}, concurrent
