"""Learning-rate schedules for an endless stream of files, as pure functions of position.

The LR is computed from (global_step, step within the file, steps in the file),
so resuming needs no scheduler state and the schedule never restarts when a new
file begins. `constant`: linear warmup over the first `warmup_steps` global steps,
then constant. `wsd`: the same, plus a linear cool-down over the last
`wsd_decay_fraction` of every file to `min_lr_ratio` (the file-end checkpoint is
the cooled one; the next file returns to the stable LR).
"""
from __future__ import annotations


def lr_factor(schedule: str, global_step: int, file_step: int, file_total_steps: int,
              warmup_steps: int, decay_fraction: float = 0.1, min_lr_ratio: float = 0.1) -> float:
    """Multiplier of the peak LR for the optimizer step that will be step `global_step + 1`."""
    warm = min(1.0, (global_step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if schedule == "constant":
        return warm
    if schedule == "wsd":
        decay_steps = int(round(file_total_steps * decay_fraction))
        start = file_total_steps - decay_steps
        if decay_steps <= 0 or file_step < start:
            return warm
        progress = (file_step - start + 1) / decay_steps
        return warm * (1.0 - (1.0 - min_lr_ratio) * min(1.0, progress))
    raise ValueError(f"unknown lr_schedule {schedule!r}")
