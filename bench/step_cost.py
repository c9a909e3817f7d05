"""What a training step costs against the image's size, and what a crop saves (issue 39: scans
of 96x80 to 243x200, padded to 256x208, ran 21-24 s a step).

Seconds per step of `ProbabilisticUNet.fit` (the library's default model, or the `cpu` preset's
with `--model cpu`), float32, one batch size, fed as `train` feeds it (`training_pipeline` over
examples of 4 raters' masks), for square images of 64 to 256 and the 256x208 of issue 39, each
on the whole image and on random `--crop` windows of it (`tfprobunet.data.crops.random_windows`,
the pipeline's map included in the time). One `fit` per process: its first epoch (tracing,
filling the shuffle buffer) untimed, then `--repeats` epochs of `--steps` steps on the same
iterator, so that no call's set-up is counted. Each configuration runs in a fresh process,
interleaved over `--rounds` so that the machine's slow and fast phases hit them all alike.
Prints JSON (and writes it to `--out`): every run, the median and range of seconds per step,
microseconds per pixel of the batch the model sees, the crop's speed-up at each size, the
command, the versions and the CPU's flags.

    python bench/step_cost.py [--sizes 64,128,192,256,256x208] [--crop 128x128] [--batch 8]
        [--model default|cpu] [--steps 4] [--repeats 2] [--rounds 3]
        [--out docs/results/speed/step_cost.json]
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from train_step import cpu  # noqa: E402

# The models timed: "default", the constructor's defaults; "cpu", the `cpu` preset's
# architecture (its arguments that `ProbabilisticUNet` takes, read from the preset itself).
_ARCHITECTURE = ("num_channels", "convs_per_block", "latent_dim", "fcomb_layers",
                 "fcomb_channels")


def _model_arguments(name):
    from tfprobunet.models.presets import PRESETS

    return {} if name == "default" else {k: v for k, v in PRESETS[name].items()
                                         if k in _ARCHITECTURE}


RATERS = 4
EXAMPLES = 16  # distinct examples, repeated: the step's cost does not depend on their number


def _size(text):
    """`(h, w)` from "256" or "256x208"."""
    parts = [int(p) for p in text.lower().split("x")]
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"a size is H or HxW, e.g. 256x208. Received: {text!r}")
    return (parts[0], parts[-1])


def _crop(text):
    """`(h, w)` from "128x128", None from "0" (no crop)."""
    return None if text == "0" else _size(text)


def _examples(height, width, seed=0):
    """`EXAMPLES` smooth grey images with a lesion-like disc each, and 4 raters' discs of
    different radii (one sees nothing)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:height, :width]
    images = rng.random((EXAMPLES, height, width, 1), dtype=np.float32)
    masks = np.zeros((EXAMPLES, RATERS, height, width), np.int32)
    for i in range(EXAMPLES):
        centre = rng.uniform(0.2, 0.8, 2) * (height, width)
        distance = np.hypot(rows - centre[0], cols - centre[1])
        for rater, radius in enumerate((0, 4, 6, 8)):
            masks[i, rater] = distance < radius
    return images, masks


