"""Saving and loading on every Keras and TensorFlow version `setup.py` admits.

These tests run twice in CI: on the pinned versions (`make test`) and on the oldest supported
ones, Colab's (`make test-compat`). Keras < 3.15 silently drops the weights of layers kept in
nested Python lists; the weights-count checks are what catch such a loss.
"""

import json
import os
import warnings
import zipfile

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import random_batch, tiny_model
from harness import saved_arrays

DATA = os.path.join(os.path.dirname(__file__), "data")


def trained(model, images, segmentations):
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(images, segmentations, batch_size=2, epochs=1, verbose=0, shuffle=False)
    return model


@pytest.mark.compat
def test_keras_file_of_a_model_never_compiled_holds_every_weight_and_loads_exactly(tmp_path):
    """A model built and saved before any `compile`; a trained one, with its optimizer's state,
    is the harness's check (`harness.py`, every model)."""
    images, _ = random_batch(3, batch=2)
    model = tiny_model(3)
    model.build((None, 16, 16, 1))
    path = str(tmp_path / "model.keras")
    model.save(path)

    arrays = saved_arrays(path)
    assert len(arrays) == len(model.weights)
    # Each saved array is one of the model's weights (every weight of a conv is distinct).
    values = sorted(float(np.sum(np.abs(a))) for a in arrays.values())
    expected = sorted(float(np.sum(np.abs(w.numpy()))) for w in model.weights)
    np.testing.assert_allclose(values, expected, rtol=1e-6)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = keras.models.load_model(path)
    assert not [str(w.message) for w in caught if "compile" in str(w.message)]
    assert len(loaded.weights) == len(model.weights)
    for a, b in zip(loaded.weights, model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=b.path)
    np.testing.assert_array_equal(loaded.sample(images, 2, seed=1), model.sample(images, 2, seed=1))
    np.testing.assert_array_equal(loaded(images), model(images))


@pytest.mark.compat
def test_a_loss_and_metrics_saved_by_version_0_1_are_dropped_on_load(tmp_path):
    # Version 0.1 accepted compile(loss=..., metrics=...) and ignored them; Keras wrote them
    # into the file's compile config, which load_model passes to compile_from_config.
    images, segmentations = random_batch(2)
    model = trained(tiny_model(2), images, segmentations)
    path = str(tmp_path / "model.keras")
    model.save(path)
    old = str(tmp_path / "old.keras")
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(old, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                config["compile_config"].update(loss="sparse_categorical_crossentropy",
                                                metrics=["accuracy"])
                data = json.dumps(config)
            target.writestr(item, data)
    with pytest.warns(UserWarning, match=r"Dropped loss, metrics from the saved compile"):
        loaded = keras.models.load_model(old)
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations)
    np.testing.assert_array_equal(loaded.sample(images, 2, seed=1), model.sample(images, 2, seed=1))


@pytest.mark.compat
def test_weights_file_holds_every_weight(tmp_path):
    model = tiny_model(2)
    model.build((None, 16, 16, 1))
    path = str(tmp_path / "model.weights.h5")
    model.save_weights(path)
    with h5py.File(path, "r") as f:
        count = []
        f.visititems(lambda name, obj: count.append(name) if isinstance(obj, h5py.Dataset)
                     else None)
    assert len(count) == len(model.weights)
    clone = tiny_model(2)
    clone.build((None, 16, 16, 1))
    clone.load_weights(path)
    images, _ = random_batch(2)
    np.testing.assert_array_equal(clone.sample(images, 2, seed=3), model.sample(images, 2, seed=3))


