"""Which precision a run computes in: `resolve("auto")` picks `mixed_bfloat16` where the CPU
computes bfloat16 natively (AMX or AVX-512-BF16) and no GPU is visible, float32 elsewhere.

`"auto"` is asked for, never a default: on such CPUs a training step costs about a third as
much in bfloat16, but calibration does not always hold (docs/results/bf16: on *flips*, with
the `cpu` recipe's 4000 steps, one seed of six under bfloat16 reached a mode-frequency r of
0.74 and a GED(16) of 0.069, against float32's 0.90-0.96 and 0.044-0.058 on the same seeds;
on *graders* GED(16) held), so the presets compute in float32. The choice is made when a run
starts and recorded in its `train_config.json`; a resumed run keeps it on any machine.
"""

import os

CPUINFO = "/proc/cpuinfo"
# CPU flags (as Linux names them) under which oneDNN runs bfloat16 convolutions and matrix
# products natively; without them bfloat16 is emulated and slower than float32.
BFLOAT16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_info(path=None):
    """`{"model": name, "cores": n, "flags": sorted flags}` of this machine's CPU, read from
    `/proc/cpuinfo` (`CPUINFO`, or `path`); `model` "unknown" and no flags where that file
    cannot be read (macOS, Windows)."""
    try:
        with open(path or CPUINFO) as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []

    def first(key):
        return next((line.split(":", 1)[1].strip() for line in lines
                     if line.split(":", 1)[0].strip() == key), None)

    return {"model": first("model name") or "unknown", "cores": os.cpu_count(),
            "flags": sorted(set((first("flags") or "").split()))}


def bfloat16_flags():
    """The flags of `BFLOAT16_FLAGS` this CPU has (empty: bfloat16 is not native here)."""
    flags = set(cpu_info()["flags"])
    return [flag for flag in BFLOAT16_FLAGS if flag in flags]


def _gpus():
    import tensorflow as tf

    return tf.config.list_physical_devices("GPU")


def resolve(mixed_precision, recorded="unknown"):
    """The Keras dtype policy a run uses (None: float32) for `train(mixed_precision=...)`.

    Args:
        mixed_precision: None or `"float32"` (float32), `"mixed_float16"`, `"mixed_bfloat16"`,
            or `"auto"`: `"mixed_bfloat16"` when the CPU has a flag of `BFLOAT16_FLAGS` and
            TensorFlow sees no GPU, None otherwise.
        recorded: the policy recorded by the run being resumed; `"auto"` keeps it, so that a
            run continues in the precision it began with. `"unknown"`: a new run.

    Returns:
        None, `"mixed_float16"` or `"mixed_bfloat16"`.
    """
    if mixed_precision == "auto":
        if recorded != "unknown":
            return recorded
        return "mixed_bfloat16" if bfloat16_flags() and not _gpus() else None
    return None if mixed_precision == "float32" else mixed_precision
