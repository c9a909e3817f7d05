"""Tiny configurations shared by the tests, and two logical CPU devices for MirroredStrategy."""

import contextlib
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Must happen before TensorFlow initialises its devices, hence at import time.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

import tfprobunet  # noqa: E402

TINY = dict(num_channels=[8, 16, 32], convs_per_block=2, latent_dim=2, fcomb_layers=2)


def tiny_model(num_classes=2, **kwargs):
    return tfprobunet.ProbabilisticUNet(num_classes=num_classes, **{**TINY, **kwargs})


def random_batch(num_classes=2, batch=2, size=16, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.random((batch, size, size, channels), dtype=np.float32)
    segmentations = rng.integers(0, num_classes, (batch, size, size)).astype(np.int32)
    return images, segmentations


def cli_error(capsys, argv):
    """Run `tfprobunet argv` in this process, expect it to refuse: exit status 2 and one line,
    `tfprobunet: error: ...`, on stderr. Returns that line."""
    from tfprobunet import cli

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tfprobunet: error: "), err
    return lines[0]


@pytest.fixture(autouse=True)
def _seeded():
    keras.utils.set_random_seed(1234)
    yield


# The exported model of the serving tests: K classes, C channels, latent N, F feature channels.
SERVED = dict(K=3, C=1, N=2, F=8)


def served_model(seed):
    """A built tiny model with the `SERVED` dimensions, weights seeded."""
    keras.utils.set_random_seed(seed)
    model = tiny_model(SERVED["K"], num_channels=[SERVED["F"], 16], latent_dim=SERVED["N"])
    model.build((None, 16, 16, SERVED["C"]))
    return model


def served_images(batch=2, size=16, seed=0):
    return np.random.default_rng(seed).random((batch, size, size, SERVED["C"]), dtype=np.float32)


@contextlib.contextmanager
def serve_process(base, *flags):
    """`tfprobunet serve` on `base` in a subprocess, on free ports, with other `flags`: yields
    (process, gRPC port, REST port) once it listens; terminated on exit."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tfprobunet.cli", "serve", "--model-base-path", base, "--port",
         "0", "--rest-port", "0", *flags], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    try:
        line = process.stdout.readline()
        port = int(line.split("gRPC 127.0.0.1:")[1].split(",")[0])
        rest_port = int(line.split("REST http://127.0.0.1:")[1].split()[0])
        yield process, port, rest_port
    finally:
        process.terminate()
        process.wait(timeout=30)


def status_mb(pid, key):
    """A memory figure of the process `pid` from /proc/PID/status, in MB: `key` "VmRSS" (resident
    now) or "VmHWM" (its peak)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no {key} line")


def raw_request(signature, inputs, output_filter=(), model="pun"):
    """A PredictRequest built by hand, without our client's conversions."""
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    request.output_filter.extend(output_filter)
    return request
