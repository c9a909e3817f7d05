"""The instruction set a benchmark's child processes may use, and a check that the restriction
took effect. Plain Python, so that the PyTorch reference's runs can share it.

`--isa avx2` makes an AVX-512 or AMX machine measure what an AVX2-only CPU (most laptops, many
cloud VMs) would run: oneDNN (TensorFlow's and PyTorch's convolutions and matrix products) is
capped by `ONEDNN_MAX_CPU_ISA`, PyTorch's own kernels by `ATEN_CPU_CAPABILITY`, and XLA's code
generation by `--xla_cpu_max_isa`. TensorFlow's other kernels (Eigen's element-wise ops and
reductions) need no cap: the PyPI wheel compiles them for AVX on every x86 CPU, which is why
TensorFlow's start-up line says it could use AVX2 and FMA "in other operations".
"""

import os
import re
import subprocess

# --isa NAME: (ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY, --xla_cpu_max_isa); "native" caps
# nothing.
ISAS = {"native": None,
        "avx2": ("AVX2", "avx2", "AVX2"),
        "avx512": ("AVX512_CORE", "avx512", "AVX512")}

_TF_PROBE = ("import tensorflow as tf; tf.nn.conv2d(tf.ones([1, 8, 8, 8]), tf.ones([3, 3, 8, 8]),"
             " 1, 'SAME')")
# (PyTorch leaves convolutions this small to its own kernels, not oneDNN)
_TORCH_PROBE = ("import torch; torch.nn.functional.conv2d(torch.ones(2, 32, 64, 64), "
                "torch.ones(32, 32, 3, 3), padding=1); "
                "print('aten:' + torch.backends.cpu.get_cpu_capability())")


def environment(isa, base=None):
    """A copy of `base` (default: this process's environment) with `isa`'s caps set."""
    env = dict(os.environ if base is None else base)
    if ISAS[isa] is not None:
        onednn, aten, xla = ISAS[isa]
        env.update(ONEDNN_MAX_CPU_ISA=onednn, ATEN_CPU_CAPABILITY=aten)
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_cpu_max_isa={xla}".strip()
    return env


def probe(python, isa, framework):
    """What a child process of `python` under `isa`'s caps runs on: `{"onednn": "Intel AVX2"}`
    (oneDNN's own line) and, for `framework="torch"`, `"aten": "AVX2"` (PyTorch's kernels)."""
    code = _TORCH_PROBE if framework == "torch" else _TF_PROBE
    env = {**environment(isa), "ONEDNN_VERBOSE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env,
                         check=True).stdout
    found = {"onednn": next(iter(re.findall(r"isa:([^,\n]+)", out)), "not reported")}
    if framework == "torch":
        found["aten"] = re.findall(r"aten:(\S+)", out)[-1]
    return found
