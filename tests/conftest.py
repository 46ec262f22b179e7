import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    """Files with slow (end-to-end) tests first, in collection order, then the rest: with `-n 2
    --dist loadfile --no-loadscope-reorder` (pyproject.toml) each file goes whole to the next free
    worker, so the long study runs start first and the short files fill in at the end."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)  # a stable sort keeps each file's order
