"""The Hierarchical Probabilistic U-Net (tfprobunet/models/hpunet.py), GECO
(tfprobunet/models/geco.py) and top-k pixel mining (tfprobunet/losses.py), checked against
numbers worked by hand or computed here with numpy from the reference's formulas
(deepmind-research `hierarchical_probabilistic_unet`; spec A3-A5)."""

import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfprobunet import cli, losses
from tfprobunet.cli import training as cli_training
from tfprobunet.models import HierarchicalProbabilisticUNet, geco
from harness import run_model_test

TINY = dict(num_classes=3, num_channels=[4, 8, 8], convs_per_block=1, blocks_per_level=1,
            latent_dims=[2, 1])

# The harness's checks on a tiny model whose arguments are not the defaults.
TestHierarchicalProbabilisticUNet = run_model_test(
    HierarchicalProbabilisticUNet,
    dict(TINY, top_k_fraction=0.5, top_k_mode="deterministic", geco_target=0.1, geco_rate=0.05,
         beta=0.5, weight_decay=0.0, seed=3, ged_samples=4, ged_classes=[1, 2]),
    input_shape=(2, 16, 16, 2), deterministic_training=False, geco_kwargs={},
    opt_outs={"xla": "its latent levels draw from seeds folded in at run time, one per level, "
                     "which XLA's Philox turns into other draws than TensorFlow's"})


def tiny_hpunet(**kwargs):
    return HierarchicalProbabilisticUNet(**{**TINY, **kwargs})


