"""The calibration ablation on *flips*: which training recipe makes the samples' mode
frequencies match the annotators' at CPU budgets. Each configuration is trained for a fixed
number of steps (so every machine reproduces it) on several seeds and evaluated on held-out
images; one JSON line per run is appended to `--out`, and a summary (median and range over
seeds) is printed as JSON.

    python bench/ablation.py --configs baseline,beta10 --seeds 0,1,2 [--steps 1500]
"""

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import tfprobunet  # noqa: E402
from tfprobunet.data import synthetic  # noqa: E402

SMALL = dict(num_channels=[16, 32, 64], convs_per_block=2)
# name: train() arguments on top of COMMON.
CONFIGS = {
    "baseline": dict(learning_rate=1e-3),
    "beta10": dict(learning_rate=1e-3, beta=10.0),
    "cosine": dict(learning_rate=1e-3, schedule="cosine"),
    "beta10-cosine": dict(learning_rate=1e-3, beta=10.0, schedule="cosine"),
    "beta30-cosine": dict(learning_rate=1e-3, beta=30.0, schedule="cosine"),
    "beta3-cosine": dict(learning_rate=1e-3, beta=3.0, schedule="cosine"),
    "piecewise": dict(learning_rate=1e-3, schedule="piecewise"),
    "geco": dict(learning_rate=1e-3, geco_target=0.01),
    "geco-cosine": dict(learning_rate=1e-3, geco_target=0.01, schedule="cosine"),
    "geco.03-cosine": dict(learning_rate=1e-3, geco_target=0.03, schedule="cosine"),
}


def run(name, seed, steps, image_size, batch_size, eval_examples, workdir):
    config = dict(CONFIGS[name])
    model_args = {**SMALL, **config.pop("model", {})}
    start = time.monotonic()
    model, _ = tfprobunet.train(
        workdir, dataset="flips", epochs=steps // 100, steps_per_epoch=100,
        batch_size=batch_size, image_size=image_size, num_examples=2000, seed=seed, verbose=0,
        **model_args, **config)
    seconds = time.monotonic() - start
    report = tfprobunet.evaluate(model, "flips", image_size=image_size,
                                 num_examples=eval_examples, seed=seed, verbose=0)
    modes, probabilities = synthetic.flip_modes()
    frequencies = np.asarray(report["modes"]["frequencies"])
    samples = eval_examples * 16
    floor = 0.5 / samples
    return {
        "config": name, "seed": seed, "steps": steps, "image_size": image_size,
        "batch_size": batch_size,
        "ged16": report["ged"]["16"]["mean"],
        "floor16": report["ged_noise_floor"]["16"]["mean"],
        "ged16_over_floor": report["ged"]["16"]["mean"] / report["ged_noise_floor"]["16"]["mean"],
        "pearson_r": report["modes"]["pearson_r"],
        "log_pearson_r": float(np.corrcoef(np.log(np.maximum(frequencies, floor)),
                                           np.log(probabilities))[0, 1]),
        "modes_found": report["modes"]["modes_found"],
        "flip_rates": (frequencies @ modes).round(3).tolist(),
        "train_seconds": round(seconds, 1),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", default="baseline")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-examples", type=int, default=200)
    parser.add_argument("--out", default="ablation.jsonl")
    args = parser.parse_args()
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:  # seeds outermost: configs interleave
        for name in args.configs.split(","):
            row = run(name, seed, args.steps, args.image_size, args.batch_size,
                      args.eval_examples, tempfile.mkdtemp(prefix=f"ablation-{name}-"))
            rows.append(row)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    summary = {}
    for name in args.configs.split(","):
        mine = [r for r in rows if r["config"] == name]
        summary[name] = {key: {"median": float(np.median([r[key] for r in mine])),
                               "min": min(r[key] for r in mine), "max": max(r[key] for r in mine)}
                         for key in ("ged16_over_floor", "pearson_r", "log_pearson_r",
                                     "modes_found")}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
