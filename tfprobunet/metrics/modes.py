"""Calibration against known modes: the closest mode of each sample (`assign_modes`), mode and
flip frequencies, and the log-Pearson r between sampled and true frequencies."""

import numpy as np

from tfprobunet.catalog import IGNORE_LABEL
from tfprobunet.metrics.distances import pairwise_distances


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
