"""Training: `train()` (`train.py`) and what it is made of.

- `train.py`: `train()`, which reads as the recipe: check the arguments, pick the strategy, open
  the data, resume the run, fit, save.
- `workdir.py`: the run's files, its settings record, resume points and the finished-run rules.
- `schedules.py`: the learning-rate schedules (`learning_rate_schedule`).
- `distribute.py`: the strategies (`make_strategy`, `is_chief`) and `fit_distributed`.
- `precision.py`: the precision a run computes in (`mixed_precision="auto"`: bfloat16 where
  the CPU has AMX or AVX-512-BF16).

The callbacks `train` runs are in `tfprobunet.callbacks`, the presets in
`tfprobunet.models.presets`; both are importable from here as before.
"""

from tfprobunet._interrupts import TrainingInterrupted
from tfprobunet._io import WorkdirBusyError, WorkdirError
from tfprobunet.callbacks import (CHECKPOINT, MONITORED_TERMS, EpochCheckpoint, EpochLog,
                                  NonFiniteLossError, StopOnNonFiniteLoss, StopOnSignal)
from tfprobunet.defaults import SCHEDULES, STRATEGIES
from tfprobunet.models.presets import PRESETS, preset
from tfprobunet.saving import state_bytes
from tfprobunet.training import precision
from tfprobunet.training.distribute import fit_distributed, is_chief, make_strategy
from tfprobunet.training.schedules import (PIECEWISE_BOUNDARIES, PIECEWISE_FACTORS,
                                           WarmupStableDecay, learning_rate_schedule)
from tfprobunet.training.train import MIXED_PRECISION, train
from tfprobunet.training.workdir import (CONFIG, RESUMABLE_CHANGES, UNRECORDED, model_arguments,
                                         setting_differences)

__all__ = ["CHECKPOINT", "CONFIG", "MIXED_PRECISION", "MONITORED_TERMS", "PIECEWISE_BOUNDARIES",
           "PIECEWISE_FACTORS", "PRESETS", "RESUMABLE_CHANGES", "SCHEDULES", "STRATEGIES",
           "UNRECORDED", "EpochCheckpoint", "EpochLog", "NonFiniteLossError",
           "StopOnNonFiniteLoss", "StopOnSignal", "TrainingInterrupted", "WarmupStableDecay",
           "WorkdirBusyError", "WorkdirError", "fit_distributed", "is_chief",
           "learning_rate_schedule", "make_strategy", "model_arguments", "preset",
           "setting_differences", "state_bytes", "train"]
