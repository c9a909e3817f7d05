"""`compare()`: the paper's comparison study (section 4, Figs. 4 and 5). Every model is trained
with the same recipe, step budget, data and seeds, then evaluated on the same test images with
the same sample seeds; `results.json` holds GED at 1, 4, 8 and 16 samples, the mode frequencies
and Wilcoxon signed-rank tests between the Probabilistic U-Net and each baseline."""

import json
import os
import time

import keras
import numpy as np

from tfprobunet import _console, _io, catalog
from tfprobunet import data as data_lib
from tfprobunet import evaluation, plots, saving, training
from tfprobunet import models as models_lib

# The paper's models (`compare`'s default); any model of the catalog may be compared.
MODELS = catalog.PAPER_MODELS
REFERENCE = catalog.REFERENCE_MODEL
# The per-image metrics compared with the reference besides GED (`evaluate`'s `per_image`).
PAIRED_METRICS = ("hm_iou", "ncc", "ece")
SAMPLE_COUNTS = evaluation.SAMPLE_COUNTS
# Sample seed of every evaluation: the same test images and sample seeds for every model and
# training seed (the synthetic test split is drawn from it too).
EVALUATION_SEED = 0
# The `train` arguments a recipe (and `model_overrides`) sets; `compare` sets the others.
RECIPE_ARGUMENTS = ("batch_size", "learning_rate", "schedule", "mixed_precision", "strategy",
                    "jit_compile")


def recipe_settings(recipe, model, **overrides):
    """The `train` arguments for `model` under the training recipe `recipe` (a name of
    `training.PRESETS`): the recipe's schedule, optimizer, batch size and U-Net for every
    model, and those of its model arguments that `model` takes (`latent_dim`, `beta`, ... for
    the Probabilistic U-Net and the Image2Image VAE; `fcomb_channels` and
    `beta_warmup_steps` for the Probabilistic U-Net alone). `overrides` win."""
    settings = training.preset(recipe, **overrides)
    accepted = (*RECIPE_ARGUMENTS, *training.model_arguments(model))
    return {k: v for k, v in settings.items() if k in accepted}


def _finished_model(workdir, epochs):
    """The run's `model.keras` if `workdir` holds a run finished at `epochs`, else None."""
    path = training.workdir.finished_model_path(workdir, epochs)
    return None if path is None else saving.load_model(path)


RUN_RECORD = "comparison_run.json"
RESULTS = "results.json"


def _run_folder(name, seed):
    """The folder of the run of model `name` with training seed `seed`, in `out_dir`."""
    return f"{name}-seed{seed}"


# Recorded with every run, so that a run trained by code that trains differently is never
# reused: 2 when the Dropout U-Net stopped dropping image pixels at 3 levels and weight decay
# moved to kernels only (a record without it is of revision 1).
TRAINING_REVISION = 2


def _check_run_record(workdir, record):
    """Write what the run in `workdir` is (`record`), or refuse if it holds another run: a
    finished run is reused, so it must be the run asked for."""
    path = os.path.join(workdir, RUN_RECORD)
    record = json.loads(json.dumps(record, default=list))
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        differences = training.setting_differences(saved, record)
        if differences:
            raise ValueError(f"{workdir} holds a run of another comparison ({differences}); "
                             "use another `out_dir` (or delete that folder to run it again).")
        return
    if os.path.exists(workdir) and os.listdir(workdir):
        raise ValueError(f"{workdir} exists but has no {RUN_RECORD}, so what it holds is "
                         "unknown: use another `out_dir`, or delete that folder.")
    os.makedirs(workdir, exist_ok=True)
    _io.write_json(path, record)


