"""Metrics against hand-worked cases and a plain nested-loop reference written here."""

import numpy as np
import pytest
import tensorflow as tf

from tfprobunet import metrics
from tfprobunet.data import synthetic


def _mask(pixels, size=4, label=1):
    """A (size, size) map with `label` at the flat pixel indices given, 0 elsewhere."""
    m = np.zeros(size * size, np.int32)
    m[list(pixels)] = label
    return m.reshape(size, size)


def _stack(*maps):
    return np.stack(maps)[None]  # (1, n, h, w)


A = _mask([0, 1, 2, 3])
B = _mask([2, 3, 4, 5])  # overlaps A in 2 pixels: IoU 2/6
C = _mask([8, 9, 10, 11])  # disjoint from A and B
EMPTY = _mask([])


def reference_distance(x, y, num_classes, classes=None, ignore=255):
    """d = 1 - IoU pixel by pixel and class by class, following DESIGN section 5 literally."""
    if classes is None:
        classes = [1] if num_classes == 2 else range(num_classes)
    valid = (x != ignore) & (y != ignore)
    ious = []
    for c in classes:
        union = np.sum(((x == c) | (y == c)) & valid)
        if union:
            ious.append(np.sum((x == c) & (y == c) & valid) / union)
    return 0.0 if not ious else 1.0 - np.mean(ious)


def reference_ged(samples, annotations, num_classes, classes=None, weights=None):
    """Eq. 5 of the paper with explicit loops over every pair, self-pairs included."""
    out = []
    for s_maps, y_maps in zip(samples, annotations):
        w = np.full(len(y_maps), 1 / len(y_maps)) if weights is None else weights / weights.sum()
        cross = np.mean([sum(w[j] * reference_distance(s, y, num_classes, classes)
                             for j, y in enumerate(y_maps)) for s in s_maps])
        diversity = np.mean([reference_distance(s, t, num_classes, classes)
                             for s in s_maps for t in s_maps])
        truth = sum(w[i] * w[j] * reference_distance(y, z, num_classes, classes)
                    for i, y in enumerate(y_maps) for j, z in enumerate(y_maps))
        out.append(2 * cross - diversity - truth)
    return np.array(out)


def test_distance_hand_worked():
    d = metrics.pairwise_distances(_stack(A, EMPTY), _stack(A, B, C, EMPTY), num_classes=2)[0]
    np.testing.assert_allclose(d[0], [0.0, 1 - 2 / 6, 1.0, 1.0])
    # Both empty: 0; one empty: 1.
    np.testing.assert_allclose(d[1], [1.0, 1.0, 1.0, 0.0])


def test_multiclass_skips_classes_absent_from_both():
    x = np.array([[0, 0, 1, 1]])
    y = np.array([[0, 0, 1, 2]])
    # class 0: IoU 1; class 1: 1/2; class 2: 0 (present in y only) -> mean 1/2.
    for k in (3, 4, 6):  # classes 3..5 are absent from both and must not count
        assert metrics.pairwise_distances(x[None, None], y[None, None], k)[0, 0, 0] == \
            pytest.approx(0.5)
    # Scoring only classes 1 and 2: mean(1/2, 0).
    assert metrics.pairwise_distances(x[None, None], y[None, None], 3, classes=[1, 2])[0, 0, 0] \
        == pytest.approx(0.75)
    # No scored class in either map: d = 0.
    assert metrics.pairwise_distances(x[None, None], y[None, None], 4, classes=[3])[0, 0, 0] == 0


def test_ignore_label_left_out_of_the_pair():
    x = _mask([0, 1])
    y = _mask([0])
    y[0, 1] = 255
    assert metrics.pairwise_distances(_stack(x), _stack(y), 2)[0, 0, 0] == 0.0
    assert metrics.pairwise_distances(_stack(x), _stack(_mask([0])), 2)[0, 0, 0] == 0.5


