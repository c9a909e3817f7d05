"""The Mixture of Stochastic Experts (`models/mose.py`): its optimal-transport loss against a
hand-worked case and a NumPy transcription of the reference's `utils/OTloss.py`, the gate's
weights, both sampling representations, and training through `train`. The checks every model
passes are the harness's (one line below)."""

import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfprobunet import losses, training
from tfprobunet.models import MixtureOfStochasticExperts
from tfprobunet.models import mose
from conftest import random_batch
from harness import run_model_test

# The cross-entropy cost and 2 experts: the experts' log-scales start at log(1/8) and get
# gradients of ~1e-5 under the IoU cost (scale x noise x dL/dz, the noise of one expert's
# samples cancelling), too little for one SGD step of the harness to move them measurably; here
# they move 2.6 times the harness's tolerance.
TestMixtureOfStochasticExperts = run_model_test(
    MixtureOfStochasticExperts,
    dict(num_classes=3, num_channels=[8, 16, 16], convs_per_block=1, num_experts=2,
         latent_dim=2, samples_per_expert=2, cost="ce", beta=0.5, gamma=0.5, gamma_switch_steps=10,
         weight_decay=1e-4, seed=1, ged_samples=4, ged_classes=[1, 2]),
    input_shape=(2, 16, 16, 2), deterministic_training=False,
    signatures=("serving_default", "features", "sample"))

SMALL = dict(num_channels=[4, 8], convs_per_block=1, seed=1)
IGNORE = losses.IGNORE_LABEL


# ---------------------------------------------------------------------- the reference, in NumPy
def _reference_iou_cost(probabilities, annotations):
    """`OT_loss.get_cost_matrix(cost_fn='iou')`: samples (B, N, C, HW) probabilities, one-hot
    annotations (B, M, C, HW); 1 - ((I + 1) / (U + 1)) over the classes but 0, averaged."""
    b, n, h, w, c = probabilities.shape
    sample_arr = probabilities.transpose(0, 1, 4, 2, 3).reshape(b, n, c, h * w)
    gt_arr = np.eye(c)[annotations.reshape(b, annotations.shape[1], -1)].transpose(0, 1, 3, 2)
    cost = np.zeros((b, n, gt_arr.shape[1]))
    for i in range(b):
        for j in range(n):
            for k in range(gt_arr.shape[1]):
                intersection = (sample_arr[i, j] * gt_arr[i, k]).sum(-1)
                union = sample_arr[i, j].sum(-1) + gt_arr[i, k].sum(-1) - intersection
                cost[i, j, k] = 1.0 - ((intersection + 1) / (union + 1))[1:].mean()
    return cost


def _reference_coupling(cost, prob_gt, gamma):
    """`OT_loss.get_coupling_matrix`, line by line."""
    batch, n, m = cost.shape
    if gamma == 1:
        P = np.zeros_like(cost)
        nearest = cost.argmin(-2)  # (B, M)
        for b in range(batch):
            for i in range(m):
                P[b, nearest[b, i], i] = prob_gt[b, i]
        return P
    P = np.zeros_like(cost)
    sort_gt_ind = cost.min(-2).argsort(-1)
    uniform = np.ones_like(prob_gt) * (1.0 / m)
    for b in range(batch):
        for i in sort_gt_ind[b]:
            for j in cost[b, :, i].argsort():
                if P[b, j].sum() < gamma:
                    P[b, j, i] = min(gamma - P[b, j].sum(), uniform[b, i])
                    uniform[b, i] -= P[b, j, i]
                    if uniform[b, i] == 0:
                        break
    return P * (prob_gt * m)[:, None, :]


