"""The terms of the Probabilistic U-Net's beta-ELBO, the optional soft surrogate of the
energy score of prior samples, and the other models' losses, as pure functions on tensors.

    loss = CE(Y, S(X, z)) + beta * KL(Q(z|X, Y) || P(z|X)),   z ~ Q
         [+ w * (E d(S_k, Y) - 1/2 E d(S_k, S_l)),   S_k = S(X, z_k), z_k ~ P: `energy_score`]

Every function returns one value per example, shape `(b,)`, so that a caller under
`tf.distribute` can average over the global batch (`tf.nn.compute_average_loss`).
Gaussians are given by `loc` and `log_scale` (each `(b, N)`), never by `scale`: every term
below is written in `log_scale` so that no `log(exp(.))` or division by a tiny scale occurs.
"""

import tensorflow as tf

from tfprobunet.catalog import IGNORE_LABEL
RECONSTRUCTIONS = ("sum", "mean")
KL_ESTIMATORS = ("analytic", "sampled")


def pixel_cross_entropy(labels, logits, reduction="sum", ignore_label=IGNORE_LABEL):
    """Softmax cross-entropy per example, pixels labelled `ignore_label` left out.

    Args:
        labels: int `(b, h, w)` class indices in `[0, K)` or `ignore_label`.
        logits: float `(b, h, w, K)`.
        reduction: `"sum"` over the valid pixels (the official code's training loss) or
            `"mean"` over them (an example without valid pixels contributes 0).
        ignore_label: label whose pixels contribute nothing.

    Returns:
        `(b,)` float32.
    """
    if reduction not in RECONSTRUCTIONS:
        raise ValueError(f"`reduction` must be one of {RECONSTRUCTIONS}. Received: {reduction!r}")
    labels = tf.cast(labels, tf.int32)
    valid = tf.not_equal(labels, ignore_label)
    safe_labels = tf.where(valid, labels, tf.zeros_like(labels))
    per_pixel = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=safe_labels, logits=tf.cast(logits, tf.float32))
    valid = tf.cast(valid, tf.float32)
    total = tf.reduce_sum(per_pixel * valid, axis=(1, 2))
    if reduction == "sum":
        return total
    return tf.math.divide_no_nan(total, tf.reduce_sum(valid, axis=(1, 2)))


def ssn_loss(labels, logit_samples, ignore_label=IGNORE_LABEL):
    """The Stochastic Segmentation Network's loss (Monteiro et al., NeurIPS 2020): minus the
    log of the Monte Carlo estimate of the likelihood of the segmentation, per example,

        loss = -log( 1/N sum_n exp( sum_pixels log softmax(eta_n)[y] ) ),

    over N logit samples eta_n. As the references (PHiSeg's `add_proposed_loss`, the SSN
    repository's `StochasticSegmentationNetworkLossMCIntegral`) it sums over pixels, and the
    caller averages over the batch. The per-sample sums run to thousands of nats on 128 x 128
    images: the log-mean-exp is taken with `reduce_logsumexp`, which stays finite where
    `exp` alone underflows.

    Args:
        labels: int `(b, h, w)` class indices in `[0, K)` or `ignore_label`.
        logit_samples: float `(b, N, h, w, K)`, N >= 1 samples per example.
        ignore_label: label whose pixels contribute nothing (their logits do not matter).

    Returns:
        `(b,)` float32.
    """
    logit_samples = tf.cast(logit_samples, tf.float32)
    shape = tf.shape(logit_samples)
    count = logit_samples.shape[1] or shape[1]
    flat = tf.reshape(logit_samples, tf.concat([[-1], shape[2:]], 0))
    repeated = tf.repeat(tf.cast(labels, tf.int32), count, axis=0)
    log_likelihood = -tf.reshape(pixel_cross_entropy(repeated, flat, "sum", ignore_label),
                                 tf.stack([shape[0], count]))
    return tf.math.log(tf.cast(count, tf.float32)) - tf.reduce_logsumexp(log_likelihood, axis=1)


