"""Command-line overrides checked against the experiment they change, before Hydra applies them.

Three classes of mistake pass Hydra silently or with a misleading hint, and are errors here:
- a key the experiment does not have (a typo): named, with the nearest keys it does have. Hydra
  itself would suggest `+key=value`, which adds the key and then changes nothing. `+` is taken
  only under `space.*` (a new searched parameter) and `data.options.*` (a layout's options);
- a value of the wrong type for its key (`train.lr=abc`, `train.epochs=2.5`, a list for a number);
- a value the search then overwrites (`methods.et.k=1.5` while `space.et.method.k` is searched):
  the error names the `space.*` key to change instead.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from importlib import resources
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from harness.config import ConfigError, compose
from harness.search_space import check_space

# sections where `+key=value` adds something that is used (a searched parameter, a layout option)
FREE_FORM = ("space.", "data.options.")
_MISSING = object()


def config_groups() -> set[str]:
    """The config groups an override may choose from (`model=...`, `sweep=...`, ...)."""
    folder = resources.files("harness.conf")
    return {p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("_")}


def check_overrides(experiment: str, overrides: Iterable[str]) -> None:
    """Raise ConfigError for the first override of `experiment` that is a typo, has a value of
    the wrong type, or sets a value that the search overwrites."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    groups = config_groups()
    choices = [o.input_line for o in parsed if o.key_or_group in groups]
    reference = compose(experiment, choices)  # the experiment's keys, with the chosen groups
    values = [o for o in parsed if o.key_or_group not in groups and not o.is_delete()]
    for override in values:
        key = override.key_or_group
        known = OmegaConf.select(reference, key, default=_MISSING)
        if known is _MISSING:
            if override.is_add() and key.startswith(FREE_FORM):
                continue
            raise ConfigError(f"{override.input_line}: {experiment} has no key {key}"
                              + _suggest(key, reference))  # fmt: skip
        if override.is_add():
            raise ConfigError(f"{override.input_line}: {key} exists; set it without '+'")
        _check_type(override.input_line, key, known, override.value())
    cfg = compose(experiment, list(overrides))
    for override in values:
        _check_not_searched(override.input_line, override.key_or_group, cfg)


def _keys(node: Any, prefix: str = "") -> list[str]:
    if not isinstance(node, DictConfig):
        return []
    out = []
    for key in node.keys():
        path = f"{prefix}{key}"
        out.append(path)
        out.extend(_keys(node._get_node(key), f"{path}."))
    return out


def _suggest(key: str, reference: DictConfig) -> str:
    close = difflib.get_close_matches(key, _keys(reference), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, (list, tuple)) or OmegaConf.is_list(value):
        return "a list"
    if isinstance(value, dict) or OmegaConf.is_dict(value):
        return "a mapping"
    return "a string"


def _check_type(line: str, key: str, known: Any, value: Any) -> None:
    """`value` (as Hydra parsed it) must be of the kind of the experiment's own value (an
    integer also stands for a number; null is always accepted, and anything where it is null)."""
    if known is None or value is None or isinstance(known, str):
        return
    expected, got = _kind(known), _kind(value)
    if expected == got or (expected == "a number" and got == "an integer"):
        return
    raise ConfigError(f"{line}: {key}: expected {expected} (like {known!r}), got {value!r}")


def _check_not_searched(line: str, key: str, cfg: DictConfig) -> None:
    """A trial's `method.*` comes from `methods.<m>.*`, the rest of its config from the same
    keys of the study's config: a key one of the study's searches sets is an error here."""
    for method in cfg.study.methods:
        space = OmegaConf.to_container(cfg.space[method], resolve=True)
        searched = {p.path for p in check_space(space, f"space.{method}")}
        prefix = f"methods.{method}."
        path = "method." + key[len(prefix):] if key.startswith(prefix) else key
        if path in searched:
            raise ConfigError(
                f"{line}: the {method} search sets {path} in every trial (space.{method}."
                f"{path}), so this value would not be used; change the range there instead "
                f"(e.g. space.{method}.{path}.low=... / .high=... / .choices=[...]), or take it "
                f"out of the search with ~space.{method}.{path}"
            )


def check_trial_file(config: Any, overrides: Iterable[str], source: str) -> None:
    """An exported trial config (`best/<method>.yaml`, read from `source`) and the dotted
    overrides given with it: the file is a mapping whose values have the kinds of the same keys
    of its experiment's trial config; each override names a key the file has, with a value of
    its kind."""
    from harness.config import experiments, trial_config

    if not isinstance(config, dict):
        raise ConfigError(f"{source}: expected a mapping of config sections, got {config!r:.80}")
    experiment = config.get("experiment")
    if experiment not in experiments():
        raise ConfigError(f"{source}: experiment: expected one of {', '.join(experiments())}, "
                          f"got {experiment!r}")  # fmt: skip
    method = (config.get("method") or {}).get("name", "vanilla")
    reference = trial_config(compose(experiment, []), method if method else "vanilla")
    _check_kinds(config, reference, source)
    for line in overrides:
        key, _, text = line.partition("=")
        known = OmegaConf.select(OmegaConf.create(config), key, default=_MISSING)
        if known is _MISSING:
            raise ConfigError(f"{line}: {source} has no key {key}"
                              + _suggest(key, OmegaConf.create(config)))  # fmt: skip
        _check_type(line, key, known, OmegaConf.from_dotlist([f"v={text}"]).v)


def _check_kinds(config: dict, reference: dict, where: str, prefix: str = "") -> None:
    for key, value in config.items():
        if key not in reference or (prefix == "" and key == "model"):
            continue  # keys of another model or method than the default: checked by validation
        known = reference[key]
        if isinstance(known, dict) and isinstance(value, dict):
            _check_kinds(value, known, where, f"{prefix}{key}.")
        else:
            _check_type(where, f"{prefix}{key}", known, value)