def _reference_ot_loss(cost, prob, prob_gt, gamma, beta):
    """`OT_loss.forward`: `(loss, seg_loss, kl_loss)`, batch means, and the plan. `F.kl_div`'s
    default reduction is the mean over all B * N entries of `t (log t - log(p + 1e-8))`."""
    P = _reference_coupling(cost, prob_gt, gamma)
    seg_loss = (P * cost).sum((1, 2)).mean(0)
    target = P.sum(-1)
    pointwise = np.where(target > 0, target * (np.log(np.where(target > 0, target, 1))
                                               - np.log(prob + 1e-8)), 0.0)
    kl_loss = pointwise.mean()
    return seg_loss + beta * kl_loss, seg_loss, kl_loss, P


# ---------------------------------------------------------------------- the loss
def test_ot_loss_of_a_hand_worked_case():
    """2 experts of 1 sample each, gate weights (0.6, 0.4); 2 annotations; costs (rows: samples,
    columns: annotations) [[0.1, 0.2], [0.5, 0.6]]: both annotations are closest to sample 0.

    gamma = 1/2, uniform annotations (1/2 each): annotation 0 goes first (its best cost 0.1 <
    0.2); sample 0 takes all its 1/2 and is full. Annotation 1's cheapest sample is full, so
    its 1/2 goes to sample 1. Plan [[1/2, 0], [0, 1/2]]: transport 0.05 + 0.3 = 0.35; target
    (1/2, 1/2); KL = (1/2 log(0.5/0.6) + 1/2 log(0.5/0.4)) / 2 = 0.0102055.
    gamma = 1: both go whole to sample 0: plan [[1/2, 1/2], [0, 0]], transport 0.05 + 0.1 =
    0.15; target (1, 0); KL = log(1/0.6) / 2 = 0.255413.
    gamma = 1/2, annotation weights (3/4, 1/4): the same plan in units of 1/2, scaled by
    w * 2: [[3/4, 0], [0, 1/4]], transport 0.075 + 0.15 = 0.225; target (3/4, 1/4); KL =
    (3/4 log(0.75/0.6) + 1/4 log(0.25/0.4)) / 2 = 0.0249285. With beta = 2, loss = transport +
    2 KL."""
    cost = tf.constant([[[0.1, 0.2], [0.5, 0.6]]])
    gate = tf.constant([[0.6, 0.4]])
    cases = [(0.5, None, [[0.5, 0], [0, 0.5]], 0.35,
              (0.5 * math.log(0.5 / 0.6) + 0.5 * math.log(0.5 / 0.4)) / 2),
             (1.0, None, [[0.5, 0.5], [0, 0]], 0.15, math.log(1 / 0.6) / 2),
             (0.5, [[0.75, 0.25]], [[0.75, 0], [0, 0.25]], 0.225,
              (0.75 * math.log(0.75 / 0.6) + 0.25 * math.log(0.25 / 0.4)) / 2)]
    for (gamma, weights, plan, transport, kl), decimal in zip(cases, (0.0102055, 0.255413,
                                                                      0.0249285)):
        assert kl == pytest.approx(decimal, abs=1e-6)
        np.testing.assert_allclose(mose.transport_plan(cost, weights, gamma)[0], plan,
                                   atol=1e-7)
        terms = mose.ot_loss(cost, gate, weights, gamma, beta=2.0)
        np.testing.assert_allclose(terms["transport"], [transport], rtol=1e-6)
        np.testing.assert_allclose(terms["kl"], [kl], rtol=1e-5)
        np.testing.assert_allclose(terms["loss"], [transport + 2 * kl], rtol=1e-5)


