"""What the latent space encodes, as in the latent-space figure of Kohl et al. (Sec. 4.3 and
the appendix): decode one image on a grid over two latent axes, and place the posterior of each
of its annotations on the prior's density.

Coordinates are in units of the prior: an offset `e` on the grid is the latent
`z = mu_p + sigma_p * e` (elementwise), with `mu_p`, `sigma_p` the prior's mean and standard
deviation for this image, so the prior is N(0, I) in these units whatever its scale, and the
grid's centre is the prior mean, what `model(images)` decodes. An annotation's posterior mean
sits at `(mu_q - mu_p) / sigma_p`; axes along which the annotations' posterior means lie far
apart are the ones the model uses to tell them apart.

    inspection = tfprobunet.latent.inspect(model, image, annotations)
    tfprobunet.plots.latent_space(inspection, "latent.png")

or `tfprobunet inspect --model model.keras --image image.png --out latent.png`.
"""

import numpy as np
import tensorflow as tf


def _one_image(image):
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"`image` must be one image, (h, w, c). Received shape {image.shape}; "
                         "for a batch, pass `images[i]`.")
    return image


def _check_axes(axes, latent_dim):
    axes = tuple(int(a) for a in axes)
    if len(axes) != 2 or axes[0] == axes[1] or not all(0 <= a < latent_dim for a in axes):
        raise ValueError(f"`axes` must be two different latent axes in [0, {latent_dim}) "
                         f"(the model's latent_dim is {latent_dim}). Received: axes={axes}")
    return axes


def grid_offsets(extent=2.0, num_steps=5):
    """`(num_steps,)` offsets evenly from `-extent` to `extent` prior standard deviations; an
    odd `num_steps` puts 0 (the prior mean) in the middle."""
    if not extent > 0 or num_steps < 2:
        raise ValueError("The grid needs `extent` > 0 and `num_steps` >= 2. Received: "
                         f"extent={extent}, num_steps={num_steps}")
    return np.linspace(-extent, extent, num_steps, dtype=np.float32)


def grid_latents(prior_loc, prior_scale, axes, offsets):
    """The latents of a grid over two axes, the other axes at the prior mean.

    Args:
        prior_loc, prior_scale: `(N,)`, the prior's mean and standard deviation.
        axes: `(row_axis, column_axis)`.
        offsets: `(s,)`, in prior standard deviations.

    Returns:
        `(s, s, N)`: `z[i, j] = prior_loc + prior_scale * e` with `e[row_axis] = offsets[i]`,
        `e[column_axis] = offsets[j]` and 0 elsewhere.
    """
    prior_loc = np.asarray(prior_loc, np.float32)
    prior_scale = np.asarray(prior_scale, np.float32)
    s = len(offsets)
    e = np.zeros((s, s, prior_loc.shape[-1]), np.float32)
    e[:, :, axes[0]] = np.asarray(offsets)[:, None]
    e[:, :, axes[1]] = np.asarray(offsets)[None, :]
    return prior_loc + prior_scale * e


def posterior_means(model, image, annotations):
    """The posterior mean of each annotation of one image.

    Args:
        image: `(h, w, c)`. annotations: `(A, h, w)` int.

    Returns:
        `(A, N)`: `model.posterior_distribution(images, annotations).loc` with the image
        repeated for each annotation.
    """
    image = _one_image(image)
    annotations = np.asarray(annotations)
    if annotations.ndim == 2:
        annotations = annotations[None]
    images = np.repeat(image[None], len(annotations), axis=0)
    return model.posterior_distribution(images, annotations).loc.numpy()


def inspect(model, image, annotations=None, axes=None, extent=2.0, num_steps=5):
    """Decode one image on a grid over two latent axes; place its annotations' posteriors.

    Args:
        model: a `ProbabilisticUNet`.
        image: `(h, w, c)` float.
        annotations: optional `(A, h, w)` int, the image's annotations.
        axes: the two latent axes of the grid. Default: with annotations, the two along which
            their posterior means spread most (in prior standard deviations); without, (0, 1).
        extent: the grid spans `[-extent, extent]` prior standard deviations on each axis.
        num_steps: grid points per axis (odd: the centre is the prior mean).

    Returns:
        A dict of numpy arrays: `image`, `annotations` (or None), `axes`, `offsets (s,)`,
        `latents (s, s, N)`, `logits (s, s, h, w, K)` (`logits[i, j]` decoded at
        `latents[i, j]`), `prior_loc (N,)`, `prior_scale (N,)`, and with annotations
        `posterior_loc (A, N)`, `posterior_offsets (A, N)` (`(loc - prior_loc) / prior_scale`)
        and `spread (N,)` (the standard deviation of `posterior_offsets` along each axis).
    """
    image = _one_image(image)
    features, prior = model.features(image[None])
    prior_loc, prior_scale = prior.loc.numpy()[0], prior.stddev().numpy()[0]
    result = {"image": image, "annotations": None, "prior_loc": prior_loc,
              "prior_scale": prior_scale}
    if annotations is not None:
        annotations = np.asarray(annotations)
        loc = posterior_means(model, image, annotations)
        offsets = (loc - prior_loc) / prior_scale
        result.update(annotations=annotations.reshape((-1, *annotations.shape[-2:])),
                      posterior_loc=loc, posterior_offsets=offsets, spread=offsets.std(axis=0))
    latent_dim = prior_loc.shape[-1]
    if axes is None:
        if latent_dim < 2:
            raise ValueError("A grid over two latent axes needs latent_dim >= 2; the model's "
                             "is 1.")
        axes = (0, 1) if annotations is None else tuple(
            int(a) for a in np.argsort(-result["spread"], kind="stable")[:2])
    axes = _check_axes(axes, latent_dim)
    offsets = grid_offsets(extent, num_steps)
    latents = grid_latents(prior_loc, prior_scale, axes, offsets)
    flat = tf.reshape(latents, (1, -1, latent_dim))
    logits = model.decode(features, flat).numpy()[0]
    result.update(axes=axes, offsets=offsets, latents=latents,
                  logits=logits.reshape((num_steps, num_steps, *logits.shape[1:])))
    return result
