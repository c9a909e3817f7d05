"""The Stochastic Segmentation Network (`models/ssn.py`, `losses.ssn_loss`): its samples follow
N(mean, P P^T + diag(d)), its loss is the references' Monte Carlo log-likelihood, ignored
pixels change nothing. The checks every model passes are the harness's (one line below)."""

import csv
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfprobunet import cli, losses
from tfprobunet.models import StochasticSegmentationNetwork
from tfprobunet.models import ssn as ssn_lib
from conftest import random_batch
from harness import run_model_test

TestStochasticSegmentationNetwork = run_model_test(
    StochasticSegmentationNetwork,
    dict(num_classes=3, num_channels=[4, 8, 8], convs_per_block=1, rank=2, num_mc_samples=4,
         weight_decay=1e-4, seed=1, ged_samples=4, ged_classes=[1, 2]),
    input_shape=(2, 16, 16, 2), deterministic_training=False,
    signatures=("serving_default", "features", "sample"))

SMALL = dict(num_channels=[4, 8, 8], convs_per_block=1, seed=1)
IGNORE = losses.IGNORE_LABEL


def _numpy_ssn_loss(labels, logit_samples):
    """`losses.ssn_loss` transcribed: log softmax, the labelled class, summed over valid
    pixels, then minus the log-mean-exp over samples (shifted by the maximum)."""
    shifted = logit_samples - logit_samples.max(-1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    valid = labels != IGNORE
    safe = np.where(valid, labels, 0)
    picked = np.take_along_axis(log_softmax, safe[:, None, :, :, None], axis=-1)[..., 0]
    log_likelihood = (picked * valid[:, None]).sum((2, 3))  # (b, N)
    top = log_likelihood.max(1)
    log_mean = top + np.log(np.exp(log_likelihood - top[:, None]).mean(1))
    return -log_mean


def test_loss_of_a_hand_worked_case():
    """One image of 2 pixels, both labelled 0, 2 samples. Sample 1 has logits (0, 0) at both
    pixels: log p = 2 log(1/2), p = 1/4. Sample 2 has (log 3, 0): p = (3/4)^2 = 9/16. The loss
    is -log((1/4 + 9/16) / 2) = -log(13/32) = log(32/13) = 0.90078..."""
    logits = np.zeros((1, 2, 1, 2, 2), np.float32)
    logits[0, 1, :, :, 0] = math.log(3.0)
    loss = losses.ssn_loss(np.zeros((1, 1, 2), np.int32), logits).numpy()
    np.testing.assert_allclose(loss, [math.log(32 / 13)], rtol=1e-6)
    assert math.log(32 / 13) == pytest.approx(0.900786, abs=1e-6)


@pytest.mark.parametrize("scale, size", [(1.0, 5), (20.0, 64)])
def test_loss_equals_a_numpy_transcription(scale, size):
    """Random logits (3 classes, some pixels ignored); at 64 x 64 with large logits each
    sample's log-likelihood is thousands of nats, where exp alone underflows to 0."""
    rng = np.random.default_rng(0)
    logits = (scale * rng.standard_normal((3, 4, size, size + 1, 3))).astype(np.float32)
    labels = rng.integers(0, 3, (3, size, size + 1)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.2] = IGNORE
    expected = _numpy_ssn_loss(labels, logits.astype(np.float64))
    if scale > 1:
        assert expected.min() > 1000  # exp(-loglikelihood) is 0 in float32 and float64
    loss = losses.ssn_loss(labels, logits).numpy()
    assert np.all(np.isfinite(loss))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_ignored_pixels_do_not_change_the_loss():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((2, 3, 6, 6, 2)).astype(np.float32)
    labels = rng.integers(0, 2, (2, 6, 6)).astype(np.int32)
    ignored = rng.random(labels.shape) < 0.3
    labels[ignored] = IGNORE
    changed = logits.copy()
    changed[np.broadcast_to(ignored[:, None], changed.shape[:4])] = 1e4  # absurd logits there
    before = losses.ssn_loss(labels, logits).numpy()
    np.testing.assert_array_equal(losses.ssn_loss(labels, changed).numpy(), before)
    # ... whereas a valid pixel's logits do change it.
    changed = logits.copy()
    (i, j, k), = [np.argwhere(~ignored)[0]]
    changed[i, :, j, k, 0] += 5.0  # one class: adding to all would change no softmax
    assert not np.allclose(losses.ssn_loss(labels, changed).numpy(), before)


def test_samples_follow_the_low_rank_normal():
    """20000 draws over a 2 x 2 image with K = 2 and rank 2 (8 logits): their mean and
    covariance match the mean and `P P^T + diag(d)` (TFP's covariance of the same parameters,
    itself checked against NumPy), entry by entry within 5 standard errors: for n Gaussian
    draws the sample covariance's entry (i, j) has variance (S_ij^2 + S_ii S_jj) / n, the
    sample mean's entry i, S_ii / n."""
    rng = np.random.default_rng(2)
    mean = rng.standard_normal((1, 2, 2, 2)).astype(np.float32)
    diagonal = rng.uniform(0.1, 0.5, (1, 2, 2, 2)).astype(np.float32)
    factor = rng.standard_normal((1, 2, 2, 2, 2)).astype(np.float32)
    model = StochasticSegmentationNetwork(num_classes=2, rank=2, **SMALL)
    n = 20000
    draws = model.sample_logits(mean, diagonal, factor, n, seed=3).numpy()
    assert draws.shape == (1, n, 2, 2, 2)
    flat = draws[0].reshape(n, 8).astype(np.float64)

    flat_factor = factor.reshape(8, 2)
    covariance = flat_factor @ flat_factor.T + np.diag(diagonal.reshape(8))
    distribution = ssn_lib.low_rank_distribution(mean, diagonal, factor)
    np.testing.assert_allclose(distribution.covariance().numpy()[0], covariance, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(distribution.mean().numpy()[0], mean.reshape(8))

    error = np.abs(flat.mean(0) - mean.reshape(8))
    assert np.all(error < 5 * np.sqrt(np.diag(covariance) / n)), error
    variances = np.diag(covariance)
    standard_error = np.sqrt((covariance**2 + np.outer(variances, variances)) / n)
    empirical = np.cov(flat, rowvar=False)
    assert np.all(np.abs(empirical - covariance) < 5 * standard_error), (
        np.abs(empirical - covariance) / standard_error).max()
    # The factor's correlations are there to find: without them the check would fail.
    assert np.any(np.abs(np.diag(variances) - covariance) > 10 * standard_error)


def test_the_models_loss_is_ssn_loss_of_its_own_samples():
    """The training loss: `num_mc_samples` draws of `sample_logits` from the masked parameters
    (the seed generator rewound between the two, so both draw the same noise)."""
    model = StochasticSegmentationNetwork(num_classes=3, rank=3, num_mc_samples=5, **SMALL)
    images, segmentations = random_batch(num_classes=3, batch=2, size=8)
    segmentations[:, :2] = IGNORE
    model.build(images.shape)
    state = model.seed_generator.state.numpy()
    loss = model.loss_terms(images, segmentations)["loss"].numpy()
    model.seed_generator.state.assign(state)
    parameters = model.distribution_parameters(images, segmentations)
    samples = model.sample_logits(*parameters, 5).numpy()
    np.testing.assert_allclose(loss, _numpy_ssn_loss(segmentations, samples), rtol=1e-5)
    assert np.all(loss > 0)


def test_ignored_pixels_get_a_zero_factor_and_the_epsilon_diagonal():
    """As the PyTorch reference outside its region of interest; the mean is not masked, and
    the distribution's covariance has rows `epsilon * e_i` for the ignored logits."""
    model = StochasticSegmentationNetwork(num_classes=2, rank=2, **SMALL)
    images, segmentations = random_batch(batch=2, size=4)
    ignored = np.zeros(segmentations.shape, bool)
    ignored[0, 1, 2] = ignored[1, 3, :] = True
    segmentations[ignored] = IGNORE
    mean, diagonal, factor = (t.numpy() for t in model.distribution_parameters(images))
    masked = [t.numpy() for t in model.distribution_parameters(images, segmentations)]
    np.testing.assert_array_equal(masked[0], mean)
    np.testing.assert_array_equal(masked[1][~ignored], diagonal[~ignored])
    np.testing.assert_array_equal(masked[2][~ignored], factor[~ignored])
    assert np.all(masked[1][ignored] == np.float32(ssn_lib.EPSILON))
    assert np.all(masked[2][ignored] == 0) and np.all(factor[ignored] != 0)
    assert np.all(diagonal >= np.float32(ssn_lib.EPSILON))
    covariance = model.distribution(images, segmentations).covariance().numpy()
    rows = np.repeat(ignored.reshape(2, -1), 2, axis=1)  # pixel-major, class-minor
    for b in range(2):
        block = covariance[b][rows[b]]
        np.testing.assert_allclose(block[:, rows[b]], ssn_lib.EPSILON * np.eye(rows[b].sum()),
                                   atol=1e-12)
        assert np.all(block[:, ~rows[b]] == 0)


def test_call_gives_the_mean_and_samples_scatter_around_it():
    model = StochasticSegmentationNetwork(num_classes=2, rank=2, **SMALL)
    images, _ = random_batch(batch=1, size=8)
    mean = model(images).numpy()
    np.testing.assert_array_equal(model.distribution_parameters(images)[0], mean)
    samples = model.sample(images, 400, seed=0).numpy()
    spread = np.sqrt(model.distribution(images).variance().numpy()).reshape(mean.shape)
    assert np.all(np.abs(samples.mean(1) - mean) < 5 * spread / np.sqrt(400))


@pytest.mark.parametrize("argument, value", [("rank", 0), ("rank", 2.0),
                                             ("num_mc_samples", 0)])
def test_bad_arguments_are_refused(argument, value):
    with pytest.raises(ValueError, match=rf"`{argument}` must be an integer >= 1.*"
                                         rf"Received: {argument}={value!r}"):
        StochasticSegmentationNetwork(**{argument: value})


def test_train_command_trains_an_ssn_with_the_cpu_preset(tmp_path, capsys):
    """The preset's U-Net, optimizer and schedule apply; its Probabilistic U-Net arguments
    (latent_dim, beta, ...) are not passed to a model that does not take them."""
    workdir = str(tmp_path / "run")
    assert cli.main(["train", "--dataset", "graders", "--workdir", workdir, "--model", "ssn",
                     "--preset", "cpu", "--rank", "2", "--num-mc-samples", "3", "--epochs", "1",
                     "--steps-per-epoch", "2", "--batch-size", "2", "--image-size", "16",
                     "--num-examples", "4", "--num-channels", "4,8"]) == 0
    assert "model saved to" in capsys.readouterr().out
    model = keras.models.load_model(os.path.join(workdir, "model.keras"))
    assert isinstance(model, StochasticSegmentationNetwork)
    assert (model.rank, model.num_mc_samples, model.num_channels) == (2, 3, (4, 8))
    assert model.convs_per_block == 2  # the preset's
    with open(os.path.join(workdir, "log.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and np.isfinite(float(rows[0]["loss"]))
    assert tf.reduce_all(tf.math.is_finite(model.sample(np.zeros((1, 16, 16, 1), np.float32),
                                                        2, seed=0)))


def test_served_features_then_sample_give_what_sample_gives(tmp_path):
    """`features` once, then `sample` (a matrix product, no network) equals `serving_default`
    and `model.sample` for the same seed; bad parameters are refused with INVALID_ARGUMENT."""
    from tfprobunet import serving

    model = StochasticSegmentationNetwork(num_classes=3, rank=2, **SMALL)
    images, _ = random_batch(batch=2, size=8)
    model.build(images.shape)
    path = serving.export_for_serving(model, str(tmp_path), "ssn", max_samples=4)
    servable = serving.Servable("ssn", int(os.path.basename(path)), path)
    try:
        features = servable.run("features", {"images": images})
        assert {k: v.shape for k, v in features.items()} == {
            "mean": (2, 8, 8, 3), "diagonal": (2, 8, 8, 3), "factor": (2, 8, 8, 3, 2)}
        for got, expected in zip((features[k] for k in ("mean", "diagonal", "factor")),
                                 model.distribution_parameters(images)):
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)

        def sample(**changes):
            return servable.run("sample", {**features, "num_samples": np.int32(3),
                                           "seed": np.int32([3, 4]), **changes})

        served = sample()
        assert set(served) == {"masks", "probabilities"}
        expected = tf.nn.softmax(model.sample(images, 3, seed=tf.constant([3, 4]))).numpy()
        np.testing.assert_allclose(served["probabilities"], expected, atol=1e-5)
        default = servable.run("serving_default", {"images": images, "num_samples": np.int32(3),
                                                   "seed": np.int32([3, 4])})
        np.testing.assert_array_equal(served["masks"], default["masks"])
        for changes, message in [
                (dict(diagonal=-features["diagonal"]), "`diagonal` must be > 0"),
                (dict(diagonal=features["diagonal"][:, :4]), "`diagonal` must have shape"),
                (dict(factor=features["factor"][:, :, :4]), "`factor` must have shape"),
                (dict(factor=features["factor"][..., :1]), "not compatible with the signature"),
                (dict(factor=features["factor"][:1]), "must have the same batch size"),
                (dict(factor=features["factor"][..., 0]), "factor"),
                (dict(mean=np.full_like(features["mean"], np.nan)), "mean"),
                (dict(num_samples=np.int32(5)), "above max_samples = 4")]:
            with pytest.raises(serving.ServingError) as refused:
                sample(**changes)
            assert refused.value.code == "INVALID_ARGUMENT"
            assert message in refused.value.message, refused.value.message
    finally:
        servable.close()