@pytest.mark.parametrize("gamma", [0.5, 0.25, 1.0])
@pytest.mark.parametrize("uniform", [True, False])
def test_ot_loss_equals_a_transcription_of_the_reference(gamma, uniform):
    """Random softmax samples (3 experts x 2 samples, 3 classes) against 4 annotations: the
    IoU cost, the greedy plan and the loss's three batch means as `OT_loss.forward` computes
    them (gamma = 1 takes the reference's nearest-sample branch)."""
    rng = np.random.default_rng(int(gamma * 8) + uniform)
    b, k, s, m, c = 3, 3, 2, 4, 3
    logits = rng.standard_normal((b, k * s, 5, 5, c)) * 2
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    annotations = rng.integers(0, c, (b, m, 5, 5))
    gate = rng.dirichlet(np.ones(k), b)
    prob = np.repeat(gate, s, axis=-1) / s  # expert-major, as the reference's expand/permute
    prob_gt = np.full((b, m), 1 / m) if uniform else rng.dirichlet(np.ones(m), b)

    cost = _reference_iou_cost(probabilities, annotations)
    got_cost = mose.iou_cost(probabilities.astype(np.float32), annotations, c).numpy()
    np.testing.assert_allclose(got_cost, cost, rtol=1e-5)
    loss, seg_loss, kl_loss, plan = _reference_ot_loss(cost, prob, prob_gt, gamma, beta=1.0)
    np.testing.assert_allclose(mose.transport_plan(cost, prob_gt, gamma), plan, atol=1e-6)
    np.testing.assert_allclose(plan.sum(1), prob_gt, rtol=1e-12)
    terms = mose.ot_loss(got_cost, prob, None if uniform else prob_gt, gamma, beta=1.0)
    for key, expected in (("loss", loss), ("transport", seg_loss), ("kl", kl_loss)):
        assert float(tf.reduce_mean(terms[key])) == pytest.approx(expected, rel=1e-5), key


def test_the_cost_leaves_ignored_pixels_out_and_ce_averages_over_valid_pixels():
    """An annotation's 255 pixels count in neither the IoU nor the cross-entropy: the costs
    equal those of the valid pixels alone (the IoU against the transcription)."""
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((1, 2, 1, 12, 3)).astype(np.float32)
    annotations = rng.integers(0, 3, (1, 1, 1, 12)).astype(np.int32)
    annotations[..., :4] = IGNORE
    probabilities = tf.nn.softmax(logits).numpy()
    kept = slice(4, None)
    np.testing.assert_allclose(
        mose.iou_cost(probabilities, annotations, 3),
        _reference_iou_cost(probabilities[..., kept, :].astype(np.float64),
                            annotations[..., kept]), rtol=1e-5)
    log_p = tf.nn.log_softmax(logits).numpy()[0, :, 0, kept]  # (2, 8, 3)
    labels = annotations[0, 0, 0, kept]
    expected = -log_p[:, np.arange(8), labels].mean(-1)
    np.testing.assert_allclose(mose.ce_cost(logits, annotations, 3)[0, :, 0], expected,
                               rtol=1e-5)


def test_the_models_loss_is_ot_loss_of_its_own_weighted_samples():
    """`loss_terms` on all annotations with their weights: `ot_loss` of the IoU cost of the
    compact representation's samples (the seed generator rewound, so both draw the same
    noise), against every annotation, with the gate's weights / S."""
    model = MixtureOfStochasticExperts(num_classes=3, num_experts=2, latent_dim=2,
                                       samples_per_expert=3, beta=2.0, gamma=0.25, **SMALL)
    images, _ = random_batch(num_classes=3, batch=2, size=8)
    annotations = np.random.default_rng(4).integers(0, 3, (2, 3, 8, 8)).astype(np.int32)
    weights = np.array([0.5, 0.3, 0.2], np.float32)
    model.build(images.shape)
    state = model.seed_generator.state.numpy()
    terms = model.loss_terms(images, annotations, weights)
    model.seed_generator.state.assign(state)
    logits, sample_weights = model.weighted_sample(images)
    assert logits.shape == (2, 6, 8, 8, 3)
    cost = mose.iou_cost(tf.nn.softmax(logits), annotations, 3)
    expected = mose.ot_loss(cost, sample_weights, np.broadcast_to(weights, (2, 3)), 0.25, 2.0)
    for key in model.TERMS:
        np.testing.assert_allclose(terms[key], expected[key], rtol=1e-5, err_msg=key)


