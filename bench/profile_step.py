"""Where the time of one training step goes: the TF profiler's trace of a few steps of
`ProbabilisticUNet.train_step` (the default configuration by default), summed by op type and by part
of the model (U-Net, prior, posterior, f_comb, loss, optimizer). Prints JSON; op times are
summed over the threads that ran them, so shares, not wall time, are what to read.

    python bench/profile_step.py [--size 128] [--batch 8] [--steps 4] [--mixed-precision P]
"""

import argparse
import collections
import glob
import json
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402

import tfprobunet  # noqa: E402

PARTS = ("unet", "prior", "posterior", "fcomb", "adam")
WRAPPERS = ("Process", "Run")


def _events(logdir):
    """(name, duration in ms) of every op event in the host plane of the trace in `logdir`."""
    space = xplane_pb2.XSpace()
    with open(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0], "rb") as f:
        space.ParseFromString(f.read())
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" in name:  # "scope/op_name:OpType"
                    yield name, event.duration_ps / 1e9


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--mixed-precision", choices=("mixed_float16", "mixed_bfloat16"))
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    if args.mixed_precision:
        keras.config.set_dtype_policy(args.mixed_precision)
    rng = np.random.default_rng(0)
    images = rng.random((args.batch * args.steps, args.size, args.size, 1), dtype=np.float32)
    labels = rng.integers(0, 2, images.shape[:3]).astype(np.int32)
    model = tfprobunet.ProbabilisticUNet(num_classes=2)
    model.compile(optimizer=keras.optimizers.Adam(1e-4))
    model.fit(images[:args.batch * 2], labels[:args.batch * 2], batch_size=args.batch,
              verbose=0)
    logdir = tempfile.mkdtemp(prefix="profile-")
    tf.profiler.experimental.start(logdir)
    model.fit(images, labels, batch_size=args.batch, verbose=0, shuffle=False)
    tf.profiler.experimental.stop()
    by_type, by_part = collections.Counter(), collections.Counter()
    for name, ms in _events(logdir):
        scope, _, op_type = name.rpartition(":")
        op_type = op_type.strip()
        if op_type in WRAPPERS or op_type.startswith("__inference"):
            continue  # the function and executor events that contain the ops
        by_type[op_type] += ms
        lowered = scope.lower()
        part = next((p for p in PARTS if p in lowered), "other")
        by_part[part + (" (backward)" if "gradient" in lowered else "")] += ms
    total = sum(by_type.values())
    print(json.dumps({
        "config": {"image": [args.size, args.size, 1], "batch": args.batch, "steps": args.steps,
                   "policy": keras.config.dtype_policy().name},
        "op_ms_per_step": round(total / args.steps, 1),
        "share_by_op_type": {k: round(v / total, 3)
                             for k, v in by_type.most_common(args.top)},
        "share_by_part": {k: round(v / total, 3) for k, v in by_part.most_common()},
    }, indent=2))


if __name__ == "__main__":
    main()
