"""`make demo`: the main job end to end on the built-in *flips* benchmark, within minutes on a
CPU: train, save, sample 16 segmentations of an unseen image, and write the evaluation report
(GED, HM-IoU, mode calibration) with its figures."""

import collections
import os
import time

import keras
import numpy as np

from tfprobunet import evaluation, training
from tfprobunet.data import synthetic

IMAGE_SIZE = 32
# A small model that learns the 32 modes of *flips* in a few CPU minutes.
DEMO_MODEL = dict(num_channels=[16, 32, 64], convs_per_block=2, latent_dim=6)
EVAL_EXAMPLES = 100


class TimeBudget(keras.callbacks.Callback):
    """Stop training at the end of the first epoch that finishes after `seconds`."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds

    def on_train_begin(self, logs=None):
        self._start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        if time.monotonic() - self._start > self.seconds:
            self.model.stop_training = True


def run(workdir, minutes=3.0, num_samples=16, seed=0):
    """Train on *flips* for about `minutes`, sample one held-out image, and evaluate the model
    on `EVAL_EXAMPLES` test images (report and figures in `workdir/evaluation`).

    Returns:
        A JSON-able summary: final losses, model path, which of the 32 modes the samples of one
        image hit, and the evaluation's headline numbers.
    """
    print(f"Training a Probabilistic U-Net on flips ({IMAGE_SIZE}x{IMAGE_SIZE}, 32 modes) for "
          f"about {minutes:g} minutes...")
    start = time.monotonic()
    model, history = training.train(
        workdir, dataset="flips", epochs=1000, steps_per_epoch=100, batch_size=16,
        image_size=IMAGE_SIZE, num_examples=2000, learning_rate=1e-3, seed=seed, verbose=2,
        callbacks=[TimeBudget(minutes * 60)], **DEMO_MODEL)
    train_seconds = time.monotonic() - start

    images, base_labels = synthetic.flips_arrays(1, IMAGE_SIZE, seed=seed + 12345)
    masks = np.argmax(model.sample(images, num_samples, seed=seed), axis=-1)[0]
    found = synthetic.identify_flip_modes(masks, base_labels[0], len(synthetic.FLIP_PROBABILITIES))
    _, probabilities = synthetic.flip_modes()
    counts = collections.Counter(int(m) for m in found)
    print(f"\n{num_samples} samples of an unseen image hit {len(counts)} distinct modes of 32:")
    for mode, count in counts.most_common():
        print(f"  mode {mode:2d}: {count:2d} samples (true probability "
              f"{100 * probabilities[mode]:.1f} %)")

    out_dir = os.path.join(workdir, "evaluation")
    print(f"\nEvaluating on {EVAL_EXAMPLES} test images ({num_samples} samples each)...")
    report = evaluation.evaluate(model, "flips", out_dir=out_dir, image_size=IMAGE_SIZE,
                                 num_examples=EVAL_EXAMPLES, seed=seed, verbose=1)
    print(f"Evaluation report: {os.path.join(out_dir, 'report.json')}")
    print("Figures: " + ", ".join(os.path.join(out_dir, f) for f in report["figures"]))
    return {
        "epochs": len(history.epoch),
        "train_seconds": round(train_seconds, 1),
        "final": {k: round(v[-1], 3) for k, v in history.history.items()},
        "model": os.path.join(workdir, "model.keras"),
        "samples": num_samples,
        "distinct_modes": len(counts),
        # 16 draws from the true distribution hit this many distinct modes on average.
        "distinct_modes_expected": round(_expected_distinct(probabilities, num_samples), 2),
        "evaluation": {
            "ged": {k: round(v["mean"], 4) for k, v in report["ged"].items()},
            "ged_noise_floor": {k: round(v["mean"], 4)
                                for k, v in report["ged_noise_floor"].items()},
            "hm_iou": round(report["hm_iou"]["mean"], 4),
            "modes_found": report["modes"]["modes_found"],
            "mode_frequency_pearson_r": round(report["modes"]["pearson_r"], 3),
            "report": os.path.join(out_dir, "report.json"),
        },
    }


def _expected_distinct(probabilities, num_samples):
    """E[#distinct modes among num_samples iid draws] = sum_j 1 - (1 - p_j)^m."""
    return float(np.sum(1.0 - (1.0 - probabilities) ** num_samples))