def _run(workdir, name, seed, epochs, steps_per_epoch, dataset, data_dir, image_size,
         num_examples, test_data, test_examples, sample_counts, recipe, model_overrides):
    """Train (or resume, or reuse) one model for one seed, then evaluate it (or reuse its
    evaluation): the evaluation report with `train_seconds`."""
    settings = recipe_settings(recipe, name, **model_overrides.get(name, {}))
    if "mixed_precision" in settings:  # the policy used, not "auto": a record names its run
        settings["mixed_precision"] = training.precision.resolve(settings["mixed_precision"])
    _check_run_record(workdir, dict(
        training_revision=TRAINING_REVISION, model=name, seed=seed, epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        dataset=dataset if isinstance(dataset, str) else "custom", data_dir=data_dir,
        image_size=image_size, num_examples=num_examples, test_examples=test_examples,
        sample_counts=sample_counts, **settings))
    report_path = os.path.join(workdir, "evaluation", "report.json")
    if os.path.exists(report_path):  # of this very run: the record says so
        with open(report_path) as f:
            return json.load(f)
    start = time.monotonic()
    model = _finished_model(workdir, epochs)
    if model is None:
        model, _ = training.train(workdir, dataset=dataset, data_dir=data_dir, epochs=epochs,
                                  steps_per_epoch=steps_per_epoch, image_size=image_size,
                                  num_examples=num_examples, seed=seed, verbose=0,
                                  model=name, **settings)
    seconds = time.monotonic() - start
    report = evaluation.evaluate(
        model, test_data, out_dir=os.path.join(workdir, "evaluation"), data_dir=data_dir,
        image_size=image_size, num_examples=test_examples, sample_counts=sample_counts,
        seed=EVALUATION_SEED, per_image=True, num_figure_examples=0, verbose=0)
    report["train_seconds"] = round(seconds, 1)
    _io.write_json(report_path, report, allow_nan=True)
    return report


def _spread(values):
    values = np.asarray(values, np.float64)
    return {"mean": float(values.mean()), "min": float(values.min()),
            "max": float(values.max()), "seeds": values.tolist()}


def _wilcoxon(reference, other):
    """Two-sided Wilcoxon signed-rank test of paired per-image values (NaN p without any)."""
    from scipy import stats

    difference = np.asarray(reference) - np.asarray(other)
    if not len(difference):
        return {"p": float("nan"), "median_difference": float("nan"), "reference_lower": False}
    p = float(stats.wilcoxon(reference, other).pvalue) if np.any(difference) else 1.0
    median = float(np.median(difference))
    return {"p": p, "median_difference": median, "reference_lower": median < 0}


def _defined(reference, other):
    """The pairs of per-image values where both are defined (not NaN)."""
    keep = ~(np.isnan(reference) | np.isnan(other))
    return reference[keep], other[keep]


def _summary(reports, sample_counts, seeds):
    """Per model: GED per sample count over seeds, modes, timings; the noise floor; Wilcoxon
    tests at the largest sample count on per-image GED averaged over seeds."""
    counts = [str(k) for k in sample_counts]
    summary, per_image, paired = {}, {}, {}
    for name, by_seed in reports.items():
        entry = {"label": catalog.model_label(name),
                 "ged": {c: _spread([r["ged"][c]["mean"] for r in by_seed]) for c in counts},
                 "ged_unbiased": {c: _spread([r["ged_unbiased"][c]["mean"] for r in by_seed])
                                  for c in counts if c in by_seed[0].get("ged_unbiased", {})},
                 "train_seconds": _spread([r.get("train_seconds", float("nan"))
                                           for r in by_seed])}
        if "modes" in by_seed[0]:
            entry["pearson_r"] = _spread([r["modes"]["pearson_r"] for r in by_seed])
            entry["log_pearson_r"] = _spread([r["modes"]["log_pearson_r"] for r in by_seed])
            entry["modes_found"] = _spread([r["modes"]["modes_found"] for r in by_seed])
            entry["mode_frequencies"] = np.mean(
                [r["modes"]["frequencies"] for r in by_seed], axis=0).tolist()
        if "presence" in by_seed[0]:
            entry["empty_fraction_samples"] = _spread(
                [r["presence"]["empty_fraction_samples"] for r in by_seed])
        for metric in PAIRED_METRICS:
            if all(metric in r for r in by_seed):
                entry[metric] = _spread([r[metric]["mean"] if isinstance(r[metric], dict)
                                         else r[metric] for r in by_seed])
        summary[name] = entry
        per_image[name] = np.mean([r["ged_per_image"][counts[-1]] for r in by_seed], axis=0)
        for metric in PAIRED_METRICS:  # reports written before these metrics lack them
            if all(metric in r.get("per_image", {}) for r in by_seed):
                paired.setdefault(metric, {})[name] = np.nanmean(
                    [r["per_image"][metric] for r in by_seed], axis=0)
    first = next(iter(reports.values()))[0]
    results = {
        "models": summary,
        "ged_noise_floor": {c: first["ged_noise_floor"][c]["mean"] for c in counts},
        "num_test_images": first["num_images"],
        "seeds": list(seeds),
    }
    if "modes" in first:
        results["true_probabilities"] = first["modes"]["true_probabilities"]
    if "presence" in first:
        results["empty_fraction_graders"] = first["presence"]["empty_fraction_graders"]
    if REFERENCE in per_image:
        results[f"wilcoxon_{counts[-1]}"] = {
            name: _wilcoxon(per_image[REFERENCE], values)
            for name, values in per_image.items() if name != REFERENCE}
        # The same test on the other per-image metrics (where a value is undefined for an
        # image in either model, e.g. the NCC of a constant map, the image is left out).
        results["wilcoxon"] = {
            metric: {name: _wilcoxon(*_defined(values[REFERENCE], other))
                     for name, other in values.items() if name != REFERENCE}
            for metric, values in paired.items() if REFERENCE in values}
        results["reference_best"] = {
            c: min(summary, key=lambda n: summary[n]["ged"][c]["mean"]) == REFERENCE
            for c in counts}
    return results