def test_ged_hand_worked():
    # Identical deterministic masks: 0.
    assert metrics.generalized_energy_distance(_stack(A, A, A), _stack(A, A), 2)[0] == 0.0
    # Two disjoint masks, S always A, Y always C: 2*1 - 0 - 0.
    assert metrics.generalized_energy_distance(_stack(A, A), _stack(C), 2)[0] == 2.0
    # S uniform on {A, C}, Y always A: 2*(1/2) - (0+1+1+0)/4 - 0 = 1/2.
    assert metrics.generalized_energy_distance(_stack(A, C), _stack(A), 2)[0] == 0.5
    # S always A, Y uniform on {A, B}: 2*(0 + 2/3)/2 - 0 - (2 * 2/3)/4 = 2/3 - 1/3.
    assert metrics.generalized_energy_distance(_stack(A), _stack(A, B), 2)[0] == \
        pytest.approx(1 / 3)
    # Empty conventions: S = {empty}, Y = {empty, A}: 2*(0+1)/2 - 0 - (0+1+1+0)/4 = 1/2.
    assert metrics.generalized_energy_distance(_stack(EMPTY), _stack(EMPTY, A), 2)[0] == 0.5


def test_ged_without_self_pairs_hand_worked():
    # S = {A, empty}, Y = {A, B}; d(A, B) = 1 - 1/3, an empty mask is at 1 from A and B.
    # Cross: (0 + 2/3 + 1 + 1) / 4 = 2/3. Samples: all pairs (0 + 1 + 1 + 0) / 4 = 1/2, distinct
    # pairs 1. Annotations: all pairs (2 * 2/3) / 4 = 1/3, distinct pairs 2/3.
    samples, annotations = _stack(A, EMPTY), _stack(A, B)
    assert metrics.generalized_energy_distance(samples, annotations, 2)[0] == \
        pytest.approx(4 / 3 - 1 / 2 - 1 / 3)
    assert metrics.generalized_energy_distance(samples, annotations, 2, self_pairs=False)[0] == \
        pytest.approx(4 / 3 - 1 - 2 / 3)
    # Annotations given with probabilities are a known distribution: their exact expectation.
    assert metrics.generalized_energy_distance(
        samples, annotations, 2, annotation_weights=[0.5, 0.5], self_pairs=False)[0] == \
        pytest.approx(4 / 3 - 1 - 1 / 3)
    with pytest.raises(ValueError, match="at least 2 samples per image.*Received: 1"):
        metrics.generalized_energy_distance(_stack(A), annotations, 2, self_pairs=False)


def test_ged_without_self_pairs_is_unbiased_for_draws_from_the_truth():
    """k independent draws from a known distribution: the mean GED without self-pairs is 0
    (the estimator is unbiased), with them E[d(Y, Y')] / k."""
    rng = np.random.default_rng(0)
    modes = rng.integers(0, 2, (5, 6, 6))
    probabilities = np.array([0.4, 0.3, 0.15, 0.1, 0.05])
    draws = rng.choice(5, size=(4000, 4), p=probabilities)
    samples = modes[draws]
    annotations = np.broadcast_to(modes, (4000,) + modes.shape)
    expected = np.einsum("ij,i,j->", metrics.pairwise_distances(modes[None], modes[None], 2)[0],
                         probabilities, probabilities)
    for self_pairs, mean in ((True, expected / 4), (False, 0.0)):
        ged = metrics.generalized_energy_distance(samples, annotations, 2,
                                                  annotation_weights=probabilities,
                                                  self_pairs=self_pairs)
        assert abs(ged.mean() - mean) < 4 * ged.std() / np.sqrt(len(ged))


@pytest.mark.parametrize("ignored", [True, False])  # (the distances take a shortcut without)
@pytest.mark.parametrize("num_classes,classes", [(2, None), (4, None), (5, [1, 3])])
def test_ged_matches_nested_loop_reference(num_classes, classes, ignored):
    rng = np.random.default_rng(num_classes)
    samples = rng.integers(0, num_classes, (3, 5, 6, 6))
    annotations = rng.integers(0, num_classes, (3, 4, 6, 6))
    if ignored:
        samples[rng.random(samples.shape) < 0.1] = 255
        annotations[rng.random(annotations.shape) < 0.1] = 255
    annotations[0, 1] = 0  # an empty mask for the binary case
    weights = rng.random(4)
    for w in (None, weights):
        expected = reference_ged(samples, annotations, num_classes, classes, w)
        got = metrics.generalized_energy_distance(samples, annotations, num_classes, classes,
                                                  annotation_weights=w)
        np.testing.assert_allclose(got, expected, atol=1e-6)
        got_tf = metrics.generalized_energy_distance_tf(samples, annotations, num_classes,
                                                        classes, annotation_weights=w)
        np.testing.assert_allclose(got_tf.numpy(), expected, atol=1e-5)


