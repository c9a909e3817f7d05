"""Keras callbacks to add to `fit`: `TimeBudget` (stop at an epoch end once time is spent) and
`CalibrationLog` (mode and flip frequencies on validation images after each epoch)."""

import time

import keras


class TimeBudget(keras.callbacks.Callback):
    """Stop training at the end of the first epoch that ends after `minutes` of training.

    The budget counts from the start of `fit` (the first epoch's tracing included). Training
    stops between epochs only, so checkpoints and logs stay whole; the last epoch may end up to
    one epoch's time past the budget. `stopped_epoch` is the epoch (from 0) after which it
    stopped, or None.

    Args:
        minutes: the budget, > 0.
    """

    def __init__(self, minutes):
        super().__init__()
        if not minutes > 0:
            raise ValueError(f"`minutes` must be > 0. Received: minutes={minutes!r}")
        self.minutes = float(minutes)
        self.stopped_epoch = None

    def on_train_begin(self, logs=None):
        self._start = time.monotonic()
        self.stopped_epoch = None

    def on_epoch_end(self, epoch, logs=None):
        if time.monotonic() - self._start >= 60.0 * self.minutes:
            self.model.stop_training = True
            self.stopped_epoch = epoch


class CalibrationLog(keras.callbacks.Callback):
    """After each epoch, how well the samples' frequencies match known annotation probabilities
    on a fixed set of images, added to the epoch's logs (so `log.csv`, the progress bar and
    Keras' `TensorBoard` callback, placed after this one, show them):

    - `val_mode_r`, `val_mode_log_r`: Pearson r of the mode frequencies against the
      probabilities, on linear and on log frequencies (`tfprobunet.metrics.log_pearson_r`);
    - `val_modes_found`: the modes hit at least once;
    - `val_flip_<c>_<t>`: the share of class c's pixels that the samples label t, for every
      flip the annotations show (compare with the flip probabilities).

    Args:
        source: a `tfprobunet.data.Source` with `annotation_weights` (e.g. the `val` split of
            *flips* or Cityscapes).
        num_samples: samples per image.
        seed: the samples' seed: the same weights give the same values.
    """

    def __init__(self, source, num_samples=16, seed=0):
        super().__init__()
        if source.annotation_weights is None:
            raise ValueError("CalibrationLog needs a Source with `annotation_weights` (known "
                             "mode probabilities); for equally likely graders, `val_ged` "
                             "measures the match.")
        self.source = source
        self.num_samples = num_samples
        self.seed = seed

    def on_epoch_end(self, epoch, logs=None):
        from tfprobunet import evaluation  # evaluation imports the data pipeline: lazily

        report = evaluation.evaluate(self.model, self.source, sample_counts=(self.num_samples,),
                                     seed=self.seed, num_figure_examples=0, verbose=0)
        modes = report["modes"]
        values = {"val_mode_r": modes["pearson_r"], "val_mode_log_r": modes["log_pearson_r"],
                  "val_modes_found": float(modes["modes_found"])}
        values.update({f"val_flip_{f['class']}_{f['twin']}": f["sampled"] for f in modes["flips"]})
        if logs is not None:
            logs.update(values)
