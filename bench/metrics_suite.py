"""The cost of the metric suite at the scale of a LIDC test set: GED, HM-IoU, sample diversity,
PHiSeg's NCC and the ECE, for 100 samples per image against 4 annotations, on 1992 images of
128x128 (the Kohl split's test set). Prints JSON: seconds per metric over the whole set (each
timed in its own pass, batch by batch), ms per image, peak memory and the CPU's flags.

    python bench/metrics_suite.py [--images 1992] [--samples 100] [--batch 16]

The data are random but shaped like LIDC's: a lesion blob per image, the annotations and the
samples jittered versions of it, the samples' probabilities a softmax around their masks.
"""

import argparse
import json
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from train_step import cpu  # noqa: E402


def _batch(rng, batch, samples, annotations, size):
    """Label maps of `samples` and of `annotations` per image, and the samples' probabilities."""
    yy, xx = np.mgrid[:size, :size]
    centre = rng.uniform(size * 0.3, size * 0.7, (batch, 1, 2))
    def blobs(count):
        radius = rng.uniform(5, 20, (batch, count))
        shift = rng.normal(0, 2, (batch, count, 2)) + centre
        d2 = (yy - shift[..., 0, None, None]) ** 2 + (xx - shift[..., 1, None, None]) ** 2
        return (d2 < radius[..., None, None] ** 2).astype(np.int64)
    sample_masks = blobs(samples)
    logits = np.where(sample_masks[..., None] == np.arange(2), 2.0, -2.0)
    logits = logits + rng.normal(0, 0.5, logits.shape)
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return sample_masks, blobs(annotations), probabilities


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1992)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--annotations", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()

    from tfprobunet import metrics

    suite = {
        "ged": lambda s, a, p: metrics.generalized_energy_distance(s, a, 2),
        "hungarian_iou": lambda s, a, p: metrics.hungarian_iou(s, a, 2),
        "sample_diversity": lambda s, a, p: metrics.sample_diversity(s, 2),
        "normalized_cross_correlation": lambda s, a, p: metrics.normalized_cross_correlation(
            p, a),
        "expected_calibration_error": lambda s, a, p: metrics.expected_calibration_error(
            p[..., 1].mean(axis=1), a),
    }
    seconds = dict.fromkeys(suite, 0.0)
    rng = np.random.default_rng(0)
    done = 0
    while done < args.images:
        batch = min(args.batch, args.images - done)
        data = _batch(rng, batch, args.samples, args.annotations, args.size)
        for name, metric in suite.items():  # interleaved: each batch through every metric
            start = time.perf_counter()
            metric(*data)
            seconds[name] += time.perf_counter() - start
        done += batch
    print(json.dumps({
        "images": args.images, "samples": args.samples, "annotations": args.annotations,
        "size": args.size, "batch": args.batch,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "ms_per_image": {k: round(1000 * v / args.images, 2) for k, v in seconds.items()},
        "total_seconds": round(sum(seconds.values()), 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "cpu": cpu(),
    }, indent=2))


if __name__ == "__main__":
    main()
