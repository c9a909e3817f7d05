"""`tfprobunet.models.ProbabilisticUNet` (`models/probabilistic_unet.py`): the harness's checks and
the paper's model's own: its prior, posterior, f_comb, losses and sampling."""

import os
import tempfile
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfprobunet
from tfprobunet import losses, metrics
from tfprobunet.models.base import GED_SEED
from conftest import random_batch, tiny_model
from harness import run_model_test

# The harness's checks (harness.py) on a tiny model whose arguments are not the defaults.
TestProbabilisticUNet = run_model_test(
    tfprobunet.ProbabilisticUNet,
    dict(num_classes=4, num_channels=[4, 8, 8], convs_per_block=1, latent_dim=2, fcomb_layers=2,
         beta=0.5, reconstruction="mean", kl="sampled", use_posterior_mean=True,
         weight_decay=0.0, seed=3, ged_samples=4, ged_classes=[1, 3], fcomb_channels=5),
    input_shape=(2, 16, 16, 2), signatures=("serving_default", "features", "sample", "decode"),
    # With the posterior mean, GECO's training is deterministic too: a mirrored GECO run must
    # give one device's multiplier and moving average (harness.GECOModelTest). kappa is far
    # below the reconstruction (about log 4) and the rate high, for lambda to move (by ~0.6%)
    # in the harness's three small steps.
    geco_kwargs=dict(geco_target=0.1, geco_rate=5.0))


@pytest.mark.parametrize("num_classes,channels", [(2, 1), (5, 3)])
def test_shapes_of_every_public_method(num_classes, channels):
    model = tiny_model(num_classes)
    images, segmentations = random_batch(num_classes, batch=3, size=16, channels=channels)
    features, prior = model.features(images)
    assert features.shape == (3, 16, 16, 8)
    assert prior.batch_shape == (3,) and prior.event_shape == (2,)
    assert model.decode(features, np.zeros((3, 2), np.float32)).shape == (3, 16, 16, num_classes)
    assert model.decode(features, np.zeros((3, 4, 2), np.float32)).shape == (
        3, 4, 16, 16, num_classes)
    assert model.sample(images, 4).shape == (3, 4, 16, 16, num_classes)
    assert model(images).shape == (3, 16, 16, num_classes)
    assert model.predict(images, verbose=0).shape == (3, 16, 16, num_classes)
    assert model.reconstruct(images, segmentations).shape == (3, 16, 16, num_classes)
    assert model.reconstruct(images, segmentations, use_posterior_mean=False).shape == (
        3, 16, 16, num_classes)
    assert model.posterior_distribution(images, segmentations).event_shape == (2,)
    terms = model.elbo_terms(images, segmentations)
    assert {k: v.shape for k, v in terms.items()} == {k: (3,) for k in ("loss", "reconstruction",
                                                                         "kl")}


def test_sample_reuses_features_and_decodes_prior_draws():
    model = tiny_model(3)
    images, _ = random_batch(3, batch=2)
    features, prior = model.features(images)
    seed = tf.constant([7, 11], tf.int32)
    # The same stateless draw the model makes: z = loc + scale * N(0, 1) with this seed.
    noise = tf.random.stateless_normal((2, 5, 2), seed=seed)
    z = prior.loc[:, None] + prior.stddev()[:, None] * noise
    np.testing.assert_allclose(model.sample(images, 5, seed=seed), model.decode(features, z),
                               rtol=1e-5, atol=1e-6)
    # call() decodes the prior mean.
    np.testing.assert_allclose(model(images), model.decode(features, prior.loc), rtol=1e-6)


def test_sample_runs_the_unet_once(monkeypatch):
    model = tiny_model()
    images, _ = random_batch()
    model(images)
    calls = []
    original = model.unet.call
    monkeypatch.setattr(model.unet, "call", lambda x: calls.append(1) or original(x))
    model.sample(images, 16)
    assert len(calls) == 1


