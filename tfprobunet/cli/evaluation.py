"""The commands that look at a trained model: `evaluate` (GED, HM-IoU, calibration: report.json
and figures) and `inspect` (the latent-space figure)."""

import json
import math
import os
import warnings

from tfprobunet import _console, catalog
from tfprobunet.cli import flags
from tfprobunet.defaults import MAX_SAMPLES

PROTOCOLS = ("kohl", "phiseg", "custom")  # tfprobunet.protocols.NAMES, without TensorFlow

SPLITS = catalog.SPLITS
# inspect's grid: decoded steps**2 times, as many as a request's samples may be.
MAX_GRID_STEPS = math.isqrt(MAX_SAMPLES)
MAX_EXTENT = 100.0  # prior standard deviations


def add_parsers(commands):
    """Add `evaluate` and `inspect` to the subparsers `commands`."""
    evaluate = commands.add_parser(
        "evaluate", help="GED, HM-IoU, mode calibration: report.json and figures")
    evaluate.add_argument("--model", required=True, help="a saved .keras model")
    flags.add_data_flags(evaluate)
    evaluate.add_argument("--out", required=True, help="folder for report.json and the PNGs")
    evaluate.add_argument("--split", choices=SPLITS, default="test")
    evaluate.add_argument("--samples", type=flags.number_list(1, MAX_SAMPLES),
                          default=[1, 4, 8, 16],
                          help="numbers of samples to score, comma-separated, at most "
                               f"{MAX_SAMPLES}; a batch's samples must fit in the sample budget "
                               "(fewer --samples or a smaller --batch-size). A published "
                               "--protocol fixes them")
    evaluate.add_argument(
        "--protocol", choices=PROTOCOLS, default="custom",
        help="kohl: the released LIDC crops (--dataset lidc), GED and HM-IoU of 16 samples, as "
             "the Probabilistic U-Net and HPU-Net papers; phiseg: PHiSeg's 64/16/20 split of "
             "the CT series (--dataset lidc-phiseg, or lidc-pickle with --split-manifest, e.g. "
             "MoSE's: tfprobunet data manifest --split mose), GED and S_NCC of "
             "100 samples, as PHiSeg and SSN; custom: the flags given (default). Prints the "
             "table in the protocol's published layout")
    evaluate.add_argument("--split-manifest", metavar="FILE",
                          help="a split manifest (tfprobunet data manifest) fixing which "
                               "patients are tested (default: the training run's)")
    evaluate.add_argument("--batch-size", type=flags.COUNT, default=8,
                          help="images per sampling call")
    evaluate.add_argument("--seed", type=flags.SEED,
                          help="samples and synthetic data (default: the training seed)")
    evaluate.set_defaults(run=_evaluate)
    inspect = commands.add_parser(
        "inspect", help="decode one image over two latent axes, with its annotations' "
                        "posteriors: a figure like the paper's latent-space one")
    inspect.add_argument("--model", required=True, help="a saved .keras model")
    inspect.add_argument("--image", help="a PNG or JPEG; or take one from --dataset")
    flags.add_data_flags(inspect)
    inspect.add_argument("--split", choices=SPLITS, default="test")
    inspect.add_argument("--index", type=flags.number(0, flags.MAX_COUNT, integer=True),
                         default=0, help="with --dataset: which image")
    inspect.add_argument("--axes", type=flags.number_list(0, flags.MAX_COUNT),
                         help="two latent axes, e.g. 0,3 (default: with annotations, the two "
                              "their posteriors spread most along; else 0,1)")
    inspect.add_argument("--extent", type=flags.number(maximum=MAX_EXTENT, above=0.0),
                         default=2.0, help="the grid spans +-this many prior standard "
                                           f"deviations (at most {MAX_EXTENT:g})")
    inspect.add_argument("--steps", type=flags.number(2, MAX_GRID_STEPS, integer=True),
                         default=5, help="grid points per axis: the image is decoded steps**2 "
                                         f"times, at most {MAX_SAMPLES} (--steps <= "
                                         f"{MAX_GRID_STEPS})")
    inspect.add_argument("--out", required=True, help="the figure, a .png file")
    inspect.set_defaults(run=_inspect)


