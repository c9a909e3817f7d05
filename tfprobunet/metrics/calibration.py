"""How well the spread of the samples matches the annotators': PHiSeg's normalized
cross-correlation (`normalized_cross_correlation`), the expected calibration error of pixel
probabilities (`expected_calibration_error`) and the samples' own diversity
(`sample_diversity`). numpy, per image where a value per image exists."""

import numpy as np

from tfprobunet.catalog import IGNORE_LABEL
from tfprobunet.metrics.distances import (_label_maps, _weights, distinct_pair_mean,
                                          pairwise_distances)


def normalized_cross_correlation(probabilities, annotations, eps=1e-8,
                                 ignore_label=IGNORE_LABEL, annotation_weights=None):
    """PHiSeg's S_NCC per image (Baumgartner et al. 2019; `utils.variance_ncc_dist` of
    baumgach/PHiSeg-code, which its LIDC tables use): how well the map of where the samples
    disagree matches the maps of where they disagree with each annotator.

    With s_i the samples' class probabilities and s̄ their mean, the γ-map is
    `E_s[CE(s̄, s)] = mean_i(-sum_k s̄_k log(s_i,k + eps))`, and for each annotation y the map
    `E_s[CE(y, s)] = mean_i(-log(s_i,y + eps))`. S_NCC is the NCC of the γ-map with each
    annotation's map, averaged over the annotations: `NCC(x, z) = mean((x - x̄)(z - z̄)) /
    (std(x) std(z))` over the pixels, standard deviations of the population (numpy's default,
    as PHiSeg's code). Higher is better (1: the same maps up to scale and offset).

    As in PHiSeg's evaluation, the samples are the softmax probabilities, not argmax masks
    (one-hot masks give `log(eps)` wherever a sample misses).

    Args:
        probabilities: `(b, m, h, w, K)` class probabilities of m samples (the softmax of
            `model.sample`'s logits).
        annotations: `(b, a, h, w)` int label maps.
        eps: added inside the logarithms (PHiSeg's 1e-8).
        ignore_label: a pixel with this label in any annotation of an image is left out of
            every map of that image (PHiSeg's data has none).
        annotation_weights: `(a,)` or `(b, a)` probabilities of the annotations: the NCCs
            are averaged with these weights; None (PHiSeg's case) weighs them equally.

    Returns:
        `(b,)` float64 in [-1, 1]; NaN for an image where a map is constant (no correlation
        is defined there: PHiSeg's code divides by zero too).
    """
    probabilities = np.asarray(probabilities, np.float64)
    annotations = _label_maps("annotations", annotations)
    if probabilities.ndim != 5 or probabilities.shape[:1] + probabilities.shape[2:4] != (
            annotations.shape[:1] + annotations.shape[2:]):
        raise ValueError("`probabilities` must be (b, m, h, w, K) and `annotations` (b, a, h, w) "
                         "of the same b, h and w. Received shapes "
                         f"{probabilities.shape} and {annotations.shape}.")
    num_classes = probabilities.shape[-1]
    valid = np.all(annotations != ignore_label, axis=1)  # (b, h, w)
    mean_log_p = np.log(probabilities + eps).mean(axis=1)  # (b, h, w, K)
    # E_s[CE(s̄, s)] = -sum_k s̄_k mean_i log(s_i,k + eps): both maps from one mean of logs.
    gamma = -np.sum(probabilities.mean(axis=1) * mean_log_p, axis=-1)  # (b, h, w)
    labels = np.where(annotations == ignore_label, 0, annotations)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"`annotations` must hold labels in [0, {num_classes - 1}] (or "
                         f"{ignore_label}). Received labels in [{labels.min()}, {labels.max()}].")
    # E_s[CE(y, s)] per annotation: -mean_i log(s_i,y + eps), (b, a, h, w).
    per_annotation = -np.take_along_axis(mean_log_p[:, None], labels[..., None], axis=-1)[..., 0]
    weights = _weights("annotation_weights", annotation_weights, *annotations.shape[:2])
    result = np.empty(len(gamma))
    for i in range(len(gamma)):
        x = gamma[i][valid[i]]
        z = per_annotation[i][:, valid[i]]  # (a, pixels)
        result[i] = np.dot(weights[i], [_ncc(x, zj) for zj in z])
    return result


def _ncc(x, z):
    sx, sz = x.std(), z.std()
    if sx == 0 or sz == 0:
        return np.nan
    return float(np.mean((x - x.mean()) * (z - z.mean())) / (sx * sz))


