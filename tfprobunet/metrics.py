"""Metrics for distributions of segmentations (Kohl et al. 2018, section 3.1 and appendix B).

Conventions (DESIGN section 5):

- The distance between two label maps is `d = 1 - IoU`. With two classes, IoU is that of the
  foreground class 1: both masks empty gives d = 0, one empty d = 1. With more classes, d is one
  minus the mean IoU over the scored classes (all K, or a given subset) present in either map;
  classes absent from both are skipped, and d = 0 when no scored class is present in either.
  Pixels labelled 255 in either map are left out of that pair's comparison.
- `D²_GED = 2 E[d(S, Y)] - E[d(S, S')] - E[d(Y, Y')]` per image, every expectation the mean over
  all pairs, self-pairs included (as the official evaluation does). The annotation side can be
  weighted by known mode probabilities instead of counting each annotation once.

The numpy functions are the reference; `GeneralizedEnergyDistance` is the same computation in
TensorFlow, as a Keras metric that `ProbabilisticUNet.test_step` updates (`val_ged`).
"""

import math

import keras
import numpy as np
import tensorflow as tf

from tfprobunet.losses import IGNORE_LABEL, class_indicators


def scored_classes(num_classes, classes=None):
    """The classes the distance scores: `classes` if given, else `[1]` for a binary task and
    all `num_classes` otherwise."""
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"`num_classes` must be an integer >= 2. Received: {num_classes!r}")
    if classes is None:
        return [1] if num_classes == 2 else list(range(num_classes))
    classes = [int(c) for c in classes]
    if not classes or any(c < 0 or c >= num_classes for c in classes):
        raise ValueError(f"`classes` must be a non-empty subset of [0, {num_classes - 1}]. "
                         f"Received: {classes}")
    return classes


def _label_maps(name, labels, rank=4):
    labels = np.asarray(labels)
    if labels.ndim != rank or not np.issubdtype(labels.dtype, np.integer):
        expected = "(b, n, h, w)" if rank == 4 else "(n, h, w)"
        raise ValueError(f"`{name}` must be integer label maps of shape {expected} (apply argmax "
                         f"to logits first). Received shape {labels.shape}, dtype {labels.dtype}.")
    return labels


def _weights(name, weights, batch, count):
    """`(b, count)` float64 rows summing to 1; uniform when None."""
    if weights is None:
        return np.full((batch, count), 1.0 / count)
    received = np.asarray(weights, np.float64)
    if received.shape not in ((count,), (batch, count)):
        raise ValueError(f"`{name}` must have shape ({count},) or ({batch}, {count}), one weight "
                         f"per label map. Received shape {received.shape}.")
    weights = np.broadcast_to(received, (batch, count))
    totals = weights.sum(-1, keepdims=True)
    if (weights < 0).any() or (totals <= 0).any():
        raise ValueError(f"`{name}` must be non-negative with a positive sum per image. "
                         f"Received: {received}")
    return weights / totals


def pairwise_distances(a, b, num_classes, classes=None, ignore_label=IGNORE_LABEL):
    """`d = 1 - IoU` between every map of `a` and every map of `b`, image by image.

    Args:
        a: `(batch, m, h, w)` int label maps.
        b: `(batch, n, h, w)` int label maps.
        num_classes: K.
        classes: the scored classes (default: `[1]` for K = 2, all K otherwise).
        ignore_label: pixels with this label in either map of a pair are left out.

    Returns:
        `(batch, m, n)` float64 distances in [0, 1].
    """
    a, b = _label_maps("a", a), _label_maps("b", b)
    if a.shape[0] != b.shape[0] or a.shape[2:] != b.shape[2:]:
        raise ValueError(f"Label maps of shapes {a.shape} and {b.shape} must have the same batch "
                         "size, height and width.")
    classes = scored_classes(num_classes, classes)
    a = a.reshape(a.shape[:2] + (-1,))
    b = b.reshape(b.shape[:2] + (-1,))
    valid_a = (a != ignore_label).astype(np.float64)
    valid_b = (b != ignore_label).astype(np.float64)
    iou_sum = np.zeros((a.shape[0], a.shape[1], b.shape[1]))
    present = np.zeros_like(iou_sum)
    for c in classes:
        in_a = (a == c).astype(np.float64)
        in_b = (b == c).astype(np.float64)
        intersection = in_a @ in_b.transpose(0, 2, 1)
        # |A_c ∪ B_c| over the pixels valid in both maps (a pixel of class c is valid in its map).
        union = in_a @ valid_b.transpose(0, 2, 1) + valid_a @ in_b.transpose(0, 2, 1) - intersection
        iou_sum += np.divide(intersection, union, out=np.zeros_like(union), where=union > 0)
        present += union > 0
    mean_iou = np.divide(iou_sum, present, out=np.ones_like(iou_sum), where=present > 0)
    return 1.0 - mean_iou