def test_exact_flips_distribution_against_itself_is_zero():
    _, base = synthetic.flips_arrays(2, 32, seed=3)
    modes, probabilities = synthetic.flip_modes()
    maps = synthetic.mode_label_maps(base, modes).numpy()  # (2, 32, 32, 32)
    k = synthetic.flips_num_classes()
    ged = metrics.generalized_energy_distance(maps, maps, k, sample_weights=probabilities,
                                              annotation_weights=probabilities)
    np.testing.assert_allclose(ged, 0.0, atol=1e-12)
    # The same 32 maps counted uniformly are a different distribution: positive distance.
    assert np.all(metrics.generalized_energy_distance(maps, maps, k,
                                                      annotation_weights=probabilities) > 1e-3)


def test_weighted_samples_with_equal_weights_are_the_unweighted_ged():
    """MoSE's weighted representation with all weights equal (any constant: they are
    normalised) is the usual GED. (With `self_pairs=False` a weighted side counts as a known
    distribution and keeps its self-pairs, so only the default convention is compared.)"""
    rng = np.random.default_rng(7)
    samples = rng.integers(0, 3, (3, 6, 5, 5))
    annotations = rng.integers(0, 3, (3, 4, 5, 5))
    expected = metrics.generalized_energy_distance(samples, annotations, 3)
    for weights in (np.full(6, 1 / 6), np.full((3, 6), 3.0)):
        got = metrics.generalized_energy_distance(samples, annotations, 3,
                                                  sample_weights=weights)
        np.testing.assert_allclose(got, expected, rtol=1e-12)
    # ... and unequal weights change it.
    got = metrics.generalized_energy_distance(samples, annotations, 3,
                                              sample_weights=rng.dirichlet(np.ones(6), 3))
    assert np.all(np.abs(got - expected) > 1e-4)


def test_weighted_samples_ged_hand_worked_and_as_moses_code():
    """Samples {A, B} weighted (3/4, 1/4) against Y = {A}, with d(A, B) = 2/3 (IoU 2/6):
    E d(S, Y) = 1/4 * 2/3 = 1/6, E d(S, S') = 2 * 3/4 * 1/4 * 2/3 = 1/4 (the weighted pairs,
    as MoSE defines them), E d(Y, Y') = 0: GED = 2/6 - 1/4 = 1/12 (equal weights: 2 * 1/3 -
    1/3 = 1/3). On random binary maps with random weights on both sides, it is
    MoSE's `cal_metrics_batch` (`utils/metrics.py`): sum(d_sy * p_s p_y) doubled, less
    sum(d_ss * p_s p_s') and sum(d_yy * p_y p_y')."""
    ged = metrics.generalized_energy_distance
    assert ged(_stack(A, B), _stack(A), 2, sample_weights=[0.75, 0.25])[0] == \
        pytest.approx(1 / 12)
    assert ged(_stack(A, B), _stack(A), 2)[0] == pytest.approx(1 / 3)
    rng = np.random.default_rng(8)
    samples = rng.integers(0, 2, (2, 5, 6, 6))
    annotations = rng.integers(0, 2, (2, 3, 6, 6))
    samples[0, 1] = annotations[1, 0] = 0  # empty masks: MoSE's (0 + 1e-8) / (0 + 1e-8) = 1
    p_s = rng.dirichlet(np.ones(5), 2)
    p_y = rng.dirichlet(np.ones(3), 2)

    def iou_dist(m1, m2, eps=1e-8):
        intersection = np.sum(m1 * m2)
        return 1.0 - (intersection + eps) / (m1.sum() + m2.sum() - intersection + eps)

    def weighted(x, y, u, v):
        return sum(u[i] * v[j] * iou_dist(x[i], y[j]) for i in range(len(x))
                   for j in range(len(y)))

    expected = [2 * weighted(s, y, u, v) - weighted(s, s, u, u) - weighted(y, y, v, v)
                for s, y, u, v in zip(samples, annotations, p_s, p_y)]
    np.testing.assert_allclose(ged(samples, annotations, 2, sample_weights=p_s,
                                   annotation_weights=p_y), expected, atol=1e-7)


def test_weights_must_fit():
    with pytest.raises(ValueError, match=r"shape \(2,\) or \(1, 2\)"):
        metrics.generalized_energy_distance(_stack(A), _stack(A, B), 2, annotation_weights=[1.0])
    with pytest.raises(ValueError, match="non-negative"):
        metrics.generalized_energy_distance(_stack(A), _stack(A, B), 2,
                                            annotation_weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="argmax"):
        metrics.generalized_energy_distance(np.zeros((1, 2, 4, 4, 2)), _stack(A), 2)