def batch(num_classes=3, size=16, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.random((2, size, size, channels), dtype=np.float32)
    return images, rng.integers(0, num_classes, (2, size, size)).astype(np.int32)


def numpy_kl(q_loc, q_log_scale, p_loc, p_log_scale):
    """KL(N(q) || N(p)) per pixel and channel, the closed form (spec A3)."""
    q_scale, p_scale = np.exp(q_log_scale), np.exp(p_log_scale)
    return (np.log(p_scale / q_scale) + (q_scale ** 2 + (q_loc - p_loc) ** 2) / (2 * p_scale ** 2)
            - 0.5)


def test_kl_is_the_sum_of_the_per_scale_analytic_kls():
    model = tiny_hpunet()
    images, segmentations = batch()
    model.build(images.shape)
    # The training loss's KL: the posterior draws come from the seed generator; the same state
    # gives `distributions` the same draws.
    state = model.seed_generator.state.numpy()
    terms = model.loss_terms(images, segmentations)
    model.seed_generator.state.assign(state)
    found = model.distributions(images, segmentations)
    shapes = [tuple(loc.shape) for loc, _ in found["posterior"]]
    assert shapes == [(2, 4, 4, 2), (2, 8, 8, 1)]  # coarse to fine, latent_dims [2, 1]
    assert [tuple(loc.shape) for loc, _ in found["prior"]] == shapes
    expected = sum(numpy_kl(*(np.asarray(t, np.float64) for t in (*q, *p))).sum(axis=(1, 2, 3))
                   for q, p in zip(found["posterior"], found["prior"]))
    assert np.all(expected > 0)
    np.testing.assert_allclose(terms["kl"], expected, rtol=1e-5)
    # The public `kl` at a stateless draw.
    found = model.distributions(images, segmentations, seed=5)
    expected = sum(numpy_kl(*(np.asarray(t, np.float64) for t in (*q, *p))).sum(axis=(1, 2, 3))
                   for q, p in zip(found["posterior"], found["prior"]))
    np.testing.assert_allclose(model.kl(images, segmentations, seed=5), expected, rtol=1e-5)


def test_one_geco_update_follows_the_reference_formula():
    """Spec A5.5: previous average 30, current reconstruction 20, lambda 1, 327 mined pixels at
    kappa 0.05 (threshold 16.35), rate 1e-2, plain SGD at learning rate 1."""
    layer = geco.GECO(rate=1e-2)
    layer.build()
    layer.average.assign(30.0)
    layer.initialized.assign(1.0)
    reconstruction = tf.Variable([20.0])
    optimizer = keras.optimizers.SGD(1.0)
    with tf.GradientTape() as tape:
        objective = tf.reduce_mean(layer.objective(reconstruction, [0.05 * 327]))
    gradients = tape.gradient(objective, [layer.multiplier, reconstruction])
    assert float(objective) == pytest.approx(29.9 - 16.35, abs=1e-4)  # lambda * c, c = 13.55
    assert float(gradients[1][0]) == pytest.approx(1.0, rel=1e-6)  # lambda, passed through
    optimizer.apply(gradients[:1], [layer.multiplier])
    assert float(layer.update(reconstruction)) == pytest.approx(1.23575, abs=1e-5)
    assert float(layer.average) == pytest.approx(29.9, rel=1e-6)
    v0, c = math.log(math.e - 1.0), 13.55
    softplus = math.log1p(math.exp(v0))
    sigmoid = 1.0 / (1.0 + math.exp(-v0))
    v1 = v0 + 1e-2 * c * 2.0 * softplus * sigmoid
    assert float(layer.multiplier) == pytest.approx(v1, abs=1e-5)
    assert float(layer.lagrange_multiplier()) == pytest.approx(math.log1p(math.exp(v1)) ** 2,
                                                               rel=1e-5)


def test_geco_average_starts_at_the_first_value_and_lambda_falls_below_the_target():
    """Spec A5.5 step 7: average 16, value 10 -> 15.94, c = -0.41 < 0 lowers lambda; a fresh
    average takes the first value itself. Two examples: their mean and mean threshold."""
    layer = geco.GECO(rate=1e-2)
    layer.build()
    assert float(layer.update([4.0, 6.0])) == 1.0
    assert float(layer.average) == 5.0
    layer.average.assign(16.0)
    with tf.GradientTape() as tape:
        objective = tf.reduce_mean(layer.objective(tf.constant([8.0, 12.0]), [16.0, 16.7]))
    assert float(objective) == pytest.approx(15.94 - 16.35, abs=1e-4)
    keras.optimizers.SGD(1.0).apply(tape.gradient(objective, [layer.multiplier]),
                                    [layer.multiplier])
    assert float(layer.lagrange_multiplier()) < 1.0


def test_top_k_mines_exactly_the_largest_losses_and_never_ignored_pixels():
    rng = np.random.default_rng(0)
    losses_ = rng.permutation(np.arange(1.0, 101.0)).reshape(2, 50).astype(np.float32)
    valid = np.ones((2, 50), bool)
    valid[0, np.argsort(-losses_[0])[:3]] = False  # the three largest of image 0: ignored
    fraction = 0.07  # ceil(0.07 * 50) = 4 pixels per image
    mask = losses.top_k_mask(losses_, valid, fraction).numpy()
    assert mask.sum(axis=1).tolist() == [4, 4]
    for row in range(2):
        allowed = np.where(valid[row], losses_[row], -np.inf)
        np.testing.assert_array_equal(np.flatnonzero(mask[row]),
                                      np.sort(np.argsort(-allowed)[:4]))
    assert not mask[~valid].any()
    # With Gumbel noise the count is the same and ignored pixels are still never chosen.
    noise = losses.gumbel_noise(rng.random((2, 50)).astype(np.float32))
    drawn = losses.top_k_mask(losses_, valid, fraction, noise).numpy()
    assert drawn.sum(axis=1).tolist() == [4, 4] and not drawn[~valid].any()
    # Fewer valid pixels than the count: all of them.
    few = np.zeros((2, 50), bool)
    few[:, :2] = True
    assert losses.top_k_mask(losses_, few, fraction).numpy().sum(axis=1).tolist() == [2, 2]


def test_top_k_cross_entropy_sums_the_mined_pixels():
    images, labels = batch(size=8)
    labels[0, 0, :] = 255
    logits = np.random.default_rng(1).normal(size=(2, 8, 8, 3)).astype(np.float32)
    total, mined = losses.top_k_cross_entropy(labels, logits, 0.1)
    per_pixel = (np.log(np.exp(logits).sum(-1))
                 - np.take_along_axis(logits, np.minimum(labels, 2)[..., None], -1)[..., 0])
    per_pixel = np.where(labels == 255, -np.inf, per_pixel).reshape(2, -1)
    count = math.ceil(0.1 * 64)
    np.testing.assert_allclose(total, np.sort(per_pixel, axis=1)[:, -count:].sum(1), rtol=1e-5)
    assert mined.numpy().tolist() == [count, count]


def test_finer_latents_depend_on_coarser_ones_and_not_the_reverse():
    model = tiny_hpunet(num_channels=[4, 8, 8, 8], latent_dims=[1, 2, 1])
    images, segmentations = batch()
    model.build(images.shape)
    base = model.distributions(images, segmentations, seed=1)
    latents = list(base["latents"])

    def changed(level):
        moved = list(latents)
        moved[level] = latents[level] + 3.0
        found = model.distributions(images, segmentations, latents=moved)
        return [[not np.allclose(a, b) for a, b in zip(found[net][lvl], base[net][lvl])]
                for net in ("posterior", "prior") for lvl in range(3)]

    # Given the base latents, the same parameters come back.
    again = model.distributions(images, segmentations, latents=latents)
    for net in ("posterior", "prior"):
        for found, expected in zip(again[net], base[net]):
            np.testing.assert_allclose(found[0], expected[0], rtol=1e-6, atol=1e-6)
    # Coarsest latent changed: the finer levels' loc and log-scale move, its own level's not.
    coarse = changed(0)
    assert coarse == [[False, False], [True, True], [True, True]] * 2
    # Middle latent: only the finest level moves.
    assert changed(1) == [[False, False], [False, False], [True, True]] * 2


def test_sample_draws_around_the_prior_mean():
    """With the prior's scales shrunk to exp(-30), every draw is the prior mean, which `call`
    decodes; at their learnt scales the draws differ."""
    model = tiny_hpunet()
    images, _ = batch()
    model.build(images.shape)
    drawn = model.sample(images, 4, seed=tf.constant([2, 3])).numpy()
    assert drawn.shape == (2, 4, 16, 16, 3)
    assert not np.allclose(drawn[:, 0], drawn[:, 1])
    for head, n in zip(model.prior.heads, model.latent_dims):
        kernel, bias = head.get_weights()
        kernel[..., n:] = 0.0
        bias[n:] = -30.0  # log_scale
        head.set_weights([kernel, bias])
    narrow = model.sample(images, 4, seed=tf.constant([2, 3])).numpy()
    for j in range(4):
        np.testing.assert_allclose(narrow[:, j], model(images), rtol=1e-5, atol=1e-5)


def test_mean_levels_fix_the_chosen_scales_at_their_prior_means():
    """The reference notebook's "local" and "global" samples: only the levels not fixed vary.
    With the finest level's prior scale shrunk, `[True, False]` leaves nothing to vary, while
    `[False, True]` still varies the coarse level."""
    model = tiny_hpunet()
    images, _ = batch()
    model.build(images.shape)
    np.testing.assert_allclose(model.sample(images, 2, seed=1, mean_levels=[True, True])[:, 1],
                               model(images), rtol=1e-5, atol=1e-5)
    head = model.prior.heads[-1]
    kernel, bias = head.get_weights()
    kernel[..., 1:] = 0.0
    bias[1:] = -30.0
    head.set_weights([kernel, bias])
    local = model.sample(images, 3, seed=1, mean_levels=[True, False]).numpy()
    for j in range(3):
        np.testing.assert_allclose(local[:, j], model(images), rtol=1e-5, atol=1e-5)
    coarse = model.sample(images, 3, seed=1, mean_levels=[False, True]).numpy()
    assert not np.allclose(coarse[:, 0], coarse[:, 1])
    with pytest.raises(ValueError, match="one bool per latent level"):
        model.sample(images, 2, mean_levels=[True])


def test_default_configuration_is_the_reference_lidc_one():
    model = HierarchicalProbabilisticUNet()
    assert model.num_channels == (24, 48, 96, 192, 192, 192, 192, 192)
    assert model.latent_dims == (1, 1, 1, 1) and model.blocks_per_level == 3
    assert model.convs_per_block == 3 and model.weight_decay == 1e-5
    assert (model.top_k_fraction, model.top_k_mode) == (0.02, "stochastic")
    assert (model.geco_target, model.geco_rate) == (0.05, 0.01)
    model.build((None, 128, 128, 1))
    shapes = [tuple(loc.shape) for loc, _ in model.distributions(
        np.zeros((1, 128, 128, 1), np.float32), np.zeros((1, 128, 128), np.int32),
        seed=0)["prior"]]
    assert shapes == [(1, 1, 1, 1), (1, 2, 2, 1), (1, 4, 4, 1), (1, 8, 8, 1)]
    # Fewer levels: as many latent levels as fit, at most 4.
    assert tiny_hpunet(latent_dims=None).latent_dims == (1, 1)
    with pytest.raises(ValueError, match="`latent_dims` must list 1 to 2 positive integers"):
        tiny_hpunet(latent_dims=[1, 1, 1])
    with pytest.raises(ValueError, match="`top_k_mode` must be one of"):
        tiny_hpunet(top_k_mode="gumbel")
    with pytest.raises(ValueError, match="`top_k_fraction` must be a finite number > 0"):
        tiny_hpunet(top_k_fraction=0.0)


def test_elbo_option_and_ignored_pixels():
    model = tiny_hpunet(geco_target=None, beta=0.5, top_k_fraction=1.0,
                        top_k_mode="deterministic")
    assert model.TERMS == ("loss", "reconstruction", "kl")
    images, segmentations = batch()
    segmentations[0] = 255  # nothing to reconstruct in image 0
    terms = model.loss_terms(images, segmentations)
    assert float(terms["reconstruction"][0]) == 0.0
    np.testing.assert_allclose(terms["loss"], terms["reconstruction"] + 0.5 * terms["kl"],
                               rtol=1e-6)


def test_train_flags_take_the_presets_arguments_the_hpunet_has():
    args = cli.build_parser().parse_args(["train", "--workdir", "w", "--model", "hpunet",
                                          "--preset", "cpu", "--geco-target", "none"])
    assert cli_training.train_arguments(args) == dict(
        model="hpunet", geco_target=None, num_channels=[16, 32, 64], convs_per_block=2,
        beta=1.0, learning_rate=1e-3, schedule="wsd", batch_size=16)


def test_train_command_trains_an_hpunet(tmp_path):
    workdir = str(tmp_path / "run")
    assert cli.main(["train", "--model", "hpunet", "--dataset", "graders", "--workdir", workdir,
                     "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2",
                     "--image-size", "16", "--num-examples", "8", "--num-channels", "4,8,8",
                     "--convs-per-block", "1", "--blocks-per-level", "1", "--latent-dims",
                     "2,1", "--top-k-fraction", "0.1", "--learning-rate", "1e-3"]) == 0
    model = keras.models.load_model(os.path.join(workdir, "model.keras"))
    assert isinstance(model, HierarchicalProbabilisticUNet)
    assert model.latent_dims == (2, 1) and model.top_k_fraction == 0.1
    assert model.blocks_per_level == 1 and float(model.geco.initialized) == 1.0


def test_global_latent_channels_reach_one_pixel_and_the_model_puts_its_coarsest_latent_there():
    """The comparisons' HPU-Net: the recipe's channels continued to 1x1 (32 -> 16 -> 8 -> 4 ->
    2 -> 1 is 6 levels), its latents at 1x1, 2x2, 4x4 and 8x8 as the reference's at 128x128,
    read back from the shapes of the built model's prior parameters."""
    from tfprobunet.models import hpunet

    assert hpunet.global_latent_channels([16, 32, 64], 32) == [16, 32, 64, 64, 64, 64]
    assert hpunet.global_latent_channels([16, 32, 64], 64) == [16, 32, 64, 64, 64, 64, 64]
    assert hpunet.global_latent_channels([4, 8], 4) == [4, 8, 8]
    # The reference: 8 levels reach 1x1 at 128x128 and need nothing added.
    reference = [24, 48, 96, 192, 192, 192, 192, 192]
    assert hpunet.global_latent_channels(reference, 128) == reference
    assert hpunet.latent_resolutions(reference, 128) == [1, 2, 4, 8]
    assert hpunet.latent_resolutions([16, 32, 64], 32) == [8, 16]
    for size in (48, 1):
        with pytest.raises(ValueError, match="power of two"):
            hpunet.global_latent_channels([16, 32, 64], size)
    with pytest.raises(ValueError, match="below 1x1"):
        hpunet.global_latent_channels([4, 8, 8, 8], 4)

    channels = hpunet.global_latent_channels([4, 8], 16)
    model = tiny_hpunet(num_channels=channels, latent_dims=None)
    images, segmentations = batch(size=16)
    parameters = model.distributions(images, segmentations)["prior"]
    sides = [loc.shape[1:3] for loc, _ in parameters]
    assert [tuple(side) for side in sides] == [(s, s) for s in
                                              hpunet.latent_resolutions(channels, 16)]
    assert tuple(sides[0]) == (1, 1)