def top_k_mask(per_pixel, valid, fraction, noise=None):
    """The pixels whose loss is mined, image by image: the `ceil(fraction * n)` of the n pixels
    with the largest `per_pixel` loss (or, given Gumbel `noise`, a draw of that many without
    replacement with probabilities proportional to the loss: the Gumbel top-k trick of the
    HPU-Net reference, `geco_utils.ce_loss`). Ignored pixels (`valid` False) are never chosen,
    so an image with fewer valid pixels has all of them chosen. The choice has no gradient.

    Args:
        per_pixel: `(b, n)` float, each pixel's loss.
        valid: `(b, n)` bool.
        fraction: in (0, 1].
        noise: None, or `(b, n)` standard Gumbel noise.

    Returns:
        `(b, n)` float32, 1 where a pixel is chosen.
    """
    per_pixel = tf.stop_gradient(tf.cast(per_pixel, tf.float32))
    n = tf.shape(per_pixel)[1]
    # Rounded to 1e-6 first, so that e.g. 0.07 * 100 chooses 7 pixels, not 8.
    count = tf.cast(tf.math.ceil(tf.round(fraction * tf.cast(n, tf.float64) * 1e6) / 1e6),
                    tf.int32)
    score = tf.math.log(per_pixel + 1e-30)
    if noise is not None:
        score += noise
    score = tf.where(valid, score, tf.constant(-float("inf")))
    indices = tf.math.top_k(score, tf.minimum(tf.maximum(count, 1), n)).indices
    rows = tf.broadcast_to(tf.range(tf.shape(indices)[0])[:, None], tf.shape(indices))
    chosen = tf.scatter_nd(tf.stack([rows, indices], -1), tf.ones(tf.shape(indices)),
                           tf.shape(per_pixel))
    return chosen * tf.cast(valid, tf.float32)


def gumbel_noise(uniform, eps=1e-20):
    """Standard Gumbel noise from uniform `[0, 1)` draws, as the reference computes it."""
    return -tf.math.log(-tf.math.log(uniform + eps) + eps)


def top_k_cross_entropy(labels, logits, fraction, noise=None, ignore_label=IGNORE_LABEL):
    """The softmax cross-entropy summed over the mined pixels (`top_k_mask`), per example.

    Args:
        labels: int `(b, h, w)`; `ignore_label` pixels are never chosen.
        logits: `(b, h, w, K)`.
        fraction, noise: see `top_k_mask` (noise `(b, h, w)` or `(b, h * w)`).

    Returns:
        `(loss (b,), chosen (b,))`: the sum over the chosen pixels and their count.
    """
    labels = tf.cast(labels, tf.int32)
    valid = tf.not_equal(labels, ignore_label)
    per_pixel = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.where(valid, labels, tf.zeros_like(labels)), logits=tf.cast(logits, tf.float32))
    batch = tf.shape(labels)[0]
    flat = tf.reshape(per_pixel, (batch, -1))
    if noise is not None:
        noise = tf.reshape(noise, (batch, -1))
    mask = top_k_mask(flat, tf.reshape(valid, (batch, -1)), fraction, noise)
    return tf.reduce_sum(mask * flat, axis=1), tf.reduce_sum(mask, axis=1)


def analytic_kl(q_loc, q_log_scale, p_loc, p_log_scale):
    """KL(Q || P) of two diagonal Gaussians in closed form, `(b,)`.

    Per dimension, with d = log s_p - log s_q:
        KL = d + (s_q^2 + (m_q - m_p)^2) / (2 s_p^2) - 1/2
           = (expm1(-2 d) + 2 d + ((m_q - m_p) / s_p)^2) / 2,
    the second form being exact and non-negative in floating point for d near 0.
    """
    d = p_log_scale - q_log_scale
    z = (q_loc - p_loc) * tf.exp(-p_log_scale)
    return 0.5 * tf.reduce_sum(tf.math.expm1(-2.0 * d) + 2.0 * d + tf.square(z), axis=-1)