def compare(out_dir, dataset="flips", models=MODELS, steps=2000, seeds=(0,),
            recipe="cpu", steps_per_epoch=None, data_dir=None, image_size=None,
            num_examples=None, test_data=None, test_examples=None,
            sample_counts=SAMPLE_COUNTS, model_overrides=None, verbose=None):
    """Train every model of `models` on the same data, budget and seeds, evaluate
    them on the same test images and samples, and write the paper's comparison.

    Writes to `out_dir`: `results.json` (see Returns), `ged.png` (Fig. 4: GED against the
    number of samples for every model with the noise floor, and the Wilcoxon p-values at the
    largest sample count) and, where the annotation probabilities are known (*flips*,
    Cityscapes), `mode_frequencies.png` (Fig. 5: every model's mode frequencies against the
    truth). Each run has its folder `<model>-seed<seed>/` (a `train` workdir with its
    evaluation and `comparison_run.json`, its settings): a `compare` that was stopped
    continues where it stopped, finished runs are reused, and a folder that holds a run with
    other settings is refused (`ValueError`). A symbolic link in place of `results.json`, a
    figure, a run's folder or anything in it is refused before anything is trained
    (`tfprobunet.training.WorkdirError`, one line naming the link and its target).

    Ensembles and M-Heads are trained once with their default 16 members (heads); GED at k
    samples uses their first k members, where the paper trains a model per k: for the
    ensemble, whose members are independent, this is the same; for M-Heads, whose oracle loss
    couples the heads, it is not.

    Args:
        out_dir: where the runs, `results.json` and the figures go.
        dataset: a name of `tfprobunet.data.DATASETS` (the `test` split is evaluated), or a
            `tfprobunet.data.Source` of your own training data, with `test_data`.
        models: model names (`tfprobunet.catalog.model_names()`; default: the paper's five;
            add `"ssn"` to compare the Stochastic Segmentation Network, or the name of a model
            of your own, see `tfprobunet.models.register`); the Wilcoxon tests compare
            `"probunet"` with each other model.
        steps: training steps of every model and seed.
        seeds: training seeds; each model is trained once per seed.
        recipe: the training recipe, a name of `training.PRESETS` (see `recipe_settings`).
        steps_per_epoch: steps between checkpoints (default: `min(steps, 500)`); must divide
            `steps`.
        data_dir, image_size, num_examples: passed to `train` (and `data_dir`, `image_size`
            to `evaluate`).
        test_data: the evaluation data when `dataset` is a `Source` (a `Source` with all
            annotations per image); default: the `test` split of the named `dataset`.
        test_examples: test images (default: the dataset's, 500 for *flips*).
        sample_counts: numbers of samples to score.
        model_overrides: `{model name: {argument: value}}` on top of the recipe, e.g.
            `{"ensemble": {"num_members": 4}}`.
        verbose: 1 a progress bar over the runs, 2 a line per run, 0 silent; None: the bar on
            a terminal or in a notebook, a line per run otherwise.

    Returns:
        The results as a dict (also `out_dir/results.json`): per model, GED per sample count
        (mean, min, max and the value of each seed), the same for the unbiased GED
        (`ged_unbiased`, self-pairs left out, from 2 samples; see `evaluate`), Pearson r on
        linear and log mode frequencies and modes found (where known), training seconds; the
        noise floor; the
        Wilcoxon signed-rank test (two-sided, paired over test images, per-image GED averaged
        over seeds) of the Probabilistic U-Net against each baseline at the largest sample
        count; whether the Probabilistic U-Net has the lowest mean GED at each sample count.
    """
    names = list(models)
    for name in names:
        models_lib.get(name)
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"`models` must name distinct models. Received: {names}")
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"`seeds` must be distinct integers. Received: {seeds}")
    steps_per_epoch = steps_per_epoch or min(steps, 500)
    if steps < 1 or steps_per_epoch < 1 or steps % steps_per_epoch:
        raise ValueError(f"`steps` ({steps}) must be a positive multiple of `steps_per_epoch` "
                         f"({steps_per_epoch}).")
    if isinstance(dataset, data_lib.Source) and test_data is None:
        raise ValueError("Comparing on your own `Source` needs `test_data=`: a Source of test "
                         "images with all their annotations.")
    model_overrides = model_overrides or {}
    for name, overrides in model_overrides.items():
        models_lib.get(name)
        accepted = {*training.model_arguments(name), *RECIPE_ARGUMENTS}
        unknown = sorted(set(overrides) - accepted)
        if unknown:
            raise ValueError(f"`model_overrides[{name!r}]` has arguments {name!r} does not take: "
                             f"{', '.join(unknown)}. It takes {', '.join(sorted(accepted))}.")
    sample_counts = tuple(sorted(set(int(k) for k in sample_counts)))
    test_data = dataset if test_data is None else test_data
    os.makedirs(out_dir, exist_ok=True)

    runs = [(name, seed) for seed in seeds for name in names]
    _io.refuse_links(out_dir, [RESULTS, *plots.COMPARISON_FIGURES,
                               *(_run_folder(name, seed) for name, seed in runs)],
                     "Remove the link (or use another out_dir): compare writes its own files "
                     "there.")
    verbose = _console.progress_verbosity(verbose)
    progress = keras.utils.Progbar(len(runs), verbose=1 if verbose == 1 else 0, unit_name="run")
    reports = {name: [] for name in names}
    for i, (name, seed) in enumerate(runs):
        report = _run(os.path.join(out_dir, _run_folder(name, seed)), name, seed,
                      steps // steps_per_epoch, steps_per_epoch, dataset, data_dir, image_size,
                      num_examples, test_data, test_examples, sample_counts, recipe,
                      model_overrides)
        reports[name].append(report)
        ged = report["ged"][str(sample_counts[-1])]["mean"]
        progress.update(i + 1, values=[(f"GED({sample_counts[-1]})", ged)])
        if verbose == 2:
            print(f"[{i + 1}/{len(runs)}] {name}, seed {seed}: GED({sample_counts[-1]}) = "
                  f"{ged:.4f}, trained in {report.get('train_seconds', 0):.0f} s", flush=True)

    results = {"dataset": dataset if isinstance(dataset, str) else "custom", "recipe": recipe,
               "steps": steps, "sample_counts": list(sample_counts),
               **_summary(reports, sample_counts, seeds)}
    results["figures"] = plots.write_comparison_figures(results, out_dir)
    _io.write_json(os.path.join(out_dir, RESULTS), results, allow_nan=True)
    return results