# ---------------------------------------------------------------------- the gate and sampling
def test_the_gates_weights_sum_to_one_and_depend_on_the_image():
    model = MixtureOfStochasticExperts(num_experts=5, **SMALL)
    images, _ = random_batch(batch=3, size=8)
    images[1] *= 0.1
    weights = model.expert_weights(images).numpy()
    assert weights.shape == (3, 5) and np.all(weights >= 0)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)
    assert not np.allclose(weights[0], weights[1])


def test_standard_samples_draw_experts_by_their_weights_then_from_their_gaussian():
    """20000 latents per image from experts at (0, 0), (10, 0) and (0, 10) with scale 1/2:
    each latent's expert is the nearest mean; their frequencies match the weights within 5
    standard errors, and the offsets from the means have mean 0 and standard deviation 1/2."""
    model = MixtureOfStochasticExperts(num_experts=3, latent_dim=2, **SMALL)
    model.build((None, 8, 8, 1))
    loc = np.array([[0, 0], [10, 0], [0, 10]], np.float32)
    model.expert_loc.assign(loc)
    model.expert_log_scale.assign(np.full((3, 2), math.log(0.5), np.float32))
    weights = np.array([[0.7, 0.2, 0.1], [0.05, 0.15, 0.8]], np.float32)
    n = 20000
    z, experts = (t.numpy() for t in model.latents(weights, n, seed=3))
    assert z.shape == (2, n, 2)
    nearest = np.linalg.norm(z[:, :, None] - loc, axis=-1).argmin(-1)
    np.testing.assert_array_equal(nearest, experts)
    frequencies = np.stack([np.bincount(e, minlength=3) / n for e in experts])
    assert np.all(np.abs(frequencies - weights) < 5 * np.sqrt(weights * (1 - weights) / n))
    offsets = z - loc[experts]
    assert np.all(np.abs(offsets.mean(1)) < 5 * 0.5 / np.sqrt(n))
    np.testing.assert_allclose(offsets.std(1), 0.5, rtol=0.03)
    # The seed pins the draw.
    np.testing.assert_array_equal(model.latents(weights, n, seed=3)[0], z)


def test_the_weighted_representation_has_each_experts_samples_with_its_weight():
    """With scales near 0, expert k's S samples are all its mean's decoding, weighted
    `pi_k / S`; `call` is the decoding of the heaviest expert's mean."""
    model = MixtureOfStochasticExperts(num_classes=3, num_experts=3, latent_dim=2, **SMALL)
    images, _ = random_batch(batch=2, size=8)
    model.build(images.shape)
    model.expert_log_scale.assign(np.full((3, 2), -30.0, np.float32))
    logits, weights = (t.numpy() for t in model.weighted_sample(images, 2, seed=0))
    gate = model.expert_weights(images).numpy()
    assert logits.shape == (2, 6, 8, 8, 3)
    np.testing.assert_allclose(weights, np.repeat(gate, 2, axis=-1) / 2, rtol=1e-6)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)
    features = model.unet(images)
    means = np.broadcast_to(model.expert_loc.numpy(), (2, 3, 2))
    at_means = model.decode(features, means).numpy()
    np.testing.assert_allclose(logits[:, 0::2], at_means, atol=1e-5)
    np.testing.assert_allclose(logits[:, 1::2], at_means, atol=1e-5)
    assert not np.allclose(at_means[:, 0], at_means[:, 1])
    np.testing.assert_allclose(model(images), at_means[np.arange(2), gate.argmax(-1)],
                               atol=1e-5)


# ---------------------------------------------------------------------- arguments, training
@pytest.mark.parametrize("argument, value, message", [
    ("num_experts", 0, "`num_experts` must be an integer from 1 to 256"),
    ("samples_per_expert", 2.0, "`samples_per_expert` must be an integer from 1"),
    ("cost", "dice", r"`cost` must be one of \('iou', 'ce'\)"),
    ("gamma", 0.0, r"`gamma` must be a finite number > 0.0 and <= 1.0"),
    ("gamma", 1.5, r"`gamma` must be a finite number > 0.0 and <= 1.0"),
    ("gamma_switch_steps", -1, "`gamma_switch_steps` must be None or an integer >= 0")])
