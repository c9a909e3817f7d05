"""What a Keras `fit` call costs beyond its steps, with tf.data's autotuning thread on (tf.data's
default) and off (what `tfprobunet.data.pipeline` builds): the default configuration at
128x128, batch 8, 8 steps per `fit` call, the two kinds of dataset alternating in one process.
For each call: its seconds, the seconds from its first step's start to its last step's end,
and the rest. Prints JSON with every call and the medians.

    python bench/fit_overhead.py [--calls 4]
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfprobunet  # noqa: E402
from train_step import cpu  # noqa: E402


class StepSpan(keras.callbacks.Callback):
    """The seconds from the first step's start to the last step's end of each `fit`."""

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0:
            self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.end = time.perf_counter()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=4, help="fit calls of each kind")
    args = parser.parse_args()
    batch, steps, size = 8, 8, 128
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.random((batch * steps, size, size, 1), dtype=np.float32)
    labels = rng.integers(0, 2, (batch * steps, size, size)).astype(np.int32)

    def dataset(autotune):
        options = tf.data.Options()
        options.autotune.enabled = autotune
        return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch).prefetch(
            tf.data.AUTOTUNE).with_options(options)

    model = tfprobunet.ProbabilisticUNet(num_classes=2)
    model.compile(optimizer=keras.optimizers.Adam(1e-4))
    model.fit(dataset(True).take(2), verbose=0)
    span = StepSpan()
    calls = {"autotune_on": [], "autotune_off": []}
    for _ in range(args.calls):
        for name, autotune in (("autotune_on", True), ("autotune_off", False)):
            start = time.perf_counter()
            model.fit(dataset(autotune), verbose=0, callbacks=[span])
            seconds = time.perf_counter() - start
            calls[name].append({"fit_seconds": round(seconds, 3),
                                "steps_seconds": round(span.end - span.start, 3),
                                "rest_seconds": round(seconds - (span.end - span.start), 3)})
    print(json.dumps({
        "config": {"image": [size, size, 1], "batch": batch, "steps_per_fit": steps},
        "cpu": cpu(),
        "median_rest_seconds": {name: float(np.median([c["rest_seconds"] for c in runs]))
                                for name, runs in calls.items()},
        "median_fit_seconds": {name: float(np.median([c["fit_seconds"] for c in runs]))
                               for name, runs in calls.items()},
        "calls": calls,
    }, indent=2))


if __name__ == "__main__":
    main()
