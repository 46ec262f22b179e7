"""Where a study's MLflow store keeps its artifacts, from its tracking URI alone (no MLflow
import: the pre-flight checks use it before anything heavy is loaded)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse


def artifact_location(tracking_uri: str) -> str | None:
    """Where a new experiment's artifacts go: `mlartifacts/` beside a local store (a `sqlite:///`
    database file or a `file:` folder), whatever folder the command was started from (MLflow's
    own default is `./mlruns` of the working directory); None (the server decides) for a
    tracking server."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme == "sqlite":
        store = Path(unquote(parsed.path)[1:])  # sqlite:///rel.db, sqlite:////abs.db
        return (store.resolve().parent / "mlartifacts").as_uri()
    if parsed.scheme in ("", "file"):
        return (Path(unquote(parsed.path)).resolve() / "mlartifacts").as_uri()
    return None
