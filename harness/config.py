"""Experiment configs: Hydra composition, the plain trial config, and validation.

An experiment is a primary config in `harness/conf/` (`birds_video.yaml`, ...). `compose` builds
it with command-line overrides; `trial_config` cuts out what one trial of one method needs (a plain
dict with absolute paths: what Ray Tune hands the trainable and what `best/<method>.yaml` holds);
`validate_study` checks everything, search-space bounds included, before any expensive work.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harness.data.faces import FaceCropSettings
from harness.data.folders import BAD_FILE_POLICIES, LAYOUTS, layout_options
from harness.data.video_io import SAMPLING_POLICIES
from harness.evaluate.occlusion import OCCLUSION_FILLS
from harness.explain import EXPLAINERS
from harness.explain.attention import HEAD_WEIGHTS
from harness.methods import METHODS
from harness.methods.crop import CROP_POLICIES
from harness.methods.et import prune_after_refusal, prune_refusal
from harness.methods.ifi import VARIANTS as IFI_VARIANTS
from harness.methods.modality import DEFAULT_POLICIES, POLICY_KEYS
from harness.methods.window import WINDOW_POLICIES
from harness.models import ARCHITECTURES, adapter_of
from harness.search_space import Parameter, check_space
from harness.train import PRECISIONS

TRIAL_SECTIONS = ("data", "model", "method", "train", "evaluation")
OBJECTIVES = ("accuracy", "pareto")
_HEADS = re.compile(r"^(all|nonempty|top[1-9][0-9]*)$")


class ConfigError(ValueError):
    """A config value is missing or wrong; the message names the source, the key and the
    expectation."""


class Unsupported(ConfigError):
    """A valid value the model cannot serve (an explainer it does not list, `prune` on a model that
    cannot prune): fixed in a config, an error; a choice of a search, left out of that model's
    space (`search_params`)."""


def experiments() -> list[str]:
    folder = resources.files("harness.conf")
    return sorted(
        p.name[: -len(".yaml")] for p in folder.iterdir()
        if p.name.endswith(".yaml") and p.name != "base.yaml"
    )  # fmt: skip


def compose(experiment: str, overrides: list[str]) -> DictConfig:
    if experiment not in experiments():
        raise ConfigError(
            f"unknown experiment {experiment!r}; expected one of: {', '.join(experiments())}"
        )
    try:
        with initialize_config_module(config_module="harness.conf", version_base=None):
            cfg = hydra_compose(config_name=experiment, overrides=list(overrides))
            if cfg.study.get("models"):  # study.models: each model's config, as `model=<name>`
                key = "model@model.video" if cfg.modality == "hybrid" else "model"
                OmegaConf.set_struct(cfg, False)
                cfg.models = {
                    name: hydra_compose(config_name=experiment,
                                        overrides=[*overrides, f"{key}={name}"]).model
                    for name in cfg.study.models
                }  # fmt: skip
                OmegaConf.set_struct(cfg, True)
            return cfg
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(f"{experiment}: {error}") from None


def resolve_paths(cfg: DictConfig) -> None:
    """Make the study's paths absolute (trials run in other working folders, maybe other nodes)."""
    cfg.study.output_dir = str(Path(cfg.study.output_dir).expanduser().resolve())
    cfg.data.cache_dir = str(Path(cfg.data.cache_dir).expanduser().resolve())
    if cfg.data.root:
        cfg.data.root = str(Path(cfg.data.root).expanduser().resolve())
    if not cfg.mlflow.tracking_uri:
        cfg.mlflow.tracking_uri = f"sqlite:///{Path(cfg.study.output_dir) / 'mlflow.db'}"
    if not cfg.sweep.optuna_storage:
        cfg.sweep.optuna_storage = f"sqlite:///{Path(cfg.study.output_dir) / 'optuna.db'}"


