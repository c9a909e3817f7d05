"""The oneDNN primitives of one training step, ours against the PyTorch reference's
(`bench/pytorch_reference.py`), from oneDNN's own log (`ONEDNN_VERBOSE=1`): milliseconds per step
by primitive (convolution forward, input gradient, filter gradient, reorders, pooling, matrix
products) with the implementation oneDNN chose, and the convolutions by shape side by side.
Both frameworks run their convolutions through oneDNN, so this compares kernels, not
frameworks. TensorFlow runs one op at a time here (inter-op threads 1) so that no two
primitives share the cores and each time is the primitive's own. Prints JSON.

    python bench/onednn_profile.py [--isa avx2] [--steps 3] [--torch-python PATH]
"""

import argparse
import collections
import json
import os
import re
import subprocess
import sys

import isa

HERE = os.path.dirname(os.path.abspath(__file__))
START = "=====timed steps"
SHAPE = re.compile(r"mb\d+_ic(\d+)oc(\d+)_ih(\d+)")


def _tf_steps(steps):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras
    import numpy as np

    import tfprobunet

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.random((8 * steps, 128, 128, 1), dtype=np.float32)
    labels = rng.integers(0, 2, images.shape[:3]).astype(np.int32)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    model = tfprobunet.ProbabilisticUNet(num_classes=2)
    model.compile(optimizer=keras.optimizers.Adam(1e-4))
    model.fit(dataset.take(2), epochs=1, verbose=0)
    print(START, flush=True)
    model.fit(dataset, epochs=1, verbose=0)


def _torch_steps(steps):
    import numpy as np
    import torch
    from pytorch_reference import ProbUNet

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.random((8, 1, 128, 128), np.float32))
    masks = torch.from_numpy(rng.integers(0, 2, (8, 1, 128, 128)).astype(np.float32))
    model = ProbUNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    for i in range(steps + 2):
        if i == 2:
            print(START, flush=True)
        optimizer.zero_grad()
        model.loss(images, masks).backward()
        optimizer.step()


def _primitives(log, steps):
    """Per step: ms by `kind prop_kind [implementation]`, convolutions' ms by
    `prop_kind icIocO_hH`, and oneDNN's ISA line."""
    by_primitive, by_shape = collections.Counter(), collections.Counter()
    timed = log[log.index(START):].splitlines()
    for line in timed:
        fields = line.split(",")
        if not line.startswith("onednn_verbose") or "exec" not in fields[:4]:
            continue
        start = fields.index("exec") + 2  # ... exec, cpu, kind, implementation, prop_kind
        kind, implementation, prop = fields[start:start + 3]
        ms = float(fields[-1]) / steps
        by_primitive[f"{kind} {prop} [{implementation}]"] += ms
        shape = SHAPE.search(line)
        if kind == "convolution" and shape:
            ic, oc, h = shape.groups()
            by_shape[f"{prop} ic{ic}oc{oc}_h{h}"] += ms
    found = re.findall(r"isa:([^,\n]+)", log)
    return {"isa": found[0] if found else "not reported",
            "ms_per_step": round(sum(by_primitive.values()), 1),
            "by_primitive": {k: round(v, 1) for k, v in by_primitive.most_common()},
            "convolutions_by_shape": {k: round(v, 1) for k, v in sorted(by_shape.items())}}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--isa", choices=tuple(isa.ISAS), default="native")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--torch-python", default=sys.executable)
    parser.add_argument("--child", choices=("tf", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        (_tf_steps if args.child == "tf" else _torch_steps)(args.steps)
        return
    env = {**isa.environment(args.isa), "ONEDNN_VERBOSE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    results = {}
    for name, python, child in (("tfprobunet", sys.executable, "tf"),
                                ("torch", args.torch_python, "torch")):
        command = [python, __file__, "--child", child, "--steps", str(args.steps)]
        log = subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout
        results[name] = _primitives(log, args.steps)
    ours, theirs = (results[n]["convolutions_by_shape"] for n in ("tfprobunet", "torch"))
    ratio = collections.defaultdict(lambda: [0.0, 0.0])
    for shapes, column in ((ours, 0), (theirs, 1)):
        for key, ms in shapes.items():
            ratio[key.split()[0]][column] += ms if key in ours and key in theirs else 0.0
    from train_step import cpu

    print(json.dumps({
        "config": {"image": [128, 128, 1], "batch": 8, "steps": args.steps, "isa": args.isa,
                   "tf_inter_op_threads": 1},
        "cpu": cpu(),
        **results,
        # over the shapes both run: our ms over theirs, by kind of convolution
        "ours_over_torch_by_convolution": {k: round(a / b, 2) for k, (a, b) in ratio.items()
                                           if b},
    }, indent=2))


if __name__ == "__main__":
    main()
