"""Search spaces: `common/<method>.yaml` for every modality, `<modality>/et.yaml` where ET's
knobs differ.

Each leaf names a trial-config key by its path and how Optuna samples it:
`{type: float|int, low, high, log?, step?}` or `{type: categorical, choices: [...]}`, with an
optional `when: {other.key: value-or-list}` that samples it only when an earlier parameter has
one of those values. Experiments compose them with Hydra (`space.<method>`), so every bound can be
overridden on the command line, e.g. `space.et.method.k.high=3`.
"""