def expected_calibration_error(probabilities, annotations, bins=10, positive_class=1,
                               ignore_label=IGNORE_LABEL, annotation_weights=None):
    """The expected calibration error of pixel probabilities against the annotators' mean,
    pooled over every pixel of the batch.

    Each pixel's target is the share of its annotations that mark `positive_class` (0, 1/a,
    ..., 1). The predicted probabilities are put in `bins` equal-width bins of [0, 1] (the last
    one closed), and `ECE = sum over bins of n_bin / N * |mean(p in bin) - mean(target in
    bin)|`.

    K > 2: one class against the rest, `positive_class` naming it; call once per class.

    Args:
        probabilities: `(b, h, w)` predicted probability of `positive_class` per pixel (e.g.
            the mean over samples of its softmax probability).
        annotations: `(b, a, h, w)` int label maps.
        bins: the number of bins (>= 1).
        positive_class: the class whose probability is scored.
        ignore_label: an annotation's pixel with this label does not count in that pixel's
            target; a pixel no annotation labels is left out.
        annotation_weights: `(a,)` or `(b, a)` probabilities of the annotations (e.g. the
            modes of *flips*): the target is then their weighted share; None weighs each
            annotation equally.

    Returns:
        A float in [0, 1]; lower is better.
    """
    counts, predicted, observed = calibration_bins(probabilities, annotations, bins,
                                                   positive_class, ignore_label,
                                                   annotation_weights=annotation_weights)
    return calibration_error(counts, predicted, observed)


def calibration_bins(probabilities, annotations, bins=10, positive_class=1,
                     ignore_label=IGNORE_LABEL, per_image=False, annotation_weights=None):
    """The sums `expected_calibration_error` is made of, to pool over batches: per bin, the
    number of pixels, the sum of their probabilities and the sum of their targets (same
    arguments).

    Returns:
        `(counts, predicted, observed)`, each `(bins,)` float64, or `(b, bins)` with
        `per_image=True` (each image's pixels on their own).
    """
    probabilities = np.asarray(probabilities, np.float64)
    annotations = _label_maps("annotations", annotations)
    if probabilities.shape != annotations.shape[:1] + annotations.shape[2:]:
        raise ValueError("`probabilities` must be (b, h, w), the shape of `annotations` (b, a, "
                         f"h, w) without a. Received shapes {probabilities.shape} and "
                         f"{annotations.shape}.")
    if not (isinstance(bins, int) and bins >= 1):
        raise ValueError(f"`bins` must be a positive integer. Received: bins={bins!r}")
    weights = _weights("annotation_weights", annotation_weights, *annotations.shape[:2])
    weights = weights[:, :, None, None]
    labelled = ((annotations != ignore_label) * weights).sum(axis=1)
    marked = ((annotations == positive_class) * weights).sum(axis=1)
    keep = labelled > 0
    if not keep.any():
        raise ValueError("No pixel has an annotation that is not `ignore_label`.")
    # A bin per image and per bin index: image i's bin j is i * bins + j.
    image = np.broadcast_to(np.arange(len(keep))[:, None, None], keep.shape)[keep]
    index = np.minimum((probabilities[keep] * bins).astype(int), bins - 1)
    index = index + (image * bins if per_image else 0)
    size = bins * (len(keep) if per_image else 1)
    sums = [np.bincount(index, weights, size) for weights in
            (None, probabilities[keep], marked[keep] / labelled[keep])]
    return tuple(s.astype(np.float64).reshape(-1, bins) if per_image else s.astype(np.float64)
                 for s in sums)


def calibration_error(counts, predicted, observed):
    """ECE from `calibration_bins`' sums (`(..., bins)`): `sum |predicted - observed| / sum
    counts` over the bins; NaN where no pixel counts."""
    gap = np.abs(np.asarray(predicted, np.float64) - np.asarray(observed, np.float64)).sum(-1)
    total = np.asarray(counts, np.float64).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        error = np.where(total > 0, gap / total, np.nan)
    return float(error) if error.ndim == 0 else error


def sample_diversity(samples, num_classes, classes=None, ignore_label=IGNORE_LABEL):
    """The mean `d = 1 - IoU` over pairs of two different samples, per image: the E[d(S, S')]
    of the unbiased GED (`generalized_energy_distance(..., self_pairs=False)`).

    Args:
        samples: `(b, m, h, w)` int label maps, m >= 2.
        num_classes, classes, ignore_label: as in `pairwise_distances`.

    Returns:
        `(b,)` float64 in [0, 1]; 0 when every sample is the same.
    """
    samples = _label_maps("samples", samples)
    m = samples.shape[1]
    if m < 2:
        raise ValueError(f"`samples` must hold at least 2 samples per image. Received: {m}")
    return distinct_pair_mean(pairwise_distances(samples, samples, num_classes, classes,
                                                 ignore_label))
