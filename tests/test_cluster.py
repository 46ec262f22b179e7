"""Scale out: per-trial resources from the config and what Ray sees, and a study that joins an
existing Ray cluster and spreads its trials over the cluster's nodes.

The cluster is two Ray nodes on loopback, each a `ray start --block` process (1 CPU, explicit
ports, a temporary folder of its own) in its own process group; teardown kills those process
groups only (never `ray stop`, which stops every Ray of the machine's user)."""

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pytest
from omegaconf import OmegaConf

from harness.config import ConfigError, compose, resolve_paths, validate_study
from harness.resources import trial_resources as _resources

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"


def _sweep(**values):
    return OmegaConf.create({"max_concurrent": None, **values})


@pytest.mark.parametrize(
    ("sweep", "nodes", "resources", "concurrent"),
    [
        # CPU only: one trial per CPU of each node; auto asks for no GPU
        ({"cpus_per_trial": 1, "gpus_per_trial": "auto"}, [{"CPU": 2}, {"CPU": 3}],
         {"cpu": 1, "gpu": 0}, 5),
        # a trial's CPUs must be on one node: 2 + 3 CPUs hold one 2-CPU trial each, not two
        ({"cpus_per_trial": 2, "gpus_per_trial": 0}, [{"CPU": 2}, {"CPU": 3}],
         {"cpu": 2, "gpu": 0}, 2),
        # auto: a quarter GPU per trial where a node has GPUs; the GPUs bound the count
        ({"cpus_per_trial": 1, "gpus_per_trial": "auto"}, [{"CPU": 16, "GPU": 1}, {"CPU": 8}],
         {"cpu": 1, "gpu": 0.25}, 4),
        # fractions that do not divide 1 exactly in binary still count right (10 per GPU)
        ({"cpus_per_trial": 0.5, "gpus_per_trial": 0.1}, [{"CPU": 8, "GPU": 2}],
         {"cpu": 0.5, "gpu": 0.1}, 16),
        ({"cpus_per_trial": 1, "gpus_per_trial": 2}, [{"CPU": 8, "GPU": 4}, {"CPU": 8, "GPU": 1}],
         {"cpu": 1, "gpu": 2}, 2),
        # max_concurrent has the last word
        ({"cpus_per_trial": 1, "gpus_per_trial": 0, "max_concurrent": 3}, [{"CPU": 8}],
         {"cpu": 1, "gpu": 0}, 3),
    ],
)  # fmt: skip
def test_resources_fit_node_by_node(sweep, nodes, resources, concurrent):
    assert _resources(_sweep(**sweep), nodes, joined=False) == (resources, concurrent)


def test_resources_no_node_can_hold_a_trial():
    sweep = _sweep(cpus_per_trial=1, gpus_per_trial=0.5)
    message = r"sweep.cpus_per_trial=1, sweep.gpus_per_trial=0.5: no Ray node .*2 CPU, 0 GPU"
    with pytest.raises(ConfigError, match=message):  # a local Ray will never grow a GPU
        _resources(sweep, [{"CPU": 2}], joined=False)
    # a joined cluster may autoscale: a warning, and trials wait
    assert _resources(sweep, [{"CPU": 2}], joined=True) == ({"cpu": 1, "gpu": 0.5}, 1)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("sweep.gpus_per_trial=1.5", "sweep.gpus_per_trial: expected auto, a fraction"),
        ("sweep.gpus_per_trial=-0.25", "sweep.gpus_per_trial: expected auto, a fraction"),
        ("sweep.gpus_per_trial=half", "sweep.gpus_per_trial: expected auto, a fraction"),
        ("sweep.cpus_per_trial=0", "sweep.cpus_per_trial: expected a number > 0, got 0"),
        ("sweep.max_concurrent=0", "sweep.max_concurrent: expected null or an integer >= 1"),
        ("sweep.objective=speed", "sweep.objective: expected one of accuracy, pareto"),
    ],
)
def test_bad_resources_and_objective_are_named(override, message):
    cfg = compose("birds_video", [override])
    resolve_paths(cfg)
    with pytest.raises(ConfigError, match=message):
        validate_study(cfg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_ports() -> list[str]:
    names = ("node-manager", "object-manager", "metrics-export", "dashboard-agent-listen",
             "dashboard-agent-grpc", "runtime-env-agent")  # fmt: skip
    return [arg for name in names for arg in (f"--{name}-port", str(_free_port()))]


def _started(log: Path, process: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while "Ray runtime started" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"ray start failed: {log.read_text()[-3000:]}")
        time.sleep(0.5)


def _live_members(group: int) -> list[int]:
    """Processes of process group `group` that are not zombies (Linux /proc)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # state, ppid, pgrp, ...
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the node's process group (ray start and everything it spawned), SIGKILL to what
    is left of it after 5 s; returns once none of it runs."""
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 30)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while _live_members(process.pid) and time.monotonic() < deadline:
            process.poll()
            time.sleep(0.5)
        if not _live_members(process.pid):
            break
    process.poll()


