"""Mixed precision: `mixed_float16` and `mixed_bfloat16` compute in low precision, keep the
variables, distributions, losses and metrics in float32, and save, load and export as float32."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfprobunet
from conftest import random_batch, tiny_model

POLICIES = ("mixed_float16", "mixed_bfloat16")


@pytest.fixture(scope="module", params=POLICIES)
def trained(request):
    """A tiny model built and trained for 16 steps under the policy; the global policy is
    float32 again for the test (a model keeps the policy it was built with)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(request.param)
    try:
        keras.utils.set_random_seed(0)
        model = tiny_model(3)
        images, segmentations = random_batch(3, batch=16, size=16)
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        model.build(images.shape)
        before = [v.numpy().copy() for v in model.trainable_variables]
        history = model.fit(images, segmentations, batch_size=1, epochs=1, verbose=0)
    finally:
        keras.config.set_dtype_policy(previous)
    return dict(policy=request.param, model=model, images=images[:4],
                segmentations=segmentations[:4], before=before, history=history)


@pytest.mark.compat
def test_a_train_step_is_finite_and_moves_every_float32_variable(trained):
    # float16's dynamic loss scale starts at 2**15 and halves at each step whose gradients
    # overflow, which is skipped: a few of the first steps leave the variables unchanged.
    model, history = trained["model"], trained["history"]
    for name in ("loss", "reconstruction", "kl"):
        assert np.all(np.isfinite(history.history[name])), (name, history.history[name])
    assert model.compute_dtype == trained["policy"].split("_")[1]
    assert {v.dtype for v in model.weights} == {"float32"}
    unmoved = [v.path for v, b in zip(model.trainable_variables, trained["before"])
               if np.array_equal(v.numpy(), b)]
    assert not unmoved


@pytest.mark.compat
def test_distributions_and_losses_stay_float32(trained):
    model, images = trained["model"], trained["images"]
    features, prior = model.features(images)
    assert features.dtype == trained["policy"].split("_")[1]
    assert prior.dtype == tf.float32
    terms = model.elbo_terms(images, trained["segmentations"])
    assert {t.dtype for t in terms.values()} == {tf.float32}
    logits = model.sample(images, 3, seed=1)
    assert logits.dtype == tf.float32 and np.all(np.isfinite(logits))
    assert model(images).dtype == tf.float32


def test_save_load_and_export_round_trip_in_float32(trained, tmp_path):
    model, images = trained["model"], trained["images"]
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)  # in a float32 session: the file's policy holds
    assert loaded.unet.compute_dtype == model.unet.compute_dtype
    assert {v.dtype for v in loaded.weights} == {"float32"}
    np.testing.assert_array_equal(loaded.sample(images, 3, seed=1), model.sample(images, 3,
                                                                               seed=1))
    export = tfprobunet.export_for_serving(model, str(tmp_path / "served"), "m")
    served = tf.saved_model.load(export)
    outputs = served.signatures["serving_default"](
        images=tf.constant(images), num_samples=tf.constant(3), seed=tf.constant([1, 0]))
    assert outputs["probabilities"].dtype == tf.float32
    assert np.all(np.isfinite(outputs["probabilities"]))
    # The SavedModel's graph rounds in another order than eager calls: equal up to the low
    # precision's rounding (in float32 they are exactly equal, tests/test_export.py).
    expected = tf.nn.softmax(model.sample(images, 3, seed=tf.constant([1, 0])))
    np.testing.assert_allclose(outputs["probabilities"], expected, atol=0.02)


def test_train_with_mixed_precision_keeps_it_in_the_file_and_restores_the_global_policy(tmp_path):
    from tfprobunet import training

    model, history = training.train(
        str(tmp_path), dataset="graders", epochs=1, steps_per_epoch=2, batch_size=2,
        image_size=16, num_examples=4, num_channels=[8, 16], convs_per_block=1, latent_dim=2,
        mixed_precision="mixed_bfloat16", verbose=0)
    assert keras.config.dtype_policy().name == "float32"
    assert np.isfinite(history.history["loss"]).all()
    loaded = keras.models.load_model(str(tmp_path / "model.keras"))
    assert loaded.compute_dtype == "bfloat16" and loaded.unet.compute_dtype == "bfloat16"
    assert {v.dtype for v in loaded.weights} == {"float32"}
    with pytest.raises(ValueError, match="`mixed_precision` must be one of"):
        training.train(str(tmp_path / "other"), dataset="graders", mixed_precision="float8")