def sampled_kl(noise, q_loc, q_log_scale, p_loc, p_log_scale):
    """One-sample estimate log Q(z) - log P(z) at z = q_loc + exp(q_log_scale) * noise, `(b,)`.

    `noise` is the standard normal draw that produced z; the constants log(2 pi) cancel.
    """
    z = q_loc + tf.exp(q_log_scale) * noise
    p_noise = (z - p_loc) * tf.exp(-p_log_scale)
    return tf.reduce_sum(
        0.5 * (tf.square(p_noise) - tf.square(noise)) + p_log_scale - q_log_scale, axis=-1)


def elbo_loss(labels, logits, noise, q_loc, q_log_scale, p_loc, p_log_scale, beta=1.0,
              reconstruction="sum", kl="analytic", ignore_label=IGNORE_LABEL):
    """The negative beta-ELBO per example and its two terms.

    Args:
        labels: `(b, h, w)` the segmentation that the posterior saw.
        logits: `(b, h, w, K)` decoded from z = q_loc + exp(q_log_scale) * noise.
        noise: `(b, N)` the standard normal draw behind z (zeros when decoding the mean).
        q_loc, q_log_scale, p_loc, p_log_scale: `(b, N)` posterior and prior parameters.
        beta: weight of the KL term.
        reconstruction: `"sum"` or `"mean"`, see `pixel_cross_entropy`.
        kl: `"analytic"` (closed form) or `"sampled"` (one-sample estimate at z).

    Returns:
        dict of `(b,)` tensors: `loss`, `reconstruction`, `kl`.
    """
    if kl not in KL_ESTIMATORS:
        raise ValueError(f"`kl` must be one of {KL_ESTIMATORS}. Received: {kl!r}")
    rec = pixel_cross_entropy(labels, logits, reconstruction, ignore_label)
    if kl == "analytic":
        kl_value = analytic_kl(q_loc, q_log_scale, p_loc, p_log_scale)
    else:
        kl_value = sampled_kl(noise, q_loc, q_log_scale, p_loc, p_log_scale)
    return {"loss": rec + beta * kl_value, "reconstruction": rec, "kl": kl_value}


def oracle_set_loss(per_head, epsilon=0.05):
    """The M-Heads training loss (Rupprecht et al. 2017, as in Kohl et al. 2018): per example, the
    best head's loss weighted `1 - epsilon` and every other head's `epsilon / (M - 1)`.

    Args:
        per_head: `(b, M)` each head's loss per example.
        epsilon: the weight spread over the heads that are not the best (paper: 0.05).

    Returns:
        `(b,)` float32. With M = 1, the one head's loss.
    """
    per_head = tf.cast(per_head, tf.float32)
    heads = per_head.shape[-1]
    if heads == 1:
        return per_head[:, 0]
    best = tf.one_hot(tf.argmin(per_head, axis=-1), heads)
    weights = best * (1.0 - epsilon) + (1.0 - best) * (epsilon / (heads - 1))
    return tf.reduce_sum(tf.stop_gradient(weights) * per_head, axis=-1)


def class_indicators(labels, classes, ignore_label=IGNORE_LABEL):
    """Label maps `(..., h, w)` as indicators of the scored classes over flattened pixels.

    Args:
        labels: int `(..., h, w)`.
        classes: the scored classes, a list of ints.
        ignore_label: this label matches no class and is not valid.

    Returns:
        `(indicators (..., p, C), valid (..., p))` float32, p = h * w, C = len(classes).
    """
    labels = tf.cast(labels, tf.int32)
    shape = tf.shape(labels)
    labels = tf.reshape(labels, tf.concat([shape[:-2], [-1]], axis=0))
    indicators = tf.cast(labels[..., None] == tf.constant(classes, tf.int32), tf.float32)
    return indicators, tf.cast(labels != ignore_label, tf.float32)