def study_runs(cfg: DictConfig) -> list[tuple[str | None, str]]:
    """(model, method) of every search of the study, model None for the experiment's own model;
    with `study.models`, every method for every model."""
    models = list(cfg.study.get("models") or [None])
    return [(model, method) for model in models for method in cfg.study.methods]


def run_name(model: str | None, method: str) -> str:
    """How a search is named (stages, Optuna studies, best/<name>.yaml, report rows)."""
    return method if model is None else f"{model}-{method}"


def trial_config(cfg: DictConfig, method: str, model: str | None = None) -> dict[str, Any]:
    """The plain config of one trial of `method` (on `model` of `study.models`, default the
    experiment's model): seed, data, model, method, train, evaluation."""
    config = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in TRIAL_SECTIONS
              if key != "method"}  # fmt: skip
    if model is not None:
        config["model"] = OmegaConf.to_container(cfg.models[model], resolve=True)
    config["method"] = OmegaConf.to_container(cfg.methods[method], resolve=True)
    if not config["train"].get("threads"):  # one torch thread per CPU Ray gives the trial
        config["train"]["threads"] = max(1, int(cfg.sweep.cpus_per_trial))
    if cfg.sweep.objective == "pareto":  # the faithfulness objective: the validation occlusion gap
        config["evaluation"]["validation_occlusion"] = True
    # search trials draw tie orders `search_tie_draws` times (the final stage: `tie_draws`)
    config["evaluation"]["tie_draws"] = int(cfg.evaluation.get("search_tie_draws", 1))
    config["evaluation"].pop("search_tie_draws", None)
    config.update(experiment=cfg.experiment, modality=cfg.modality, seed=int(cfg.seed))
    return config


def _get(config: Mapping[str, Any], path: str) -> Any:
    node: Any = config
    for key in path.split("."):
        if not isinstance(node, Mapping) or key not in node:
            raise KeyError(path)
        node = node[key]
    return node