def test_hungarian_iou_constructed():
    assert metrics.hungarian_iou(_stack(A, C), _stack(C, A), 2)[0] == 1.0
    assert metrics.hungarian_iou(_stack(A, A), _stack(A, C), 2)[0] == 0.5
    # 3 samples against 2 annotations: both repeated to 6; best matching 5 of 6 pairs exact.
    assert metrics.hungarian_iou(_stack(A, A, C), _stack(A, C), 2)[0] == pytest.approx(5 / 6)
    # 4 samples, annotations repeated twice: {A, B, A, A} against {A, B, A, B}: 3 exact + A-B.
    assert metrics.hungarian_iou(_stack(A, B, A, A), _stack(A, B), 2)[0] == \
        pytest.approx((3 + 2 / 6) / 4)


def test_weighted_hm_iou_is_moses_transport_matching():
    """MoSE's HM-IoU for weighted samples: the exact transport plan P between the weights on
    d = 1 - IoU, scored sum(P * (1 - d)). By hand, samples weighted (3/4, 1/4), annotations
    (1/2, 1/2), d = [[0.1, 0.6], [0.4, 0.2]]: every plan is [[x, 3/4 - x], [1/2 - x, x - 1/4]],
    x in [1/4, 1/2], of cost 0.6 - 0.7 x: x = 1/2, cost 1/4, HM-IoU 3/4."""
    cross = np.array([[[0.1, 0.6], [0.4, 0.2]]])
    assert metrics.matched_iou(cross, sample_weights=[0.75, 0.25])[0] == pytest.approx(0.75)
    # Equal weights, a dividing m: the matching of the annotations tiled to m (a transport
    # plan of equal weights has an optimum on a permutation; Birkhoff-von Neumann).
    rng = np.random.default_rng(0)
    cross = rng.random((5, 8, 4))
    np.testing.assert_allclose(
        metrics.matched_iou(cross, sample_weights=np.full(8, 1 / 8)),
        metrics.matched_iou(cross, "tiled"), atol=1e-9)
    # On label maps: {A, C} weighted (0.9, 0.1) against {A, C} equally: 0.5 of A-A, 0.1 of
    # C-C, 0.4 of A-C (IoU 0): 0.6.
    assert metrics.hungarian_iou(_stack(A, C), _stack(A, C), 2, sample_weights=[0.9, 0.1])[0] \
        == pytest.approx(0.6)
    with pytest.raises(ValueError, match=r"`sample_weights` must be non-negative"):
        metrics.matched_iou(cross, sample_weights=-np.ones(8))