def data_settings(args):
    """`dataset`, `data_dir`, `image_size` and `seed` from the arguments, defaulting to the
    training run's beside `args.model` (its train_config.json): same data, size and seed."""
    from tfprobunet.training import workdir

    trained = workdir.read_settings(os.path.dirname(os.path.abspath(args.model))) or {}
    size = trained.get("image_size")
    seed = getattr(args, "seed", None)
    dataset = args.dataset or trained.get("dataset", "flips")
    check_dataset_flags(dataset, args.data_dir, args.image_size)
    settings = dict(dataset=dataset, data_dir=args.data_dir or trained.get("data_dir"),
                    image_size=args.image_size or (tuple(size) if isinstance(size, list)
                                                   else size),
                    seed=trained.get("seed", 0) if seed is None else seed)
    same = dataset == trained.get("dataset")
    manifest = getattr(args, "split_manifest", None) or (
        trained.get("split_manifest") if same else None)
    if manifest is not None:
        settings["split_manifest"] = manifest
    recorded = (trained.get("data_options") or {}) if same else {}
    options = flags.data_options(args, recorded)
    rule = {k: (options or {}).get(k) for k in ("window", "percentiles")}
    if same and rule != {k: recorded.get(k) for k in ("window", "percentiles")}:
        warnings.warn(f"the intensities are scaled by {_rule(rule)}, the training run by "
                      f"{_rule(recorded)}: the model sees other values than it learnt from.")
    if options:
        settings["data_options"] = options
    return settings


def _rule(options):
    given = {k: v for k, v in options.items() if k in ("window", "percentiles") and v}
    return " and ".join(f"--{k} {','.join(f'{x:g}' for x in v)}" for k, v in given.items()) or \
        "the data type's range"


def check_dataset_flags(dataset, data_dir, image_size):
    """Refuse data flags that `dataset` would ignore, naming the flag."""
    if dataset in catalog.SYNTHETIC_DATASETS and data_dir is not None:
        raise flags.CommandError(
            f"--data-dir is not read by the synthetic dataset {dataset}: pass --dataset folder "
            "or npz (or lidc, lidc-pickle, cityscapes) to read your folder.")
    if dataset in catalog.OWN_SIZE_DATASETS and image_size is not None:
        raise flags.CommandError(
            f"--image-size is not used by --dataset {dataset}: its images keep the size they "
            "were saved with. Resize them before saving, or drop the flag.")


def _evaluate(args):
    from tfprobunet import evaluation

    report = evaluation.evaluate(args.model, out_dir=args.out, split=args.split,
                                 num_examples=args.num_examples, sample_counts=args.samples,
                                 batch_size=args.batch_size, protocol=args.protocol,
                                 verbose=_console.progress_verbosity(), **data_settings(args))
    summary = {k: report[k] for k in ("dataset", "num_images", "ged", "hm_iou", "ncc", "ece")
               if k in report}
    for key in ("modes", "presence"):
        if key in report:
            summary[key] = {k: v for k, v in report[key].items()
                            if k not in ("frequencies", "true_probabilities")}
    print(json.dumps(summary, indent=2))
    print()
    print("\n".join(report["table"]))
    print()
    print(f"report and figures ({', '.join(report['figures'])}) written to {args.out}")


def _inspect(args):
    from tfprobunet import data, latent, plots, prediction, saving, serving

    if (args.image is None) == (args.dataset is None):
        raise flags.CommandError(
            "give either --image PATH (a PNG or JPEG) or --dataset NAME with --index I (an "
            f"image and its annotations). Received: --image {args.image!r}, --dataset "
            f"{args.dataset!r}")
    if args.image is not None:  # the grid decodes the image steps**2 times
        prediction.check_image_files([args.image], args.steps ** 2)
    model = saving.load_model(args.model)
    annotations = None
    if args.image is not None:
        image = serving.read_image(args.image, model.image_channels,
                                   data.intensity.of_run(args.model))[0]
    else:
        image, annotations = _dataset_image(args)
    inspection = latent.inspect(model, image, annotations, axes=args.axes, extent=args.extent,
                                num_steps=args.steps)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    plots.latent_space(inspection, args.out)
    rounded = lambda values: [round(float(v), 3) for v in values]  # noqa: E731
    summary = {"axes": list(inspection["axes"]), "prior_scale": rounded(inspection["prior_scale"])}
    if annotations is not None:
        summary["posterior_spread"] = rounded(inspection["spread"])
    print(json.dumps(summary))
    print(f"wrote {args.out}")


def _dataset_image(args):
    """Image `--index` of the split, and its annotations."""
    from tfprobunet import data

    settings = data_settings(args)
    # All of the split, as `evaluate` loads it: synthetic images depend on how many.
    options = settings.pop("data_options", None) or {}
    source = data.load(settings.pop("dataset"), args.split, num_examples=args.num_examples,
                       **settings, **options)
    examples = list(source.dataset.skip(args.index).take(1).as_numpy_iterator())
    if not examples:
        raise flags.CommandError(f"the {args.split} split has no image --index {args.index}.")
    return examples[0]
