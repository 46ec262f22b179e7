"""Search spaces (search_spaces/<modality>/<method>.yaml) as Optuna define-by-run functions.

A space is a nested mapping whose leaves are parameter specs keyed by their trial-config path:
`{type: float|int, low, high, log?, step?}` or `{type: categorical, choices: [...]}`, each with an
optional `when: {path: value | [values]}` (sampled only if earlier parameters took those values).
Optuna parameter names are the paths with "/" separators, which Ray Tune's OptunaSearch turns
back into nested config keys.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import optuna

_TYPES = ("float", "int", "categorical")


@dataclass(frozen=True)
class Parameter:
    path: str  # dotted trial-config key, e.g. "method.k"
    spec: Mapping[str, Any]

    @property
    def candidates(self) -> list[Any]:
        """The values that bound this parameter: its choices, or its low and high."""
        if self.spec["type"] == "categorical":
            return list(self.spec["choices"])
        return [self.spec["low"], self.spec["high"]]

    def applies(self, sampled: Mapping[str, Any]) -> bool:
        for path, allowed in dict(self.spec.get("when") or {}).items():
            allowed = list(allowed) if isinstance(allowed, (list, tuple)) else [allowed]
            if sampled.get(path) not in allowed:
                return False
        return True

    def suggest(self, trial: optuna.Trial) -> Any:
        name, spec = self.path.replace(".", "/"), self.spec
        if spec["type"] == "categorical":
            return trial.suggest_categorical(name, list(spec["choices"]))
        suggest = trial.suggest_float if spec["type"] == "float" else trial.suggest_int
        kwargs = {"log": bool(spec.get("log", False))}
        if spec.get("step") is not None:
            kwargs["step"] = spec["step"]
        return suggest(name, spec["low"], spec["high"], **kwargs)


def parameters(space: Mapping[str, Any], prefix: str = "") -> Iterator[Parameter]:
    """The leaves of a space, in file order."""
    for key, value in space.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and "type" in value:
            yield Parameter(path, value)
        elif isinstance(value, Mapping):
            yield from parameters(value, prefix=f"{path}.")
        else:
            raise ValueError(
                f"{path}: expected a parameter spec {{type: ...}} or a mapping, got {value!r}"
            )


def check_space(space: Mapping[str, Any], where: str) -> list[Parameter]:
    """The space's parameters, after checking their specs; errors name `where` and the key."""
    params = list(parameters(space))
    seen: set[str] = set()
    for p in params:
        spec, name = p.spec, f"{where}.{p.path}"
        if spec["type"] not in _TYPES:
            raise ValueError(
                f"{name}.type: expected one of {', '.join(_TYPES)}, got {spec['type']!r}"
            )
        if spec["type"] == "categorical":
            if not spec.get("choices"):
                raise ValueError(f"{name}.choices: expected a non-empty list")
        else:
            for bound in ("low", "high"):
                if not isinstance(spec.get(bound), (int, float)):
                    raise ValueError(f"{name}.{bound}: expected a number, got {spec.get(bound)!r}")
            if spec["low"] > spec["high"]:
                raise ValueError(
                    f"{name}: low ({spec['low']}) must not exceed high ({spec['high']})"
                )
            if spec.get("log") and spec["low"] <= 0:
                raise ValueError(f"{name}.low: a log-scaled range needs low > 0, got {spec['low']}")
        for path in dict(spec.get("when") or {}):
            if path not in seen:
                raise ValueError(f"{name}.when: {path!r} must be a parameter listed before it")
        seen.add(p.path)
    return params


@dataclass(frozen=True)
class DefineByRun:
    """An Optuna define-by-run function sampling `params` (conditional ones only when they apply).
    A picklable object, since Ray Tune saves the searcher with the study's state."""

    params: tuple[Parameter, ...]

    def __call__(self, trial: optuna.Trial) -> None:
        sampled: dict[str, Any] = {}
        for p in self.params:
            if p.applies(sampled):
                sampled[p.path] = p.suggest(trial)


def define_by_run(params: list[Parameter]) -> DefineByRun:
    return DefineByRun(tuple(params))