def test_assign_modes_and_frequencies():
    near_a = _mask([0, 1, 2])  # IoU 3/4 with A, 1/5 with B
    samples = _stack(near_a, B, EMPTY, C)
    modes = _stack(A, B, EMPTY)
    assignments = metrics.assign_modes(samples, modes, 2)
    np.testing.assert_array_equal(assignments, [[0, 1, 2, 0]])  # C is 1 from A, B and EMPTY
    np.testing.assert_allclose(metrics.mode_frequencies(assignments, 4), [0.5, 0.25, 0.25, 0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.mode_frequencies(assignments, 2)


def test_uncertainty_maps_hand_worked():
    p = np.zeros((1, 2, 1, 2, 2))
    p[0, :, 0, 0] = [1.0, 0.0]  # samples agree
    p[0, 0, 0, 1] = [1.0, 0.0]  # samples disagree
    p[0, 1, 0, 1] = [0.0, 1.0]
    entropy, variance = metrics.uncertainty_maps(p)
    np.testing.assert_allclose(entropy, [[[0.0, np.log(2)]]], atol=1e-9)
    np.testing.assert_allclose(variance, [[[0.0, 0.25]]])


def test_keras_metric_averages_images_over_batches():
    rng = np.random.default_rng(0)
    samples = rng.integers(0, 3, (5, 4, 8, 8))
    annotations = rng.integers(0, 3, (5, 3, 8, 8))
    metric = metrics.GeneralizedEnergyDistance(num_classes=3)
    metric.update_state(samples[:2], annotations[:2])
    metric.update_state(samples[2:], annotations[2:])
    expected = metrics.generalized_energy_distance(samples, annotations, 3).mean()
    assert float(metric.result()) == pytest.approx(expected, abs=1e-5)
    restored = metrics.GeneralizedEnergyDistance.from_config(metric.get_config())
    assert restored.num_classes == 3 and restored.name == "ged"


def test_tf_distance_runs_in_a_graph_with_unknown_shapes():
    fn = tf.function(lambda a, b: metrics.pairwise_distances_tf(a, b, 2),
                     input_signature=[tf.TensorSpec([None, None, None, None], tf.int32)] * 2)
    d = fn(_stack(A, EMPTY).astype(np.int32), _stack(B, EMPTY).astype(np.int32))
    np.testing.assert_allclose(d.numpy()[0], [[1 - 2 / 6, 1.0], [1.0, 0.0]], atol=1e-6)


def test_log_pearson_r_equals_the_hand_worked_cases():
    # log2 p = (-1, -2, -2), log2 f = (-2, -1, -2): deviations (2, -1, -1)/3 and (-1, 2, -1)/3,
    # covariance -3/9 over variance 6/9: r = -1/2.
    assert metrics.log_pearson_r([0.25, 0.5, 0.25], [0.5, 0.25, 0.25], 100) == pytest.approx(-0.5)
    # A mode never sampled counts as half a sample: with 2 samples, 0 -> 1/4, so log2 f =
    # (-1, -1, -2), deviations (1, 1, -2)/3: covariance 3/9 over 6/9, r = 1/2.
    assert metrics.log_pearson_r([0.5, 0.5, 0.0], [0.5, 0.25, 0.25], 2) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="> 0"):
        metrics.log_pearson_r([0.5, 0.5], [1.0, 0.0], 10)


def test_flip_frequencies_equal_a_hand_count():
    # One image, 1x4 pixels: class 1 at pixels 0-1 (twin 3), class 2 at pixel 2 (twin 4), 0.
    # Annotation 0 is unflipped; annotation 1 flips class 1; annotation 2 flips class 2.
    annotations = np.array([[[[1, 1, 2, 0]], [[3, 3, 2, 0]], [[1, 1, 4, 0]]]])
    weights = [0.5, 0.3, 0.2]
    samples = np.array([[[[3, 1, 2, 0]],    # half of class 1 flipped
                         [[3, 3, 4, 0]],    # both flipped
                         [[1, 1, 2, 0]],    # none
                         [[1, 1, 4, 0]]]])  # class 2 flipped
    assert metrics.flip_pairs(annotations) == [(1, 3), (2, 4)]
    result = metrics.flip_frequencies(samples, annotations, weights)
    # Class 1: 8 sample pixels, 3 say 3; truth 0.3. Class 2: 4 sample pixels, 2 say 4; truth 0.2.
    assert result[(1, 3)] == pytest.approx((3 / 8, 0.3))
    assert result[(2, 4)] == pytest.approx((2 / 4, 0.2))
    # Equally likely annotations: 1/3 each.
    assert metrics.flip_frequencies(samples, annotations)[(2, 4)][1] == pytest.approx(1 / 3)


# ------------------------------------------------------------ calibration metrics (issue 27)

def _phiseg_variance_ncc_dist(sample_arr, gt_arr):
    """A direct transcription of `utils.variance_ncc_dist` and `utils.ncc` of
    baumgach/PHiSeg-code: loops, `np.correlate`, its normalisation. `sample_arr (N, X, Y, K)`
    softmax samples, `gt_arr (M, X, Y, K)` one-hot annotations."""
    def pixel_wise_xent(m_samp, m_gt, eps=1e-8):
        return -1.0 * np.sum(m_gt * np.log(m_samp + eps), axis=-1)

    def ncc(a, v):
        a, v = a.flatten(), v.flatten()
        a = (a - np.mean(a)) / (np.std(a) * len(a))
        v = (v - np.mean(v)) / np.std(v)
        return np.correlate(a, v)

    mean_seg = np.mean(sample_arr, axis=0)
    n, m = sample_arr.shape[0], gt_arr.shape[0]
    e_ss = np.mean([pixel_wise_xent(sample_arr[i], mean_seg) for i in range(n)], axis=0)
    e_sy = np.zeros((m, n) + sample_arr.shape[1:3])
    for j in range(m):
        for i in range(n):
            e_sy[j, i] = pixel_wise_xent(sample_arr[i], gt_arr[j])
    e_sy = np.mean(e_sy, axis=1)
    return float((1 / m) * sum(ncc(e_ss, e_sy[j]) for j in range(m))[0])


def test_ncc_hand_worked_one_annotation_with_and_one_against_the_samples():
    """Identical samples with foreground probabilities 0.5, 0.9, 0.1 on three pixels: the
    γ-map is their entropies [ln 2, H(0.9), H(0.9)]. Annotation [1, 1, 0] misses by
    [ln 2, -ln 0.9, -ln 0.9] (same shape as the γ-map: NCC 1), annotation [1, 0, 1] by
    [ln 2, -ln 0.1, -ln 0.1] (the opposite shape: NCC -1); their mean is 0."""
    q = np.array([0.5, 0.9, 0.1])
    probabilities = np.stack([1 - q, q], axis=-1).reshape(1, 1, 1, 3, 2).repeat(2, axis=1)
    with_ = np.array([[[1, 1, 0]]])
    against = np.array([[[1, 0, 1]]])
    one = lambda a: metrics.normalized_cross_correlation(probabilities, a[:, None])  # noqa: E731
    np.testing.assert_allclose(one(with_), [1.0], atol=1e-12)
    np.testing.assert_allclose(one(against), [-1.0], atol=1e-12)
    both = np.concatenate([with_, against])[None]  # (1, 2, 1, 3)
    np.testing.assert_allclose(metrics.normalized_cross_correlation(probabilities, both), [0.0],
                               atol=1e-12)


def test_ncc_equals_phiseg_code_on_random_maps():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 6, 7, 3))
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    annotations = rng.integers(0, 3, (3, 4, 6, 7))
    ours = metrics.normalized_cross_correlation(probabilities, annotations)
    reference = [_phiseg_variance_ncc_dist(probabilities[i], np.eye(3)[annotations[i]])
                 for i in range(3)]
    np.testing.assert_allclose(ours, reference, rtol=1e-10)