@pytest.mark.parametrize("fcomb_channels,width", [(None, 8), (24, 24)])
def test_fcomb_width_is_the_first_unet_level_unless_given(fcomb_channels, width):
    model = tfprobunet.ProbabilisticUNet(num_classes=3, num_channels=[8, 16], convs_per_block=1,
                                         latent_dim=2, fcomb_layers=2,
                                         fcomb_channels=fcomb_channels)
    model.build((None, 8, 8, 1))
    hidden = [layer.kernel.shape for layer in model.fcomb.hidden]
    # The first 1x1 conv sees the U-Net's last features (8) and z (2).
    assert hidden == [(8 + 2, width), (width, width)]
    assert model.fcomb.logits.kernel.shape == (width, 3)


def test_the_trainable_variables_are_those_of_the_four_parts():
    """Every one gets a gradient and moves in a step (the harness); these are all of them."""
    model = tiny_model(3)
    model.build((None, 16, 16, 1))
    assert {v.path.split("/")[1] for v in model.trainable_variables} == {
        "unet", "prior", "posterior", "fcomb"}


def test_train_step_loss_matches_the_terms_and_weight_decay():
    model = tiny_model(2, use_posterior_mean=True)
    images, segmentations = random_batch(2, batch=4)
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    terms = model.elbo_terms(images, segmentations)
    decay = sum(float(loss) for loss in model.losses)
    assert decay > 0
    logs = model.evaluate(images, segmentations, batch_size=4, verbose=0, return_dict=True)
    np.testing.assert_allclose(logs["reconstruction"], np.mean(terms["reconstruction"]), rtol=1e-5)
    np.testing.assert_allclose(logs["kl"], np.mean(terms["kl"]), rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], np.mean(terms["loss"]) + decay, rtol=1e-5)
    assert set(logs) == {"loss", "reconstruction", "kl"}


def test_weight_decay_is_half_the_coefficient_times_the_squared_kernels():
    """As the official training script: L2 on kernels only, `weight_decay * tf.nn.l2_loss(w)`
    summed over kernels; no bias is decayed, nor f_comb's logits kernel (official
    `Conv1x1Decoder`: `regularizers=None` for the last 1x1 convolution)."""
    model = tiny_model(2, weight_decay=0.01)
    model.build((None, 16, 16, 1))
    kernels = [v for v in model.weights
               if v.path.endswith("/kernel") and "fcomb/logits" not in v.path]
    biases = [v for v in model.weights if v.path.endswith("/bias")]
    assert len(kernels) == len(biases) - 1 > 0
    by_hand = 0.01 / 2 * sum(np.sum(np.square(v.numpy().astype(np.float64))) for v in kernels)
    np.testing.assert_allclose(sum(float(loss) for loss in model.losses), by_hand, rtol=1e-5)
    for bias in biases:  # moving a bias leaves the decay term as it was
        bias.assign(bias.numpy() + 1.0)
    np.testing.assert_allclose(sum(float(loss) for loss in model.losses), by_hand, rtol=1e-5)
    assert not tiny_model(2, weight_decay=0.0).losses


def test_random_path_is_default_and_deterministic_path_is_documented():
    images, segmentations = random_batch(2, batch=2)
    random_model = tiny_model(2)
    assert random_model.use_posterior_mean is False
    a = random_model.elbo_terms(images, segmentations)["reconstruction"]
    b = random_model.elbo_terms(images, segmentations)["reconstruction"]
    assert not np.allclose(a, b)
    mean_model = tiny_model(2, use_posterior_mean=True)
    np.testing.assert_array_equal(mean_model.elbo_terms(images, segmentations)["reconstruction"],
                                  mean_model.elbo_terms(images, segmentations)["reconstruction"])