def test_bad_arguments_are_refused(argument, value, message):
    with pytest.raises(ValueError, match=rf"{message}.*Received: {argument}="):
        MixtureOfStochasticExperts(**{argument: value})


def test_gamma_becomes_one_after_the_switch_step():
    model = MixtureOfStochasticExperts(gamma=0.5, gamma_switch_steps=2, **SMALL)
    assert model._gamma() == 0.5  # not compiled: no optimizer steps
    model.compile(optimizer="sgd")
    model.optimizer.build(model.trainable_variables)
    assert float(model._gamma()) == 0.5
    model.optimizer.iterations.assign(2)
    assert float(model._gamma()) == 1.0


def test_fit_on_all_annotations_with_their_weights():
    """`(images, annotations, annotation_weights)` batches train on the loss over every
    annotation: the logged loss is the mean of `loss_terms` on that batch (the noise
    rewound), weight decay 0."""
    model = MixtureOfStochasticExperts(num_classes=3, num_experts=2, samples_per_expert=2,
                                       weight_decay=0.0, **SMALL)
    images, _ = random_batch(num_classes=3, batch=2, size=8)
    annotations = np.random.default_rng(5).integers(0, 3, (2, 4, 8, 8)).astype(np.int32)
    weights = np.tile(np.float32([0.4, 0.3, 0.2, 0.1]), (2, 1))
    model.build(images.shape)
    state = model.seed_generator.state.numpy()
    expected = float(tf.reduce_mean(model.loss_terms(images, annotations, weights)["loss"]))
    model.seed_generator.state.assign(state)
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    data = tf.data.Dataset.from_tensor_slices((images, annotations, weights)).batch(2)
    history = model.fit(data, epochs=1, verbose=0).history
    assert history["loss"][0] == pytest.approx(expected, rel=1e-5)


def test_train_mose_on_flips_writes_the_model(tmp_path):
    workdir = str(tmp_path / "run")
    model, history = training.train(
        workdir, model="mose", dataset="flips", epochs=1, steps_per_epoch=2, batch_size=2,
        image_size=16, num_examples=4, num_channels=[4, 8], convs_per_block=1, num_experts=2,
        samples_per_expert=2, verbose=0)
    assert isinstance(model, MixtureOfStochasticExperts)
    assert np.all(np.isfinite(history.history["loss"]))
    loaded = keras.models.load_model(os.path.join(workdir, "model.keras"))
    assert isinstance(loaded, MixtureOfStochasticExperts)
    assert (loaded.num_experts, loaded.samples_per_expert) == (2, 2)
    images = np.random.default_rng(0).random((1, 16, 16, model.image_channels), np.float32)
    np.testing.assert_array_equal(loaded.sample(images, 2, seed=0),
                                  model.sample(images, 2, seed=0))


class _Recorder(MixtureOfStochasticExperts):
    """MoSE noting the shape of the annotations each traced training step receives."""

    shapes = []

    def _loss_terms(self, images, labels):
        annotations = labels[0] if isinstance(labels, tuple) else labels[:, None]
        _Recorder.shapes.append(tuple(annotations.shape))
        return super()._loss_terms(images, labels)


class _OneRecorder(_Recorder):
    TRAINS_ON_ALL_ANNOTATIONS = False