def test_ncc_leaves_ignored_pixels_out_and_is_nan_for_a_constant_map():
    rng = np.random.default_rng(1)
    probabilities = rng.dirichlet([1, 1], size=(1, 4, 5, 5))
    annotations = rng.integers(0, 2, (1, 2, 5, 5))
    ignored = annotations.copy()
    ignored[:, 0, 4, :] = 255  # the last row is ignored in one annotation: left out of all
    np.testing.assert_allclose(
        metrics.normalized_cross_correlation(probabilities, ignored),
        metrics.normalized_cross_correlation(probabilities[:, :, :4], annotations[:, :, :4]))
    same = np.full_like(probabilities, 0.5)  # every pixel alike: the γ-map is constant
    assert np.isnan(metrics.normalized_cross_correlation(same, annotations)[0])


def test_ece_hand_worked():
    """Pixels p = 0.05, 0.15, 0.95, 0.95 against two graders' shares 0, 0.5, 1, 0.5: bins
    [0, 0.1) |0.05 - 0|, [0.1, 0.2) |0.15 - 0.5|, [0.9, 1] |0.95 - 0.75|, weighted 1/4, 1/4,
    2/4: 0.0125 + 0.0875 + 0.1 = 0.2."""
    probabilities = np.array([[[0.05, 0.15, 0.95, 0.95]]])
    annotations = np.array([[[[0, 1, 1, 1]], [[0, 0, 1, 0]]]])
    assert metrics.expected_calibration_error(probabilities, annotations) == pytest.approx(0.2)


def _ece_by_loops(p, target, bins):
    """The published formula, sum_m |B_m|/n |acc(B_m) - conf(B_m)|, bin by bin."""
    total = 0.0
    for m in range(bins):
        low, high = m / bins, (m + 1) / bins
        inside = (p >= low) & ((p < high) if m < bins - 1 else (p <= high))
        if inside.any():
            total += inside.sum() / p.size * abs(target[inside].mean() - p[inside].mean())
    return total