@pytest.fixture(scope="module")
def cluster():
    """Address of a two-node Ray cluster on 127.0.0.1, 1 CPU per node."""
    # a short folder of its own: a node's socket paths must stay under AF_UNIX's 107 bytes, which
    # a pytest folder (per parallel worker) can exceed
    folder = Path(tempfile.mkdtemp(prefix="et-ray-", dir="/tmp"))
    # the nodes' workers import the project and the test's gate driver (tests/_faults.py)
    path = os.pathsep.join([str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "MLFLOW_DISABLE_TELEMETRY": "true",
           "PYTHONPATH": path}  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    address = f"127.0.0.1:{_free_port()}"
    common = ["--num-cpus", "1", "--num-gpus", "0", "--node-ip-address", "127.0.0.1",
              "--temp-dir", str(folder), "--disable-usage-stats", "--block"]  # fmt: skip
    nodes = []
    try:
        for name, role in (
            ("head", ["--head", "--port", address.split(":")[1], "--include-dashboard", "false"]),
            ("worker", ["--address", address]),
        ):
            log = folder / f"{name}.log"
            with log.open("w") as sink:  # the node writes to its own copy of the descriptor
                nodes.append(
                    subprocess.Popen(
                        ["ray", "start", *role, *_node_ports(), *common],
                        env=env,
                        stdout=sink,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            _started(log, nodes[-1])
        yield address, env
    finally:
        for node in reversed(nodes):
            _stop(node)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_study_on_a_two_node_cluster_runs_trials_on_both_nodes(cluster, tmp_path):
    """Two search trials held at a barrier after their first epoch until both have arrived
    (tests/_faults.py), one CPU per node, an actor per trial (`sweep.reuse_actors=false`): the
    two trials are alive at once, so on both nodes, however long a trial lasts."""
    address, env = cluster
    out, gate = tmp_path / "study", tmp_path / "gate"
    gate.mkdir()
    env = {**env, "GATE_DIR": str(gate), "GATE_EPOCH": "1", "GATE_STAGE": "search-vanilla",
           "GATE_QUORUM": "2"}
    result = subprocess.run(
        [sys.executable, "-c", "import sys, _faults; sys.exit(_faults.main())", "birds_video",
         "sweep=smoke", "report.explain_models=false", f"ray.address={address}",
         "study.methods=[vanilla]",
         "sweep.num_samples=2", "sweep.reuse_actors=false", f"study.output_dir={out}",
         f"data.cache_dir={tmp_path / 'cache'}", "model=pool_t", "model.hidden_size=16",
         "evaluation.occlusion_levels=[0.0,0.5]", "evaluation.gallery_clips=1",
         "data.synthetic.train_per_class=8", "data.synthetic.val_per_class=4",
         "data.synthetic.test_per_class=4"],
        capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "ray: joined, 2 node(s); per trial 1 CPU, 0 GPU; up to 2 trials at once" in result.stdout
    assert len(list(gate.glob("arrived-*"))) == 2
    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("et-harness-birds_video")
    runs = [r for r in client.search_runs([experiment.experiment_id])
            if "mlflow.parentRunId" in r.data.tags]  # fmt: skip
    assert sorted(r.data.tags["stage"] for r in runs) == ["final", "search", "search"]
    nodes = {r.data.tags["trial_name"]: r.data.tags["ray.node_id"] for r in runs}
    search = {name: node for name, node in nodes.items() if name.startswith("gated_trial")}
    assert len(set(search.values())) == 2
    assert all(len(node) == 56 and int(node, 16) >= 0 for node in nodes.values())
    with (out / "report" / "trials_vanilla.csv").open() as f:  # Tune's own record agrees
        assert {row["trial_id"]: row["node_id"] for row in csv.DictReader(f)} == {
            name.rsplit("_", 1)[1]: node for name, node in search.items()
        }
