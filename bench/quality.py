"""How well a trained model reproduces a known distribution of segmentations: a training recipe
(a preset, or `default`: `train()`'s own defaults, the default configuration at a constant
1e-4) trained on a synthetic benchmark for a fixed number of steps (or minutes), on several
seeds, each evaluated on the test split with 16 samples per image. Prints JSON: every seed,
and the median and range over seeds.

- *flips* (the paper's Cityscapes experiment, section 4.2 and Fig. 5), 32x32: GED for 1, 4, 8,
  16 samples against the noise floor (the ground truth sampled against itself: what a perfect
  model scores), the Pearson r of the 32 mode frequencies against their probabilities (linear
  and log), the modes found, and the per-class flip frequencies. Targets: every seed 32/32
  modes, r >= 0.9, GED(16) <= 1.5x the noise floor.
- *graders* (LIDC-like), 64x64: GED(16) and lesion-presence agreement; compare recipes at the
  same time budget (`--minutes 20`), in the same session.

    python bench/quality.py                       # preset cpu on flips, 6000 steps, seeds 0,1,2
    python bench/quality.py --dataset graders --recipe default --minutes 20 --seeds 0
    python bench/quality.py --dataset graders --recipe cpu --set beta=30 --steps 7100 --seeds 0
"""

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tfprobunet  # noqa: E402
from tfprobunet import training  # noqa: E402

IMAGE_SIZES = {"flips": 32, "graders": 64}


class StepTimes(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.monotonic())


def seconds_per_step(args, recipe, seed, steps=30):
    """The median step time of `recipe` on this machine now, after the first steps' tracing."""
    times = StepTimes()
    tfprobunet.train(tempfile.mkdtemp(prefix="quality-probe-"), dataset=args.dataset, epochs=1,
                     steps_per_epoch=steps, image_size=IMAGE_SIZES[args.dataset],
                     num_examples=200, seed=seed, verbose=0, callbacks=[times], **recipe)
    return float(np.median(np.diff(times.ends[5:])))


def _recipe(name):
    recipe = {} if name == "default" else training.preset(name)
    recipe.setdefault("batch_size", 8)
    return recipe


class StopAfter(keras.callbacks.Callback):
    """Stop at the first epoch end at or past `steps` optimizer steps."""

    def __init__(self, steps):
        super().__init__()
        self.steps = steps

    def on_epoch_end(self, epoch, logs=None):
        if int(self.model.optimizer.iterations) >= self.steps:
            self.model.stop_training = True


def run(dataset, recipe, steps, seed, eval_examples=None, name="recipe", stop_after=None):
    """Train `recipe` (`train` arguments) on `dataset` for `steps` steps (or the first
    `stop_after` of them) and evaluate it on the test split (`eval_examples` images, default
    all); returns the row of one seed, with the reconstruction term of each epoch."""
    steps_per_epoch = 100 if steps % 500 else min(steps, 500)
    workdir = tempfile.mkdtemp(prefix=f"quality-{dataset}-{name}-")
    start = time.monotonic()
    model, history = tfprobunet.train(
        workdir, dataset=dataset, epochs=max(1, steps // steps_per_epoch),
        steps_per_epoch=steps_per_epoch, image_size=IMAGE_SIZES[dataset], num_examples=2000,
        seed=seed, verbose=0, callbacks=[StopAfter(stop_after)] if stop_after else None,
        **recipe)
    train_seconds = time.monotonic() - start
    report = tfprobunet.evaluate(model, dataset, image_size=IMAGE_SIZES[dataset],
                                 num_examples=eval_examples, seed=seed, verbose=0)
    ged16 = report["ged"]["16"]["mean"]
    floor16 = report["ged_noise_floor"]["16"]["mean"]
    row = {"recipe": name, "seed": seed, "steps": int(model.optimizer.iterations),
           "train_seconds": round(train_seconds, 1), "test_images": report["num_images"],
           "ged": {k: round(v["mean"], 4) for k, v in report["ged"].items()},
           "ged16_sem": round(report["ged"]["16"]["sem"], 4),
           "noise_floor16": round(floor16, 4),
           "ged16_over_noise_floor": round(ged16 / floor16, 3),
           "hm_iou": round(report["hm_iou"]["mean"], 4),
           "reconstruction": [round(r, 1) for r in history.history["reconstruction"]]}
    if "modes" in report:
        modes = report["modes"]
        row.update(pearson_r=round(modes["pearson_r"], 4),
                   log_pearson_r=round(modes["log_pearson_r"], 4),
                   modes_found=modes["modes_found"],
                   flips=[round(f["sampled"], 3) for f in modes["flips"]],
                   flips_true=[round(f["true"], 3) for f in modes["flips"]])
    if "presence" in report:
        row["presence"] = {k: round(v, 3) for k, v in report["presence"].items()}
    return row


def summary(rows):
    """Median and range over seeds of the headline numbers."""
    keys = ["ged16_over_noise_floor", "steps"] + [k for k in ("pearson_r", "log_pearson_r",
                                                              "modes_found") if k in rows[0]]
    result = {k: {"median": float(np.median([r[k] for r in rows])),
                  "min": min(r[k] for r in rows), "max": max(r[k] for r in rows)}
              for k in keys}
    ged16 = [r["ged"]["16"] for r in rows]
    result["ged16"] = {"median": float(np.median(ged16)), "min": min(ged16), "max": max(ged16)}
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", choices=sorted(IMAGE_SIZES), default="flips")
    parser.add_argument("--recipe", choices=["default", *sorted(training.PRESETS)],
                        default="cpu")
    parser.add_argument("--steps", type=int, default=6000,
                        help="training steps (a multiple of 500); with --minutes, the most")
    parser.add_argument("--minutes", type=float,
                        help="a time budget instead: the steps this recipe runs in that time "
                             "here and now (timed on 30 steps first), rounded to 100")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a train() argument on top of the recipe (repeatable; the value "
                             "as JSON), e.g. --set beta=30")
    args = parser.parse_args()
    overrides = {name: json.loads(value) for name, _, value in
                 (item.partition("=") for item in args.set)}
    recipe = {**_recipe(args.recipe), **overrides}
    if args.minutes:
        # Steps, not a stop at a deadline: the schedule must know the run's length.
        step = seconds_per_step(args, recipe, 0)
        args.steps = max(100, int(args.minutes * 60 / step) // 100 * 100)
        print(json.dumps({"seconds_per_step": round(step, 3), "steps": args.steps}), flush=True)
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        rows.append(run(args.dataset, recipe, args.steps, seed, name=args.recipe))
        print(json.dumps(rows[-1]), flush=True)
    result = {"dataset": args.dataset, "recipe": args.recipe, "overrides": overrides,
              "budget": {"minutes": args.minutes} if args.minutes else {"steps": args.steps},
              "seeds": rows, "summary": summary(rows)}
    if args.dataset == "flips":
        result["targets_met_by_every_seed"] = {
            "modes_found_32": all(r["modes_found"] == 32 for r in rows),
            "pearson_r_0.9": all(r["pearson_r"] >= 0.9 for r in rows),
            "ged16_within_1.5x_floor": all(r["ged16_over_noise_floor"] <= 1.5 for r in rows)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
