"""Examples/s of `ProbabilisticUNet.train_step`, the default configuration at LIDC's size
(128x128x1, batch 8), in float32, in `mixed_bfloat16` and with XLA, against the PyTorch
reference of the same shape
(`bench/pytorch_reference.py`), interleaved: every round runs each configuration once, each in
a fresh process, so that the machine's slow and fast phases hit them all alike. Prints JSON
with every run, the median and best of each configuration, their ratios, and the CPU's flags
(bfloat16 is fast only where the CPU has AMX or AVX-512-BF16).

    python bench/train_step.py [--rounds 5] [--configs float32,mixed_bfloat16,torch]
        [--torch-python PATH]   # an interpreter with PyTorch (default: this one)
        [--isa avx2]            # what an AVX2-only CPU runs (bench/isa.py), on any x86

`--isa` caps every child process, ours and PyTorch's; the JSON records the cap and what each
framework reported running on under it.
"""

import argparse
import json
import os
import resource
import subprocess
import sys

import isa
from timing import add_step_arguments, run_times

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = os.path.dirname(os.path.abspath(__file__))
# "xla": float32 with `jit_compile=True`; "xla_mixed_bfloat16": both; "inter_op1": float32
# running one op at a time (TensorFlow's inter-op threads 1; the default is one per core).
CONFIGS = ("float32", "mixed_bfloat16", "xla", "xla_mixed_bfloat16", "inter_op1", "torch")
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")


def measure(config, steps, repeats, size, batch):
    """One configuration in this process: `repeats` timed runs of `steps` steps."""
    import keras
    import numpy as np
    import tensorflow as tf

    import tfprobunet

    if config == "inter_op1":
        tf.config.threading.set_inter_op_parallelism_threads(1)
    if config.endswith("mixed_bfloat16"):
        keras.config.set_dtype_policy("mixed_bfloat16")
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.random((batch * steps, size, size, 1), dtype=np.float32)
    labels = rng.integers(0, 2, (batch * steps, size, size)).astype(np.int32)
    # Batches as `train` feeds them (tfprobunet.data.pipeline): without tf.data's autotuning
    # thread, which holds a `fit` call up to 2.5 s after its last step.
    options = tf.data.Options()
    options.autotune.enabled = False
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch).prefetch(
        tf.data.AUTOTUNE).with_options(options)
    model = tfprobunet.ProbabilisticUNet(num_classes=2)  # the library's defaults
    model.compile(optimizer=keras.optimizers.Adam(1e-4), jit_compile=config.startswith("xla"))
    model.fit(dataset.take(2), epochs=1, verbose=0)
    times = run_times(lambda: model.fit(dataset, epochs=1, verbose=0), repeats, warmup=False)
    return {"examples_per_s_runs": [batch * steps / t for t in times],
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def cpu():
    """The CPU's model name, cores and the flags that decide low-precision speed."""
    from tfprobunet.training import precision

    info = precision.cpu_info()
    return {**info, "flags": [f for f in CPU_FLAGS if f in info["flags"]]}


def _run(config, args):
    common = ["--steps", str(args.steps), "--repeats", str(args.repeats), "--size",
              str(args.size), "--batch", str(args.batch)]
    if config == "torch":
        command = [args.torch_python, os.path.join(HERE, "pytorch_reference.py"), *common]
    else:
        command = [sys.executable, __file__, "--one", config, *common]
    out = subprocess.run(command, capture_output=True, text=True, check=True,
                         env=isa.environment(args.isa)).stdout
    result = json.loads(out[out.index("{"):])
    return result["examples_per_s_runs"], result.get("peak_rss_mib")


def _summary(rates):
    import numpy as np

    return {"median": round(float(np.median(rates)), 3), "best": round(max(rates), 3),
            "worst": round(min(rates), 3), "runs": [round(r, 3) for r in rates]}


def main():
    parser = argparse.ArgumentParser()
    add_step_arguments(parser)
    parser.set_defaults(repeats=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--configs", default="float32,mixed_bfloat16,torch")
    parser.add_argument("--torch-python", default=sys.executable)
    parser.add_argument("--isa", choices=tuple(isa.ISAS), default="native")
    parser.add_argument("--one", choices=CONFIGS[:-1], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.steps, args.repeats, args.size, args.batch)))
        return
    configs = args.configs.split(",")
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        raise SystemExit(f"unknown configurations {sorted(unknown)}; choose from {CONFIGS}")
    rates = {c: [] for c in configs}
    memory = {}
    for _ in range(args.rounds):
        for config in configs:
            runs, memory[config] = _run(config, args)
            rates[config].extend(runs)
    summary = {c: _summary(r) for c, r in rates.items()}
    ratios = {}
    for a, b in (("float32", "torch"), ("mixed_bfloat16", "float32"), ("xla", "float32"),
                 ("xla", "torch"), ("inter_op1", "float32"),
                 ("xla_mixed_bfloat16", "mixed_bfloat16"), ("mixed_bfloat16", "torch")):
        if a in summary and b in summary:
            ratios[f"{a}_over_{b}"] = {k: round(summary[a][k] / summary[b][k], 3)
                                       for k in ("median", "best")}
    print(json.dumps({
        "config": {"image": [args.size, args.size, 1], "batch": args.batch,
                   "num_channels": [32, 64, 128, 192], "convs_per_block": 3, "latent_dim": 6,
                   "steps_per_run": args.steps, "runs_per_process": args.repeats,
                   "rounds": args.rounds},
        "cpu": cpu(),
        "isa": {"cap": args.isa, "environment": {k: v for k, v in isa.environment(
                    args.isa, {}).items()},
                "tensorflow": isa.probe(sys.executable, args.isa, "tf"),
                **({"torch": isa.probe(args.torch_python, args.isa, "torch")}
                   if "torch" in configs else {})},
        "examples_per_s": summary,
        "ratios": ratios,
        "peak_rss_mib": memory,
    }, indent=2))


if __name__ == "__main__":
    main()