def _set(config: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for key in parents:
        config = config[key]
    config[leaf] = value


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def validate_trial_config(config: Mapping[str, Any], source: str = "config") -> None:
    """Raise ConfigError naming `source`, the key and what was expected, for the first bad value."""

    def need(ok: bool, key: str, expected: str) -> None:
        if not ok:
            try:
                got = _get(config, key)
            except KeyError:
                got = "<missing>"
            raise ConfigError(f"{source}: {key}: expected {expected}, got {got!r}")

    for section in TRIAL_SECTIONS:
        need(isinstance(config.get(section), Mapping), section, "a mapping")
    data, model, method = config["data"], config["model"], config["method"]
    train, evaluation = config["train"], config["evaluation"]
    if data.get("root"):
        need(Path(data["root"]).is_dir(), "data.root", "an existing folder")
    _check_data(data, need)
    need(method.get("name") in METHODS, "method.name", f"one of {', '.join(METHODS)}")
    need(evaluation.get("explainer") in EXPLAINERS, "evaluation.explainer",
         f"one of {', '.join(EXPLAINERS)}")  # fmt: skip
    need(all(e in EXPLAINERS for e in evaluation.get("trend_explainers") or ()),
         "evaluation.trend_explainers", f"a list of {', '.join(EXPLAINERS)}")  # fmt: skip
    need(evaluation.get("occlusion_value") in OCCLUSION_FILLS, "evaluation.occlusion_value",
         f"one of {', '.join(OCCLUSION_FILLS)}")  # fmt: skip
    need(all(0 <= float(x) < 1 for x in evaluation.get("occlusion_levels") or [None]),
         "evaluation.occlusion_levels", "a non-empty list of fractions in [0, 1)")  # fmt: skip
    need(_is_int(evaluation.get("tie_draws", 1), 1), "evaluation.tie_draws", "an integer >= 1")
    explainers = evaluation.get("explainers", ["random"])
    known = isinstance(explainers, list) and all(name in EXPLAINERS for name in explainers)
    need(known and bool(explainers), "evaluation.explainers",
         f"a non-empty list of: {', '.join(EXPLAINERS)}")  # fmt: skip
    need(int(train.get("epochs", 0)) >= 1, "train.epochs", "an integer >= 1")
    need(int(train.get("batch_size", 0)) >= 1, "train.batch_size", "an integer >= 1")
    need(float(train.get("lr", 0)) > 0, "train.lr", "a positive number")
    need(train.get("precision", "auto") in PRECISIONS, "train.precision",
         f"one of {', '.join(PRECISIONS)}")  # fmt: skip
    need(model.get("name") in ARCHITECTURES, "model.name", f"one of {', '.join(ARCHITECTURES)}")
    adapter = adapter_of(model)
    adapter.check(need, data, model, "model")
    supported = adapter.supported(model)
    for key, explainer in (("evaluation.explainer", evaluation.get("explainer")),
                           ("method.explainer", method.get("explainer"))):  # fmt: skip
        if explainer in EXPLAINERS and explainer not in supported:
            raise Unsupported(
                f"{source}: {key}: model {model['name']} does not support explainer "
                f"{explainer!r}; it supports: {', '.join(supported)}"
            )
    if method["name"] == "ifi":
        need(method.get("variant", "align") in IFI_VARIANTS, "method.variant",
             f"one of {', '.join(IFI_VARIANTS)}")  # fmt: skip
        need(float(method.get("weight", 0)) >= 0, "method.weight", "a number >= 0")
        need(method.get("rows") in ("all", "class"), "method.rows", "all or class")
        need(float(method.get("gate_strength", 0)) >= 0, "method.gate_strength", "a number >= 0")
    if method["name"] == "et":
        need(method.get("explainer") in EXPLAINERS, "method.explainer",
             f"one of {', '.join(EXPLAINERS)}")  # fmt: skip
        need(float(method.get("k", 0)) >= 0, "method.k", "K >= 0 (FEM threshold mu + K sigma)")
        heads = method.get("heads", "all")
        need(isinstance(heads, list) or bool(_HEADS.match(str(heads))), "method.heads",
             "all, nonempty, top<n> or a list of head indices")  # fmt: skip
        need(method.get("head_weight", "mean") in HEAD_WEIGHTS, "method.head_weight",
             f"one of {', '.join(HEAD_WEIGHTS)}")  # fmt: skip
        need(isinstance(method.get("normalise", True), bool), "method.normalise", "true or false")
        need(0 <= float(method.get("discard_ratio", 0)) < 1, "method.discard_ratio",
             "a fraction in [0, 1)")  # fmt: skip
        need(method.get("crop_policy", "largest_region") in CROP_POLICIES, "method.crop_policy",
             f"one of {', '.join(CROP_POLICIES)}")  # fmt: skip
        need(method.get("signal_policy", "soft") in WINDOW_POLICIES, "method.signal_policy",
             f"one of {', '.join(WINDOW_POLICIES)}")  # fmt: skip
        need(0 < float(method.get("keep", 0.5)) <= 1, "method.keep", "a share in (0, 1]")
        for modality in adapter.inputs:  # prune: the architecture reading that input must prune
            key = POLICY_KEYS[modality]
            reader = adapter.reader(model, modality)
            if method.get(key) == "prune" and not reader.prunes:
                raise Unsupported(f"{source}: {prune_refusal(reader.name, reader.pruning, key)}")
        after = method.get("prune_after", 0)
        need(_is_int(after, 0), "method.prune_after", "an integer >= 0 (0: prune the input)")
        readers = {m: (POLICY_KEYS[m], method.get(POLICY_KEYS[m], DEFAULT_POLICIES[m]),
                       adapter.reader(model, m)) for m in adapter.inputs}  # fmt: skip
        if after and any(policy == "prune" for _, policy, _ in readers.values()):  # in-forward
            problem = prune_after_refusal(
                after, str(method.get("explainer")), readers, adapter.prune_depth(model)
            )
            if problem:
                raise Unsupported(f"{source}: {problem}")
        need(int(method.get("refresh_every", 0)) >= 1, "method.refresh_every", "an integer >= 1")
        need(0 <= float(method.get("warmup_fraction", 0)) < 1, "method.warmup_fraction",
             "a fraction in [0, 1)")  # fmt: skip
        need(0 < float(method.get("threshold", 0.5)) <= 1, "method.threshold", "a number in (0, 1]")
        need(float(method.get("full_input_weight", 0)) >= 0, "method.full_input_weight", ">= 0")


def _check_data(data: Mapping[str, Any], need: Callable[[bool, str, str], None]) -> None:
    """The data keys of real folders and of the class names (any data)."""
    layout = data.get("layout", "auto")
    need(layout in ("auto", *LAYOUTS), "data.layout", f"auto or one of {', '.join(LAYOUTS)}")
    need(data.get("on_bad_file", "error") in BAD_FILE_POLICIES, "data.on_bad_file",
         " or ".join(BAD_FILE_POLICIES))  # fmt: skip
    need(data.get("sampling", "uniform") in SAMPLING_POLICIES, "data.sampling",
         f"one of {', '.join(SAMPLING_POLICIES)}")  # fmt: skip
    options = data.get("options") or {}
    need(isinstance(options, Mapping), "data.options", "a mapping of the layout's split options")
    for key in options:
        moved = key in ("on_bad_file", "class_names")
        need(not moved, f"data.options.{key}", f"no such option (it is data.{key})")
        if layout != "auto":
            known = [k for k in layout_options(layout) if k not in ("on_bad_file", "class_names")]
            need(key in known, f"data.options.{key}",
                 f"an option of the {layout} layout: {', '.join(known)}")  # fmt: skip
    try:  # its message names data.face_crop.<key>, the value and what was expected
        FaceCropSettings.from_config(data.get("face_crop"))
    except (ValueError, TypeError) as error:
        raise ConfigError(str(error)) from None
    names = data.get("class_names")
    need(names is None or (isinstance(names, list) and len(names) > 0
                           and len({str(n) for n in names}) == len(names)),
         "data.class_names", "null or a list of distinct class names")  # fmt: skip
    if names and not data.get("root") and data.get("synthetic"):
        count = data["synthetic"].get("num_classes")
        need(len(names) == count, "data.class_names",
             f"{count} names (data.synthetic.num_classes) for the synthetic data")  # fmt: skip


def _validate_resources(sweep: DictConfig) -> None:
    """sweep.objective, and the per-trial resources Ray is asked for (Ray takes a fraction of a
    GPU below 1, whole GPUs above)."""
    if sweep.objective not in OBJECTIVES:
        raise ConfigError(
            f"sweep.objective: expected one of {', '.join(OBJECTIVES)}, got {sweep.objective!r}"
        )
    cpus, gpus = sweep.cpus_per_trial, sweep.gpus_per_trial
    if isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or cpus <= 0:
        raise ConfigError(f"sweep.cpus_per_trial: expected a number > 0, got {cpus!r}")
    if gpus != "auto" and (
        isinstance(gpus, bool) or not isinstance(gpus, (int, float)) or gpus < 0
        or (gpus > 1 and gpus != int(gpus))
    ):  # fmt: skip
        raise ConfigError(
            "sweep.gpus_per_trial: expected auto, a fraction of a GPU in [0, 1] or a whole "
            f"number of GPUs, got {gpus!r}"
        )
    concurrent = sweep.max_concurrent
    if concurrent is not None and (not isinstance(concurrent, int) or concurrent < 1):
        raise ConfigError(
            f"sweep.max_concurrent: expected null or an integer >= 1, got {concurrent!r}"
        )


def validate_study(cfg: DictConfig) -> None:
    """Check the study: its methods, each method's trial config, and every search-space bound
    (each choice and each end of each range is substituted into the trial config and checked)."""
    methods = list(cfg.study.methods)
    if not methods:
        raise ConfigError("study.methods: expected at least one of " + ", ".join(METHODS))
    for name in methods:
        if name not in METHODS or name not in cfg.methods:
            raise ConfigError(
                f"study.methods: unknown method {name!r}; expected one of: {', '.join(METHODS)}"
            )
    if int(cfg.sweep.num_samples) < 1:
        raise ConfigError(
            f"sweep.num_samples: expected an integer >= 1, got {cfg.sweep.num_samples}"
        )
    if cfg.sweep.scheduler not in ("none", "asha"):
        raise ConfigError(f"sweep.scheduler: expected none or asha, got {cfg.sweep.scheduler!r}")
    for key, value in (("sweep.reuse_actors", cfg.sweep.reuse_actors),
                       ("report.explain_models", cfg.report.explain_models)):  # fmt: skip
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
    _validate_resources(cfg.sweep)
    if int(cfg.final.seeds) < 1:
        raise ConfigError(f"final.seeds: expected an integer >= 1, got {cfg.final.seeds}")
    for key in ("tie_draws", "search_tie_draws"):  # the final stage's and the search trials'
        draws = cfg.evaluation.get(key, 1)
        if not _is_int(draws, 1):
            raise ConfigError(f"evaluation.{key}: expected an integer >= 1, got {draws!r}")
    first = int(cfg.final.first_seed)
    if first <= int(cfg.seed) < first + int(cfg.final.seeds):
        raise ConfigError(
            f"final.first_seed: the final seeds {first}..{first + int(cfg.final.seeds) - 1} "
            f"include the search trials' seed {cfg.seed}; expected seeds disjoint from it (a "
            "re-training on the search's seed repeats the selected trial)"
        )
    if cfg.data.root and not Path(cfg.data.root).is_dir():
        raise ConfigError(f"data.root: expected an existing folder, got {cfg.data.root!r}")
    if cfg.study.get("models") is not None and not isinstance(cfg.study.models, ListConfig):
        raise ConfigError(f"study.models: expected a list of models, got {cfg.study.models!r}")
    for model, name in study_runs(cfg):  # (an unknown model name fails in `compose`)
        search_params(cfg, name, model)


@dataclass(frozen=True)
class SearchSpace:
    params: list[Parameter]
    left_out: list[str]  # why each choice the model cannot serve is not searched


def search_params(cfg: DictConfig, method: str, model: str | None = None) -> SearchSpace:
    """The parameters `method`'s search samples on `model` (default the experiment's model):
    `space.<method>`, checked against the trial config (every key a trial-config key, every choice
    and bound a valid value), with the categorical choices the model cannot serve (`Unsupported`:
    `prune` on Video Swin-T, an explainer it does not list) left out and named in `left_out`. A
    parameter left with no choice is an error."""
    base = trial_config(cfg, method, model)
    on = f" (model {model})" if model else ""
    validate_trial_config(base, source=f"methods.{method}{on}")
    where = f"space.{method}"
    try:
        params = check_space(OmegaConf.to_container(cfg.space[method], resolve=True), where)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    kept, left_out = [], []
    for param in params:
        try:
            _get(base, param.path)
        except KeyError:
            raise ConfigError(
                f"{where}.{param.path}: not a key of the {method} trial config"
            ) from None
        served, refused = [], []
        for value in param.candidates:
            candidate = copy.deepcopy(base)
            _set(candidate, param.path, value)
            try:
                validate_trial_config(candidate, source=f"{where}.{param.path} = {value!r}{on}")
                served.append(value)
            except Unsupported as error:
                if param.spec["type"] != "categorical":
                    raise
                refused.append(str(error))
        if not served:
            raise ConfigError(f"{where}.{param.path}: no choice the model can serve: "
                              + "; ".join(refused))  # fmt: skip
        if refused:
            param = Parameter(param.path, {**param.spec, "choices": served})
        kept.append(param)
        left_out += refused
    return SearchSpace(kept, left_out)
