"""The evaluation figures, drawn with matplotlib's object API (no pyplot state, no display):
GED against the number of samples (Kohl et al. Fig. 4), mode frequencies against their true
probabilities (Fig. 5), images with their annotations, samples and uncertainty (Fig. 3), and
one image decoded over two latent axes with its annotations' posteriors (the appendix)."""

import os

import numpy as np

from tfprobunet import _io, catalog
from tfprobunet.catalog import IGNORE_LABEL


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


def labelled_extent(annotations):
    """The `(h, w)` an example's annotations cover: up to the last row and the last column in
    which some annotation is not `IGNORE_LABEL`. Mixed sizes are padded at the bottom and right
    to a common one with that label (`tfprobunet.data.from_folders`); `[:h, :w]` crops the
    padding away. The whole size when every pixel is ignored.

    Args:
        annotations: `(A, H, W)` labels.
    """
    labelled = np.any(np.asarray(annotations) != IGNORE_LABEL, axis=0)
    rows, columns = np.flatnonzero(labelled.any(axis=1)), np.flatnonzero(labelled.any(axis=0))
    if not len(rows):
        return labelled.shape
    return int(rows[-1]) + 1, int(columns[-1]) + 1


def sample_grid(rows, num_classes, path, annotation_order=None, max_annotations=4,
                max_samples=6):
    """One row per image: the image, its annotations, samples, and the entropy map, each
    cropped to the image's own extent (`labelled_extent`: the padding of mixed sizes left out).

    The entropy map is the pixel-wise entropy of the samples' mean class probabilities, on one
    scale for every row, from 0 (every sample certain of the same class; black) to log K nats
    (all K classes equally likely, 0.69 for two; white), shown by the colour bar.

    Args:
        rows: `(image (h, w, c), annotations (A, h, w), samples (m, h, w), entropy (h, w))`.
        annotation_order: indices of the annotations to show first (e.g. the likeliest modes).

    Returns:
        The matplotlib `Figure`, also written to `path`.
    """
    columns = 1 + max((min(max_annotations, len(row[1])) + min(max_samples, len(row[2]))
                       for row in rows), default=0) + 1
    figure = _figure(1.3 * columns + 0.6, 1.4 * len(rows))
    grid = figure.subplots(len(rows), columns, squeeze=False)
    top = np.log(num_classes)
    for r, (image, annotations, samples, entropy) in enumerate(rows):
        h, w = labelled_extent(annotations)
        order = annotation_order if annotation_order is not None else range(len(annotations))
        shown = [("image", np.asarray(image)[:h, :w])]
        shown += [(f"annotation {j}", np.asarray(annotations[j])[:h, :w])
                  for j in list(order)[:max_annotations]]
        shown += [(f"sample {j}", np.asarray(samples[j])[:h, :w])
                  for j in range(min(max_samples, len(samples)))]
        for c, axes in enumerate(grid[r]):
            # A frame without ticks: a mask all of the light class still shows its edges.
            axes.set_xticks([])
            axes.set_yticks([])
            if c == columns - 1:
                entropy_map = axes.imshow(np.asarray(entropy)[:h, :w], cmap="magma", vmin=0.0,
                                          vmax=top)
                title = "entropy"
            elif c < len(shown):
                title, picture = shown[c]
                _show(axes, picture, num_classes, is_image=c == 0)
            else:
                axes.set_axis_off()
                continue
            if r == 0:
                axes.set_title(title, fontsize=7)
    if rows:
        bar = figure.colorbar(entropy_map, ax=grid[:, -1], shrink=0.9, ticks=[0.0, top / 2, top])
        bar.ax.set_yticklabels(["0", f"{top / 2:.2f}", f"{top:.2f} = log {num_classes}"],
                               fontsize=6)
        bar.set_label("entropy (nats)", fontsize=7)
    figure.savefig(path, dpi=100)
    return figure


