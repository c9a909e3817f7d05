"""`evaluate()`: the paper's evaluation of a trained model (section 4, Figs. 3-5) on any dataset
that yields all annotations per image, written as `report.json` and PNG figures.

Its outputs are written as one set (`_write_outputs`): into a temporary folder first, then moved
into place, `report.json` last, so that a failure (a full disk) leaves the previous report and
figures, never new figures beside an old report."""

import contextlib
import json
import os
import shutil
import time
import uuid

import keras
import numpy as np
import tensorflow as tf

from tfprobunet import _console, _io
from tfprobunet import data as data_lib
from tfprobunet import metrics, plots, protocols, saving
from tfprobunet.data import pipeline
from tfprobunet.defaults import MAX_SAMPLES, MAX_SEED, check_number
from tfprobunet.metrics.distances import distinct_pair_mean
from tfprobunet.models import checks

SAMPLE_COUNTS = (1, 4, 8, 16)


def _mean_sem(values):
    """Mean and standard error over images; images where the value is undefined (NaN, e.g. the
    NCC of a constant map) are left out and counted."""
    values = np.asarray(values, np.float64)
    defined = values[~np.isnan(values)]
    sem = defined.std(ddof=1) / np.sqrt(len(defined)) if len(defined) > 1 else float("nan")
    result = {"mean": float(defined.mean()) if len(defined) else float("nan"),
              "sem": float(sem)}
    if len(defined) < len(values):
        result["undefined"] = int(len(values) - len(defined))
    return result


def _truth_distances(annotations_pairwise, weights, count, rng):
    """Distances for `count` draws from the ground truth itself (the noise floor): the cross
    `(b, count, a)` and pairwise `(b, count, count)` distances, read off the annotations'."""
    b, a = annotations_pairwise.shape[:2]
    p = np.full(a, 1.0 / a) if weights is None else np.asarray(weights) / np.sum(weights)
    index = rng.choice(a, size=(b, count), p=p)
    cross = np.take_along_axis(annotations_pairwise, index[:, :, None], axis=1)
    return cross, np.take_along_axis(cross, index[:, None, :], axis=2)


def _empty(masks, classes):
    """`(..., n)` bool: no scored class anywhere in the map."""
    return ~np.isin(masks, classes).any(axis=(-2, -1))


