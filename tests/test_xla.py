"""XLA (`jit_compile=True`) computes what TensorFlow's default execution computes: `sample` with
a seed and one training step give the same values within float32 round-off. Seeded draws name
their algorithm (Philox), which XLA would otherwise replace by another. Draws from a seed known
only at run time (the seed generator of the training step, the HPU-Net's per-level seeds) differ
under XLA, whose Philox is not TensorFlow's: the training step is compared without noise (the
posterior mean). Whether XLA is faster is measured by bench/xla.py, not here."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfprobunet
from conftest import random_batch, tiny_model

MODELS = {
    "probunet": lambda: tiny_model(2, seed=4),
    "ssn": lambda: tfprobunet.models.StochasticSegmentationNetwork(
        num_classes=2, num_channels=[8, 16], convs_per_block=1, rank=2, num_mc_samples=3,
        seed=4),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_sample_with_a_seed_is_the_same_under_xla(name):
    model = MODELS[name]()
    images, _ = random_batch(2, batch=2, size=16)
    model(images)

    def sample(x):
        return model.sample(x, 5, seed=7)

    default = tf.function(sample)(images).numpy()
    xla = tf.function(sample, jit_compile=True)(images).numpy()
    np.testing.assert_allclose(xla, default, atol=1e-4, rtol=1e-4)


def _one_step(jit_compile, images, segmentations):
    keras.utils.set_random_seed(0)
    model = tiny_model(2, use_posterior_mean=True)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=jit_compile)
    logs = model.train_on_batch(images, segmentations, return_dict=True)
    return logs, [v.numpy() for v in model.trainable_variables]


def test_one_training_step_is_the_same_under_xla():
    images, segmentations = random_batch(2, batch=4, size=16)
    logs, weights = _one_step(False, images, segmentations)
    xla_logs, xla_weights = _one_step(True, images, segmentations)
    assert set(logs) == set(xla_logs)
    for key in logs:
        np.testing.assert_allclose(xla_logs[key], logs[key], rtol=1e-4, atol=1e-4, err_msg=key)
    for before, after in zip(weights, xla_weights):
        # Adam's first step moves every weight by about the learning rate (1e-3): another
        # computation would move many of them by that much in another direction.
        np.testing.assert_allclose(after, before, atol=1e-5)
