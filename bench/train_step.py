"""Examples/s of ProbabilisticUNet.train_step, LIDC configuration (128x128x1, batch 8), with and
without XLA (`jit_compile`), and peak memory. Prints JSON.

    python bench/train_step.py [--steps 8] [--repeats 5] [--size 128] [--batch 8]
"""

import argparse
import json
import os
import resource
import subprocess
import sys

from timing import add_step_arguments, run_times

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def measure(jit_compile, steps, repeats, size, batch):
    import keras
    import numpy as np

    import tfprobunet

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.random((batch * steps, size, size, 1), dtype=np.float32)
    labels = rng.integers(0, 2, (batch * steps, size, size)).astype(np.int32)
    model = tfprobunet.ProbabilisticUNet(num_classes=2)  # official LIDC defaults
    model.compile(optimizer=keras.optimizers.Adam(1e-4), jit_compile=jit_compile)
    model.fit(images[:batch * 2], labels[:batch * 2], batch_size=batch, epochs=1, verbose=0)
    times = run_times(lambda: model.fit(images, labels, batch_size=batch, epochs=1, verbose=0,
                                        shuffle=False), repeats, warmup=False)
    rates = [batch * steps / t for t in times]
    return {
        "jit_compile": jit_compile,
        "examples_per_s_median": float(np.median(rates)),
        "examples_per_s_runs": [round(r, 2) for r in rates],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main():
    parser = argparse.ArgumentParser()
    add_step_arguments(parser)
    parser.add_argument("--jit", choices=("true", "false"), help="one configuration, in-process")
    args = parser.parse_args()
    if args.jit:
        print(json.dumps(measure(args.jit == "true", args.steps, args.repeats, args.size,
                                 args.batch)))
        return
    # Each configuration in its own process, so peak memory is its own.
    results = {}
    for jit in ("false", "true"):
        out = subprocess.run([sys.executable, __file__, "--jit", jit, "--steps", str(args.steps),
                              "--repeats", str(args.repeats), "--size", str(args.size),
                              "--batch", str(args.batch)], capture_output=True, text=True,
                             check=True).stdout
        results[f"jit_{jit}"] = json.loads(out.strip().splitlines()[-1])
    no_jit = results["jit_false"]["examples_per_s_median"]
    jit = results["jit_true"]["examples_per_s_median"]
    print(json.dumps({
        "config": {"image": [args.size, args.size, 1], "batch": args.batch,
                   "num_channels": [32, 64, 128, 192], "convs_per_block": 3, "latent_dim": 6},
        **results,
        "jit_over_no_jit": jit / no_jit,
        "faster": "jit_compile=True" if jit > no_jit else "jit_compile=False",
    }, indent=2))


if __name__ == "__main__":
    main()