def measure(size, crop, model_name, batch, steps, repeats):
    """Seconds per step of `repeats` timed epochs of `steps` steps in this process: one `fit`
    over one iterator, its first epoch (tracing, filling the shuffle buffer) untimed."""
    import keras
    import tensorflow as tf

    import tfprobunet
    from tfprobunet.data import crops, pipeline

    class EpochSeconds(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.start)

    keras.utils.set_random_seed(0)
    dataset = tf.data.Dataset.from_tensor_slices(_examples(*size))
    if crop:
        dataset = crops.random_windows(dataset, crop, seed=0)
    batches = pipeline.training_pipeline(dataset, batch, seed=0, num_classes=2)
    model = tfprobunet.ProbabilisticUNet(num_classes=2, **_model_arguments(model_name))
    model.compile(optimizer=keras.optimizers.Adam(1e-4))
    epochs = EpochSeconds()
    # With `steps_per_epoch`, Keras keeps one iterator over the endless pipeline for all epochs.
    model.fit(batches, epochs=1 + repeats, steps_per_epoch=steps, callbacks=[epochs], verbose=0)
    return {"model_input": list(batches.element_spec[0].shape[1:]),
            "seconds_per_step_runs": [t / steps for t in epochs.seconds[1:]],
            "warmup_seconds": epochs.seconds[0],
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _name(size, crop):
    return f"{size[0]}x{size[1]}" + (f"_crop_{crop[0]}x{crop[1]}" if crop else "")


def _run(size, crop, args):
    command = [sys.executable, __file__, "--one", f"{size[0]}x{size[1]}", "--model", args.model,
               "--batch", str(args.batch), "--steps", str(args.steps), "--repeats",
               str(args.repeats)]
    # Always said: the parser's default is a crop, which a whole-image run must not get.
    command += ["--crop", f"{crop[0]}x{crop[1]}" if crop else "0"]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(out[out.index("{"):])


def _versions():
    import keras
    import tensorflow as tf

    import tfprobunet

    return {"python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "tfprobunet": tfprobunet.__version__}


def summarise(size, crop, runs, batch):
    """Median and range of seconds per step over `runs`, and microseconds per pixel of the
    batch the model sees (the crop's, with a crop)."""
    seen = crop or size
    median = float(np.median(runs))
    return {"size": list(size), "crop": list(crop) if crop else None,
            "model_input": [batch, *seen, 1],
            "seconds_per_step": {"median": round(median, 4), "min": round(min(runs), 4),
                                 "max": round(max(runs), 4),
                                 "runs": [round(r, 4) for r in runs]},
            "microseconds_per_pixel": round(1e6 * median / (batch * seen[0] * seen[1]), 5)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="64,128,192,256,256x208",
                        help="comma-separated H or HxW")
    parser.add_argument("--crop", type=_crop, default=(128, 128),
                        help="the window, HxW; 0 measures whole images only")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--model", choices=("cpu", "default"), default="default")
    parser.add_argument("--steps", type=int, default=4, help="training steps per timed epoch")
    parser.add_argument("--repeats", type=int, default=2,
                        help="timed epochs of --steps steps per process")
    parser.add_argument("--rounds", type=int, default=3,
                        help="fresh processes per configuration, interleaved")
    parser.add_argument("--out", help="also write the JSON to this file")
    parser.add_argument("--one", type=_size, help=argparse.SUPPRESS)
    args = parser.parse_args()
    crop = args.crop
    if args.one:
        print(json.dumps(measure(args.one, crop, args.model, args.batch, args.steps,
                                 args.repeats)))
        return
    sizes = [_size(s) for s in args.sizes.split(",")]
    configs = [(size, c) for size in sizes for c in ((None, crop) if crop else (None,))]
    runs = {_name(*c): [] for c in configs}
    memory = {}
    for _ in range(args.rounds):
        for size, c in configs:
            result = _run(size, c, args)
            seen = list(c or size) + [1]
            if result["model_input"] != seen:  # the child ran what it was asked to
                raise RuntimeError(f"{_name(size, c)} trained on {result['model_input']}, not "
                                   f"{seen}")
            runs[_name(size, c)].extend(result["seconds_per_step_runs"])
            memory[_name(size, c)] = round(result["peak_rss_mib"], 1)
    results = {name: summarise(size, c, runs[name], args.batch)
               for name, (size, c) in zip(runs, configs)}
    speedups = {_name(size, None): round(results[_name(size, None)]["seconds_per_step"]["median"]
                                         / results[_name(size, crop)]["seconds_per_step"]["median"],
                                         3)
                for size in sizes if crop}
    report = {
        "command": " ".join(["python", "bench/step_cost.py", *sys.argv[1:]]),
        "config": {"model": args.model, "model_arguments": _model_arguments(args.model),
                   "policy": "float32", "batch": args.batch, "raters": RATERS,
                   "steps_per_epoch": args.steps, "timed_epochs_per_process": args.repeats,
                   "rounds": args.rounds, "crop": list(crop) if crop else None,
                   "pipeline": "training_pipeline, after random_windows for the crops"},
        "versions": _versions(),
        "cpu": cpu(),
        "results": results,
        "crop_speedup": speedups,
        "peak_rss_mib": memory,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
