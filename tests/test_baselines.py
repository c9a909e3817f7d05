"""The paper's baselines (section 3): each one's defining property, and the round trips every
model of the package passes (config, `.keras`, one training step, `evaluate`)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfprobunet import data, evaluation, losses, serving, training
from tfprobunet.models import DropoutUNet, Image2ImageVAE, MHeads, UNetEnsemble
from conftest import random_batch

TINY = dict(num_classes=2, num_channels=[8, 16, 32], convs_per_block=1, seed=1)
BASELINES = {
    "dropout": lambda: DropoutUNet(**TINY, dropout_rate=0.5),
    "ensemble": lambda: UNetEnsemble(**TINY, num_members=3),
    "mheads": lambda: MHeads(**TINY, num_heads=3),
    "i2ivae": lambda: Image2ImageVAE(**TINY, latent_dim=2),
}


def _built(name):
    model = BASELINES[name]()
    model.build((None, 16, 16, 1))
    return model


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_config_round_trip(name):
    model = _built(name)
    config = model.get_config()
    again = type(model).from_config(config)
    assert again.get_config() == config
    with pytest.raises(ValueError, match="optimizer only"):
        model.compile(optimizer="adam", loss="mse")


@pytest.mark.compat
@pytest.mark.parametrize("name", sorted(BASELINES))
def test_keras_file_gives_the_same_samples(name, tmp_path):
    model = _built(name)
    images, _ = random_batch(batch=2, size=16)
    expected = model.sample(images, 4, seed=7).numpy()
    path = str(tmp_path / f"{name}.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is type(model)
    np.testing.assert_allclose(loaded.sample(images, 4, seed=7).numpy(), expected, atol=1e-6)
    assert loaded.sample(images, 4, seed=7).shape == (2, 4, 16, 16, 2)


@pytest.mark.compat
@pytest.mark.parametrize("name", sorted(BASELINES))
def test_one_training_step_moves_every_trainable_variable(name):
    model = _built(name)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    images, segmentations = random_batch(batch=4, size=16)
    before = [v.numpy().copy() for v in model.trainable_variables]
    history = model.fit(images, segmentations, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    for variable, old in zip(model.trainable_variables, before):
        assert not np.allclose(variable.numpy(), old), variable.path


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_evaluate_runs_on_it(name):
    source = data.load("graders", "test", image_size=16, num_examples=4)
    report = evaluation.evaluate(_built(name), source, sample_counts=(1, 4), verbose=0)
    assert report["num_images"] == 4
    assert all(np.isfinite(report["ged"][k]["mean"]) for k in ("1", "4"))


def test_dropout_unet_samples_differ_while_call_repeats():
    model = _built("dropout")
    images, _ = random_batch(batch=2, size=16)
    np.testing.assert_array_equal(model(images).numpy(), model(images).numpy())
    a, b = model.sample(images, 3).numpy(), model.sample(images, 3).numpy()
    assert not np.allclose(a, b)
    assert not np.allclose(a[:, 0], a[:, 1])  # the samples of one call differ too
    np.testing.assert_array_equal(model.sample(images, 3, seed=5).numpy(),
                                  model.sample(images, 3, seed=5).numpy())


def _record_inputs(layer):
    """Keep what `layer` receives, call by call (wraps the instance's `call`)."""
    received, call = [], layer.call

    def recording(inputs, *args, **kwargs):
        received.append(keras.ops.convert_to_numpy(inputs))
        return call(inputs, *args, **kwargs)

    layer.call = recording
    return received


@pytest.mark.parametrize("num_channels", [[8, 16], [8, 16, 32], [8, 16, 32, 64]])
def test_dropout_never_reaches_the_image(num_channels):
    """The image reaches the first convolution untouched at any depth; the inputs of the other
    encoder blocks and of every decoder block are dropped while sampling, up to
    `dropout_blocks` (3) of each."""
    model = DropoutUNet(**{**TINY, "num_channels": num_channels})
    model.build((None, 16, 16, 1))
    images, _ = random_batch(batch=2, size=16)
    images = images + 1.0  # no zero pixel, so a dropped one shows
    levels = len(num_channels)
    first = _record_inputs(model.unet.encoder.blocks[0][0])
    encoder = [_record_inputs(block[0]) for block in model.unet.encoder.blocks[1:]]
    decoder = [_record_inputs(block[0]) for block in model.unet.up_blocks]
    model.sample(images, 4, seed=3)
    np.testing.assert_array_equal(first[-1], np.repeat(images, 4, axis=0))
    zeros = [np.mean(inputs[-1] == 0.0) for inputs in encoder + decoder]
    # Every dropped block sees about half of its inputs zeroed (rate 0.5); an undropped one
    # would see none, as the first convolution's inputs are positive (ReLU features can be 0,
    # so the undropped level of a 4-level U-Net is checked against a pass without dropout).
    dropped = [i >= levels - 3 for i in range(1, levels)] + [True] * (levels - 1)
    assert all(z > 0.3 for z, d in zip(zeros, dropped) if d), zeros
    clean = model.unet.encoder(np.repeat(images, 4, axis=0))
    for i, d in enumerate(dropped[:levels - 1], start=1):
        if not d:
            pooled = keras.ops.convert_to_numpy(model.unet.encoder.pool(clean[i - 1]))
            np.testing.assert_array_equal(encoder[i - 1][-1], pooled)


def test_oracle_set_loss_hand_worked():
    # M = 3, epsilon = 0.05: the best head (1.0) weighs 0.95, the two others 0.025 each.
    per_head = tf.constant([[2.0, 1.0, 4.0], [3.0, 3.5, 0.5]])
    expected = [0.95 * 1.0 + 0.025 * (2.0 + 4.0), 0.95 * 0.5 + 0.025 * (3.0 + 3.5)]
    np.testing.assert_allclose(losses.oracle_set_loss(per_head, 0.05).numpy(), expected,
                               rtol=1e-6)
    np.testing.assert_allclose(losses.oracle_set_loss(per_head[:, :1], 0.05).numpy(),
                               [2.0, 3.0])


def test_m_heads_loss_is_the_oracle_set_loss_of_its_heads():
    model = _built("mheads")
    images, segmentations = random_batch(batch=2, size=16)
    heads = model.head_logits(images).numpy()  # (b, M, h, w, K)
    log_p = heads - np.log(np.exp(heads).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_p, segmentations[:, None, :, :, None], -1)[..., 0]
    per_head = -picked.sum(axis=(2, 3))  # (b, M), summed over pixels
    best = per_head.argmin(1)
    expected = [0.95 * per_head[i, best[i]] + 0.025 * (per_head[i].sum() - per_head[i, best[i]])
                for i in range(2)]
    np.testing.assert_allclose(model.loss_terms(images, segmentations)["loss"].numpy(),
                               expected, rtol=1e-5)
    # Sample i is head i mod M.
    samples = model.sample(images, 5).numpy()
    np.testing.assert_allclose(samples, heads[:, [0, 1, 2, 0, 1]], atol=1e-6)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_trains_under_mirrored_strategy(name):
    """Under MirroredStrategy (2 replicas) one step gives what it gives in one process: the same
    loss and weights for the deterministic M-Heads and ensemble, a finite loss for the others."""
    images, segmentations = random_batch(batch=4, size=16)
    initial = _built(name).get_weights()
    results = []
    for strategy in (tf.distribute.get_strategy(), training.make_strategy("mirrored")):
        with strategy.scope():
            model = _built(name)
            model.set_weights(initial)
            model.compile(optimizer=keras.optimizers.SGD(0.1))
        history = model.fit(images, segmentations, batch_size=4, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][0])
        results.append((history.history["loss"][0], model.get_weights()))
    if name in ("mheads", "ensemble"):  # deterministic
        (single, single_weights), (mirrored, mirrored_weights) = results
        assert mirrored == pytest.approx(single, rel=1e-4)
        for a, b in zip(single_weights, mirrored_weights):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_ensemble_members_start_apart_and_train_independently():
    model = _built("ensemble")
    kernels = [unet.encoder.blocks[0][0].kernel.numpy() for unet in model.unets]
    assert not np.allclose(kernels[0], kernels[1]) and not np.allclose(kernels[1], kernels[2])
    # Member 1 trained inside the ensemble equals the same U-Net trained alone.
    alone = UNetEnsemble(**TINY, num_members=1)
    alone.build((None, 16, 16, 1))
    alone.unets[0].set_weights(model.unets[1].get_weights())
    alone.heads[0].set_weights(model.heads[1].get_weights())
    images, segmentations = random_batch(batch=4, size=16)
    for m in (model, alone):
        m.compile(optimizer=keras.optimizers.SGD(0.01))
        m.fit(images, segmentations, batch_size=4, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(model.unets[1].get_weights() + model.heads[1].get_weights(),
                    alone.unets[0].get_weights() + alone.heads[0].get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(model.sample(images, 4)[:, 3].numpy(),
                               model.member_logits(images)[:, 0].numpy(), atol=1e-6)


def test_image2image_vae_prior_is_n01_and_posterior_sees_only_the_segmentation():
    model = _built("i2ivae")
    images, segmentations = random_batch(batch=2, size=16)
    other_images, _ = random_batch(batch=2, size=16, seed=9)
    kl = model.loss_terms(images, segmentations)["kl"].numpy()
    np.testing.assert_allclose(model.loss_terms(other_images, segmentations)["kl"].numpy(), kl,
                               rtol=1e-6)
    posterior = model.posterior_distribution(segmentations)
    mu, sigma = posterior.loc.numpy(), posterior.stddev().numpy()
    closed_form = np.sum(0.5 * (sigma**2 + mu**2 - 1.0) - np.log(sigma), axis=-1)
    np.testing.assert_allclose(kl, closed_form, rtol=1e-5, atol=1e-6)
    a = model.sample(images, 3, seed=4).numpy()
    np.testing.assert_array_equal(a, model.sample(images, 3, seed=4).numpy())
    assert not np.allclose(a[:, 0], a[:, 1])
    np.testing.assert_array_equal(model(images).numpy(), model(images).numpy())


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_exported_baseline_serves_the_default_signature_only(name, tmp_path):
    """A baseline has no features to compute once: its export has `serving_default`, which
    gives what `model.sample` gives for the same seed, under the export's limits."""
    model = _built(name)
    images, _ = random_batch(batch=2, size=16)
    path = serving.export_for_serving(model, str(tmp_path), name, max_samples=4)
    loaded = tf.saved_model.load(path)
    assert set(loaded.signatures) == {"serving_default"}
    seed = np.int32([3, 4])
    served = loaded.signatures["serving_default"](images=images, num_samples=np.int32(3),
                                                  seed=seed)
    expected = tf.nn.softmax(model.sample(images, 3, seed=tf.constant(seed))).numpy()
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, atol=1e-5)
    assert served["masks"].shape == (2, 3, 16, 16)
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_samples = 4"):
        loaded.signatures["serving_default"](images=images, num_samples=np.int32(5), seed=seed)
