"""The paper's "sampling is cheap" claim at the serving boundary. Prints JSON.

For one 128x128 image and the default (LIDC) model exported for TF Serving, the time of
`features` once + `sample(num_samples=16)` against 16 calls of `serving_default(num_samples=1)`
(what a client pays without the feature/sample split), measured twice: calling the loaded
SavedModel's signatures in process, and as gRPC round trips through `GrpcClient` to the local
`ModelServer` (TF1 session, as TF Serving runs them) on loopback. p50/p95 over `--repeats` runs.

    python bench/serving.py [--size 128] [--samples 16] [--repeats 15]
"""

import argparse
import json
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfprobunet  # noqa: E402
from tfprobunet import serving  # noqa: E402
from timing import run_times  # noqa: E402


def _stats(times):
    return {"p50_ms": round(1e3 * float(np.median(times)), 2),
            "p95_ms": round(1e3 * float(np.percentile(times, 95)), 2)}


def _compare(features_then_sample, one_at_a_time, repeats):
    split = run_times(features_then_sample, repeats)
    separate = run_times(one_at_a_time, repeats)
    return {"features_plus_sample": _stats(split), "separate_calls": _stats(separate),
            "separate_over_split": round(float(np.median(separate) / np.median(split)), 2)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    m = args.samples

    model = tfprobunet.ProbabilisticUNet(num_classes=2)
    model.build((None, args.size, args.size, 1))
    base = tempfile.mkdtemp(prefix="serving-bench-")
    path = serving.export_for_serving(model, base, "probunet")
    images = np.random.default_rng(0).random((1, args.size, args.size, 1), dtype=np.float32)
    seed = np.int32([1, 2])

    signatures = tf.saved_model.load(path).signatures

    def in_process_split():
        f = signatures["features"](images=images)
        return signatures["sample"](**f, num_samples=np.int32(m), seed=seed)["masks"].numpy()

    def in_process_separate():
        return [signatures["serving_default"](images=images, num_samples=np.int32(1),
                                              seed=np.int32([i, 2]))["masks"].numpy()
                for i in range(m)]

    result = {"config": {"image": [args.size, args.size, 1], "samples": m,
                         "repeats": args.repeats, "num_channels": list(model.num_channels)},
              "in_process": _compare(in_process_split, in_process_separate, args.repeats)}

    with serving.ModelServer(base, port=0, rest_port=None) as server, \
            serving.GrpcClient(f"127.0.0.1:{server.port}", "probunet") as client:

        def grpc_split():
            return client.sample(client.features(images), m, seed=seed, output_filter=["masks"])

        def grpc_separate():
            return [client.predict(images, 1, seed=[i, 2], output_filter=["masks"])
                    for i in range(m)]

        result["grpc"] = _compare(grpc_split, grpc_separate, args.repeats)
        # What each further batch of samples costs once the features are known.
        features = client.features(images)
        result["grpc"]["sample_only"] = _stats(run_times(
            lambda: client.sample(features, m, seed=seed, output_filter=["masks"]), args.repeats))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
