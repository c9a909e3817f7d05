"""How well a trained model reproduces a known distribution of segmentations (the paper's
Cityscapes experiment, section 4.2 and Fig. 5, on the synthetic *flips* benchmark). Prints JSON.

The definition, fixed: the default `ProbabilisticUNet` (official architecture and loss) trained
on *flips* at 64x64, batch 8, with Adam at 1e-3 for 700 steps, which fits 2 CPU cores in <= 20
minutes (the official schedule starts at 1e-4 but runs for 240k steps; this budget is 700), then
evaluated on 100 held-out test images with 16 samples each:

- GED for 1, 4, 8, 16 samples, and the noise floor: the ground truth sampled against itself
  with the same counts (what a perfect model would score);
- the frequency with which samples fall closest to each of the 32 modes against the modes'
  probabilities: Pearson r and the number of modes found.

Targets: 32/32 modes, r >= 0.9, GED(16) within 1.5x the noise floor.

    python bench/quality.py [--steps 700] [--learning-rate 1e-3] [--eval-examples 100]
"""

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tfprobunet  # noqa: E402

IMAGE_SIZE = 64
STEPS_PER_EPOCH = 100


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=700, help="training steps (multiple of 100)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--train-examples", type=int, default=1000)
    parser.add_argument("--eval-examples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="default: a fresh temporary folder (never resumes)")
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="quality-")

    start = time.monotonic()
    model, history = tfprobunet.train(
        workdir, dataset="flips", epochs=max(1, args.steps // STEPS_PER_EPOCH),
        steps_per_epoch=STEPS_PER_EPOCH, batch_size=args.batch_size, image_size=IMAGE_SIZE,
        num_examples=args.train_examples, learning_rate=args.learning_rate, seed=args.seed,
        verbose=2)
    train_seconds = time.monotonic() - start
    report = tfprobunet.evaluate(model, "flips", out_dir=os.path.join(workdir, "evaluation"),
                                 image_size=IMAGE_SIZE, num_examples=args.eval_examples,
                                 seed=args.seed, verbose=0)
    ged16 = report["ged"]["16"]["mean"]
    floor16 = report["ged_noise_floor"]["16"]["mean"]
    modes = report["modes"]
    print(json.dumps({
        "config": {"image_size": IMAGE_SIZE, "model": "ProbabilisticUNet defaults",
                   "num_channels": list(model.num_channels), "steps": len(history.epoch)
                   * STEPS_PER_EPOCH, "batch_size": args.batch_size,
                   "learning_rate": args.learning_rate, "train_examples": args.train_examples,
                   "eval_examples": report["num_images"], "samples_per_image": 16},
        "ged": {k: round(v["mean"], 4) for k, v in report["ged"].items()},
        "ged_sem": {k: round(v["sem"], 4) for k, v in report["ged"].items()},
        "noise_floor": {k: round(v["mean"], 4) for k, v in report["ged_noise_floor"].items()},
        "ged16_over_noise_floor": round(ged16 / floor16, 3),
        "hm_iou": round(report["hm_iou"]["mean"], 4),
        "pearson_r": round(modes["pearson_r"], 4),
        "modes_found": modes["modes_found"],
        "final_train": {k: round(v[-1], 3) for k, v in history.history.items()},
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": report["seconds"],
        "wall_seconds": round(time.monotonic() - start, 1),
        "targets": {"modes_found": 32, "pearson_r": 0.9, "ged16_over_noise_floor": 1.5},
        "met": {"modes_found": modes["modes_found"] == 32, "pearson_r": modes["pearson_r"] >= 0.9,
                "ged16_over_noise_floor": ged16 <= 1.5 * floor16},
        "report": os.path.join(workdir, "evaluation", "report.json"),
    }, indent=2))


if __name__ == "__main__":
    main()
