"""Search spaces as Optuna define-by-run functions, and early stopping told to Optuna honestly."""

import optuna
import pytest

from harness.search_space import check_space, define_by_run

SPACE = {
    "train": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
    "method": {
        "explainer": {"type": "categorical", "choices": ["rollout_fem", "tibav"]},
        "k": {
            "type": "float",
            "low": 0.5,
            "high": 3.0,
            "when": {"method.explainer": "rollout_fem"},
        },
        "refresh_every": {"type": "int", "low": 1, "high": 3},
    },
}


def test_define_by_run_samples_conditional_parameters_only_when_they_apply():
    params = check_space(SPACE, "space.et")
    assert [p.path for p in params] == [
        "train.lr",
        "method.explainer",
        "method.k",
        "method.refresh_every",
    ]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        define_by_run(params)(trial)
        sampled = trial.params
        assert ("method/k" in sampled) == (sampled["method/explainer"] == "rollout_fem")
        assert 1e-4 <= sampled["train/lr"] <= 1e-2 and sampled["method/refresh_every"] in (1, 2, 3)
        study.tell(trial, 0.0)
    explainers = {t.params["method/explainer"] for t in study.trials}
    assert explainers == {"rollout_fem", "tibav"}


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"a": {"type": "uniform", "low": 0, "high": 1}}, r"space.x.a.type: expected one of"),
        ({"a": {"type": "float", "low": 2, "high": 1}}, r"space.x.a: low \(2\) must not exceed"),
        ({"a": {"type": "float", "low": 0, "high": 1, "log": True}}, "log-scaled range needs low"),
        ({"a": {"type": "categorical", "choices": []}}, "space.x.a.choices: expected a non-empty"),
        ({"a": {"type": "int", "low": 0, "high": 1, "when": {"b": 1}},
          "b": {"type": "int", "low": 0, "high": 1}},
         "space.x.a.when: 'b' must be a parameter listed before it"),
        ({"a": 3}, "a: expected a parameter spec"),
    ],
)  # fmt: skip
def test_bad_spaces_are_named(space, message):
    with pytest.raises(ValueError, match=message):
        check_space(space, "space.x")


@pytest.mark.slow
def test_trials_stopped_by_asha_are_pruned_not_complete_in_optuna(tmp_path):
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from harness.sweep import _OptunaSearch

    def trainable(config):
        for epoch in range(1, 5):  # a better lr is better at every epoch
            tune.report({"epoch": epoch, "val_accuracy": config["lr"] * epoch})

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        searcher = _OptunaSearch(
            epochs=4, metric="val_accuracy", mode="max",
            space=define_by_run(check_space({"lr": {"type": "float", "low": 0, "high": 1}}, "s")),
            sampler=optuna.samplers.RandomSampler(seed=0),
            storage=optuna.storages.RDBStorage(storage), study_name="asha",
        )  # fmt: skip
        scheduler = ASHAScheduler(time_attr="epoch", max_t=4, grace_period=1, reduction_factor=2)
        grid = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                # one trial at a time: ASHA's decisions depend on the order results arrive in,
                # and with seeded lrs that order is then the same on every machine
                search_alg=searcher, scheduler=scheduler, num_samples=6, max_concurrent_trials=1,
                reuse_actors=True,  # one actor start-up, not one per trial
                metric="val_accuracy", mode="max",
            ),
            run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), verbose=0),
        ).fit()  # fmt: skip
    finally:
        ray.shutdown()
    epochs = sorted(r.metrics["epoch"] for r in grid)
    assert epochs[0] < 4 and epochs[-1] == 4  # ASHA stopped some, let some finish
    study = optuna.load_study(study_name="asha", storage=storage)
    by_state = {s: [t for t in study.trials if t.state == s] for s in optuna.trial.TrialState}
    pruned, complete = (
        by_state[optuna.trial.TrialState.PRUNED],
        by_state[optuna.trial.TrialState.COMPLETE],
    )
    assert len(pruned) == sum(e < 4 for e in epochs) and len(complete) == sum(
        e == 4 for e in epochs
    )
    for trial in complete:  # a complete trial's value is its final (epoch 4) score
        assert trial.value == pytest.approx(trial.params["lr"] * 4)
    for trial in pruned:  # a pruned one records how far it got and its score there
        step, value = max(trial.intermediate_values.items())  # its last epoch, its score there
        assert 1 <= step < 4 and value == pytest.approx(trial.params["lr"] * step)


def test_the_selected_trial_does_not_depend_on_the_order_tune_lists_trials_in(tmp_path):
    """Tied validation scores (common at smoke sizes): the earliest trial wins in any listing
    order, so a resumed study re-trains the configuration the first run chose."""
    from types import SimpleNamespace

    from harness.config import compose
    from harness.sweep import _finished, _select

    cfg = compose("birds_video", ["sweep=smoke"])

    def result(trial_id, val, batch):
        metrics = {"trial_id": trial_id, "val_accuracy": val, "test_accuracy": 0.0}
        return SimpleNamespace(error=None, metrics=metrics, config={"train": {"batch": batch}})

    grid = [result("a_00002", 0.5, 8), result("a_00000", 0.25, 8), result("a_00001", 0.5, 16),
            result("a_00003", 0.5, 32)]  # fmt: skip
    failed = SimpleNamespace(error=RuntimeError("x"), metrics={}, config={})
    picks = {
        _select(cfg, _finished(order), [], tmp_path, "vanilla", True).metrics["trial_id"]
        for order in (grid, grid[::-1], [failed, *grid[2:], *grid[:2]])
    }
    assert picks == {"a_00001"}