class _Accumulator:
    """Per-image values gathered batch by batch, under the conventions of `protocol`."""

    def __init__(self, source, sample_counts, seed, protocol=protocols.PROTOCOLS["custom"]):
        self.source = source
        self.sample_counts = sample_counts
        self.protocol = protocol
        self.classes = metrics.scored_classes(source.num_classes, source.classes)
        self.rng = np.random.default_rng(seed)
        self.ged = {k: [] for k in sample_counts}
        self.ged_unbiased = {k: [] for k in sample_counts if k > 1}
        self.noise_floor = {k: [] for k in sample_counts}
        self.per_image = {"hm_iou": [], "sample_diversity": [], "ncc": [], "ece": []}
        self.calibration = None  # pooled ECE bins, per scored class
        self.assignments = []
        self.flips = {}  # (c, t): [sampled, expected, pixels]
        self.empty_samples = []
        self.empty_annotations = []

    def add(self, masks, annotations, probabilities):
        """`masks (b, m, h, w)`, `annotations (b, a, h, w)` and the samples' class
        `probabilities (b, m, h, w, K)` of one batch."""
        args = dict(num_classes=self.source.num_classes, classes=self.source.classes,
                    empty_pair=self.protocol.empty_pair)
        weights = self.source.annotation_weights
        cross = metrics.pairwise_distances(masks, annotations, **args)
        samples_pairwise = metrics.pairwise_distances(masks, masks, **args)
        truth_pairwise = metrics.pairwise_distances(annotations, annotations, **args)
        for k in self.sample_counts:
            self.ged[k].extend(metrics.energy_distance(
                cross[:, :k], samples_pairwise[:, :k, :k], truth_pairwise,
                annotation_weights=weights, self_pairs=self.protocol.self_pairs))
            # Without self-pairs both sides need two maps (or known weights).
            if k in self.ged_unbiased and (weights is not None or annotations.shape[1] > 1):
                self.ged_unbiased[k].extend(metrics.energy_distance(
                    cross[:, :k], samples_pairwise[:, :k, :k], truth_pairwise,
                    annotation_weights=weights, self_pairs=False))
            floor_cross, floor_pairwise = _truth_distances(truth_pairwise, weights, k, self.rng)
            self.noise_floor[k].extend(metrics.energy_distance(
                floor_cross, floor_pairwise, truth_pairwise, annotation_weights=weights,
                self_pairs=self.protocol.self_pairs))
        m = masks.shape[1]
        self.per_image["sample_diversity"].extend(
            distinct_pair_mean(samples_pairwise) if m > 1 else np.full(len(masks), np.nan))
        headline = self.protocol.headline or m
        self.per_image["hm_iou"].extend(metrics.matched_iou(cross[:, :headline],
                                                            self.protocol.hm_iou))
        self.per_image["ncc"].extend(metrics.normalized_cross_correlation(
            probabilities, annotations, annotation_weights=weights))
        self._add_calibration(probabilities.mean(axis=1), annotations, weights)
        if weights is not None:
            self.assignments.append(np.argmin(cross, axis=-1))  # assign_modes
            pairs = metrics.flip_pairs(annotations)
            for pair, *counts in zip(pairs, *metrics.flip_counts(masks, annotations, pairs,
                                                                 weights)):
                totals = self.flips.setdefault(pair, [0.0, 0.0, 0.0])
                for j, value in enumerate(counts):
                    totals[j] += value
        self.empty_samples.append(_empty(masks, self.classes))
        self.empty_annotations.append(_empty(annotations, self.classes))

    def _add_calibration(self, mean_probabilities, annotations, weights):
        """ECE of the mean probability, one scored class against the rest (class 1 alone for
        a binary task), per image and pooled; the mean over the scored classes."""
        bins = [metrics.calibration_bins(mean_probabilities[..., c], annotations,
                                         positive_class=c, per_image=True,
                                         annotation_weights=weights)
                for c in self.classes]
        self.per_image["ece"].extend(np.mean(
            [metrics.calibration_error(*b) for b in bins], axis=0))
        pooled = np.array([[s.sum(0) for s in b] for b in bins])  # (classes, 3, bins)
        self.calibration = pooled if self.calibration is None else self.calibration + pooled

    def report(self, per_image=False):
        counts = [str(k) for k in self.sample_counts]
        report = {
            "num_images": len(self.per_image["hm_iou"]),
            "ged": {c: _mean_sem(self.ged[k]) for c, k in zip(counts, self.sample_counts)},
            "ged_noise_floor": {c: _mean_sem(self.noise_floor[k])
                                for c, k in zip(counts, self.sample_counts)},
            # Self-pairs left out: a perfect model scores 0 in expectation at every k.
            "ged_unbiased": {str(k): _mean_sem(values) for k, values in self.ged_unbiased.items()},
            **{name: _mean_sem(values) for name, values in self.per_image.items()
               if name != "ece"},
            # Pooled over every pixel of the split, as the metric is defined.
            "ece": float(np.mean([metrics.calibration_error(*c) for c in self.calibration])),
        }
        if self.assignments:
            report["modes"] = self._modes()
        if self.source.num_classes == 2:
            report["presence"] = self._presence()
        if per_image:
            report["ged_per_image"] = {c: np.asarray(self.ged[k], np.float64).tolist()
                                       for c, k in zip(counts, self.sample_counts)}
            report["per_image"] = {name: np.asarray(values, np.float64).tolist()
                                   for name, values in self.per_image.items()}
        return report

    def _modes(self):
        weights = np.asarray(self.source.annotation_weights, np.float64)
        weights = weights / weights.sum()
        assignments = np.concatenate(self.assignments)
        frequencies = metrics.mode_frequencies(assignments, len(weights))
        return {
            "true_probabilities": weights.tolist(),
            "frequencies": frequencies.tolist(),
            "pearson_r": float(np.corrcoef(frequencies, weights)[0, 1]),
            "log_pearson_r": metrics.log_pearson_r(frequencies, weights, assignments.size),
            "modes_found": int(np.count_nonzero(frequencies)),
            "num_modes": len(weights),
            # The official Cityscapes evaluation's per-class flip frequencies: of the pixels of
            # class c in the unflipped annotation, the share the samples label t.
            "flips": [{"class": c, "twin": t, "sampled": sampled / pixels,
                       "true": expected / pixels}
                      for (c, t), (sampled, expected, pixels) in sorted(self.flips.items())],
        }

    def _presence(self):
        empty_samples = np.concatenate(self.empty_samples)
        empty_annotations = np.concatenate(self.empty_annotations)

        def disagree(empty):
            return empty.any(axis=1) & ~empty.all(axis=1)

        graders, samples = disagree(empty_annotations), disagree(empty_samples)
        return {
            # Images where some masks show a lesion and others none.
            "graders_disagree": float(graders.mean()),
            "samples_disagree": float(samples.mean()),
            "both_disagree": float((graders & samples).mean()),
            "empty_fraction_graders": float(empty_annotations.mean()),
            "empty_fraction_samples": float(empty_samples.mean()),
        }


