"""The Conditional Categorical Diffusion Model (`models/ccdm.py`), checked against numpy
transcriptions of the reference's formulas (github.com/LarsDoorenbos/ccdm-stochastic-segmentation,
`ddpm/models/diffusion_denoising.py` and `ddpm/trainer.py`), written here independently of the
TensorFlow code. The checks every model passes are the harness's (one line below)."""

import math
import os

import numpy as np
import pytest
import tensorflow as tf

from tfprobunet import training
from tfprobunet.models import CategoricalDiffusionSegmenter
from tfprobunet.models import ccdm as ccdm_lib
from harness import run_model_test

TestCategoricalDiffusionSegmenter = run_model_test(
    CategoricalDiffusionSegmenter,
    dict(num_classes=3, num_channels=[4, 8, 8], convs_per_block=1, time_steps=10,
         noise_schedule="linear", sampling_steps=3, reconstruction="mean", weight_decay=1e-4,
         seed=1, ged_samples=4, ged_classes=[1, 2]),
    input_shape=(2, 16, 16, 2), deterministic_training=False,
    opt_outs={"xla": "its chains draw from seeds folded in at run time, one per denoising "
                     "step, which XLA's Philox turns into other draws than TensorFlow's"})

K = 3
T = 10
SMALL = dict(num_classes=K, num_channels=[4, 8], convs_per_block=1, seed=1)


# ---------------------------------------------------------------------- the transcriptions
def reference_schedule(name, time_steps):
    """`linear_schedule` and `cosine_schedule` of the reference, line by line."""
    if name == "linear":
        betas = np.linspace(1e-2, 0.2, time_steps)
        alphas = 1 - betas
        return betas, alphas, np.cumprod(alphas)
    s = 0.008
    t = np.arange(0, time_steps)
    cumalphas = np.cos(((t / time_steps + s) / (1 + s)) * (math.pi / 2)) ** 2

    def func(u):
        return math.cos((u + s) / (1.0 + s) * math.pi / 2) ** 2

    betas = np.array([min(1 - func((i + 1) / time_steps) / func(i / time_steps), 0.999)
                      for i in range(time_steps)])
    return betas, 1 - betas, cumalphas


def reference_theta_post(xt, x0, t, alphas, cumalphas):
    """`theta_post`: channels last, one t for all pixels."""
    alpha_t = 0.0 if t == 1 else alphas[t - 1]
    cumalpha_tm1 = 1.0 if t == 1 else cumalphas[t - 2]
    theta = ((alpha_t * xt + (1 - alpha_t) / K) * (cumalpha_tm1 * x0 + (1 - cumalpha_tm1) / K))
    return theta / theta.sum(-1, keepdims=True)


def reference_theta_post_prob(xt, theta_x0, t, alphas, cumalphas):
    """`theta_post_prob`: theta_post for every x0 class, weighted by `theta_x0`."""
    alpha_t = 0.0 if t == 1 else alphas[t - 1]
    cumalpha_tm1 = 1.0 if t == 1 else cumalphas[t - 2]
    x0 = np.eye(K)  # [C2 (x0 class), C1 (x_(t-1) class)]
    theta_xt_xtm1 = alpha_t * xt + (1 - alpha_t) / K  # (..., C1)
    theta_xtm1_x0 = cumalpha_tm1 * x0 + (1 - cumalpha_tm1) / K  # (C2, C1)
    aux = theta_xt_xtm1[..., None, :] * theta_xtm1_x0  # (..., C2, C1)
    aux = aux / aux.sum(-1, keepdims=True)  # normalised over x_(t-1)
    return np.einsum("...dc,...d->...c", aux, theta_x0)


def _model(**kwargs):
    model = CategoricalDiffusionSegmenter(**{**SMALL, "time_steps": T, **kwargs})
    model.build((None, 16, 16, 1))
    return model