def generalized_energy_distance(samples, annotations, num_classes, classes=None,
                                sample_weights=None, annotation_weights=None,
                                ignore_label=IGNORE_LABEL, self_pairs=True):
    """The squared generalized energy distance D²_GED between samples and annotations, per image.

    Args:
        samples: `(b, m, h, w)` int label maps drawn from the model.
        annotations: `(b, a, h, w)` int label maps of the ground truth (graders or modes).
        num_classes: K.
        classes: the scored classes (default: `[1]` for K = 2, all K otherwise). The official
            Cityscapes evaluation scores only the flipped classes and their twins.
        sample_weights: `(m,)` or `(b, m)` probabilities of the samples; None (the usual case
            for model samples) weighs each sample equally.
        annotation_weights: `(a,)` or `(b, a)` probabilities of the annotations (e.g. the exact
            mode probabilities of *flips*); None weighs each annotation equally.
        ignore_label: label left out of every comparison.
        self_pairs: True (the official evaluation code's, PHiSeg's and SSN's convention): each
            expectation is the mean over all pairs, each map with itself included, so k
            samples of a perfect model score E[d(Y, Y')] / k on average. False: the unbiased
            form, the mean over pairs of two different maps, whose expectation for a perfect
            model is 0 (needs m >= 2; a side given with weights is a known distribution and
            keeps its exact expectation).

    Returns:
        `(b,)` float64: `2 E[d(S, Y)] - E[d(S, S')] - E[d(Y, Y')]`.

    Example:

    >>> masks = np.zeros((1, 1, 4, 4), int); masks[..., :2] = 1
    >>> float(generalized_energy_distance(masks, masks, num_classes=2)[0])
    0.0
    """
    samples = _label_maps("samples", samples)
    annotations = _label_maps("annotations", annotations)
    args = dict(num_classes=num_classes, classes=classes, ignore_label=ignore_label)
    return energy_distance(pairwise_distances(samples, annotations, **args),
                           pairwise_distances(samples, samples, **args),
                           pairwise_distances(annotations, annotations, **args),
                           sample_weights, annotation_weights, self_pairs)


def _pair_mean(name, pairwise, weights, given, self_pairs):
    """E[d] over the pairs of one side: weighted over all pairs, or, for equally weighted
    draws without self-pairs, the mean over the n (n - 1) pairs of two different maps."""
    if self_pairs or given is not None:
        return np.einsum("bij,bi,bj->b", pairwise, weights, weights)
    n = pairwise.shape[1]
    if n < 2:
        raise ValueError(f"`self_pairs=False` needs at least 2 {name} per image to leave out "
                         f"the self-pairs. Received: {n}; use `self_pairs=True` for one.")
    off_diagonal = 1.0 - np.eye(n)
    return np.einsum("bij,ij->b", pairwise, off_diagonal) / (n * (n - 1))