BAD_INPUTS = [
    ("rank", np.zeros((16, 16, 1), np.float32), None, "rank 4"),
    ("channels", np.zeros((2, 16, 16, 3), np.float32), None, "must have 1 channel"),
    ("divisible", np.zeros((2, 18, 16, 1), np.float32), None, "divisible by .* = 4.*height=18"),
    ("dtype", np.zeros((2, 16, 16, 1), np.int32), None, "must be float"),
    ("nan", np.full((2, 16, 16, 1), np.nan, np.float32), None, "NaN or Inf"),
    ("label", np.zeros((2, 16, 16, 1), np.float32), np.full((2, 16, 16), 7, np.int32),
     r"labels in \[0, 2\] \(num_classes=3\) or 255"),
    ("label_float", np.zeros((2, 16, 16, 1), np.float32), np.zeros((2, 16, 16), np.float32),
     "integer class labels"),
    ("label_shape", np.zeros((2, 16, 16, 1), np.float32), np.zeros((2, 8, 8), np.int32),
     "same height and width"),
]


@pytest.mark.parametrize("name,images,segmentations,message", BAD_INPUTS,
                         ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_raises_a_clear_error(name, images, segmentations, message):
    model = tiny_model(3)
    model.build((None, 16, 16, 1))
    with pytest.raises(ValueError, match=message):
        if segmentations is None:
            model.sample(images, 2)
        else:
            model.reconstruct(images, segmentations)


@pytest.mark.parametrize("shape, hint", [
    ((2, 16, 16), r"add a channel axis for grey images \(b, h, w\): `images\[..., None\]`"),
    ((16, 16, 1), r"add a batch axis for one image: `image\[None\]`"),
    ((16, 16), r"add a batch and a channel axis for one grey image"),
])
def test_the_shape_hint_names_the_missing_axis(shape, hint):
    model = tiny_model(2)
    model.build((None, 16, 16, 1))
    with pytest.raises(ValueError, match=rf"Received shape \({', '.join(map(str, shape))}.*{hint}"):
        model.sample(np.zeros(shape, np.float32), 2)


def test_uint8_images_are_scaled_as_the_loaders_scale_them():
    model = tiny_model(2)
    model.build((None, 16, 16, 1))
    pixels = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 1)).astype(np.uint8)
    scaled = pixels.astype(np.float32) / 255
    np.testing.assert_allclose(model.sample(pixels, 3, seed=4), model.sample(scaled, 3, seed=4),
                               atol=1e-6)
    np.testing.assert_allclose(model(pixels), model(scaled), atol=1e-6)
    np.testing.assert_allclose(model.features(pixels)[0], model.features(scaled)[0], atol=1e-6)


def test_building_from_images_of_unknown_channels_says_how_to_decode_them():
    model = tiny_model(2)
    with pytest.raises(ValueError, match=r"input_shape=\(8, None, None, None\).*"
                                         r"decode_png\(data, channels=1\)"):
        model.build((8, None, None, None))


IN_FIT = [b for b in BAD_INPUTS if b[0] in ("nan", "label", "channels")]


@pytest.mark.parametrize("name,images,segmentations,message", IN_FIT, ids=[b[0] for b in IN_FIT])
def test_bad_input_inside_fit_fails_with_the_same_message(name, images, segmentations, message):
    model = tiny_model(3)
    model.build((None, 16, 16, 1))
    model.compile(optimizer="adam")
    if segmentations is None:
        segmentations = np.zeros(images.shape[:3], np.int32)
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match=message):
        model.fit(images, segmentations, batch_size=2, epochs=1, verbose=0)


def test_constructor_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        tfprobunet.ProbabilisticUNet(num_classes=1)
    with pytest.raises(ValueError, match="reconstruction"):
        tfprobunet.ProbabilisticUNet(reconstruction="max")
    with pytest.raises(ValueError, match="`kl` must be one of"):
        tfprobunet.ProbabilisticUNet(kl="mc")
    with pytest.raises(ValueError, match="num_channels"):
        tfprobunet.ProbabilisticUNet(num_channels=[32, 0])
    with pytest.raises(ValueError, match=r"`fcomb_channels` must be None .*Received: "
                                         r"fcomb_channels=0"):
        tfprobunet.ProbabilisticUNet(fcomb_channels=0)
    model = tiny_model()
    with pytest.raises(ValueError, match="num_samples"):
        model.sample(np.zeros((1, 16, 16, 1), np.float32), 0)