# ---------------------------------------------------------------------- schedule and transitions
@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_schedule_is_the_references(name):
    for got, expected in zip(ccdm_lib.diffusion_schedule(name, T), reference_schedule(name, T)):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
    # The reference's cosine cumalphas trail the product of its alphas by one step.
    betas, alphas, cumalphas = reference_schedule("cosine", 250)
    assert cumalphas[-1] == pytest.approx(3.885e-5, rel=1e-3)


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_transition_matrices_are_the_references(name):
    """Q_t[i, j] = q(x_t = j | x_(t-1) = i) = (1 - beta_t) delta_ij + beta_t / K and Q-bar_t =
    abar_t delta_ij + (1 - abar_t) / K, from the reference's `q_xt_given_xtm1` and
    `q_xt_given_x0`: the model's rows for x_(t-1) = e_i (x_0 = e_i), for several t."""
    model = _model(noise_schedule=name)
    betas, _, cumalphas = reference_schedule(name, T)
    eye = np.eye(K, dtype=np.float32)[:, None, None, :]  # (K, 1, 1, K): one image per class
    for t in (1, 2, 5, T):
        steps = tf.fill([K], t)
        q_t = model.forward_step_probabilities(eye, steps).numpy()[:, 0, 0]
        q_bar = model.forward_probabilities(eye, steps).numpy()[:, 0, 0]
        beta, cumalpha = betas[t - 1], cumalphas[t - 1]
        np.testing.assert_allclose(q_t, (1 - beta) * np.eye(K) + beta / K, rtol=1e-6)
        np.testing.assert_allclose(q_bar, cumalpha * np.eye(K) + (1 - cumalpha) / K, rtol=1e-6)
        np.testing.assert_allclose(q_t.sum(1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_posterior_is_the_references(name):
    """q(x_(t-1) | x_t, x_0) for one-hot x_0 (`theta_post`) and averaged over predicted
    probabilities of x_0 (`theta_post_prob`), on random pixels; at t = 1 both give x_0."""
    model = _model(noise_schedule=name)
    _, alphas, cumalphas = reference_schedule(name, T)
    rng = np.random.default_rng(0)
    xt = np.eye(K)[rng.integers(0, K, (2, 4, 4))]
    x0 = np.eye(K)[rng.integers(0, K, (2, 4, 4))]
    soft = rng.dirichlet(np.ones(K), (2, 4, 4))
    for t in (1, 2, 3, 7, T):
        steps = tf.fill([2], t)
        for given, reference in ((x0, reference_theta_post), (soft, reference_theta_post_prob)):
            got = model.posterior_probabilities(xt.astype(np.float32), given.astype(np.float32),
                                                steps).numpy()
            np.testing.assert_allclose(got, reference(xt, given, t, alphas, cumalphas),
                                       rtol=1e-5, atol=1e-7, err_msg=f"t={t}")
    np.testing.assert_allclose(model.posterior_probabilities(
        xt.astype(np.float32), soft.astype(np.float32), tf.fill([2], 1)).numpy(), soft,
        rtol=1e-6)
    # For one-hot x_0 the two reference formulas agree: the transcriptions are consistent.
    np.testing.assert_allclose(reference_theta_post_prob(xt, x0, 4, alphas, cumalphas),
                               reference_theta_post(xt, x0, 4, alphas, cumalphas), rtol=1e-12)


def test_forward_marginal_at_T_is_stationary():
    """q(x_T | x_0) drawn for 2**18 pixels all of class 0 (T = 250, the reference's cosine
    schedule): each class's frequency is the uniform 1/K within 4 standard errors (the
    reference's abar_T = 3.9e-5 moves class 0's share by 2.6e-5, a tenth of one standard
    error). At t = T / 2 the frequencies are the marginal abar x_0 + (1 - abar)/K within 4
    standard errors and far from uniform: the check can fail. Pixels labelled 255 are noised
    from the uniform distribution even at t = 1."""
    model = CategoricalDiffusionSegmenter(**SMALL)  # time_steps=250, cosine
    n_images, size = 16, 128
    n = n_images * size * size
    zeros = np.zeros((n_images, size, size), np.int32)
    _, _, cumalphas = reference_schedule("cosine", 250)
    uniform = np.full(K, 1 / K)
    standard_error = np.sqrt(uniform * (1 - uniform) / n)
    assert cumalphas[-1] * (1 - 1 / K) < 0.2 * standard_error[0]

    def frequencies(labels, t, seed):
        drawn = model.noisy_labels(labels, tf.fill([n_images], t), seed=seed).numpy()
        return np.bincount(drawn.ravel(), minlength=K) / n

    at_T = frequencies(zeros, 250, 3)
    assert np.all(np.abs(at_T - uniform) < 4 * standard_error), (at_T - uniform) / standard_error

    middle = cumalphas[124] * np.eye(K)[0] + (1 - cumalphas[124]) / K
    error = np.sqrt(middle * (1 - middle) / n)
    at_middle = frequencies(zeros, 125, 4)
    assert np.all(np.abs(at_middle - middle) < 4 * error), (at_middle - middle) / error
    assert np.abs(at_middle[0] - 1 / K) > 100 * standard_error[0]

    ignored = frequencies(np.full_like(zeros, 255), 1, 5)
    assert np.all(np.abs(ignored - uniform) < 4 * standard_error), ignored


# ---------------------------------------------------------------------- the loss
@pytest.mark.parametrize("reconstruction", ["sum", "mean"])
def test_loss_is_the_references_kl(reconstruction):
    """`denoising_kl` = the reference's `kl_div(log clamp(p, 1e-12), q)` summed over classes
    and pixels, p from the model's own x_0 prediction, pixels labelled 255 left out; at t = 1
    it is the cross-entropy of the x_0 prediction."""
    model = _model(reconstruction=reconstruction)
    _, alphas, cumalphas = reference_schedule("cosine", T)
    rng = np.random.default_rng(1)
    images = rng.random((3, 16, 16, 1), dtype=np.float32)
    labels = rng.integers(0, K, (3, 16, 16)).astype(np.int32)
    labels[0, :4] = 255
    noisy = rng.integers(0, K, (3, 16, 16)).astype(np.int32)
    t = np.array([1, 4, T], np.int32)
    loss = model.denoising_kl(images, labels, noisy, t).numpy()

    x0_prediction = model.x0_probabilities(images, noisy, t).numpy().astype(np.float64)
    xt = np.eye(K)[noisy]
    expected = []
    for i in range(3):
        valid = labels[i] != 255
        x0 = np.eye(K)[np.where(valid, labels[i], 0)]
        q = reference_theta_post(xt[i], x0, t[i], alphas, cumalphas)
        p = reference_theta_post_prob(xt[i], x0_prediction[i], t[i], alphas, cumalphas)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(q > 0, q * (np.log(q) - np.log(np.maximum(p, 1e-12))), 0).sum(-1)
        total = (kl * valid).sum()
        expected.append(total / valid.sum() if reconstruction == "mean" else total)
    np.testing.assert_allclose(loss, expected, rtol=1e-4)
    # t = 1: q is x_0 itself, p the prediction: the cross-entropy.
    valid = labels[0] != 255
    picked = np.take_along_axis(x0_prediction[0], np.where(valid, labels[0], 0)[..., None], -1)
    cross_entropy = -(np.log(picked[..., 0]) * valid).sum()
    assert expected[0] == pytest.approx(
        cross_entropy / valid.sum() if reconstruction == "mean" else cross_entropy, rel=1e-9)


# ---------------------------------------------------------------------- sampling
def test_denoising_steps_skip_as_the_reference():
    assert ccdm_lib.denoising_steps(10, 10) == list(range(10, 0, -1))
    # round(np.linspace(250, 1, 5)) = round(250, 187.75, 125.5, 63.25, 1), half to even.
    assert ccdm_lib.denoising_steps(250, 5) == [250, 188, 126, 63, 1]
    assert ccdm_lib.denoising_steps(250, 2) == [250, 1]


def test_chains_are_reproducible_and_independent():
    model = _model(sampling_steps=4)
    images = np.random.default_rng(2).random((2, 16, 16, 1), dtype=np.float32)
    drawn = model.sample(images, 3, seed=3).numpy()
    assert drawn.shape == (2, 3, 16, 16, K)
    np.testing.assert_array_equal(model.sample(images, 3, seed=3), drawn)
    np.testing.assert_array_equal(model.sample(images, 3, seed=tf.constant([3, 0])), drawn)
    assert not np.allclose(model.sample(images, 3, seed=4), drawn)
    assert not np.allclose(drawn[:, 0], drawn[:, 1])  # each sample its own chain
    # The last step's probabilities: log-probabilities whose softmax sums to one.
    np.testing.assert_allclose(np.exp(drawn).sum(-1), 1.0, rtol=1e-5)
    # `steps=` overrides the default; the full chain (T steps) and a shorter one differ.
    assert not np.allclose(model.sample(images, 3, seed=3, steps=T), drawn)
    np.testing.assert_array_equal(model.sample(images, 3, seed=3, steps=4), drawn)


def test_bad_arguments_are_refused_in_one_line():
    with pytest.raises(ValueError, match=r"`time_steps` must be an integer from 1 to 10000.*"
                                         r"Received: time_steps=0"):
        CategoricalDiffusionSegmenter(time_steps=0)
    with pytest.raises(ValueError, match=r"`noise_schedule` must be one of.*'quadratic'"):
        CategoricalDiffusionSegmenter(noise_schedule="quadratic")
    with pytest.raises(ValueError, match=r"`sampling_steps` must be None or an integer from 1 "
                                         r"to time_steps = 10\. Received: sampling_steps=11"):
        CategoricalDiffusionSegmenter(time_steps=10, sampling_steps=11)
    model = _model()
    with pytest.raises(ValueError, match=r"`steps` must be .*Received: steps=0"):
        model.sample(np.zeros((1, 16, 16, 1), np.float32), 1, seed=0, steps=0)


def test_train_on_flips_writes_model_keras(tmp_path):
    workdir = str(tmp_path / "run")
    model, history = training.train(
        workdir, model="ccdm", dataset="flips", image_size=16, num_examples=8, batch_size=4,
        steps_per_epoch=2, epochs=1, verbose=0, num_channels=[4, 8], convs_per_block=1,
        time_steps=10, sampling_steps=2)
    assert isinstance(model, CategoricalDiffusionSegmenter)
    assert os.path.exists(os.path.join(workdir, "model.keras"))
    assert np.isfinite(history.history["loss"]).all()


def test_serving_counts_each_denoising_step_of_a_sample(tmp_path):
    """A CCDM sample runs its U-Net once per denoising step: the export's `max_sample_pixels`
    counts b * m * h * w once per step, so 4 samples of one 16x16 image at 5 steps (5,120
    pixel passes) are served and 5 (6,400) refused, where pixels counted once (1,280) would
    have passed."""
    from tfprobunet import serving  # not in `make test-compat`'s set

    model = _model(time_steps=T, noise_schedule="linear", sampling_steps=5)
    assert model.passes_per_sample == 5
    images = np.random.default_rng(4).random((1, 16, 16, 1), dtype=np.float32)
    model(images)
    path = serving.export_for_serving(model, str(tmp_path), "ccdm",
                                      max_sample_pixels=4 * 16 * 16 * 5)
    servable = serving.Servable("ccdm", 1, path)
    try:
        def predict(num_samples):
            return servable.run("serving_default", {
                "images": images, "num_samples": np.int32(num_samples), "seed": np.int32([1, 2])})

        served = predict(4)
        expected = tf.nn.softmax(model.sample(images, 4, seed=tf.constant([1, 2]))).numpy()
        np.testing.assert_allclose(served["probabilities"], expected, atol=1e-5)
        with pytest.raises(serving.ServingError) as refused:
            predict(5)
        assert refused.value.code == "INVALID_ARGUMENT"
        assert ("1 x 5 x 16 x 16 = 1280 sample pixels, each computed 5 times (one per "
                "denoising step): 6400, above max_sample_pixels = 5120") in refused.value.message
    finally:
        servable.close()