def energy_distance(cross, samples_pairwise, annotations_pairwise, sample_weights=None,
                    annotation_weights=None, self_pairs=True):
    """D²_GED from distances already computed (e.g. once for several sample counts).

    Args:
        cross: `(b, m, a)` distances between samples and annotations.
        samples_pairwise: `(b, m, m)` distances between samples.
        annotations_pairwise: `(b, a, a)` distances between annotations.
        sample_weights, annotation_weights, self_pairs: as in `generalized_energy_distance`.

    Returns:
        `(b,)` float64.
    """
    cross = np.asarray(cross, np.float64)
    u = _weights("sample_weights", sample_weights, *cross.shape[:2])
    v = _weights("annotation_weights", annotation_weights, cross.shape[0], cross.shape[2])
    return (2.0 * np.einsum("bij,bi,bj->b", cross, u, v)
            - _pair_mean("samples", np.asarray(samples_pairwise, np.float64), u,
                         sample_weights, self_pairs)
            - _pair_mean("annotations", np.asarray(annotations_pairwise, np.float64), v,
                         annotation_weights, self_pairs))


def hungarian_iou(samples, annotations, num_classes, classes=None, ignore_label=IGNORE_LABEL):
    """Hungarian-matched IoU (HM-IoU) per image.

    The annotations are repeated to the number of samples (both sides to their least common
    multiple when `a` does not divide `m`), matched one-to-one to the samples by
    `scipy.optimize.linear_sum_assignment` on `d = 1 - IoU`, and the matched IoUs averaged.

    Args:
        samples: `(b, m, h, w)`; annotations: `(b, a, h, w)` int label maps.

    Returns:
        `(b,)` float64 in [0, 1]; higher is better.
    """
    return matched_iou(pairwise_distances(samples, annotations, num_classes, classes,
                                          ignore_label))


