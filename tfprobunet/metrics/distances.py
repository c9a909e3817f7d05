"""`d = 1 - IoU` between label maps, and what is built on it: the generalized energy distance
(`generalized_energy_distance`, `energy_distance`) and the Hungarian-matched IoU
(`hungarian_iou`). numpy, the reference implementations (see the package's conventions)."""

import math

import numpy as np

from tfprobunet.catalog import IGNORE_LABEL


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


def pairwise_distances(a, b, num_classes, classes=None, ignore_label=IGNORE_LABEL,
                       empty_pair=0.0):
    """`d = 1 - IoU` between every map of `a` and every map of `b`, image by image.

    Args:
        a: `(batch, m, h, w)` int label maps.
        b: `(batch, n, h, w)` int label maps.
        num_classes: K.
        classes: the scored classes (default: `[1]` for K = 2, all K otherwise).
        ignore_label: pixels with this label in either map of a pair are left out.
        empty_pair: `d` of two maps in which no scored class is present (two empty masks):
            0.0 (they agree: PHiSeg's, SSN's, MoSE's and CAR's code) or 1.0 (D-Persona's
            code). The official Cityscapes code leaves it undefined (NaN) and skips it.

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
    # Pixel counts are sums of 0/1 products: exact in float32 below 2**24 pixels, at half the
    # cost of float64 matrix products.
    dtype = np.float32 if a.shape[-1] < 2**24 else np.float64
    ignored = bool((a == ignore_label).any() or (b == ignore_label).any())
    valid_a = (a != ignore_label).astype(dtype)
    valid_b = (b != ignore_label).astype(dtype)
    iou_sum = np.zeros((a.shape[0], a.shape[1], b.shape[1]))
    present = np.zeros_like(iou_sum)
    for c in classes:
        in_a = (a == c).astype(dtype)
        in_b = (b == c).astype(dtype)
        intersection = (in_a @ in_b.transpose(0, 2, 1)).astype(np.float64)
        # |A_c ∪ B_c| over the pixels valid in both maps (a pixel of class c is valid in its
        # map); without ignored pixels, |A_c| + |B_c| - |A_c ∩ B_c| (one product, not three).
        if ignored:
            union = (in_a @ valid_b.transpose(0, 2, 1) + valid_a @ in_b.transpose(0, 2, 1)
                     ).astype(np.float64) - intersection
        else:
            union = (in_a.sum(-1, dtype=np.float64)[:, :, None]
                     + in_b.sum(-1, dtype=np.float64)[:, None, :] - intersection)
        iou_sum += np.divide(intersection, union, out=np.zeros_like(union), where=union > 0)
        present += union > 0
    if empty_pair not in (0.0, 1.0):
        raise ValueError(f"`empty_pair` must be 0.0 or 1.0. Received: {empty_pair!r}")
    mean_iou = np.divide(iou_sum, present, out=np.full_like(iou_sum, 1.0 - empty_pair),
                         where=present > 0)
    return 1.0 - mean_iou


def generalized_energy_distance(samples, annotations, num_classes, classes=None,
                                sample_weights=None, annotation_weights=None,
                                ignore_label=IGNORE_LABEL, self_pairs=True, empty_pair=0.0):
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
        empty_pair: `d` of two empty masks, as in `pairwise_distances`: 0.0 (the official
            code, PHiSeg, SSN, MoSE, CAR) or 1.0 (D-Persona's code, whose IoU is
            `|A ∩ B| / (|A ∪ B| + 1e-8)`); it changes GED only where two compared maps
            (a sample or an annotation with itself included) are both empty.

    Returns:
        `(b,)` float64: `2 E[d(S, Y)] - E[d(S, S')] - E[d(Y, Y')]`.

    Example:

    >>> masks = np.zeros((1, 1, 4, 4), int); masks[..., :2] = 1
    >>> float(generalized_energy_distance(masks, masks, num_classes=2)[0])
    0.0
    """
    samples = _label_maps("samples", samples)
    annotations = _label_maps("annotations", annotations)
    args = dict(num_classes=num_classes, classes=classes, ignore_label=ignore_label,
                empty_pair=empty_pair)
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
    return distinct_pair_mean(pairwise)


def distinct_pair_mean(pairwise):
    """The mean of `(b, n, n)` pairwise distances over the n (n - 1) ordered pairs of two
    different maps (n >= 2): `(b,)`."""
    n = pairwise.shape[1]
    return np.einsum("bij,ij->b", pairwise, 1.0 - np.eye(n)) / (n * (n - 1))


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