def evaluate(model, dataset="flips", out_dir=None, split="test", data_dir=None,
             image_size=None, num_examples=None, sample_counts=SAMPLE_COUNTS, batch_size=8,
             num_figure_examples=4, seed=0, per_image=False, verbose=None, num_classes=None,
             protocol="custom", split_manifest=None, data_options=None):
    """Evaluate a model's distribution of segmentations against all annotations of each image.

    For every image, `max(sample_counts)` segmentations are drawn once (seeded) and the first
    k of them scored for each k. Reported (means with their standard errors over images):

    - `ged[k]`: D²_GED of k samples against the annotations (the paper's Fig. 4), with
      `ged_noise_floor[k]`: the same for k draws from the ground truth itself;
    - `ged_unbiased[k]` for k >= 2: D²_GED with the self-pairs left out of both sides
      (`metrics.generalized_energy_distance(self_pairs=False)`), which a perfect model scores
      0 on average at every k (`ged` itself follows the official evaluation code: self-pairs
      in);
    - `sample_diversity`: the mean d over pairs of two different samples; `hm_iou`: the
      Hungarian-matched IoU (`metrics.hungarian_iou`, in the protocol's form);
    - `ncc`: PHiSeg's S_NCC (`metrics.normalized_cross_correlation`) of the samples' softmax
      probabilities; `ece`: the expected calibration error of their mean against the
      annotators' mean, pooled over every pixel (for K > 2 the mean over the scored classes,
      each against the rest);
    - `protocol`: the conventions used, and `table`: the lines of the protocol's table
      (`tfprobunet.protocols.table`);
    - with known annotation probabilities (*flips*, Cityscapes): `modes`, the frequency with
      which samples fall closest to each mode against its probability, Pearson r on linear and
      on log frequencies (`metrics.log_pearson_r`), the number of modes found (Fig. 5), and
      `flips`: per flippable class c and twin t, the share of c's pixels the samples label t
      against its probability (the official per-class flip frequencies);
    - for binary tasks (*graders*, LIDC): `presence`, the fraction of images on which graders,
      and the samples, disagree on whether there is a lesion at all.

    Args:
        model: a `ProbabilisticUNet`, a baseline (any `tfprobunet.models.SegmentationSampler`:
            only `model.sample` is used) or the path of a saved `.keras` model.
        dataset: what `train` takes: a name of `tfprobunet.data.DATASETS`, a
            `tfprobunet.data.Source` of your own, or a `tf.data.Dataset` of `(image (h, w, c)
            float, annotations (A, h, w) int)` (equally likely annotations, `num_classes` K).
            Its labels are checked first (`tfprobunet.data.check_source`).
        out_dir: where `report.json` and the figures go, as one set: a write that fails (a full
            disk) leaves the previous report and figures as they were. None writes nothing.
        split, data_dir, image_size, num_examples: passed to `tfprobunet.data.load` (default
            test sizes: 500 images for *flips*, as the official evaluation, 100 for *graders*).
        sample_counts: the numbers of samples to score (a published protocol fixes them),
            each at most `MAX_SAMPLES` (1000).
        batch_size: images per `model.sample` call. Each call's samples, `batch_size` x
            `max(sample_counts)` x h x w x K float32 probabilities, must fit in
            `defaults.MAX_SAMPLE_BYTES` (512 MiB): beyond it the evaluation is refused before
            any sample is drawn, saying how many samples, or images per batch, fit.
        num_figure_examples: rows of the samples figure (Fig. 3), each cropped to its image's
            extent (`plots.sample_grid`: padding left out) with the entropy on one colour bar.
        seed: seeds the samples (and the synthetic data), from 0 to 2**31 - 1.
        per_image: also report `ged_per_image[k]`, the GED of each image in dataset order, and
            `per_image`, each image's `hm_iou`, `sample_diversity`, `ncc` and `ece` (for
            paired tests between models on the same images, as `compare` does).
        verbose: 1 shows a progress bar, 0 nothing; None: the bar on a terminal or in a
            notebook, nothing otherwise.
        num_classes: K of a plain `tf.data.Dataset` (default: the model's).
        protocol: a name of `tfprobunet.protocols.PROTOCOLS` or a `Protocol` of your own:
            `"kohl"` (the released LIDC crops, GED and HM-IoU of 16 samples), `"phiseg"`
            (PHiSeg's split, GED and S_NCC of 100 samples) or `"custom"` (the default: the
            arguments given). A published protocol fixes the split, the sample counts and the
            conventions, and refuses other data; `"phiseg"` on `"lidc-pickle"` without
            `split_manifest` warns (`protocols.UnpublishedSplitWarning`): that split is the
            library's own, no paper's.
        split_manifest: a split manifest fixing the test patients (see
            `tfprobunet.data.load`).
        data_options: the named dataset's options, as `train` takes them (a training run's
            are in its `train_config.json`; the command line passes them).

    Returns:
        The report as a dict (also `out_dir/report.json`), with `figures` listing the PNGs.
    """
    start = time.monotonic()
    check_number("seed", seed, 0, MAX_SEED, integer=True, example=0)
    check_number("batch_size", batch_size, 1, integer=True, example=8)
    if isinstance(model, str):
        model = saving.load_model(model)  # bounded; refuses non-finite weights
    else:
        saving.check_finite(model)  # a diverged model's report would look normal
    if num_classes is None and isinstance(dataset, tf.data.Dataset):
        num_classes = model.num_classes
    protocol = protocols.get(protocol)
    split, sample_counts = protocols.resolve(protocol, dataset, split, sample_counts,
                                             SAMPLE_COUNTS)
    for count in sample_counts:
        check_number("sample_counts", count, 1, MAX_SAMPLES, integer=True, example=16)
    protocols.warn_if_unpublished(protocol, dataset, data_dir, split_manifest)
    source = data_lib.as_source(dataset, split, data_dir, image_size, num_examples, seed,
                                num_classes, split_manifest=split_manifest,
                                data_options=data_options)
    if source.num_classes != model.num_classes:
        raise ValueError(f"The model predicts {model.num_classes} classes but the dataset has "
                         f"{source.num_classes}; evaluate it on the data it was trained for.")
    accumulator = _Accumulator(source, sample_counts, seed, protocol)
    figure_rows = []
    total = int(source.dataset.cardinality())
    height, width = source.dataset.element_spec[0].shape[:2]
    if height is not None and width is not None:  # else checked batch by batch
        _check_sample_budget(min(batch_size, total) if total > 0 else batch_size,
                            max(sample_counts), height, width, source.num_classes)
    progress = keras.utils.Progbar(total if total > 0 else None,
                                   verbose=int(_console.progress_verbosity(verbose) == 1),
                                   unit_name="image")
    batches = pipeline.evaluation_pipeline(source.dataset, batch_size,
                                           num_classes=source.num_classes)
    for step, (images, annotations) in enumerate(batches):
        _check_sample_budget(images.shape[0], max(sample_counts), *images.shape[1:3],
                             source.num_classes)
        logits = model.sample(images, sample_counts[-1], seed=tf.constant([seed, step]))
        masks = np.argmax(logits, axis=-1)
        annotations = annotations.numpy()
        probabilities = tf.nn.softmax(logits).numpy()
        accumulator.add(masks, annotations, probabilities)
        if len(figure_rows) < num_figure_examples:
            entropy, _ = metrics.uncertainty_maps(probabilities)
            for i in range(min(len(masks), num_figure_examples - len(figure_rows))):
                figure_rows.append((images[i].numpy(), annotations[i], masks[i], entropy[i]))
        progress.add(len(masks))

    report = {"dataset": dataset if isinstance(dataset, str) else "custom", "split": split,
              "num_classes": source.num_classes, "sample_counts": list(sample_counts),
              "protocol": protocols.conventions(protocol, sample_counts),
              **accumulator.report(per_image)}
    report["table"] = protocols.table(report)
    report["seconds"] = round(time.monotonic() - start, 1)
    if out_dir is not None:
        _write_outputs(out_dir, report, lambda folder: plots.write_figures(
            report, figure_rows, source, folder))
    return report


