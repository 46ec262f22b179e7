"""Ray Tune trainables: `TRAINABLES[modality]` runs one trial config of that modality.

One function serves every modality: the trial config's model decides the inputs (the dataset
loads what the model reads) and the methods adapt to them (harness/methods/modality.py).
"""

from trainables.trial import run_trial

TRAINABLES = {"video": run_trial, "signal": run_trial, "hybrid": run_trial}
