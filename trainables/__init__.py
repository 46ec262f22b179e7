"""Ray Tune trainables, one per modality: `TRAINABLES[modality]` runs one trial config."""

from trainables.video import train_video

TRAINABLES = {"video": train_video}
