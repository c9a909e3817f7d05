"""XLA (`jit_compile=True`) against TensorFlow's default graph execution, for the training step
and for `sample`, in float32 and in mixed_bfloat16: the default configuration at 128x128.

- training: examples/s of `ProbabilisticUNet.train_step`, batch 8 (bench/train_step.py's
  measurement, each configuration in a fresh process);
- sampling: milliseconds of `sample(images, 16)` on one image (a `tf.function` with and
  without `jit_compile`, in a fresh process per policy), and the largest difference between
  the two functions' logits for the same weights and seed.

Interleaved over `--rounds`; prints JSON with every run, medians, the XLA/default ratios (> 1:
XLA faster) and the CPU's flags.

    python bench/xla.py [--rounds 3]
"""

import argparse
import json
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from timing import run_times  # noqa: E402
from train_step import _run as step_run, cpu  # noqa: E402

POLICIES = ("float32", "mixed_bfloat16")


def measure_sampling(policy, samples, repeats):
    """Median ms of `sample` with and without XLA in this process, and their logits' largest
    difference."""
    import keras
    import tensorflow as tf

    import tfprobunet

    keras.config.set_dtype_policy(policy)
    keras.utils.set_random_seed(0)
    model = tfprobunet.ProbabilisticUNet(num_classes=2)
    images = tf.random.uniform((1, 128, 128, 1), seed=0)
    model(images)
    result = {}
    logits = {}
    for jit in (False, True):
        sample = tf.function(lambda x: model.sample(x, samples, seed=0), jit_compile=jit)
        logits[jit] = sample(images).numpy()
        times = run_times(lambda: sample(images).numpy(), repeats)
        result["xla" if jit else "default"] = 1e3 * float(np.median(times))
    result["max_abs_logit_difference"] = float(np.max(np.abs(logits[True] - logits[False])))
    return result


def _error_line(stderr):
    """The line of a failed run's stderr that says why (XLA's message), else its last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return next((line for line in lines if "disallowed" in line),
                next((line for line in lines if "Error:" in line), lines[-1] if lines else ""))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--sampling-only", choices=POLICIES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sampling_only:
        print(json.dumps(measure_sampling(args.sampling_only, args.samples, args.repeats)))
        return
    step_args = argparse.Namespace(steps=8, repeats=2, size=128, batch=8)
    train = {c: [] for c in ("float32", "xla", "mixed_bfloat16", "xla_mixed_bfloat16")}
    errors = {}
    sampling = {p: [] for p in POLICIES}
    for _ in range(args.rounds):
        for config in train:
            if config in errors:
                continue
            try:
                train[config].extend(step_run(config, step_args)[0])
            except subprocess.CalledProcessError as error:  # XLA refused to compile the step
                errors[config] = _error_line(error.stderr)
        for policy in POLICIES:
            out = subprocess.run([sys.executable, __file__, "--sampling-only", policy,
                                  "--samples", str(args.samples), "--repeats",
                                  str(args.repeats)], capture_output=True, text=True,
                                 check=True).stdout
            sampling[policy].append(json.loads(out[out.index("{"):]))

    def median(values):
        return round(float(np.median(values)), 3)

    train_summary = {c: {"examples_per_s_median": median(r), "range": [round(min(r), 3),
                                                                       round(max(r), 3)]}
                     if r else {"error": errors[c]} for c, r in train.items()}
    sample_summary = {p: {"default_ms_median": median([r["default"] for r in runs]),
                          "xla_ms_median": median([r["xla"] for r in runs]),
                          "max_abs_logit_difference": max(r["max_abs_logit_difference"]
                                                          for r in runs)}
                      for p, runs in sampling.items()}
    print(json.dumps({
        "config": {"image": [128, 128, 1], "train_batch": 8, "sample_batch": 1,
                   "samples": args.samples, "rounds": args.rounds},
        "cpu": cpu(),
        "train": train_summary,
        "sample": sample_summary,
        "xla_speedup": {
            "train_float32": round(train_summary["xla"]["examples_per_s_median"]
                                   / train_summary["float32"]["examples_per_s_median"], 3),
            "train_mixed_bfloat16": round(
                train_summary["xla_mixed_bfloat16"]["examples_per_s_median"]
                / train_summary["mixed_bfloat16"]["examples_per_s_median"], 3)
            if train["xla_mixed_bfloat16"] else None,
            **{f"sample_{p}": round(s["default_ms_median"] / s["xla_ms_median"], 3)
               for p, s in sample_summary.items()}},
        "runs": {"train": train, "sample": sampling},
    }, indent=2))


if __name__ == "__main__":
    main()