def test_train_gives_mose_every_annotation_and_the_one_drawn_to_the_others(tmp_path):
    """MoSE's transport runs against all of an image's annotations: `train` hands a model that
    declares `TRAINS_ON_ALL_ANNOTATIONS` batches of `(images, annotations (b, A, h, w),
    weights)` (flips: its 32 modes), where the other models get one drawn per image."""
    from tfprobunet import catalog, models

    assert MixtureOfStochasticExperts.TRAINS_ON_ALL_ANNOTATIONS
    assert not models.ProbabilisticUNet.TRAINS_ON_ALL_ANNOTATIONS
    settings = dict(dataset="flips", epochs=1, steps_per_epoch=1, batch_size=2, image_size=16,
                    num_examples=4, num_channels=[4, 8], convs_per_block=1, num_experts=2,
                    samples_per_expert=2, verbose=0)
    for name, cls, annotations in (("mose-all", _Recorder, 32), ("mose-one", _OneRecorder, 1)):
        _Recorder.shapes.clear()
        models.register(name, cls)
        try:
            training.train(str(tmp_path / name), model=name, **settings)
        finally:
            catalog.remove_model(name)
        assert _Recorder.shapes and set(_Recorder.shapes) == {(2, annotations, 16, 16)}


def test_served_features_then_samples_are_what_serving_default_gives(tmp_path):
    """A client computes an image's features and the gate's weights once (`features`), then
    asks `sample` for as many segmentations as it needs: only the decoder runs per sample, and
    the samples are those `serving_default` (and `model.sample`) give for the same seed.
    Weights that are not a distribution over the experts are refused, INVALID_ARGUMENT."""
    from tfprobunet import serving  # not in `make test-compat`'s set

    model = MixtureOfStochasticExperts(num_classes=3, num_experts=3, latent_dim=2, **SMALL)
    images = np.random.default_rng(5).random((2, 16, 16, 1), dtype=np.float32)
    model(images)
    path = serving.export_for_serving(model, str(tmp_path), "mose")
    servable = serving.Servable("mose", 1, path)
    try:
        features = servable.run("features", {"images": images})
        assert features["features"].shape == (2, 16, 16, 4)
        np.testing.assert_allclose(features["expert_weights"], model.expert_weights(images),
                                   atol=1e-6)
        seed = np.int32([3, 4])
        sampled = servable.run("sample", {**features, "num_samples": np.int32(5), "seed": seed})
        whole = servable.run("serving_default", {"images": images, "num_samples": np.int32(5),
                                                 "seed": seed})
        expected = tf.nn.softmax(model.sample(images, 5, seed=tf.constant([3, 4]))).numpy()
        assert sampled["probabilities"].shape == (2, 5, 16, 16, 3)
        for served in (sampled, whole):
            np.testing.assert_allclose(served["probabilities"], expected, atol=1e-5)
            np.testing.assert_array_equal(served["masks"], expected.argmax(-1))
        # Through the gRPC client, on an image of another size (padded to the multiple of
        # two levels, 2, and cropped back).
        with serving.ModelServer(str(tmp_path), port=0, rest_port=None, poll_seconds=0) as running, \
                serving.GrpcClient(f"127.0.0.1:{running.port}", "mose") as client:
            odd = images[:1, :13, :15]
            computed = client.features(odd)
            assert set(computed) == {"features", "expert_weights"}
            drawn = client.sample(computed, 3, seed=[3, 4])
            padded = np.pad(odd, ((0, 0), (0, 1), (0, 1), (0, 0)), mode="edge")  # as clients do
            expected = tf.nn.softmax(model.sample(padded, 3, seed=tf.constant([3, 4]))).numpy()
            np.testing.assert_allclose(drawn["probabilities"], expected[:, :, :13, :15],
                                       atol=1e-5)
        for weights, says in ((np.full((2, 3), 0.5, np.float32), "sum to 1 per image"),
                              (np.float32([[1.5, -0.5, 0.0]] * 2), "must be >= 0"),
                              (np.full((2, 2), 0.5, np.float32), "signature's [-1, 3]")):
            with pytest.raises(serving.ServingError) as refused:
                servable.run("sample", {"features": features["features"],
                                        "expert_weights": weights, "num_samples": np.int32(2),
                                        "seed": seed})
            assert refused.value.code == "INVALID_ARGUMENT"
            assert says in refused.value.message, refused.value.message
    finally:
        servable.close()
