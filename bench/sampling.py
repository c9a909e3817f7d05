"""The paper's claim that extra samples are cheap: time of `sample(images, 16)` over `call(images)`
at 128x128 (the default configuration), and 16 full forward passes for contrast. Prints JSON.

    python bench/sampling.py [--batch 1] [--samples 16] [--repeats 15]
"""

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfprobunet  # noqa: E402
from timing import run_times  # noqa: E402


def median_seconds(fn, repeats):
    times = run_times(fn, repeats)  # the untimed first call traces the function
    return float(np.median(times)), float(np.percentile(times, 95))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    model = tfprobunet.ProbabilisticUNet(num_classes=2)
    images = tf.random.uniform((args.batch, args.size, args.size, 1), seed=0)
    model(images)
    call = tf.function(lambda x: model(x))
    sample = tf.function(lambda x: model.sample(x, args.samples, seed=0))

    @tf.function
    def full_passes(x):
        # What a model without the shared features pays: U-Net + prior + f_comb per sample.
        return tf.stack([model.sample(x, 1, seed=i) for i in range(args.samples)], axis=1)

    t_call, p95_call = median_seconds(lambda: call(images).numpy(), args.repeats)
    t_sample, p95_sample = median_seconds(lambda: sample(images).numpy(), args.repeats)
    t_full, p95_full = median_seconds(lambda: full_passes(images).numpy(), max(3, args.repeats // 3))
    print(json.dumps({
        "config": {"image": [args.size, args.size, 1], "batch": args.batch,
                   "samples": args.samples, "num_channels": list(model.num_channels)},
        "call_ms": {"p50": 1e3 * t_call, "p95": 1e3 * p95_call},
        "sample_ms": {"p50": 1e3 * t_sample, "p95": 1e3 * p95_sample},
        "full_forward_passes_ms": {"p50": 1e3 * t_full, "p95": 1e3 * p95_full},
        "sample_over_call": t_sample / t_call,
        "full_passes_over_call": t_full / t_call,
        "target_sample_over_call": 1.5,
    }, indent=2))


if __name__ == "__main__":
    main()
