"""Where the time of one training step goes: the TF profiler's trace of a few steps of
`ProbabilisticUNet.train_step` (the default configuration by default), summed by op type, by
class of op (convolutions and their gradients and the other oneDNN primitives; element-wise ops
and reductions, which run in Eigen; the loss, the KL and the distributions, i.e. the step's own
ops outside any layer; the optimizer; input) and by part of the model (U-Net, prior,
posterior, f_comb, optimizer). Prints JSON; op times are summed over the threads that ran them,
so shares, not wall time, are what to read. `--isa avx2` caps oneDNN at AVX2 (bench/isa.py).

    python bench/profile_step.py [--size 128] [--batch 8] [--steps 4] [--mixed-precision P]
        [--isa native|avx2|avx512]
"""

import argparse
import collections
import glob
import json
import os
import re
import sys
import tempfile

import isa

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if "--isa" in sys.argv:  # before TensorFlow loads oneDNN
    os.environ.update(isa.environment(sys.argv[sys.argv.index("--isa") + 1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402

import tfprobunet  # noqa: E402

PARTS = ("unet", "prior", "posterior", "fcomb", "adam")
WRAPPERS = ("Process", "Run")
# Op types by class: the first pattern that matches names the class; the rest are split by
# where they run (`_op_class`).
OP_CLASSES = (("convolution forward (oneDNN)", r"Conv2D$|Conv2DWithBias$"),
              ("convolution filter gradient (oneDNN)", r"Conv2DBackpropFilter"),
              ("convolution input gradient (oneDNN)", r"Conv2DBackpropInput"),
              ("other oneDNN (pooling, matrix products)", r"^_Mkl"),
              ("input", r"Dataset|Iterator|^Prefetch$|^Root$|^DoCompute$"))


def _op_class(scope, op_type, layers):
    """The class of an op of type `op_type` traced under the name scope `scope`: `OP_CLASSES`,
    else the optimizer's, else element-wise ops and reductions inside the model's layers
    (`layers`, their names) or the step's own (loss, KL, distributions), forward or gradient."""
    for name, pattern in OP_CLASSES:
        if re.search(pattern, op_type):
            return name
    parts = [p for p in scope.split("/") if p not in ("StatefulPartitionedCall", "gradient_tape")]
    if "adam" in parts:
        return "optimizer"
    first = re.sub(r"_\d+$", "", parts[0]) if parts else ""
    if first in layers or (parts and parts[0] in layers):
        return "element-wise and reductions in layers (Eigen)"
    return "loss, KL and distributions (the step's own ops)"


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
    parser.add_argument("--isa", choices=tuple(isa.ISAS), default="native")
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
    layers = {layer.name for layer in model._flatten_layers(include_self=False)}
    by_type, by_part, by_class = (collections.Counter() for _ in range(3))
    for name, ms in _events(logdir):
        scope, _, op_type = name.rpartition(":")
        op_type = op_type.strip()
        if op_type in WRAPPERS or op_type.startswith("__inference"):
            continue  # the function and executor events that contain the ops
        by_type[op_type] += ms
        by_class[_op_class(scope, op_type, layers)] += ms
        lowered = scope.lower()
        part = next((p for p in PARTS if p in lowered), "other")
        by_part[part + (" (backward)" if "gradient" in lowered else "")] += ms
    total = sum(by_type.values())
    print(json.dumps({
        "config": {"image": [args.size, args.size, 1], "batch": args.batch, "steps": args.steps,
                   "policy": keras.config.dtype_policy().name, "isa": args.isa,
                   "onednn_isa": isa.probe(sys.executable, args.isa, "tf")["onednn"]},
        "op_ms_per_step": round(total / args.steps, 1),
        "share_by_op_type": {k: round(v / total, 3)
                             for k, v in by_type.most_common(args.top)},
        "share_by_class": {k: round(v / total, 3) for k, v in by_class.most_common()},
        "share_by_part": {k: round(v / total, 3) for k, v in by_part.most_common()},
    }, indent=2))


if __name__ == "__main__":
    main()