@pytest.mark.parametrize("bins", [1, 10, 15])
def test_ece_equals_the_formula_bin_by_bin_and_scores_one_class_against_the_rest(bins):
    rng = np.random.default_rng(bins)
    annotations = rng.integers(0, 3, (2, 4, 6, 5))
    probabilities = rng.random((2, 6, 5))
    probabilities[0, 0, 0] = 1.0  # the last bin is closed
    for k in range(3):
        target = (annotations == k).mean(axis=1)
        assert metrics.expected_calibration_error(
            probabilities, annotations, bins=bins, positive_class=k) == pytest.approx(
            _ece_by_loops(probabilities.ravel(), target.ravel(), bins), abs=1e-12)
    # A perfectly calibrated predictor (p = the graders' share) scores 0 with a bin per value.
    share = (annotations == 1).mean(axis=1)
    assert metrics.expected_calibration_error(share, annotations, bins=4) == pytest.approx(0.0)


def test_sample_diversity_hand_worked_and_as_the_unbiased_geds_term():
    """Samples A, A, B with A and B disjoint: of the 6 ordered pairs of different samples, 4
    have d = 1 and 2 have d = 0: 2/3."""
    a = np.zeros((4, 4), int)
    a[:2] = 1
    b = 1 - a
    samples = np.stack([a, a, b])[None]
    np.testing.assert_allclose(metrics.sample_diversity(samples, 2), [2 / 3])
    # It is the E[d(S, S')] that the unbiased GED subtracts.
    rng = np.random.default_rng(2)
    samples = rng.integers(0, 2, (3, 5, 6, 6))
    annotations = rng.integers(0, 2, (3, 4, 6, 6))
    cross = metrics.pairwise_distances(samples, annotations, 2).mean(axis=(1, 2))
    truth = metrics.pairwise_distances(annotations, annotations, 2)
    truth = (truth.sum(axis=(1, 2))) / (4 * 3)
    np.testing.assert_allclose(
        metrics.generalized_energy_distance(samples, annotations, 2, self_pairs=False),
        2 * cross - metrics.sample_diversity(samples, 2) - truth)
    with pytest.raises(ValueError, match="at least 2 samples"):
        metrics.sample_diversity(samples[:, :1], 2)


def _dpersona_ged(samples, annotations):
    """D-Persona's `calc_generalised_energy_distance` (ycwu1997/D-Persona,
    code/lib/metrics_set.py), transcribed for binary masks: IoU = |x & y| / (|x | y| + 1e-8),
    NaN set to 1 (never reached), background excluded; every pair, self-pairs included."""
    def d(x, y):
        x, y = x.astype(bool), y.astype(bool)
        return 1 - (x & y).sum() / ((x | y).sum() + 1e-8)
    return (2 * np.mean([d(s, y) for s in samples for y in annotations])
            - np.mean([d(s, t) for s in samples for t in samples])
            - np.mean([d(y, z) for y in annotations for z in annotations]))


def _phiseg_ged(samples, annotations):
    """PHiSeg's `utils.generalised_energy_distance` with its LIDC call (nlabels=1,
    label_range=range(1, 2)), transcribed: two empty masks have IoU 1."""
    def d(x, y):
        x, y = x == 1, y == 1
        if not x.any() and not y.any():
            return 0.0
        if x.any() != y.any():
            return 1.0
        return 1 - (x & y).sum() / (x | y).sum()
    n, m = len(samples), len(annotations)
    return (2 / (n * m) * sum(d(s, y) for s in samples for y in annotations)
            - 1 / n ** 2 * sum(d(s, t) for s in samples for t in samples)
            - 1 / m ** 2 * sum(d(y, z) for y in annotations for z in annotations))


def test_empty_pair_changes_the_distance_of_two_empty_masks_only():
    for other, expected in ((EMPTY, 0.0), (A, 1.0), (B, 1.0)):
        for empty_pair in (0.0, 1.0):
            d = metrics.pairwise_distances(_stack(EMPTY), _stack(other), 2,
                                           empty_pair=empty_pair)[0, 0, 0]
            # Only the pair of two empty masks follows the switch.
            assert d == (empty_pair if other is EMPTY else expected)
    d = metrics.pairwise_distances(_stack(A, B), _stack(A, B, C), 2, empty_pair=1.0)
    np.testing.assert_allclose(d, metrics.pairwise_distances(_stack(A, B), _stack(A, B, C), 2))
    with pytest.raises(ValueError, match="empty_pair"):
        metrics.pairwise_distances(_stack(A), _stack(A), 2, empty_pair=0.5)


