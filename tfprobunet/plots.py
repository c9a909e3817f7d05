"""The evaluation figures, drawn with matplotlib's object API (no pyplot state, no display):
GED against the number of samples (Kohl et al. Fig. 4), mode frequencies against their true
probabilities (Fig. 5), and images with their annotations, samples and uncertainty (Fig. 3)."""

import os

import numpy as np

from tfprobunet.losses import IGNORE_LABEL


def _figure(width, height):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def ged_curve(report, path):
    """GED (mean ± standard error over images) against the number of samples, with the noise
    floor of the ground truth sampled against itself."""
    counts = report["sample_counts"]
    figure = _figure(4.5, 3.5)
    axes = figure.add_subplot()
    for key, label, style in (("ged", "model", "o-"),
                              ("ged_noise_floor", "ground truth (noise floor)", "s--")):
        means = [report[key][str(k)]["mean"] for k in counts]
        sems = [report[key][str(k)]["sem"] for k in counts]
        axes.errorbar(counts, means, yerr=np.nan_to_num(sems), fmt=style, capsize=3, label=label)
    axes.set_xscale("log", base=2)
    axes.set_xticks(counts, [str(k) for k in counts])
    axes.set_xlabel("number of samples")
    axes.set_ylabel(r"$D^2_{GED}$")
    axes.set_title(f"{report['dataset']} ({report['num_images']} images)")
    axes.legend()
    figure.savefig(path, dpi=120)


def mode_calibration(modes, path):
    """Predicted frequency of each mode against its true probability on log axes, with the
    bisector; modes never predicted are drawn at the bottom edge as open markers."""
    truth = np.asarray(modes["true_probabilities"])
    predicted = np.asarray(modes["frequencies"])
    floor = min(truth.min(), predicted[predicted > 0].min(initial=1.0)) / 3
    figure = _figure(4.5, 4.5)
    axes = figure.add_subplot()
    found = predicted > 0
    axes.loglog(truth[found], predicted[found], "o", label="modes found")
    if (~found).any():
        axes.loglog(truth[~found], np.full((~found).sum(), floor), "o", mfc="none",
                    label="never sampled")
    line = [floor, max(truth.max(), predicted.max()) * 1.5]
    axes.loglog(line, line, "-", color="tab:blue", alpha=0.4, label="bisector")
    axes.set_xlabel("true probability")
    axes.set_ylabel("predicted frequency")
    axes.set_title(f"{modes['modes_found']}/{modes['num_modes']} modes, "
                   f"Pearson r = {modes['pearson_r']:.3f}")
    axes.legend(loc="upper left")
    figure.savefig(path, dpi=120)


def sample_grid(rows, num_classes, path, annotation_order=None, max_annotations=4,
                max_samples=6):
    """One row per image: the image, its annotations, samples, and the entropy map.

    Args:
        rows: `(image (h, w, c), annotations (A, h, w), samples (m, h, w), entropy (h, w))`.
        annotation_order: indices of the annotations to show first (e.g. the likeliest modes).
    """
    columns = 1 + max_annotations + max_samples + 1
    figure = _figure(1.3 * columns, 1.4 * len(rows))
    grid = figure.subplots(len(rows), columns, squeeze=False)
    for r, (image, annotations, samples, entropy) in enumerate(rows):
        order = annotation_order if annotation_order is not None else range(len(annotations))
        shown = [("image", image)]
        shown += [(f"annotation {j}", annotations[j]) for j in list(order)[:max_annotations]]
        shown += [(f"sample {j}", samples[j]) for j in range(min(max_samples, len(samples)))]
        for c, axes in enumerate(grid[r]):
            axes.set_axis_off()
            if c == columns - 1:
                axes.imshow(entropy, cmap="magma")
                title = "entropy"
            elif c < len(shown):
                title, picture = shown[c]
                _show(axes, picture, num_classes, is_image=c == 0)
            else:
                continue
            if r == 0:
                axes.set_title(title, fontsize=7)
    figure.savefig(path, dpi=100)


def _show(axes, picture, num_classes, is_image):
    if is_image:
        picture = np.clip(picture, 0.0, 1.0)
        if picture.shape[-1] == 1:
            axes.imshow(picture[..., 0], cmap="gray", vmin=0, vmax=1)
        else:
            axes.imshow(picture[..., :3])
        return
    labels = np.ma.masked_equal(picture, IGNORE_LABEL)
    axes.imshow(labels, cmap="gray" if num_classes == 2 else "tab20", vmin=0,
                vmax=max(num_classes - 1, 1), interpolation="nearest")


def write_figures(report, rows, source, out_dir):
    """Write every figure that applies to `report`; returns their file names."""
    written = []
    ged_curve(report, os.path.join(out_dir, "ged.png"))
    written.append("ged.png")
    order = None
    if "modes" in report:
        mode_calibration(report["modes"], os.path.join(out_dir, "mode_frequencies.png"))
        written.append("mode_frequencies.png")
        order = np.argsort(report["modes"]["true_probabilities"])[::-1]
    if rows:
        sample_grid(rows, source.num_classes, os.path.join(out_dir, "samples.png"), order)
        written.append("samples.png")
    return written
