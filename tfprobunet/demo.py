"""`make demo`: the main job end to end on the built-in *flips* benchmark, within minutes on a
CPU: train for a fixed number of steps, save, sample 16 segmentations of an unseen image, write
the evaluation report (GED, HM-IoU, mode calibration) with its figures, export the model for TF
Serving and ask a local server for features once and 16 samples over gRPC."""

import collections
import os
import time

import keras
import numpy as np

from tfprobunet import _console, evaluation, training
from tfprobunet.data import synthetic

IMAGE_SIZE = 32
# The recipe of the demo: the `cpu` preset (see docs/recipes.md, the ablation) for a fixed
# number of steps, so that every machine trains the same model and reproduces the docs' figures.
STEPS = 6000
STEPS_PER_EPOCH = 500


def run(workdir, steps=STEPS, num_samples=16, seed=0, base_dir="saved_models",
        eval_examples=None):
    """Train on *flips* with the `cpu` preset for `steps` steps, sample one held-out image,
    evaluate the model on `eval_examples` images of the test split (default all 500; report
    and figures in `workdir/evaluation`), export it to `base_dir` and segment the held-out image
    through a local gRPC server.

    Returns:
        A JSON-able summary: final losses, model path, which of the 32 modes the samples of one
        image hit, and the evaluation's headline numbers.
    """
    if steps % STEPS_PER_EPOCH and steps > STEPS_PER_EPOCH:
        raise ValueError(f"`steps` must be a multiple of {STEPS_PER_EPOCH} (or fewer). "
                         f"Received: {steps}")
    epochs, per_epoch = max(1, steps // STEPS_PER_EPOCH), min(steps, STEPS_PER_EPOCH)
    print(f"Training a Probabilistic U-Net on flips ({IMAGE_SIZE}x{IMAGE_SIZE}, 32 modes) for "
          f"{steps} steps ({epochs} epochs of {per_epoch}, preset `cpu`)...")
    start = time.monotonic()
    model, history = training.train(
        workdir, callbacks=[_EpochLine()],
        **training.preset("cpu", dataset="flips", epochs=epochs, steps_per_epoch=per_epoch,
                          image_size=IMAGE_SIZE, num_examples=2000, seed=seed, verbose=0))
    train_seconds = time.monotonic() - start

    images, base_labels = synthetic.flips_arrays(1, IMAGE_SIZE, seed=seed + 12345)
    masks = np.argmax(model.sample(images, num_samples, seed=seed), axis=-1)[0]
    found = synthetic.identify_flip_modes(masks, base_labels[0], len(synthetic.FLIP_PROBABILITIES))
    _, probabilities = synthetic.flip_modes()
    counts = collections.Counter(int(m) for m in found)
    print(f"\n{num_samples} samples of an unseen image hit {len(counts)} distinct modes of 32 "
          f"({_expected_distinct(probabilities, num_samples):.1f} on average for "
          f"{num_samples} draws from the truth); the most sampled:")
    print("  " + ", ".join(f"mode {mode} x{count} (p = {100 * probabilities[mode]:.1f} %)"
                           for mode, count in counts.most_common(3)))

    out_dir = os.path.join(workdir, "evaluation")
    print(f"\nEvaluating on the flips test split ({num_samples} samples per image)...")
    report = evaluation.evaluate(model, "flips", out_dir=out_dir, image_size=IMAGE_SIZE,
                                 num_examples=eval_examples, seed=seed,
                                 verbose=_console.progress_verbosity())
    print(f"Evaluation report: {os.path.join(out_dir, 'report.json')}")
    print("Figures: " + ", ".join(os.path.join(out_dir, f) for f in report["figures"]))

    serving_summary = serve_once(model, base_dir, images, num_samples, seed)
    modes = report["modes"]
    return {
        "steps": int(model.optimizer.iterations),
        "train_seconds": round(train_seconds, 1),
        "final": {k: round(v[-1], 3) for k, v in history.history.items()},
        "model": os.path.join(workdir, training.workdir.MODEL),
        "samples": num_samples,
        "distinct_modes": len(counts),
        # 16 draws from the true distribution hit this many distinct modes on average.
        "distinct_modes_expected": round(_expected_distinct(probabilities, num_samples), 2),
        "evaluation": {
            "images": report["num_images"],
            "ged": {k: round(v["mean"], 4) for k, v in report["ged"].items()},
            "ged_noise_floor": {k: round(v["mean"], 4)
                                for k, v in report["ged_noise_floor"].items()},
            "hm_iou": round(report["hm_iou"]["mean"], 4),
            "modes_found": modes["modes_found"],
            "mode_frequency_pearson_r": round(modes["pearson_r"], 3),
            "mode_frequency_log_r": round(modes["log_pearson_r"], 3),
            "flip_frequencies": {f"{f['class']}->{f['twin']}": [round(f["sampled"], 3),
                                                                round(f["true"], 3)]
                                 for f in modes["flips"]},
            "report": os.path.join(out_dir, "report.json"),
        },
        "serving": serving_summary,
    }


def serve_once(model, base_dir, images, num_samples=16, seed=0, name="probunet-demo"):
    """Export `model` to `base_dir`, serve it on loopback, and segment `images` through gRPC:
    `features` once, then `sample`; prints the shapes and the time per extra sample."""
    from tfprobunet import serving

    path = serving.export_for_serving(model, base_dir, name)
    print(f"\nExported to {path}; serving it on loopback...")
    with serving.ModelServer(base_dir, port=0, rest_port=None) as server, \
            serving.GrpcClient(f"127.0.0.1:{server.port}", name) as client:
        start = time.perf_counter()
        features = client.features(images)
        features_ms = 1e3 * (time.perf_counter() - start)
        outputs = client.sample(features, num_samples, seed=seed)
        times = {}
        for m in (1, num_samples):  # a few repeats each, medians: the machine is noisy
            runs = []
            for repeat in range(5):
                start = time.perf_counter()
                client.sample(features, m, seed=repeat, output_filter=["masks"])
                runs.append(time.perf_counter() - start)
            times[m] = 1e3 * float(np.median(runs))
    per_sample = (times[num_samples] - times[1]) / (num_samples - 1)
    shapes = {k: list(v.shape) for k, v in {**features, **outputs}.items()}
    print(f"gRPC features: {', '.join(f'{k} {shapes[k]}' for k in sorted(features))} in "
          f"{features_ms:.0f} ms")
    print(f"gRPC sample({num_samples}): "
          f"{', '.join(f'{k} {shapes[k]}' for k in sorted(outputs))}")
    print(f"sample(1) {times[1]:.1f} ms, sample({num_samples}) {times[num_samples]:.1f} ms: "
          f"{per_sample:.2f} ms per extra sample (masks only)")
    return {"export": path, "shapes": shapes, "features_ms": round(features_ms, 1),
            "sample_ms": {str(k): round(v, 1) for k, v in times.items()},
            "ms_per_extra_sample": round(per_sample, 2)}


class _EpochLine(keras.callbacks.Callback):
    """One short line per epoch: the demo's training output fits on a screen."""

    def on_train_begin(self, logs=None):
        self._epochs = self.params["epochs"]

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        print(f"epoch {epoch + 1:2d}/{self._epochs}: loss {logs['loss']:8.2f}, reconstruction "
              f"{logs['reconstruction']:8.2f}, kl {logs['kl']:6.2f} "
              f"({time.monotonic() - self._start:.0f} s)", flush=True)


def _expected_distinct(probabilities, num_samples):
    """E[#distinct modes among num_samples iid draws] = sum_j 1 - (1 - p_j)^m."""
    return float(np.sum(1.0 - (1.0 - probabilities) ** num_samples))