HM_IOU_FORMS = ("tiled", "one_per_annotation")


def hungarian_iou(samples, annotations, num_classes, classes=None, ignore_label=IGNORE_LABEL,
                  form="tiled", empty_pair=0.0, sample_weights=None, annotation_weights=None):
    """Hungarian-matched IoU (HM-IoU) per image, in one of the two forms published code uses.

    - `"tiled"`: the annotations are repeated to the number of samples (both sides to their
      least common multiple when `a` does not divide `m`), matched one-to-one to the samples
      by `scipy.optimize.linear_sum_assignment` on `d = 1 - IoU`, and the matched IoUs of all
      samples averaged. MoSE's and CAR's code (which say they follow Kohl et al. 2019) tile
      the 4 LIDC graders to 16 samples so; CCDM's tiles both to the least common multiple.
    - `"one_per_annotation"`: each annotation is matched to a different sample (a
      rectangular assignment; with more samples than annotations the rest stay unmatched) and
      the `min(m, a)` matched IoUs averaged. It scores the best `a` samples only, so it is
      never below `"tiled"` on the same distances when `a` divides `m` (D-Persona's matched
      Dice is built so).

    Args:
        samples: `(b, m, h, w)`; annotations: `(b, a, h, w)` int label maps.
        num_classes, classes, ignore_label, empty_pair: as in `pairwise_distances`.
        form: `"tiled"` or `"one_per_annotation"`.
        sample_weights, annotation_weights: `(m,)` or `(b, m)` and `(a,)` or `(b, a)` weights
            (e.g. MoSE's weighted samples, `weighted_sample`), or None. With either given, the
            matching is MoSE's for weighted samples: the exact optimal transport plan P
            between the two weightings on `d = 1 - IoU`, and HM-IoU = `sum(P * (1 - d))`
            (`form` does not apply; equal weights with `a` dividing `m` give `"tiled"`).

    Returns:
        `(b,)` float64 in [0, 1]; higher is better.
    """
    return matched_iou(pairwise_distances(samples, annotations, num_classes, classes,
                                          ignore_label, empty_pair), form, sample_weights,
                       annotation_weights)


def transport_plan(cost, sample_weights, annotation_weights):
    """The exact optimal transport plan `(m, a)` between the weights `(m,)` and `(a,)` (each
    summing to 1) for the `(m, a)` cost: the linear programme min sum(P * cost), P >= 0, its
    rows summing to `sample_weights` and its columns to `annotation_weights` (what POT's
    `ot.emd` solves, here by SciPy's HiGHS)."""
    from scipy.optimize import linprog

    m, a = cost.shape
    rows = np.kron(np.eye(m), np.ones((1, a)))
    columns = np.kron(np.ones((1, m)), np.eye(a))
    solved = linprog(cost.ravel(), A_eq=np.vstack([rows, columns]),
                     b_eq=np.concatenate([sample_weights, annotation_weights]),
                     bounds=(0, None), method="highs")
    if not solved.success:
        raise ValueError(f"No transport plan for these weights: {solved.message}")
    return solved.x.reshape(m, a)


def matched_iou(cross, form="tiled", sample_weights=None, annotation_weights=None):
    """HM-IoU from the `(b, m, a)` distances between samples and annotations: `(b,)`. `form`
    and the weights as in `hungarian_iou`."""
    from scipy.optimize import linear_sum_assignment

    if form not in HM_IOU_FORMS:
        raise ValueError(f"`form` must be one of {HM_IOU_FORMS}. Received: {form!r}")
    distances = np.asarray(cross, np.float64)
    if sample_weights is not None or annotation_weights is not None:
        u = _weights("sample_weights", sample_weights, *distances.shape[:2])
        v = _weights("annotation_weights", annotation_weights, distances.shape[0],
                     distances.shape[2])
        return np.array([np.sum(transport_plan(d, u[i], v[i]) * (1.0 - d))
                         for i, d in enumerate(distances)])
    m, a = distances.shape[1:]
    size = math.lcm(m, a)
    result = np.empty(len(distances))
    for i, d in enumerate(distances):
        cost = d if form == "one_per_annotation" else np.repeat(
            np.repeat(d, size // m, axis=0), size // a, axis=1)
        rows, cols = linear_sum_assignment(cost)
        result[i] = 1.0 - cost[rows, cols].mean()
    return result