@pytest.mark.compat
def test_keras_file_written_by_version_0_1_still_loads():
    # Written by tfprobunet 0.1 (convolutions kept in nested lists) with Keras 3.15: the
    # blocks of today's layers keep the same weight paths, so such files load unchanged, on
    # older Keras versions too.
    path = os.path.join(DATA, "v0_1_model.keras")
    expected = np.load(os.path.join(DATA, "v0_1_model_outputs.npz"))
    loaded = keras.models.load_model(path)
    assert len(saved_arrays(path)) == len(loaded.weights)
    np.testing.assert_allclose(loaded(expected["images"]), expected["call"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loaded.sample(expected["images"], 3, seed=1), expected["sample"],
                               rtol=1e-5, atol=1e-6)


def _json_build_config(model):
    config = model.get_build_config()
    return json.loads(json.dumps(config))


@pytest.mark.compat
def test_build_config_is_plain_json_however_the_model_was_built():
    images, segmentations = random_batch(2)
    ways = {
        "sample": lambda m: m.sample(images, 2),
        "call": lambda m: m(images),
        "build_tensor_shape": lambda m: m.build(tf.TensorShape((None, 16, 16, 1))),
        "fit": lambda m: trained(m, images, segmentations),
    }
    for name, build in ways.items():
        model = tiny_model(2)
        build(model)
        shape = _json_build_config(model)["input_shape"]
        assert list(shape)[1:] in ([16, 16, 1], [None, None, 1]), (name, shape)
        clone = tiny_model(2)
        clone.build_from_config(model.get_build_config())
        assert len(clone.weights) == len(model.weights), name


def _served_call(export_dir, images):
    exported = tf.saved_model.load(export_dir)
    return exported.serve(tf.constant(images)).numpy()


@pytest.mark.compat
@pytest.mark.parametrize("state", ["built", "trained", "reloaded"])
def test_keras_export_serves_call(tmp_path, state):
    images, segmentations = random_batch(2)
    model = tiny_model(2)
    if state == "built":
        model.build((None, 16, 16, 1))
    else:
        trained(model, images, segmentations)
    if state == "reloaded":
        model.save(str(tmp_path / "model.keras"))
        model = keras.models.load_model(str(tmp_path / "model.keras"))
    export_dir = str(tmp_path / "export")
    model.export(export_dir, verbose=False)
    np.testing.assert_allclose(_served_call(export_dir, images), model(images), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.compat
def test_export_archive_of_a_reloaded_model(tmp_path):
    images, _ = random_batch(2)
    model = tiny_model(2)
    model.build((None, 16, 16, 1))
    model.save(str(tmp_path / "model.keras"))
    model = keras.models.load_model(str(tmp_path / "model.keras"))
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", model.call,
                         input_signature=[tf.TensorSpec((None, None, None, 1), tf.float32)])
    archive.write_out(str(tmp_path / "archive"), verbose=False)
    np.testing.assert_allclose(_served_call(str(tmp_path / "archive"), images), model(images),
                               rtol=1e-5, atol=1e-6)


LOAD_IN_A_FRESH_PROCESS = """
import json, sys
import numpy as np
import tfprobunet
first = tfprobunet.saving.load_model(sys.argv[1])  # needs no import of the class
import keras
from tfprobunet.models import ProbabilisticUNet
second = keras.saving.load_model(sys.argv[1])  # once the class is imported
print(json.dumps([[type(m).__name__, np.asarray(m.weights[0]).ravel()[:3].tolist()]
                  for m in (first, second)]))
"""


def test_a_model_file_loads_in_a_fresh_process_as_the_docs_say(tmp_path):
    """The docs once said `keras.models.load_model` restores `model.keras`: in a new process
    after `import tfprobunet` alone it fails ("Could not locate class 'ProbabilisticUNet'"),
    since the package imports model classes, which register them with Keras, at first use.
    The two ways the docs now give, `tfprobunet.saving.load_model` and Keras' once the class
    is imported, load the same weights."""
    import subprocess
    import sys

    model = tiny_model()
    model(random_batch()[0])
    path = str(tmp_path / "m.keras")
    model.save(path)
    run = subprocess.run([sys.executable, "-c", LOAD_IN_A_FRESH_PROCESS, path],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert run.returncode == 0, run.stderr[-2000:]
    for name, first in json.loads(run.stdout.splitlines()[-1]):
        assert name == type(model).__name__
        np.testing.assert_array_equal(first, np.asarray(model.weights[0]).ravel()[:3])
