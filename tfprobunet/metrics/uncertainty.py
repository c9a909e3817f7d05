"""Pixel-wise uncertainty of a set of samples (`uncertainty_maps`)."""

import numpy as np


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
