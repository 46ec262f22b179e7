"""The final stage's plan: seeds disjoint from the search's, the arms (the control included),
tie draws per stage, and the config errors that guard them (no study runs here; the smoke study
in test_study_end_to_end.py checks the same on a real run)."""

import pytest

from harness.config import ConfigError, compose, resolve_paths, trial_config, validate_study
from harness.sweep import CONTROL, final_arms, final_seeds


def _cfg(*overrides):
    cfg = compose("birds_video", ["data.cache_dir=/tmp/unused", *overrides])
    resolve_paths(cfg)
    return cfg


def test_final_seeds_are_disjoint_from_the_search_seed():
    cfg = _cfg()
    assert final_seeds(cfg) == [1000, 1001, 1002] and trial_config(cfg, "vanilla")["seed"] == 0
    with pytest.raises(ConfigError, match=r"final\.first_seed: the final seeds 0\.\.2 include"):
        validate_study(_cfg("final.first_seed=0"))
    with pytest.raises(ConfigError, match="final.first_seed"):
        validate_study(_cfg("seed=1001"))


def test_the_arms_carry_the_like_for_like_test_and_the_control():
    cfg = _cfg()
    best = {m: trial_config(cfg, m) for m in ("vanilla", "ifi", "et")}
    assert all(c["evaluation"]["tie_draws"] == 1 for c in best.values())  # search_tie_draws
    arms = final_arms(cfg, best)
    assert list(arms) == ["vanilla", "ifi", "et", CONTROL]
    for config in arms.values():
        assert config["evaluation"]["like_for_like"] is True
        assert config["evaluation"]["tie_draws"] == 3
    control, et = arms[CONTROL], arms["et"]
    assert control["method"]["explainer"] == "random" and et["method"]["explainer"] != "random"
    assert {k: v for k, v in control["method"].items() if k != "explainer"} == {
        k: v for k, v in et["method"].items() if k != "explainer"
    }  # same policy and knobs
    assert best["et"]["evaluation"]["like_for_like"] is False  # the search's config is untouched
    assert CONTROL not in final_arms(_cfg("final.controls=false"), best)


def test_only_each_methods_lowest_seed_explains_its_model_for_the_report():
    """`evaluation.explain_model`: on the study methods' arms (the models the report shows), not
    on the control, and off everywhere with report.explain_models=false; `_retrain` keeps it for
    the first final seed only."""
    from harness.sweep import _retrain

    cfg = _cfg()
    best = {m: trial_config(cfg, m) for m in ("vanilla", "et")}
    arms = final_arms(cfg, best)
    assert {a: c["evaluation"]["explain_model"] for a, c in arms.items()} == {
        "vanilla": True, "et": True, CONTROL: False}  # fmt: skip
    off = final_arms(_cfg("report.explain_models=false"), best)
    assert not any(c["evaluation"]["explain_model"] for c in off.values())
    runs = []
    for arm in arms:
        for seed in final_seeds(cfg):
            _retrain({"method": arm, "seed": seed}, runs.append, arms, first_seed=1000)
    explained = [(r["method"]["name"], r["seed"]) for r in runs if r["evaluation"]["explain_model"]]
    assert explained == [("vanilla", 1000), ("et", 1000)]
    assert arms["vanilla"]["evaluation"]["explain_model"] is True  # the arm's config is untouched


def test_bad_evaluation_keys_are_named():
    with pytest.raises(ConfigError, match="evaluation.tie_draws: expected an integer >= 1, got 0"):
        validate_study(_cfg("evaluation.tie_draws=0"))
    with pytest.raises(ConfigError, match="evaluation.search_tie_draws: expected an integer >= 1"):
        validate_study(_cfg("evaluation.search_tie_draws=0"))
    with pytest.raises(ConfigError, match="evaluation.explainers: expected a non-empty list of"):
        validate_study(_cfg("evaluation.explainers=[rollout,nope]"))