def _check_sample_budget(batch, samples, height, width, num_classes):
    """Refuse an evaluation whose `model.sample` calls (`batch` images of `height` x `width`,
    `samples` each, K = `num_classes`) would return more than `defaults.MAX_SAMPLE_BYTES` of
    probabilities, naming the --samples and --batch-size that fit."""
    checks.check_sample_bytes(batch, samples, height, width, num_classes,
                              hint="evaluate draws the largest sample count for each batch: "
                                   "fewer --samples, or a smaller --batch-size")


_REPORT = "report.json"
_STAGING = ".evaluation-"  # the temporary folders of `_write_outputs`


def _write_outputs(out_dir, report, write_figures):
    """Write `report` as `out_dir/report.json` and the figures `write_figures(folder)` writes
    (it returns their file names, recorded as `report["figures"]`), as one set.

    Everything is written into a temporary folder inside `out_dir`, then moved into place,
    `report.json` last (each move atomic, `_io.replacing`); the figures the previous report
    listed and this one does not are removed after. A failure while writing (a full disk)
    removes the temporary folder and leaves `out_dir` as it was: the previous report with its
    own figures, never new figures beside an old report. The temporary folder,
    `.evaluation-<pid>-<random>`, is held by its lock file (`_io.claimed`) while it is written:
    one that a killed evaluation left is removed by the next one into `out_dir`, one that a live
    evaluation is writing is kept.
    """
    os.makedirs(out_dir, exist_ok=True)
    _io.remove_unclaimed(out_dir, _STAGING)
    staging = os.path.join(out_dir, f"{_STAGING}{os.getpid()}-{uuid.uuid4().hex}")
    with _io.claimed(staging):
        try:
            os.mkdir(staging)
            report["figures"] = write_figures(staging)
            _io.write_json(os.path.join(staging, _REPORT), report, allow_nan=True)
            previous = _listed_figures(os.path.join(out_dir, _REPORT))
            for name in [*report["figures"], _REPORT]:
                with _io.replacing(os.path.join(out_dir, name)) as tmp:
                    os.replace(os.path.join(staging, name), tmp)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    for name in set(previous) - set(report["figures"]):
        with contextlib.suppress(OSError):
            os.remove(os.path.join(out_dir, name))


def _listed_figures(path):
    """The figures the report at `path` lists (none if there is no readable report): file names
    in its folder, never the report itself."""
    try:
        with open(path) as f:
            figures = json.load(f).get("figures", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [name for name in figures if isinstance(name, str) and name != _REPORT
            and os.path.basename(name) == name]
