"""The ELBO's terms against hand-worked numbers and closed forms computed in numpy."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfprobunet import losses


def numpy_diag_gaussian_kl(q_loc, q_scale, p_loc, p_scale):
    """KL(N(q_loc, q_scale^2) || N(p_loc, p_scale^2)) summed over dimensions, textbook form."""
    return np.sum(np.log(p_scale / q_scale)
                  + (q_scale ** 2 + (q_loc - p_loc) ** 2) / (2 * p_scale ** 2) - 0.5, axis=-1)


def test_analytic_kl_matches_closed_form_and_tfp():
    rng = np.random.default_rng(0)
    q_loc, p_loc = rng.normal(size=(2, 5, 6))
    q_log, p_log = rng.uniform(-2, 2, size=(2, 5, 6))
    expected = numpy_diag_gaussian_kl(q_loc, np.exp(q_log), p_loc, np.exp(p_log))
    got = losses.analytic_kl(*(tf.constant(v, tf.float64) for v in (q_loc, q_log, p_loc, p_log)))
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    tfd = tfp.distributions
    reference = tfd.kl_divergence(tfd.MultivariateNormalDiag(q_loc, np.exp(q_log)),
                                  tfd.MultivariateNormalDiag(p_loc, np.exp(p_log)))
    np.testing.assert_allclose(got, reference, rtol=1e-8)


def test_analytic_kl_hand_worked_and_zero_for_equal_gaussians():
    # One dimension: Q = N(1, 1), P = N(0, 2^2): log 2 + (1 + 1) / 8 - 1/2 = log 2 - 1/4.
    got = losses.analytic_kl(tf.constant([[1.0]]), tf.constant([[0.0]]), tf.constant([[0.0]]),
                             tf.constant([[math.log(2.0)]]))
    np.testing.assert_allclose(got, [math.log(2.0) - 0.25], rtol=1e-6)
    same = losses.analytic_kl(*([tf.constant([[0.3, -1.0]])] * 4))
    np.testing.assert_array_equal(same, [0.0])


def test_analytic_kl_stays_finite_at_extreme_scales():
    # Scales of e^-6 against e^6 (the soft clamp's range) and far-apart means: large, finite.
    q_loc, p_loc = tf.fill((1, 6), 50.0), tf.fill((1, 6), -50.0)
    value = losses.analytic_kl(q_loc, tf.fill((1, 6), -6.0), p_loc, tf.fill((1, 6), -6.0))
    assert np.isfinite(value.numpy()).all() and value.numpy()[0] > 1e6


def test_sampled_kl_is_log_q_minus_log_p_and_unbiased():
    rng = np.random.default_rng(1)
    q_loc, p_loc = rng.normal(size=(2, 3, 4))
    q_log, p_log = rng.uniform(-1, 1, size=(2, 3, 4))
    noise = rng.normal(size=(3, 4))
    z = q_loc + np.exp(q_log) * noise
    tfd = tfp.distributions
    log_q = tfd.MultivariateNormalDiag(q_loc, np.exp(q_log)).log_prob(z)
    log_p = tfd.MultivariateNormalDiag(p_loc, np.exp(p_log)).log_prob(z)
    got = losses.sampled_kl(*(tf.constant(v) for v in (noise, q_loc, q_log, p_loc, p_log)))
    np.testing.assert_allclose(got, log_q - log_p, rtol=1e-9)
    # Averaged over many draws it estimates the analytic KL.
    many = rng.normal(size=(200000, 4))
    estimate = losses.sampled_kl(*(tf.constant(v) for v in (
        many, np.repeat(q_loc[:1], len(many), 0), np.repeat(q_log[:1], len(many), 0),
        np.repeat(p_loc[:1], len(many), 0), np.repeat(p_log[:1], len(many), 0))))
    exact = numpy_diag_gaussian_kl(q_loc[0], np.exp(q_log[0]), p_loc[0], np.exp(p_log[0]))
    standard_error = np.std(estimate) / np.sqrt(len(many))
    assert abs(np.mean(estimate) - exact) < 4 * standard_error


def test_pixel_cross_entropy_hand_worked_2x2():
    # Pixel logits [0, ln 3] -> p = [1/4, 3/4]; [0, 0] -> [1/2, 1/2].
    logits = np.array([[[[0.0, math.log(3.0)], [0.0, 0.0]],
                        [[0.0, math.log(3.0)], [0.0, 0.0]]]], np.float32)
    labels = np.array([[[1, 0], [0, 1]]], np.int32)
    # -log(3/4) - log(1/2) - log(1/4) - log(1/2)
    expected_sum = -math.log(0.75) - math.log(0.5) - math.log(0.25) - math.log(0.5)
    np.testing.assert_allclose(losses.pixel_cross_entropy(labels, logits, "sum"),
                               [expected_sum], rtol=1e-6)
    np.testing.assert_allclose(losses.pixel_cross_entropy(labels, logits, "mean"),
                               [expected_sum / 4], rtol=1e-6)


def test_ignore_label_contributes_nothing():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
    labels = rng.integers(0, 3, (2, 4, 4)).astype(np.int32)
    ignored = labels.copy()
    ignored[:, :2] = 255
    # Reference: the same loss on the kept pixels only, from log-softmax in numpy.
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_p, labels[..., None], -1)[..., 0]
    kept = -picked[:, 2:].sum(axis=(1, 2))
    np.testing.assert_allclose(losses.pixel_cross_entropy(ignored, logits, "sum"), kept,
                               rtol=1e-5)
    np.testing.assert_allclose(losses.pixel_cross_entropy(ignored, logits, "mean"), kept / 8,
                               rtol=1e-5)
    # Changing the logits of ignored pixels changes nothing, and an all-ignored map gives 0.
    changed = logits.copy()
    changed[:, :2] += 100.0
    np.testing.assert_allclose(losses.pixel_cross_entropy(ignored, changed), kept, rtol=1e-5)
    np.testing.assert_array_equal(
        losses.pixel_cross_entropy(np.full_like(labels, 255), logits, "mean"), [0.0, 0.0])


def test_elbo_loss_combines_terms_with_beta_and_rejects_bad_options():
    rng = np.random.default_rng(3)
    args = dict(labels=rng.integers(0, 2, (2, 4, 4)), logits=rng.normal(size=(2, 4, 4, 2)),
                noise=np.zeros((2, 3)), q_loc=rng.normal(size=(2, 3)),
                q_log_scale=rng.normal(size=(2, 3)), p_loc=rng.normal(size=(2, 3)),
                p_log_scale=rng.normal(size=(2, 3)))
    args = {k: tf.constant(v, tf.int32 if k == "labels" else tf.float32) for k, v in args.items()}
    terms = losses.elbo_loss(**args, beta=0.5)
    np.testing.assert_allclose(terms["loss"], terms["reconstruction"] + 0.5 * terms["kl"],
                               rtol=1e-6)
    with pytest.raises(ValueError, match="`kl` must be one of"):
        losses.elbo_loss(**args, kl="exact")
    with pytest.raises(ValueError, match="`reduction` must be one of"):
        losses.elbo_loss(**args, reconstruction="median")


def test_energy_score_hand_worked_binary_case():
    """Y: a 4-pixel lesion. Samples: Y itself and an empty mask. With smoothing 1:
    d(Y, Y) = 0, d(empty, Y) = (4 - 0) / (4 + 1) = 0.8, d(Y, empty) = 0.8, so
    ES = (0 + 0.8) / 2 - 1/2 * 0.8 = 0. Two copies of Y: ES = 0. Two empty masks:
    d(empty, Y) = 0.8 each and d(empty, empty) = 0, so ES = 0.8."""
    label = np.zeros((1, 4, 4), np.int32)
    label[0, :2, :2] = 1
    lesion, empty = tf.one_hot(label, 2), tf.one_hot(np.zeros_like(label), 2)
    for samples, expected in (([lesion, empty], 0.0), ([lesion, lesion], 0.0),
                              ([empty, empty], 0.8)):
        score = losses.energy_score(tf.stack(samples, axis=1), label, classes=[1])
        np.testing.assert_allclose(score, [expected], atol=1e-6)
    # Soft maps: a sample of probability 0.5 on the lesion's 4 pixels and 0 elsewhere, twice:
    # I = 2, U = 4 + 2 - 2 = 4 against Y, so d = 2 / 5; against itself I = 1, U = 2 + 2 - 1 = 3,
    # d = 2 / 4. ES = 0.4 - 0.25.
    half = tf.one_hot(label, 2) * 0.5
    score = losses.energy_score(tf.stack([half, half], axis=1), label, classes=[1])
    np.testing.assert_allclose(score, [0.4 - 0.25], atol=1e-6)


@pytest.mark.parametrize("classes", [[1], [0, 1, 2]])
def test_energy_score_of_one_hot_samples_is_the_hard_iou_energy_score(classes):
    """For one-hot samples and smoothing -> 0 the soft distance is the evaluation's 1 - IoU
    (`metrics.pairwise_distances`, the numpy reference): ES = mean d(S_k, Y) - 1/2 mean over
    k != l of d(S_k, S_l), every comparison over the label's valid pixels."""
    from tfprobunet import metrics

    rng = np.random.default_rng(5)
    samples = rng.integers(0, 3, (2, 5, 6, 6))
    labels = rng.integers(0, 3, (2, 6, 6))
    labels[0, 0, :3] = 255
    samples[0, :, 0, :3] = 255  # the reference leaves out the label's ignored pixels too
    score = losses.energy_score(tf.one_hot(samples, 3), labels, classes, smoothing=1e-7)
    cross = metrics.pairwise_distances(samples, labels[:, None], 3, classes).mean(axis=(1, 2))
    pairwise = metrics.pairwise_distances(samples, samples, 3, classes).sum(axis=(1, 2))
    np.testing.assert_allclose(score, cross - 0.5 * pairwise / (5 * 4), rtol=1e-4)


def test_energy_score_is_finite_and_differentiable_on_empty_maps_and_needs_two_samples():
    logits = tf.Variable(tf.fill((1, 3, 4, 4, 2), -20.0) * tf.constant([-1.0, 1.0]))
    with tf.GradientTape() as tape:
        score = losses.energy_score(tf.nn.softmax(logits), np.zeros((1, 4, 4), np.int32), [1])
    gradient = tape.gradient(score, logits)
    assert np.isfinite(score.numpy()).all() and np.isfinite(gradient.numpy()).all()
    np.testing.assert_allclose(score, [0.0], atol=1e-6)  # all empty, like the label
    with pytest.raises(ValueError, match="m >= 2 samples.*shape \\(1, 1, 4, 4, 2\\)"):
        losses.energy_score(tf.zeros((1, 1, 4, 4, 2)), np.zeros((1, 4, 4), np.int32), [1])