def soft_distances(a, b, valid, smoothing=1.0):
    """A differentiable `d = 1 - IoU` between class-probability maps, image by image.

    For each scored class c, over the valid pixels, with I_c = sum(a_c * b_c) and
    U_c = sum(a_c + b_c - a_c * b_c):  d_c = (U_c - I_c) / (U_c + smoothing), and
    d = sum_c w_c d_c / sum_c w_c with w_c = U_c / (U_c + smoothing), a smooth "class c is
    present in either map". For one-hot maps and `smoothing -> 0` this is
    `tfprobunet.metrics.pairwise_distances`: one minus the mean IoU over the classes present
    in either map, 0 when none is.

    Args:
        a: `(b, m, p, C)` probabilities of the C scored classes at p pixels, m maps.
        b: `(b, n, p, C)` the same for n maps.
        valid: `(b, p)` 1 where a pixel counts, 0 where it is ignored.
        smoothing: pixels added to each union (> 0): two empty maps are at distance 0 and
            the gradient stays finite when a class is absent from both.

    Returns:
        `(b, m, n)` float32.
    """
    a = tf.cast(a, tf.float32) * valid[:, None, :, None]
    b = tf.cast(b, tf.float32) * valid[:, None, :, None]
    intersection = tf.einsum("bmpc,bnpc->bmnc", a, b)
    union = (tf.reduce_sum(a, axis=2)[:, :, None] + tf.reduce_sum(b, axis=2)[:, None]
             - intersection)
    presence = union / (union + smoothing)
    per_class = (union - intersection) / (union + smoothing)
    return tf.reduce_sum(presence * per_class, -1) / (tf.reduce_sum(presence, -1) + 1e-6)


def energy_score(probabilities, labels, classes, smoothing=1.0, ignore_label=IGNORE_LABEL):
    """A differentiable surrogate of the energy score (Gneiting & Raftery 2007) of m sampled
    segmentations against the observed one, per example:

        ES = E[d(S, Y)] - 1/2 E[d(S, S')],   S, S' independent samples (pairs k != l),

    with d the soft `1 - IoU` of `soft_distances` on class probabilities. With hard samples
    and a distance of negative type (1 - IoU of binary masks is one: the Jaccard index of
    sets, the Tanimoto kernel, is positive semi-definite; Ralaivola et al., "Graph kernels
    for chemical informatics", Neural Networks 18(8), 2005; Bouchard et al., "A proof for the
    positive definiteness of the Jaccard index matrix", Int. J. Approximate Reasoning 54(5),
    2013; two empty masks at IoU 1 keep it so), the energy score is a proper scoring rule (its
    expectation over Y is lowest when the samples follow Y's distribution), and its expectation,
    doubled, less the annotations' own spread E[d(Y, Y')], is the GED the paper evaluates. The
    soft version computed here is a training surrogate: not shown to be proper, nor equal to
    GED.

    Args:
        probabilities: `(b, m, h, w, K)` class probabilities of m >= 2 samples (a softmax).
        labels: `(b, h, w)` int, the observed segmentation; `ignore_label` pixels are left out
            of every comparison.
        classes: the scored classes, e.g. `[1]` for a binary mask.
        smoothing: see `soft_distances`.

    Returns:
        `(b,)` float32.
    """
    samples = probabilities.shape[1]
    if samples is None or samples < 2:
        raise ValueError("The energy score needs m >= 2 samples per image. Received "
                         f"probabilities of shape {probabilities.shape}.")
    observed, valid = class_indicators(labels, classes, ignore_label)
    probabilities = tf.gather(tf.cast(probabilities, tf.float32), classes, axis=-1)
    probabilities = tf.reshape(probabilities, tf.stack(
        [tf.shape(observed)[0], samples, -1, len(classes)]))
    cross = tf.reduce_mean(
        soft_distances(probabilities, observed[:, None], valid, smoothing), (1, 2))
    pairwise = soft_distances(probabilities, probabilities, valid, smoothing)
    off_diagonal = tf.reduce_sum(pairwise, (1, 2)) - tf.linalg.trace(pairwise)
    return cross - 0.5 * off_diagonal / (samples * (samples - 1))