def _show(axes, picture, num_classes, is_image, **imshow):
    """Draw an image, or a label map (ignored pixels left blank; `imshow`: more arguments of
    `axes.imshow` for label maps, e.g. `extent`)."""
    if is_image:
        picture = np.clip(picture, 0.0, 1.0)
        if picture.shape[-1] == 1:
            axes.imshow(picture[..., 0], cmap="gray", vmin=0, vmax=1)
        else:
            axes.imshow(picture[..., :3])
        return
    labels = np.ma.masked_equal(picture, IGNORE_LABEL)
    axes.imshow(labels, cmap="gray" if num_classes == 2 else "tab20", vmin=0,
                vmax=max(num_classes - 1, 1), interpolation="nearest", **imshow)


def latent_space(inspection, path, max_annotations=6):
    """One image decoded on a grid over two latent axes, in prior standard deviations, with the
    prior's 1 and 2 sigma circles and each annotation's posterior mean (numbered), beside the
    image and those annotations.

    Args:
        inspection: what `tfprobunet.latent.inspect` returns.
    """
    offsets, logits = inspection["offsets"], inspection["logits"]
    s, h, w, num_classes = len(offsets), *logits.shape[2:]
    labels = logits.argmax(-1)
    pad = max(1, h // 32)  # around each tile, so tile centres fall on the offsets
    mosaic = np.ma.masked_all((s * (h + 2 * pad), s * (w + 2 * pad)))
    for i in range(s):  # the row axis grows upwards
        top = (s - 1 - i) * (h + 2 * pad) + pad
        for j in range(s):
            left = j * (w + 2 * pad) + pad
            mosaic[top:top + h, left:left + w] = labels[i, j]
    half = (offsets[1] - offsets[0]) / 2
    bounds = (offsets[0] - half, offsets[-1] + half)
    annotations = inspection["annotations"]
    shown = 0 if annotations is None else min(len(annotations), max_annotations)
    figure = _figure(7.5, 5.5)
    left, right = figure.subfigures(1, 2, width_ratios=[3, 1])
    axes = left.add_subplot()
    _show(axes, mosaic, num_classes, is_image=False, extent=(*bounds, *bounds))
    angle = np.linspace(0, 2 * np.pi, 200)
    for radius in (1, 2):
        axes.plot(radius * np.cos(angle), radius * np.sin(angle), "--", color="tab:orange",
                  lw=1, label="prior: 1 and 2 sigma" if radius == 1 else None)
    row, column = inspection["axes"]
    if annotations is not None:
        points = inspection["posterior_offsets"]
        axes.plot(points[:, column], points[:, row], "o", color="tab:red", mfc="none",
                  label="annotations' posterior means")
        for k, point in enumerate(points):
            axes.annotate(str(k), (point[column], point[row]), color="tab:red", fontsize=8,
                          xytext=(3, 3), textcoords="offset points")
    axes.set_xlim(*bounds)
    axes.set_ylim(*bounds)
    axes.set_xlabel(f"latent axis {column} (prior standard deviations)")
    axes.set_ylabel(f"latent axis {row}")
    axes.set_title("decoded at each grid point, the other axes at the prior mean", fontsize=9)
    axes.legend(loc="lower right", fontsize=7)
    panels = right.subplots(1 + shown, 1, squeeze=False)[:, 0]
    _show(panels[0], inspection["image"], num_classes, is_image=True)
    panels[0].set_title("image", fontsize=8)
    for k in range(shown):
        _show(panels[1 + k], annotations[k], num_classes, is_image=False)
        panels[1 + k].set_title(f"annotation {k}", fontsize=8)
    for panel in panels:
        panel.set_axis_off()
    figure.savefig(path, dpi=110)


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


# Names of the package's models in the comparison figures, as the paper calls them (the
# catalog's labels; a results entry's own "label" names a model of your own).
MODEL_LABELS = {name: entry.label for name, entry in catalog.BUILTIN_MODELS.items()}


def _label(name, entry):
    return entry.get("label") or catalog.model_label(name)


def comparison_ged(results, path):
    """Fig. 4 of the paper: GED against the number of samples for every model of a `compare`
    run (mean over seeds, bars from the lowest to the highest seed), the noise floor, and in
    the legend the Wilcoxon p-value of each baseline against the Probabilistic U-Net (and which
    is lower)."""
    counts = results["sample_counts"]
    tests = results.get(f"wilcoxon_{counts[-1]}", {})
    figure = _figure(5.5, 4)
    axes = figure.add_subplot()
    for i, (name, entry) in enumerate(results["models"].items()):
        means = np.array([entry["ged"][str(k)]["mean"] for k in counts])
        low = means - [entry["ged"][str(k)]["min"] for k in counts]
        high = np.array([entry["ged"][str(k)]["max"] for k in counts]) - means
        label = _label(name, entry)
        if name in tests:
            side = "" if tests[name]["reference_lower"] else ", lower than ours"
            label += f" (p = {tests[name]['p']:.1e}{side})"
        axes.errorbar(np.array(counts) * 1.02 ** (i - 2), means, yerr=[low, high], fmt="o-",
                      capsize=3, label=label)
    floor = [results["ged_noise_floor"][str(k)] for k in counts]
    axes.plot(counts, floor, "k--", label="ground truth (noise floor)")
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    axes.set_xticks(counts, [str(k) for k in counts])
    axes.set_xlabel("number of samples")
    axes.set_ylabel(r"$D^2_{GED}$")
    seeds = len(results["seeds"])
    axes.set_title(f"{results['dataset']}: {results['steps']} steps, {seeds} seed"
                   f"{'s' if seeds > 1 else ''}, {results['num_test_images']} test images",
                   fontsize=10)
    axes.legend(fontsize=7, title=f"p: Wilcoxon at {counts[-1]} samples" if tests else None,
                title_fontsize=7)
    figure.savefig(path, dpi=120)


def comparison_modes(results, path):
    """Fig. 5 of the paper: each model's sampled mode frequencies (mean over seeds) against the
    modes' true probabilities, modes sorted by probability, on a log axis; modes a model never
    sampled are drawn at the bottom edge as open markers."""
    truth = np.asarray(results["true_probabilities"])
    order = np.argsort(truth)[::-1]
    x = np.arange(len(truth))
    floor = truth.min() / 10
    figure = _figure(6.5, 4)
    axes = figure.add_subplot()
    axes.semilogy(x, truth[order], "k-", lw=2, label="truth")
    for i, (name, entry) in enumerate(results["models"].items()):
        frequencies = np.asarray(entry["mode_frequencies"])[order]
        found = frequencies > 0
        colour = f"C{i}"
        label = (f"{_label(name, entry)} (r = {entry['pearson_r']['mean']:.2f}, "
                 f"{entry['modes_found']['mean']:.0f}/{len(truth)} modes)")
        axes.semilogy(x[found], frequencies[found], "o", ms=4, color=colour, label=label)
        if (~found).any():
            # One row per model, so that the open markers do not hide each other.
            axes.semilogy(x[~found], np.full((~found).sum(), floor * 1.4 ** -i), "o", ms=4,
                          mfc="none", color=colour)
    axes.set_xlabel("mode, by true probability")
    axes.set_ylabel("frequency among the samples")
    axes.set_title(f"{results['dataset']}: mode frequencies (open: never sampled)",
                   fontsize=10)
    axes.legend(fontsize=7)
    figure.savefig(path, dpi=120)


# The figures `write_comparison_figures` may write.
COMPARISON_FIGURES = ("ged.png", "mode_frequencies.png")


def write_comparison_figures(results, out_dir):
    """The figures of a `compare` run that apply to `results` (`COMPARISON_FIGURES`), each
    written whole or not at all and by rename (`_io.replacing`: a link in its place is replaced,
    never written through); returns their file names."""
    ged, modes = COMPARISON_FIGURES
    draws = [(ged, comparison_ged)] + ([(modes, comparison_modes)]
                                       if "true_probabilities" in results else [])
    for name, draw in draws:
        with _io.replacing(os.path.join(out_dir, name)) as tmp:
            draw(results, tmp)
    return [name for name, _ in draws]