def matched_iou(cross):
    """HM-IoU from the `(b, m, a)` distances between samples and annotations: `(b,)`."""
    from scipy.optimize import linear_sum_assignment

    distances = np.asarray(cross, np.float64)
    m, a = distances.shape[1:]
    size = math.lcm(m, a)
    result = np.empty(len(distances))
    for i, d in enumerate(distances):
        cost = np.repeat(np.repeat(d, size // m, axis=0), size // a, axis=1)
        rows, cols = linear_sum_assignment(cost)
        result[i] = 1.0 - cost[rows, cols].mean()
    return result


def assign_modes(samples, modes, num_classes, classes=None, ignore_label=IGNORE_LABEL):
    """The closest mode of every sample by `d = 1 - IoU` (ties go to the lower index).

    Args:
        samples: `(b, m, h, w)` int label maps.
        modes: `(b, M, h, w)` int label maps of every mode (e.g. the *flips* annotations).

    Returns:
        `(b, m)` int64 mode indices.
    """
    return np.argmin(pairwise_distances(samples, modes, num_classes, classes, ignore_label),
                     axis=-1)


def mode_frequencies(assignments, num_modes):
    """How often each mode was the closest one, over all samples of a dataset.

    Args:
        assignments: int mode indices of any shape, e.g. `assign_modes` of every batch stacked.
        num_modes: M.

    Returns:
        `(M,)` float64 frequencies summing to 1.
    """
    assignments = np.asarray(assignments).ravel()
    if assignments.size == 0 or assignments.min() < 0 or assignments.max() >= num_modes:
        raise ValueError(f"`assignments` must be a non-empty array of indices in [0, "
                         f"{num_modes - 1}]. Received {assignments.size} values.")
    return np.bincount(assignments, minlength=num_modes) / assignments.size


def log_pearson_r(frequencies, probabilities, num_samples):
    """Pearson r of log frequencies against log probabilities: how well the rare modes are
    calibrated, which the linear r (dominated by the frequent modes) hardly sees.

    A mode never sampled has frequency 0; it counts as half a sample, `0.5 / num_samples`
    (so a mode missed by 1,000 samples sits below one seen once).

    Args:
        frequencies: `(M,)` sampled frequencies (`mode_frequencies`).
        probabilities: `(M,)` true probabilities, all > 0.
        num_samples: the number of samples the frequencies were counted over.

    Returns:
        float, r in [-1, 1].
    """
    frequencies = np.asarray(frequencies, np.float64)
    probabilities = np.asarray(probabilities, np.float64)
    if frequencies.shape != probabilities.shape or frequencies.ndim != 1:
        raise ValueError(f"`frequencies` {frequencies.shape} and `probabilities` "
                         f"{probabilities.shape} must be (M,) vectors of the same length.")
    if not np.all(probabilities > 0):
        raise ValueError("`probabilities` must all be > 0 to take their logarithm.")
    floored = np.maximum(frequencies, 0.5 / num_samples)
    return float(np.corrcoef(np.log(floored), np.log(probabilities))[0, 1])


def flip_pairs(annotations):
    """The class flips the annotations show: `(c, t)` wherever the first annotation of an image
    says class c and another annotation t at the same pixel (the *flips* and Cityscapes modes:
    annotation 0 is the unflipped one).

    Args:
        annotations: `(b, A, h, w)` int.

    Returns:
        sorted list of `(c, t)` int pairs.
    """
    annotations = np.asarray(annotations)
    base = np.broadcast_to(annotations[:, :1], annotations.shape)
    changed = (base != annotations) & (base != IGNORE_LABEL) & (annotations != IGNORE_LABEL)
    pairs = np.unique(np.stack([base[changed], annotations[changed]], axis=-1), axis=0)
    return [(int(c), int(t)) for c, t in pairs]


def flip_counts(samples, annotations, pairs, annotation_weights=None):
    """Per-pixel flip counts of the samples and of the annotations, for each pair `(c, t)`:
    over the pixels where the first annotation says c, how often the samples say t, and with what
    probability the annotations do. The official Cityscapes evaluation's per-class flip
    frequencies are `sampled / pixels` against `expected / pixels` (`flip_frequencies`).

    Args:
        samples: `(b, m, h, w)` int label maps.
        annotations: `(b, A, h, w)` int, annotation 0 the unflipped one.
        pairs: `(c, t)` pairs, e.g. `flip_pairs(annotations)`.
        annotation_weights: `(A,)` probabilities of the annotations, or None (equally likely).

    Returns:
        `(sampled, expected, pixels)`, each `(P,)` float64: sample pixels saying t (counted over
        all m samples), the annotations' expected count of pixels saying t per sample, and the
        pixels of class c in annotation 0 (per sample, i.e. times m for `sampled`).
    """
    samples, annotations = np.asarray(samples), np.asarray(annotations)
    count = annotations.shape[1]
    weights = np.full(count, 1.0 / count) if annotation_weights is None else (
        np.asarray(annotation_weights, np.float64) / np.sum(annotation_weights))
    base = annotations[:, 0]
    m = samples.shape[1]
    sampled, expected, pixels = (np.zeros(len(pairs)) for _ in range(3))
    for i, (c, t) in enumerate(pairs):
        region = base == c  # (b, h, w)
        pixels[i] = m * np.count_nonzero(region)
        sampled[i] = np.count_nonzero((samples == t) & region[:, None])
        hits = np.count_nonzero((annotations == t) & region[:, None], axis=(0, 2, 3))  # (A,)
        expected[i] = m * np.dot(weights, hits)
    return sampled, expected, pixels


def flip_frequencies(samples, annotations, annotation_weights=None, pairs=None):
    """`{(c, t): (sampled, true)}`: per flip pair, the fraction of class-c pixels (of the
    unflipped annotation) that the samples label t, and the probability the annotations give
    it. See `flip_counts`, which accumulates over batches."""
    pairs = flip_pairs(annotations) if pairs is None else pairs
    sampled, expected, pixels = flip_counts(samples, annotations, pairs, annotation_weights)
    return {pair: (s / n, e / n) for pair, s, e, n in zip(pairs, sampled, expected, pixels)}


def uncertainty_maps(probabilities):
    """Pixel-wise uncertainty of a set of sampled segmentations.

    Args:
        probabilities: `(b, m, h, w, K)` class probabilities of m samples (softmax of
            `model.sample`'s logits).

    Returns:
        `(entropy, variance)`, each `(b, h, w)` float64: the entropy (nats) of the mean
        probabilities over the samples, and the variance over the samples (population, ddof 0)
        of the class probabilities averaged over classes (for K = 2, the variance of the
        foreground probability).
    """
    probabilities = np.asarray(probabilities, np.float64)
    if probabilities.ndim != 5:
        raise ValueError("`probabilities` must have shape (b, m, h, w, K). Received shape "
                         f"{probabilities.shape}.")
    mean = probabilities.mean(axis=1)
    entropy = -np.sum(mean * np.log(np.clip(mean, 1e-12, None)), axis=-1)
    return entropy, probabilities.var(axis=1).mean(axis=-1)


# ---------------------------------------------------------------------- TensorFlow versions
def pairwise_distances_tf(a, b, num_classes, classes=None, ignore_label=IGNORE_LABEL):
    """`pairwise_distances` in TensorFlow (float32; runs inside `tf.function`).

    Args:
        a: `(batch, m, h, w)`; b: `(batch, n, h, w)` int label maps.

    Returns:
        `(batch, m, n)` float32.
    """
    classes = scored_classes(num_classes, classes)
    # (batch, maps, pixels, scored classes) indicators; label 255 matches no class.
    in_a, valid_a = class_indicators(a, classes, ignore_label)
    in_b, valid_b = class_indicators(b, classes, ignore_label)
    intersection = tf.einsum("bmpk,bnpk->bmnk", in_a, in_b)
    union = (tf.einsum("bmpk,bnp->bmnk", in_a, valid_b)
             + tf.einsum("bmp,bnpk->bmnk", valid_a, in_b) - intersection)
    present = tf.cast(union > 0, tf.float32)
    iou_sum = tf.reduce_sum(tf.math.divide_no_nan(intersection, union), axis=-1)
    count = tf.reduce_sum(present, axis=-1)
    return 1.0 - tf.where(count > 0, tf.math.divide_no_nan(iou_sum, count), 1.0)


def generalized_energy_distance_tf(samples, annotations, num_classes, classes=None,
                                   annotation_weights=None, ignore_label=IGNORE_LABEL):
    """`generalized_energy_distance` in TensorFlow: `(b,)` float32."""
    args = dict(num_classes=num_classes, classes=classes, ignore_label=ignore_label)
    count = tf.shape(annotations)[1]
    if annotation_weights is None:
        weights = tf.fill(tf.stack([tf.shape(annotations)[0], count]),
                          1.0 / tf.cast(count, tf.float32))
    else:
        weights = tf.broadcast_to(tf.cast(annotation_weights, tf.float32),
                                  tf.shape(annotations)[:2])
        weights = weights / tf.reduce_sum(weights, axis=-1, keepdims=True)
    cross = tf.reduce_mean(tf.einsum(
        "bma,ba->bm", pairwise_distances_tf(samples, annotations, **args), weights), axis=-1)
    diversity = tf.reduce_mean(pairwise_distances_tf(samples, samples, **args), axis=[1, 2])
    truth = tf.einsum("bij,bi,bj->b", pairwise_distances_tf(annotations, annotations, **args),
                      weights, weights)
    return 2.0 * cross - diversity - truth


@keras.saving.register_keras_serializable(package="tfprobunet")
class GeneralizedEnergyDistance(keras.metrics.Mean):
    """D²_GED averaged over images, as a Keras metric.

    `update_state(samples, annotations, annotation_weights=None)` takes label maps
    `samples (b, m, h, w)` and `annotations (b, a, h, w)` and optional `(b, a)` or `(a,)`
    annotation probabilities; `result()` is the mean GED over every image seen since the last
    reset. Same conventions as `generalized_energy_distance`.

    Args:
        num_classes: K.
        classes: the scored classes (default: `[1]` for K = 2, all K otherwise).
        name: metric name (default `"ged"`, so validation logs `val_ged`).
    """

    def __init__(self, num_classes, classes=None, name="ged", dtype=None):
        super().__init__(name=name, dtype=dtype)
        scored_classes(num_classes, classes)  # validates
        self.num_classes = num_classes
        self.classes = None if classes is None else [int(c) for c in classes]

    def update_state(self, samples, annotations, annotation_weights=None):
        values = generalized_energy_distance_tf(samples, annotations, self.num_classes,
                                                self.classes, annotation_weights)
        return super().update_state(values)

    def get_config(self):
        return {"num_classes": self.num_classes, "classes": self.classes, "name": self.name,
                "dtype": self.dtype}