def test_summary_lists_the_four_parts():
    model = tiny_model()
    model.build((None, 16, 16, 1))
    lines = []
    model.summary(print_fn=lambda line, **_: lines.append(line))
    text = "\n".join(lines)
    for part in ("unet", "prior", "posterior", "fcomb"):
        assert part in text


def test_graph_mode_checks_sizes_and_values_known_only_at_run_time():
    model = tiny_model(3)
    model.build((None, 16, 16, 1))
    sample = tf.function(lambda images: model.sample(images, 2, seed=0),
                         input_signature=[tf.TensorSpec((None, None, None, 1), tf.float32)])
    assert sample(np.zeros((1, 16, 16, 1), np.float32)).shape == (1, 2, 16, 16, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="divisible by 4"):
        sample(np.zeros((1, 18, 16, 1), np.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or Inf"):
        sample(np.full((1, 16, 16, 1), np.inf, np.float32))


def test_val_ged_in_history_equals_the_numpy_metric_on_the_same_samples():
    num_classes, count = 3, 3
    model = tiny_model(num_classes, ged_samples=4)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    rng = np.random.default_rng(0)
    images = rng.random((4, 16, 16, 1), dtype=np.float32)
    annotations = rng.integers(0, num_classes, (4, count, 16, 16)).astype(np.int32)
    weights = rng.random((4, count)).astype(np.float32)
    train = tf.data.Dataset.from_tensor_slices((images, annotations[:, 0])).batch(2)
    # Validation on single segmentations has no ged.
    history = model.fit(train, epochs=1, verbose=0, validation_data=train)
    assert "val_ged" not in history.history
    for with_weights in (True, False):
        val = (images, annotations, weights) if with_weights else (images, annotations)
        history = model.fit(train, epochs=1, verbose=0,
                            validation_data=tf.data.Dataset.from_tensor_slices(val).batch(2))
        expected = []
        for start in (0, 2):
            batch = slice(start, start + 2)
            samples = np.argmax(model.sample(images[batch], 4, seed=GED_SEED), axis=-1)
            expected.extend(metrics.generalized_energy_distance(
                samples, annotations[batch], num_classes,
                annotation_weights=weights[batch] if with_weights else None))
        assert history.history["val_ged"][0] == pytest.approx(np.mean(expected), abs=1e-5)
        assert {"val_loss", "val_reconstruction", "val_kl"} <= set(history.history)
        assert "ged" not in history.history  # training logs only the loss terms
    # Once Keras' relaxed trace has seen both kinds, labels arrive with unknown rank; single
    # segmentations then count as one annotation each.
    step = tf.function(model.test_step, input_signature=[(
        tf.TensorSpec([None, 16, 16, 1]), tf.TensorSpec(None, tf.int32))])
    for metric in model.metrics:
        metric.reset_state()
    logs = step((images[:2], annotations[:2, 0]))
    samples = np.argmax(model.sample(images[:2], 4, seed=GED_SEED), axis=-1)
    expected = metrics.generalized_energy_distance(samples, annotations[:2, :1], num_classes)
    assert np.isfinite(logs["loss"]) and float(logs["ged"]) == pytest.approx(np.mean(expected),
                                                                             abs=1e-5)


def test_evaluate_on_annotations_checks_them():
    model = tiny_model(2)
    model.compile(optimizer="adam")
    images, _ = random_batch(2)
    with pytest.raises(Exception, match=r"`annotations` must hold labels in \[0, 1\]"):
        model.evaluate(images, np.full((2, 3, 16, 16), 5, np.int32), verbose=0)
    with pytest.raises(Exception, match=r"same height and width: \(b, A, h, w\)"):
        model.evaluate(images, np.zeros((2, 3, 8, 8), np.int32), verbose=0)


@pytest.mark.compat
def test_keras_callbacks_know_that_lower_val_ged_is_better():
    model = tiny_model(2, ged_samples=2)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    images, segmentations = random_batch(2, batch=4)
    annotations = np.stack([segmentations, 1 - segmentations], axis=1)
    stopper = keras.callbacks.EarlyStopping(monitor="val_ged", patience=5)
    checkpoint = keras.callbacks.ModelCheckpoint(
        os.path.join(tempfile.mkdtemp(), "best.keras"), monitor="val_ged", save_best_only=True)
    history = model.fit(images, segmentations, batch_size=2, epochs=2, verbose=0,
                        validation_data=(images, annotations), callbacks=[stopper, checkpoint])
    assert len(history.history["val_ged"]) == 2
    for callback in (stopper, checkpoint):
        assert callback.monitor_op(0.1, 0.2) and not callback.monitor_op(0.2, 0.1)


def test_callbacks_passed_positionally_also_learn_that_lower_val_ged_is_better():
    """`fit` reads its arguments bound to `keras.Model.fit`'s signature, not by position in
    `*args`: callbacks given as the sixth positional argument get the same `mode`."""
    model = tiny_model(2, ged_samples=2)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    images, segmentations = random_batch(2, batch=4)
    annotations = np.stack([segmentations, 1 - segmentations], axis=1)
    stopper = keras.callbacks.EarlyStopping(monitor="val_ged", patience=5)
    # x, y, batch_size, epochs, verbose, callbacks, validation_split, validation_data
    model.fit(images, segmentations, 2, 1, 0, [stopper], 0.0, (images, annotations))
    assert stopper.monitor_op(0.1, 0.2) and not stopper.monitor_op(0.2, 0.1)
    with pytest.raises(TypeError):
        model.fit(images, segmentations, epochs=1, verbose=0, no_such_argument=1)


def test_fit_on_a_dataset_does_not_warn_about_shuffle():
    model = tiny_model(2)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    images, segmentations = random_batch(2, batch=4)
    dataset = tf.data.Dataset.from_tensor_slices((images, segmentations)).batch(2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(dataset, epochs=1, verbose=0)
    assert not [w for w in caught if "shuffle" in str(w.message)]


def test_geco_multiplier_follows_the_hand_computed_update():
    """The reference's rule (tfprobunet.models.geco): the first step's moving average is the
    batch's reconstruction itself, c = average - kappa * pixels per image, and SGD at learning
    rate r moves v by r * rate * c * 2 * softplus(v) * sigmoid(v), lambda = softplus(v)**2."""
    images, segmentations = random_batch(3, batch=4, seed=2)
    kappa, rate, learning_rate = 0.5, 0.1, 0.5
    model = tiny_model(3, use_posterior_mean=True, geco_target=kappa, geco_rate=rate)
    model.build(images.shape)
    v0 = np.log(np.e - 1.0)  # lambda = softplus(v0)**2 = 1
    assert float(model.geco.multiplier) == pytest.approx(v0, rel=1e-6)
    # The step's reconstruction is the one of the weights before it (posterior mean: exact).
    reconstruction = float(np.mean(model.elbo_terms(images, segmentations)["reconstruction"]))
    model.compile(optimizer=keras.optimizers.SGD(learning_rate))
    logs = model.fit(images, segmentations, batch_size=4, epochs=1, verbose=0,
                     shuffle=False).history
    assert float(model.geco.average) == pytest.approx(reconstruction, rel=1e-5)
    c = reconstruction - kappa * 16 * 16  # 256 valid pixels per image
    softplus, sigmoid = np.log1p(np.exp(v0)), 1.0 / (1.0 + np.exp(-v0))
    v1 = v0 + learning_rate * rate * c * 2.0 * softplus * sigmoid
    assert float(model.geco.multiplier) == pytest.approx(v1, rel=1e-5)
    assert logs["geco_lambda"][0] == pytest.approx(np.log1p(np.exp(v1)) ** 2, rel=1e-5)
    assert (logs["geco_lambda"][0] > 1.0) == (c > 0)


def test_geco_step_is_lambda_times_reconstruction_plus_beta_kl():
    """With lambda = 1 the first GECO step is the beta-ELBO's; with lambda = 0 only the KL moves
    the weights, so the U-Net and f_comb (which only the reconstruction reaches) stay put
    (without weight decay, whose gradient would move them too)."""
    images, segmentations = random_batch(3, batch=4, seed=3)
    reference = tiny_model(3, use_posterior_mean=True, weight_decay=0.0)
    reference.build(images.shape)
    initial = [v.numpy() for v in reference.trainable_weights]

    def step(model, v=None):
        model.build(images.shape)
        weights = [w for w in model.trainable_weights if "geco" not in w.path]
        for variable, value in zip(weights, initial, strict=True):
            variable.assign(value)
        if v is not None:
            model.geco.multiplier.assign(v)
        model.compile(optimizer=keras.optimizers.SGD(1e-3))
        model.fit(images, segmentations, batch_size=4, epochs=1, verbose=0, shuffle=False)
        return weights

    plain = step(tiny_model(3, use_posterior_mean=True, weight_decay=0.0))
    geco = step(tiny_model(3, use_posterior_mean=True, weight_decay=0.0, geco_target=0.1),
                np.log(np.e - 1.0))  # lambda = 1
    for a, b in zip(plain, geco, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
    # softplus(-100)**2 underflows to 0 in float32: lambda = 0.
    kl_only = step(tiny_model(3, use_posterior_mean=True, weight_decay=0.0, geco_target=0.1),
                   -100.0)
    for v, start in zip(kl_only, initial, strict=True):
        moved = not np.array_equal(v.numpy(), start)
        assert moved == ("prior" in v.path or "posterior" in v.path), v.path


def test_geco_arguments_are_checked():
    for target in (0.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"`geco_target` must be a finite number > 0"):
            tiny_model(geco_target=target)
    with pytest.raises(ValueError, match="`geco_rate` must be a finite number > 0"):
        tiny_model(geco_target=0.1, geco_rate=-1.0)


def test_beta_warmup_ramps_the_kl_weight_from_zero():
    """The first step of a warm-up (KL weight 0) is the step of a model with beta = 0; after k
    of n warm-up steps the weight is beta * k / n."""
    images, segmentations = random_batch(3, batch=4, seed=4)
    initial = None
    models = {}
    for name, kwargs in (("warmup", dict(beta=2.0, beta_warmup_steps=4)),
                         ("beta0", dict(beta=0.0))):
        model = tiny_model(3, use_posterior_mean=True, weight_decay=0.0, **kwargs)
        model.build(images.shape)
        if initial is None:
            initial = [v.numpy() for v in model.trainable_weights]
        for variable, value in zip(model.trainable_weights, initial):
            variable.assign(value)
        model.compile(optimizer=keras.optimizers.SGD(1e-3))
        model.fit(images, segmentations, batch_size=4, epochs=1, verbose=0, shuffle=False)
        models[name] = model
    for a, b in zip(models["warmup"].trainable_weights, models["beta0"].trainable_weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert float(models["warmup"]._kl_weight()) == pytest.approx(2.0 * 1 / 4)
    models["warmup"].fit(images, segmentations, batch_size=2, epochs=2, verbose=0)
    assert float(models["warmup"]._kl_weight()) == pytest.approx(2.0)  # 5 steps >= 4
    with pytest.raises(ValueError, match="`beta_warmup_steps` must be an integer >= 0"):
        tiny_model(beta_warmup_steps=-1)


def test_fit_traces_the_training_step_once(monkeypatch):
    """The optimizer's variables exist before the first step: creating them inside it made
    TensorFlow trace the whole step twice."""
    traces = []
    train_step = tfprobunet.ProbabilisticUNet.train_step

    def counting(self, data):
        traces.append(1)  # Python runs only while TensorFlow traces
        return train_step(self, data)

    monkeypatch.setattr(tfprobunet.ProbabilisticUNet, "train_step", counting)
    images, segmentations = random_batch(2, batch=8)
    dataset = tf.data.Dataset.from_tensor_slices((images, segmentations)).batch(4).repeat()
    model = tiny_model(2)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(dataset, epochs=2, steps_per_epoch=2, verbose=0)
    assert len(traces) == 1
    assert int(model.optimizer.iterations) == 4


def test_energy_term_is_the_energy_score_of_prior_samples():
    """`energy` equals `losses.energy_score` of `energy_samples` draws from the prior, decoded
    with the public `features` / `decode` from the same noise, and `loss` adds it times
    `energy_weight` to the beta-ELBO."""
    images, segmentations = random_batch(2, batch=3, seed=6)
    model = tiny_model(2, use_posterior_mean=True, energy_weight=50.0, energy_samples=3)
    model.build(images.shape)
    state = model.seed_generator.state.numpy()
    terms = model.loss_terms(images, segmentations)
    model.seed_generator.state.assign(state)
    noise = keras.random.normal((3, 3, model.latent_dim), seed=model.seed_generator)
    features, prior = model.features(images)
    z = prior.loc[:, None] + prior.stddev()[:, None] * noise
    probabilities = tf.nn.softmax(model.decode(features, z))
    expected = losses.energy_score(probabilities, segmentations, classes=[1])
    np.testing.assert_allclose(terms["energy"], expected, rtol=1e-5)
    np.testing.assert_allclose(
        terms["loss"], terms["reconstruction"] + terms["kl"] + 50.0 * terms["energy"], rtol=1e-5)


def test_energy_term_trains_the_prior_net():
    """With beta = 0 and the posterior mean decoded, only the energy term reaches the prior net:
    a step moves it with `energy_weight` > 0 and leaves it with 0. `energy` is logged."""
    images, segmentations = random_batch(2, batch=4, seed=7)
    moved = {}
    for weight in (0.0, 10.0):
        model = tiny_model(2, use_posterior_mean=True, weight_decay=0.0, beta=0.0,
                           energy_weight=weight)
        model.build(images.shape)
        before = [v.numpy() for v in model.prior.trainable_weights]
        model.compile(optimizer=keras.optimizers.SGD(1e-2))
        history = model.fit(images, segmentations, batch_size=4, epochs=1, verbose=0)
        moved[weight] = any(not np.array_equal(v.numpy(), b)
                            for v, b in zip(model.prior.trainable_weights, before))
        assert ("energy" in history.history) == bool(weight)
    assert moved == {0.0: False, 10.0: True}


def test_energy_arguments_are_checked_and_saved():
    with pytest.raises(ValueError,
                       match="`energy_weight` must be a finite number >= 0.*Received: "
                             "energy_weight=-1"):
        tiny_model(energy_weight=-1.0)
    with pytest.raises(ValueError, match="`energy_samples` must be an integer >= 2.*Received: 1"):
        tiny_model(energy_weight=1.0, energy_samples=1)
    model = tiny_model(energy_weight=5.0, energy_samples=3)
    restored = type(model).from_config(model.get_config())
    assert (restored.energy_weight, restored.energy_samples) == (5.0, 3)
    assert restored.TERMS == ("loss", "reconstruction", "kl", "energy")
    assert tiny_model().TERMS == ("loss", "reconstruction", "kl")
