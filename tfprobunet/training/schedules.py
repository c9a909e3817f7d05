"""The learning-rate schedules of `train(schedule=...)`: `learning_rate_schedule(name, ...)`
gives Adam's learning rate for a run of a given length (`constant`, `piecewise`, `cosine`,
`wsd`)."""

import math

import keras
import tensorflow as tf

from tfprobunet.defaults import SCHEDULES

# The official repository's schedule (its only configuration, for Cityscapes,
# training/prob_unet_config.py: 1e-4, then 5e-5, 1e-5 and 5e-7 at 80k, 160k and 240k of 240k
# iterations), as fractions of the run and of the initial learning rate.
PIECEWISE_BOUNDARIES = (1 / 3, 2 / 3, 1.0)
PIECEWISE_FACTORS = (1.0, 0.5, 0.1, 0.005)


@keras.saving.register_keras_serializable(package="tfprobunet")
class WarmupStableDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `peak` over `warmup_steps`, `peak` until `decay_start`, then
    cosine decay to 0 at `total_steps` (and 0 after).

    Args:
        peak: the learning rate of the stable phase.
        total_steps, warmup_steps, decay_start: steps, `0 <= warmup_steps <= decay_start <
            total_steps`.
    """

    def __init__(self, peak, total_steps, warmup_steps, decay_start):
        if not 0 <= warmup_steps <= decay_start < total_steps:
            raise ValueError("Needs 0 <= warmup_steps <= decay_start < total_steps. Received: "
                             f"{warmup_steps}, {decay_start}, {total_steps}")
        self.peak = float(peak)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.decay_start = int(decay_start)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = step / self.warmup_steps if self.warmup_steps else 1.0
        progress = tf.clip_by_value((step - self.decay_start)
                                    / (self.total_steps - self.decay_start), 0.0, 1.0)
        decay = 0.5 * (1.0 + tf.cos(math.pi * progress))
        return self.peak * tf.minimum(tf.minimum(warmup, 1.0), decay)

    def get_config(self):
        return dict(peak=self.peak, total_steps=self.total_steps,
                    warmup_steps=self.warmup_steps, decay_start=self.decay_start)


def learning_rate_schedule(name, learning_rate, total_steps, warmup_fraction=0.05):
    """The learning rate of a run of `total_steps` optimizer steps, for `keras.optimizers.Adam`.

    Args:
        name: `"constant"`: `learning_rate` throughout. `"piecewise"`: the schedule of the
            official (Cityscapes) configuration, scaled to the run: `learning_rate`, then x0.5
            after a third of the steps, x0.1 after two thirds (and x0.005 after `total_steps`,
            should a run continue past them).
            `"cosine"`: linear warm-up from 0 over `warmup_fraction` of the steps, then cosine
            decay to 0 at `total_steps`. `"wsd"` (warm-up, stable, decay): the same warm-up,
            `learning_rate` until two thirds of the steps, then cosine decay to 0 over the last
            third (`WarmupStableDecay`).
        learning_rate: the initial (peak, for `"cosine"`) learning rate.
        total_steps: the run's optimizer steps, `epochs * steps_per_epoch`.
        warmup_fraction: the share of the steps that `"cosine"` warms up over.

    Returns:
        A float or a `keras.optimizers.schedules.LearningRateSchedule` of the optimizer's
        `iterations`, which checkpoints hold: a resumed run continues the schedule where it
        stopped.
    """
    if name not in SCHEDULES:
        raise ValueError(f"`schedule` must be one of {SCHEDULES}. Received: {name!r}")
    if not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"`total_steps` must be a positive integer. Received: {total_steps!r}")
    if name == "constant":
        return float(learning_rate)
    if name == "piecewise":
        boundaries = [max(1, round(total_steps * f)) for f in PIECEWISE_BOUNDARIES]
        return keras.optimizers.schedules.PiecewiseConstantDecay(
            boundaries, [learning_rate * f for f in PIECEWISE_FACTORS])
    warmup = min(total_steps - 1, round(total_steps * warmup_fraction))
    if name == "wsd":
        return WarmupStableDecay(learning_rate, total_steps, warmup,
                                 min(total_steps - 1, max(warmup, round(total_steps * 2 / 3))))
    return keras.optimizers.schedules.CosineDecay(
        0.0, total_steps - warmup, alpha=0.0, warmup_target=float(learning_rate),
        warmup_steps=warmup)
