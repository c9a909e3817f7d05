"""A small Keras Tuner search on *flips* against the default configuration at the same per-trial
budget: every trial (and the default model) trains `--epochs x --steps-per-epoch` steps and is
scored on `val_ged` (16 samples per val image, all 32 annotations). Prints JSON: the default's
val_ged and seconds, every trial (hyper-parameters, val_ged), the search's seconds, the best,
and the CPU.

    python bench/tuning.py --max-trials 8 --epochs 3 --steps-per-epoch 100
"""

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras_tuner  # noqa: E402

from tfprobunet import data, tuning  # noqa: E402
from train_step import cpu  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps-per-epoch", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--validation-examples", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--directory", help="default: a new temporary folder")
    args = parser.parse_args()
    directory = args.directory or tempfile.mkdtemp(prefix="bench-tuning-")
    budget = dict(epochs=args.epochs, steps_per_epoch=args.steps_per_epoch)
    train = data.load("flips", "train", image_size=args.image_size, seed=args.seed)
    val = data.load("flips", "val", image_size=args.image_size,
                    num_examples=args.validation_examples, seed=args.seed)

    # The default configuration, trained and scored exactly as a trial is.
    hypermodel = tuning.ProbabilisticUNetHyperModel(
        train.num_classes, (args.image_size, args.image_size, 3), ged_classes=train.classes,
        steps=args.epochs * args.steps_per_epoch, seed=args.seed)
    hp = keras_tuner.HyperParameters()
    start = time.monotonic()
    history = hypermodel.fit(hp, hypermodel.build(hp), train, validation_data=val, verbose=0,
                             **budget)
    default = {"values": hp.values, "val_ged": min(history.history["val_ged"]),
               "seconds": round(time.monotonic() - start, 1)}
    print(json.dumps({"default": default}), flush=True)

    start = time.monotonic()
    trials = tuning.tune(directory, dataset=train, validation_data=val,
                         max_trials=args.max_trials, seed=args.seed, verbose=0, **budget)
    seconds = round(time.monotonic() - start, 1)
    best = trials[0]
    print(json.dumps({
        "dataset": "flips", "image_size": args.image_size, "budget_per_trial": budget,
        "validation_images": args.validation_examples, "default": default,
        "trials": trials, "search_seconds": seconds,
        "best": {"trial_id": best["trial_id"], "val_ged": best["score"]},
        "best_over_default": round(best["score"] / default["val_ged"], 3),
        "cpu": cpu()}, indent=2))


if __name__ == "__main__":
    main()
