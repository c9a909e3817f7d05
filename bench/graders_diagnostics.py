"""What a model does on *graders*, beyond GED: where its samples put the lesion and how large,
against the graders, and what a perfect model would score.

- `perfect_model`: GED(k) of k fresh draws from the distribution the graders' masks come from
  (`tfprobunet.data.synthetic.graders_truth`: each draw empty with the image's rate of empty
  masks, otherwise the blob out to a radius drawn as the graders' are), against the image's 4
  masks. This is the score of a model that samples the truth itself; it lies above the noise
  floor of `evaluate` (which resamples the 4 masks, so it draws only masks the graders drew).
  Needs no model.
- with `--model`: the lesion rate of the samples by the number of empty masks of the image
  (true rate 1 - empty/4); the empty fraction; the coefficient of variation of the lesion areas
  over an image's non-empty samples and over its non-empty masks (mean over images with 2 or
  more of each); for a `ProbabilisticUNet`, the prior's and the posteriors' standard deviation
  per latent dimension (mean over images and masks).

    python bench/graders_diagnostics.py
    python bench/graders_diagnostics.py --model runs/compare/graders/probunet-seed0/model.keras

Prints JSON. The test images are those of `evaluate` and `compare` (seed 0, 64x64, 100 images).
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tfprobunet  # noqa: E402
from tfprobunet import metrics  # noqa: E402
from tfprobunet.data import synthetic  # noqa: E402
from train_step import cpu  # noqa: E402

SAMPLE_COUNTS = (1, 4, 8, 16)


def _mean_sem(values):
    values = np.asarray(values, np.float64)
    return {"mean": round(float(values.mean()), 4),
            "sem": round(float(values.std(ddof=1) / np.sqrt(len(values))), 4)}


def perfect_model(annotations, draw, rng):
    """GED(k), with and without self-pairs, of k draws from the truth per image."""
    draws = draw(max(SAMPLE_COUNTS), rng)
    args = dict(num_classes=2)
    cross = metrics.pairwise_distances(draws, annotations, **args)
    pairwise = metrics.pairwise_distances(draws, draws, **args)
    truth = metrics.pairwise_distances(annotations, annotations, **args)
    result = {}
    for self_pairs, key in ((True, "ged"), (False, "ged_unbiased")):
        result[key] = {str(k): _mean_sem(metrics.energy_distance(
            cross[:, :k], pairwise[:, :k, :k], truth, self_pairs=self_pairs))
            for k in SAMPLE_COUNTS if self_pairs or k > 1}
    return result


def _areas_cv(masks):
    """Mean over images of the coefficient of variation of the non-empty masks' areas (images
    with at least 2 non-empty masks)."""
    areas = masks.reshape(masks.shape[:2] + (-1,)).sum(axis=-1).astype(np.float64)
    values = [a[a > 0].std() / a[a > 0].mean() for a in areas if np.count_nonzero(a) >= 2]
    return round(float(np.mean(values)), 3), len(values)


def model_diagnostics(model, images, annotations, num_samples, seed):
    masks = np.concatenate([
        keras.ops.convert_to_numpy(keras.ops.argmax(
            model.sample(images[i:i + 10], num_samples, seed=seed + i), axis=-1))
        for i in range(0, len(images), 10)])
    empty_masks = ~annotations.any(axis=(2, 3))
    lesion = masks.any(axis=(2, 3))
    by_empty = {}
    for count in range(synthetic.NUM_GRADERS):
        chosen = empty_masks.sum(axis=1) == count
        if chosen.any():
            by_empty[str(count)] = {"images": int(chosen.sum()),
                                    "graders": 1 - count / synthetic.NUM_GRADERS,
                                    "samples": round(float(lesion[chosen].mean()), 3)}
    samples_cv, samples_images = _areas_cv(masks)
    graders_cv, graders_images = _areas_cv(annotations)
    result = {
        "num_samples": num_samples,
        "empty_fraction": {"samples": round(float(1 - lesion.mean()), 3),
                           "graders": round(float(empty_masks.mean()), 3)},
        "lesion_rate_by_empty_masks": by_empty,
        "area_cv": {"samples": samples_cv, "samples_images": samples_images,
                    "graders": graders_cv, "graders_images": graders_images},
    }
    if isinstance(model, tfprobunet.ProbabilisticUNet):
        _, prior = model.features(images)
        b, a = annotations.shape[:2]
        posterior = model.posterior_distribution(
            np.repeat(images, a, axis=0), annotations.reshape((b * a,) + annotations.shape[2:]))
        for key, distribution in (("prior_scale", prior), ("posterior_scale", posterior)):
            scale = keras.ops.convert_to_numpy(distribution.stddev()).astype(np.float64)
            result[key] = np.round(scale.mean(axis=0), 3).tolist()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a .keras model trained on graders (64x64)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data_seed = args.seed + synthetic.SPLIT_SEEDS["test"]
    images, annotations = synthetic.graders_arrays(args.images, args.image_size, data_seed)
    draw = synthetic.graders_truth(args.images, args.image_size, data_seed)
    result = {"image_size": args.image_size, "images": args.images, "seed": args.seed,
              "perfect_model": perfect_model(annotations, draw, np.random.default_rng(args.seed))}
    if args.model:
        model = keras.models.load_model(args.model)
        result["model"] = args.model
        result.update(model_diagnostics(model, images, annotations, args.samples, args.seed))
    result["cpu"] = cpu()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
