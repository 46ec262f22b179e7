"""What a study's output folder remembers between runs of the same command:
`<study.output_dir>/study_state.json`.

It holds the configuration the study was started with (a re-run with another one is refused), the
MLflow target and parent run, the study's tags, the machine it was started on, each stage (one Ray
Tune experiment under `ray/<stage>`: `search-<method>`, `final`) with its tags and whether it
finished, and, once the report is written, the summary logged to the parent run. The file is
replaced atomically, so a driver killed at any point leaves either the previous or the new version.
"""

from __future__ import annotations

import json
import os
import platform
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_FILE = "study_state.json"


def this_machine() -> dict[str, Any]:
    """The driver's machine when a study starts: CPU cores, OS and architecture, UTC start time."""
    return {"cpus": os.cpu_count(), "system": platform.system(), "arch": platform.machine(),
            "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}  # fmt: skip


@dataclass
class Stage:
    tags: dict[str, str]
    finished: bool = False


@dataclass
class StudyState:
    folder: Path
    tracking_uri: str
    experiment_name: str
    config: dict[str, Any] = field(default_factory=dict)
    study_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # tags the parent run
    parent_run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    stages: dict[str, Stage] = field(default_factory=dict)
    summary: dict[str, dict[str, Any]] | None = None  # {"params": {...}, "metrics": {...}}
    # where the study was started: the driver's machine (what a README results line names)
    machine: dict[str, Any] | None = field(default_factory=this_machine)

    @property
    def ray_dir(self) -> Path:
        return self.folder / "ray"

    @classmethod
    def load(cls, folder: Path) -> StudyState | None:
        path = Path(folder) / STATE_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        stages = {name: Stage(**stage) for name, stage in data.pop("stages", {}).items()}
        data.setdefault("machine", None)  # a study started before it was recorded: unknown
        return cls(folder=Path(folder), stages=stages, **data)

    def save(self) -> None:
        data = asdict(self)
        del data["folder"]
        path = self.folder / STATE_FILE
        partial = path.with_name(f".{STATE_FILE}.partial")
        partial.write_text(json.dumps(data, indent=1))
        os.replace(partial, path)

    def begin_stage(self, name: str, tags: dict[str, str]) -> Stage:
        stage = self.stages.setdefault(name, Stage(tags))
        self.save()
        return stage

    def finish_stage(self, name: str) -> None:
        self.stages[name].finished = True
        self.save()


def flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys -> leaf values (`{"a": {"b": 1}}` -> `{"a.b": 1}`)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(flat_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


LOCK_FILE = ".study.lock"


class FolderInUse(RuntimeError):
    """Another study's driver holds the output folder (`hold_folder`)."""


@contextmanager
def hold_folder(folder: Path) -> Iterator[None]:
    """Hold `folder` for one study driver for as long as the block runs: an exclusive `flock` on
    `<folder>/.study.lock` (which then names the holder: pid, host, start). The operating system
    drops it when the process ends, however it ends (kill -9 too), so no stale lock outlives a
    driver. FolderInUse, naming the holder, when another process holds it: two drivers in one
    folder would resume and checkpoint the same trials."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "a process that did not say which"
            raise FolderInUse(f"{folder} is in use by another study's driver ({holder})") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()} on {platform.node()}, since "
                   f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")  # fmt: skip
        lock.flush()
        try:
            yield
        finally:
            lock.truncate(0)
