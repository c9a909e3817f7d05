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