def test_empty_pair_ged_equals_phiseg_and_dpersona_code_and_differs_by_the_empty_pairs():
    """Samples {EMPTY, A, EMPTY}, graders {EMPTY, B}: with d = 1 for two empty masks, the
    empty-empty pairs add 2·(2/6) to the cross term and subtract 4/9 (samples) and 1/4
    (graders): GED rises by 2/3 - 4/9 - 1/4 = -1/36."""
    samples, annotations = _stack(EMPTY, A, EMPTY), _stack(EMPTY, B)
    zero = metrics.generalized_energy_distance(samples, annotations, 2)[0]
    one = metrics.generalized_energy_distance(samples, annotations, 2, empty_pair=1.0)[0]
    assert zero == pytest.approx(_phiseg_ged(samples[0], annotations[0]), abs=1e-12)
    assert one == pytest.approx(_dpersona_ged(samples[0], annotations[0]), abs=1e-7)
    assert one - zero == pytest.approx(2 * 2 / 6 - 4 / 9 - 1 / 4)
    rng = np.random.default_rng(3)
    full = rng.integers(0, 2, (2, 4, 5, 5))
    full[..., 0, 0] = 1  # no empty mask: the switch changes nothing
    np.testing.assert_allclose(
        metrics.generalized_energy_distance(full, full[:, ::-1], 2, empty_pair=1.0),
        metrics.generalized_energy_distance(full, full[:, ::-1], 2))


def _best_matching_by_permutations(cost):
    """The largest mean 1 - cost over one-to-one matchings of the rows into the columns
    (rows <= columns), by trying every one: the reference for linear_sum_assignment."""
    import itertools
    rows, cols = cost.shape
    return max(np.mean([1 - cost[i, j] for i, j in enumerate(p)])
               for p in itertools.permutations(range(cols), rows))


def test_hungarian_iou_forms_hand_worked_and_against_every_matching():
    """Samples {A, A, B, C}, annotations {A, B}. Tiled: annotations {A, B, A, B}, the best
    matching pairs A-A, A-A, B-B and C with the left-over B (IoU 0): 3/4. One per annotation:
    A-A and B-B, both exact: 1."""
    samples, annotations = _stack(A, A, B, C), _stack(A, B)
    assert metrics.hungarian_iou(samples, annotations, 2)[0] == pytest.approx(3 / 4)
    assert metrics.hungarian_iou(samples, annotations, 2,
                                 form="one_per_annotation")[0] == pytest.approx(1.0)
    rng = np.random.default_rng(4)
    cross = rng.random((3, 6, 3))
    tiled = np.repeat(cross, 2, axis=2)  # 3 annotations tiled to 6
    np.testing.assert_allclose(metrics.matched_iou(cross),
                               [_best_matching_by_permutations(c) for c in tiled])
    np.testing.assert_allclose(metrics.matched_iou(cross, "one_per_annotation"),
                               [_best_matching_by_permutations(c.T) for c in cross])
    assert (metrics.matched_iou(cross, "one_per_annotation") >= metrics.matched_iou(cross)).all()
    with pytest.raises(ValueError, match="form"):
        metrics.matched_iou(cross, "kohl")


def test_ged_counts_16_and_100_samples_as_the_loop_reference():
    rng = np.random.default_rng(5)
    annotations = rng.integers(0, 2, (1, 4, 6, 6))
    for m in (16, 100):
        samples = rng.integers(0, 2, (1, m, 6, 6))
        np.testing.assert_allclose(metrics.generalized_energy_distance(samples, annotations, 2),
                                   _phiseg_ged(samples[0], annotations[0]), rtol=1e-12)


def test_weighted_annotations_in_ece_and_ncc():
    """Weights (0.75, 0.25) on annotations that differ on a pixel make its target 0.75; an
    annotation with weight 0 leaves the NCC that of the other one."""
    probabilities = np.array([[[0.75, 0.05]]])
    annotations = np.array([[[[1, 0]], [[0, 0]]]])
    assert metrics.expected_calibration_error(probabilities, annotations,
                                              annotation_weights=[0.75, 0.25]) == \
        pytest.approx(0.025)  # (0 + |0.05 - 0|) / 2
    rng = np.random.default_rng(6)
    sample_probabilities = rng.dirichlet([1, 1], size=(1, 4, 5, 5))
    graders = rng.integers(0, 2, (1, 2, 5, 5))
    np.testing.assert_allclose(
        metrics.normalized_cross_correlation(sample_probabilities, graders,
                                             annotation_weights=[1.0, 0.0]),
        metrics.normalized_cross_correlation(sample_probabilities, graders[:, :1]))
