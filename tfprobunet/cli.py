"""The `tfprobunet` console script. Thin: every command calls a library function."""

import argparse
import json
import os
import signal
import sys

from tfprobunet import _cluster, _console, _interrupts
from tfprobunet.defaults import (DATASETS, MAX_BODY_BYTES, MAX_MESSAGE_BYTES, MAX_PIXELS,
                                 MAX_SAMPLE_PIXELS, MAX_SAMPLES, MODEL_NAMES, PRESETS, SCHEDULES,
                                 STRATEGIES)

SYNTHETIC = ("flips", "graders")
# The datasets whose arrays keep the size they were saved with: --image-size is refused.
OWN_SIZE = ("npz", "folder")
DATA_HELP = ("flips, graders: synthetic (the default: flips); lidc: the PNG crops folder; "
             "lidc-pickle: the PyTorch port's data_lidc.pickle; cityscapes: the folder with "
             "leftImg8bit/ and gtFine/; your own data: npz, a folder with train.npz, val.npz, "
             "test.npz; folder, a folder with images/ and masks/ (NAME_0.png, NAME_1.png, ... per "
             "image NAME.png; see README)")


class CommandError(Exception):
    """A command refused its arguments: printed as one line, `tfprobunet: error: ...`."""


def _int_list(text):
    return [int(v) for v in text.split(",") if v]


def _size(text):
    """`64` or `256,512`."""
    values = _int_list(text)
    if len(values) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected SIZE or HEIGHT,WIDTH, got {text!r}")
    return values[0] if len(values) == 1 else tuple(values)


def _add_data_arguments(parser):
    parser.add_argument("--dataset", choices=DATASETS, help=DATA_HELP)
    parser.add_argument("--data-dir",
                        help="where --dataset folder, npz, lidc, lidc-pickle or cityscapes is "
                             "read from (needs --dataset)")
    parser.add_argument("--image-size", type=_size,
                        help="SIZE or HEIGHT,WIDTH (default: 64 synthetic, 128 LIDC, 256,512 "
                             "Cityscapes)")
    parser.add_argument("--num-examples", type=int, help="default: all (synthetic: 1000 train, "
                                                         "100 val/test)")


def _add_train_arguments(parser):
    _add_data_arguments(parser)
    parser.add_argument("--workdir", required=True, help="checkpoints, log.csv, model.keras")
    parser.add_argument("--strategy", choices=STRATEGIES, default="default",
                        help="multi_worker: one process per worker, configured by TF_CONFIG")
    parser.add_argument("--connect-timeout", type=float, default=_cluster.CONNECT_TIMEOUT,
                        metavar="SECONDS",
                        help="multi_worker: give up when the cluster has not formed after "
                             "this long (one line names the tasks that never answered, and the "
                             "process is killed: TensorFlow's wait cannot be interrupted)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps-per-epoch", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8, help="global batch size")
    parser.add_argument("--validation-examples", type=int, default=0,
                        help="evaluate this many val images after each epoch (val_ged)")
    parser.add_argument("--learning-rate", type=float, default=1e-4,
                        help="Adam's (initial) learning rate")
    parser.add_argument("--schedule", choices=SCHEDULES, default="constant",
                        help="learning-rate schedule over epochs * steps-per-epoch: constant, "
                             "piecewise (the official Cityscapes configuration's, scaled), "
                             "cosine (warm-up + decay), wsd (warm-up, stable, cosine decay over "
                             "the last third)")
    parser.add_argument("--max-minutes", type=float,
                        help="stop at the end of the first epoch past this many minutes")
    parser.add_argument("--tensorboard", metavar="DIR",
                        help="TensorBoard logs: losses, val_ged and calibration scalars, and "
                             "sample grids of 4 validation images each epoch")
    parser.add_argument("--mixed-precision", choices=("mixed_float16", "mixed_bfloat16"),
                        help="compute in float16 (GPUs) or bfloat16 (TPUs, AMX/AVX-512-BF16 "
                             "CPUs); variables and losses stay float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-channels", type=_int_list, default=[32, 64, 128, 192],
                        help="U-Net filters per level, comma-separated")
    parser.add_argument("--convs-per-block", type=int, default=3)
    parser.add_argument("--latent-dim", type=int, default=6)
    parser.add_argument("--fcomb-layers", type=int, default=3,
                        help="hidden 1x1 convolutions of f_comb, before its 1x1 logits "
                             "convolution (official code: 3 + 1)")
    parser.add_argument("--fcomb-channels", type=int,
                        help="their filters (default: the first --num-channels)")
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--beta-warmup-steps", type=int, default=0,
                        help="KL weight rising from 0 to --beta over this many steps")
    parser.add_argument("--geco-target", type=float,
                        help="GECO-style (after Rezende & Viola 2018; its multiplier update "
                             "is not the HPU-Net reference code's): minimise beta * KL subject "
                             "to this reconstruction, nats/pixel; the multiplier is updated as "
                             "lambda *= exp(geco_rate * tanh(c / target)), c the moving "
                             "average of the reconstruction per pixel minus the target")
    parser.add_argument("--energy-weight", type=float, default=0.0,
                        help="add this many nats times a differentiable surrogate of the "
                             "energy score (soft 1 - IoU) of prior samples against the "
                             "annotation (not in the paper; 0: off)")
    parser.add_argument("--energy-samples", type=int, default=4,
                        help="prior samples per image for --energy-weight")
    parser.add_argument("--reconstruction", choices=("sum", "mean"), default="sum")
    parser.add_argument("--kl", choices=("analytic", "sampled"), default="analytic")
    parser.add_argument("--jit-compile", action="store_true")
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="defaults for the training recipe (explicit flags override them): "
                             + "; ".join(f"{k}: {v['description']}" for k, v in
                                         sorted(PRESETS.items())))


def _apply_preset(parser, argv):
    """Make the `--preset` named in `argv` give `parser` its defaults, so flags still override."""
    finder = argparse.ArgumentParser(add_help=False)
    finder.add_argument("--preset", choices=sorted(PRESETS))
    known, _ = finder.parse_known_args(argv)
    if known.preset:
        parser.set_defaults(**{k: v for k, v in PRESETS[known.preset].items()
                               if k != "description"})


def _train(args):
    from tfprobunet import training

    training.train(
        args.workdir, dataset=args.dataset, data_dir=args.data_dir, epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
        image_size=args.image_size, num_examples=args.num_examples,
        validation_examples=args.validation_examples, learning_rate=args.learning_rate,
        schedule=args.schedule, max_minutes=args.max_minutes,
        mixed_precision=args.mixed_precision, strategy=args.strategy,
        connect_timeout=args.connect_timeout, seed=args.seed,
        jit_compile=args.jit_compile, num_channels=args.num_channels,
        convs_per_block=args.convs_per_block, latent_dim=args.latent_dim,
        fcomb_layers=args.fcomb_layers, fcomb_channels=args.fcomb_channels, beta=args.beta,
        beta_warmup_steps=args.beta_warmup_steps, geco_target=args.geco_target,
        energy_weight=args.energy_weight, energy_samples=args.energy_samples,
        reconstruction=args.reconstruction, kl=args.kl, tensorboard=args.tensorboard,
        verbose=_console.progress_verbosity())
    print(f"model saved to {os.path.join(args.workdir, 'model.keras')}")


def _data_settings(args):
    """`dataset`, `data_dir`, `image_size` and `seed` from the arguments, defaulting to the
    training run's beside `args.model` (its train_config.json): same data, size and seed."""
    from tfprobunet import training

    config_path = os.path.join(os.path.dirname(os.path.abspath(args.model)), training.CONFIG)
    trained = {}
    if os.path.exists(config_path):
        with open(config_path) as f:
            trained = json.load(f)
    size = trained.get("image_size")
    seed = getattr(args, "seed", None)
    dataset = args.dataset or trained.get("dataset", "flips")
    _check_dataset_flags(dataset, args.data_dir, args.image_size)
    return dict(dataset=dataset, data_dir=args.data_dir or trained.get("data_dir"),
                image_size=args.image_size or (tuple(size) if isinstance(size, list) else size),
                seed=trained.get("seed", 0) if seed is None else seed)


def _evaluate(args):
    from tfprobunet import evaluation

    report = evaluation.evaluate(args.model, out_dir=args.out, split=args.split,
                                 num_examples=args.num_examples, sample_counts=args.samples,
                                 batch_size=args.batch_size,
                                 verbose=_console.progress_verbosity(), **_data_settings(args))
    summary = {k: report[k] for k in ("dataset", "num_images", "ged", "hm_iou") if k in report}
    for key in ("modes", "presence"):
        if key in report:
            summary[key] = {k: v for k, v in report[key].items()
                            if k not in ("frequencies", "true_probabilities")}
    print(json.dumps(summary, indent=2))
    print(f"report and figures ({', '.join(report['figures'])}) written to {args.out}")


def _inspect(args):
    from tfprobunet import data, latent, plots, prediction, saving, serving

    if (args.image is None) == (args.dataset is None):
        raise CommandError("give either --image PATH (a PNG or JPEG) or --dataset NAME with "
                           "--index I (an image and its annotations). Received: --image "
                           f"{args.image!r}, --dataset {args.dataset!r}")
    if args.image is not None:  # the grid decodes the image steps**2 times
        prediction.check_image_files([args.image], args.steps ** 2)
    model = saving.load_model(args.model)
    annotations = None
    if args.image is not None:
        image = serving.read_image(args.image, model.image_channels)[0]
    else:
        settings = _data_settings(args)
        # All of the split, as `evaluate` loads it: synthetic images depend on how many.
        source = data.load(settings.pop("dataset"), args.split, num_examples=args.num_examples,
                           **settings)
        examples = list(source.dataset.skip(args.index).take(1).as_numpy_iterator())
        if not examples:
            raise CommandError(f"the {args.split} split has no image --index {args.index}.")
        image, annotations = examples[0]
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


def _export(args):
    from tfprobunet import export

    export.check_model_name(args.name, "--name")  # the library checks too; this names the flag
    if args.clean:
        removed = export.clean_stale_exports(args.base_dir, args.name)
        print(f"removed {len(removed)} temporary folder(s) of killed exports of {args.name!r}"
              + "".join(f"\n  {path}" for path in removed))
    if args.model is None:
        if not args.clean:
            raise CommandError("--model PATH (a .keras model) is required unless --clean is "
                               "given alone.")
        return
    if not os.path.exists(args.model):
        raise CommandError(f"no model at {args.model!r}; pass a .keras file saved by "
                           "`tfprobunet train` or `model.save`.")
    path = export.export_for_serving(args.model, args.base_dir, args.name, args.version,
                                     image_range=args.image_range, **_limits(args))
    print(f"exported {args.model} to {path}; "
          f"TF Serving config: {os.path.join(args.base_dir, export.MODELS_CONFIG)}")


def _serve(args):
    from tfprobunet import serving

    server = serving.ModelServer(
        args.model_base_path, port=args.port, rest_port=args.rest_port, host=args.host,
        max_workers=args.workers, rest_workers=args.rest_workers,
        poll_seconds=args.poll_seconds, max_message_bytes=args.max_message_bytes,
        max_body_bytes=args.max_body_bytes, request_timeout=args.request_timeout,
        **_limits(args)).start()
    print(f"serving {args.model_base_path}: gRPC {args.host}:{server.port}, REST "
          f"http://{args.host}:{server.rest_port} (Ctrl-C stops)", flush=True)
    try:
        server.wait()
    except KeyboardInterrupt:
        server.stop()


def _limits(args):
    return {"max_samples": args.max_samples, "max_pixels": args.max_pixels,
            "max_sample_pixels": args.max_sample_pixels}


def _add_limit_arguments(parser, whose):
    parser.add_argument("--max-samples", type=int, default=MAX_SAMPLES,
                        help=f"{whose}: the most samples per image one request may ask for")
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                        help=f"{whose}: the most image pixels (b*h*w) per request")
    parser.add_argument("--max-sample-pixels", type=int, default=MAX_SAMPLE_PIXELS,
                        help=f"{whose}: the most sampled pixels (b*m*h*w) per request")


def _predict(args):
    from tfprobunet import prediction, serving

    limits = _limits(args)
    if (args.model is None) == (args.target is None):
        raise CommandError("give either --model PATH (a .keras model: predict here, no server) "
                           "or --target HOST:PORT with --name NAME (a served model). Received: "
                           f"--model {args.model!r}, --target {args.target!r}")
    if args.model is not None:
        if args.name is not None or args.version is not None:
            raise CommandError("--name and --version select a served model: use them with "
                               "--target HOST:PORT, not with --model.")
        files = prediction.predict_files(args.model, args.image, args.num_samples, args.out,
                                         args.seed, **limits)
    else:
        with serving.GrpcClient(args.target, args.name or "probunet",
                                version=args.version) as client:
            files = prediction.predict_files(client, args.image, args.num_samples, args.out,
                                             args.seed, **limits)
    print(f"wrote {len(files) - len(args.image)} sample masks and {len(args.image)} uncertainty "
          f"map(s) to {args.out}")


def _image_range(text):
    """`LOW,HIGH` as two floats, or `any` (None)."""
    if text == "any":
        return None
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH or any, got {text!r}") from None
    return low, high


def _value(text):
    """A value as JSON when it is JSON (`8`, `0.0`, `[16, 32]`, `true`), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _fixed(text):
    """`NAME=VALUE`: the value read as JSON when it is JSON (`8`, `0.0`, `[16, 32]`), a
    comma-separated one as a list the way the matching flag reads it (`num_channels=8,16,32`
    as `--num-channels 8,16,32`: [8, 16, 32])."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    parsed = _value(value)
    if isinstance(parsed, str) and "," in value:
        parsed = [_value(v) for v in value.split(",") if v]
    return name.replace("-", "_"), parsed


def _tune(args):
    from tfprobunet import tuning

    if args.chief or args.worker is not None:
        host, _, port = (args.oracle or "").rpartition(":")
        if not host or not port.isdigit():
            raise CommandError("--chief and --worker need --oracle HOST:PORT (the chief's "
                               f"address). Received: --oracle {args.oracle!r}")
        os.environ.update({tuning.ORACLE_IP: host, tuning.ORACLE_PORT: port,
                           tuning.TUNER_ID: "chief" if args.chief else f"tuner{args.worker}"})
    trials = tuning.tune(
        args.directory, dataset=args.dataset, data_dir=args.data_dir, tuner=args.tuner,
        max_trials=args.max_trials, epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch, image_size=args.image_size,
        num_examples=args.num_examples, validation_examples=args.validation_examples,
        strategy=args.strategy, seed=args.seed,
        verbose=_console.progress_verbosity() if args.verbose is None else args.verbose,
        **dict(args.fixed))
    if args.worker is not None:
        print(f"worker {args.worker}: no more trials; the chief reports the best one")
        return
    print(json.dumps({"best_trials": trials[:args.show]}, indent=2))
    print(f"best model: {os.path.join(args.directory, tuning.BEST_MODEL)}; its hyper-parameters: "
          f"{os.path.join(args.directory, tuning.BEST_HYPERPARAMETERS)}")


def _model_list(text):
    names = [v for v in text.split(",") if v]
    unknown = [v for v in names if v not in MODEL_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(MODEL_NAMES)}; got {text!r}")
    return names


def _override(text):
    """`MODEL.NAME=VALUE`, e.g. `ensemble.num_members=4`."""
    name, value = _fixed(text)
    model, sep, argument = name.partition(".")
    if not sep or not argument:
        raise argparse.ArgumentTypeError(f"expected MODEL.NAME=VALUE, got {text!r}")
    return model, argument, value


def _compare(args):
    from tfprobunet import comparison

    overrides = {}
    for model, argument, value in args.set:
        overrides.setdefault(model, {})[argument] = value
    results = comparison.compare(
        args.out, dataset=args.dataset, models=args.models, steps=args.steps,
        seeds=args.seeds, recipe=args.recipe, steps_per_epoch=args.steps_per_epoch,
        data_dir=args.data_dir, image_size=args.image_size, num_examples=args.num_examples,
        test_examples=args.test_examples, model_overrides=overrides,
        verbose=_console.progress_verbosity())
    counts = [str(k) for k in results["sample_counts"]]
    print(f"{'GED':<10}" + "".join(f"{k:>9}" for k in counts) + f"{'mode r':>9}")
    for name, entry in results["models"].items():
        r = entry.get("pearson_r", {}).get("mean")
        print(f"{name:<10}" + "".join(f"{entry['ged'][k]['mean']:>9.4f}" for k in counts)
              + (f"{r:>9.3f}" if r is not None else ""))
    print(f"{'floor':<10}" + "".join(f"{results['ged_noise_floor'][k]:>9.4f}" for k in counts))
    for name, test in results.get(f"wilcoxon_{counts[-1]}", {}).items():
        print(f"Wilcoxon at {counts[-1]} samples, probunet against {name}: p = {test['p']:.2g}")
    print(f"results.json and {', '.join(results['figures'])} written to {args.out}")


def _demo(args):
    from tfprobunet import demo

    print(json.dumps(demo.run(args.workdir, steps=args.steps, seed=args.seed,
                              base_dir=args.base_dir), indent=2))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="tfprobunet", description=__doc__)
    parser.add_argument("--debug", action="store_true",
                        help="show TensorFlow's start-up and C++ log lines, which are held "
                             f"back otherwise (also: {_console.VERBOSE_VARIABLE}=1)")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train", help="train on a built-in benchmark (resumes a killed run, continues a finished "
                      "one to more --epochs)")
    _add_train_arguments(train)
    train.set_defaults(run=_train)
    _apply_preset(train, sys.argv[1:] if argv is None else argv)
    evaluate = commands.add_parser(
        "evaluate", help="GED, HM-IoU, mode calibration: report.json and figures")
    evaluate.add_argument("--model", required=True, help="a saved .keras model")
    _add_data_arguments(evaluate)
    evaluate.add_argument("--out", required=True, help="folder for report.json and the PNGs")
    evaluate.add_argument("--split", choices=("train", "val", "test"), default="test")
    evaluate.add_argument("--samples", type=_int_list, default=[1, 4, 8, 16],
                          help="numbers of samples to score, comma-separated")
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument("--seed", type=int,
                          help="samples and synthetic data (default: the training seed)")
    evaluate.set_defaults(run=_evaluate)
    inspect = commands.add_parser(
        "inspect", help="decode one image over two latent axes, with its annotations' "
                        "posteriors: a figure like the paper's latent-space one")
    inspect.add_argument("--model", required=True, help="a saved .keras model")
    inspect.add_argument("--image", help="a PNG or JPEG; or take one from --dataset")
    _add_data_arguments(inspect)
    inspect.add_argument("--split", choices=("train", "val", "test"), default="test")
    inspect.add_argument("--index", type=int, default=0, help="with --dataset: which image")
    inspect.add_argument("--axes", type=_int_list,
                         help="two latent axes, e.g. 0,3 (default: with annotations, the two "
                              "their posteriors spread most along; else 0,1)")
    inspect.add_argument("--extent", type=float, default=2.0,
                         help="the grid spans +-this many prior standard deviations")
    inspect.add_argument("--steps", type=int, default=5, help="grid points per axis")
    inspect.add_argument("--out", required=True, help="the figure, a .png file")
    inspect.set_defaults(run=_inspect)
    export = commands.add_parser("export", help="write a .keras model as a TF Serving version")
    export.add_argument("--model", help="a saved .keras model")
    export.add_argument("--clean", action="store_true",
                        help="remove what killed exports of --name left (every export does "
                             "this too); alone, only that")
    export.add_argument("--base-dir", default="saved_models", help="TF Serving model base path")
    export.add_argument("--name", default="probunet", help="the served model's name")
    export.add_argument("--version", type=int, help="default: the next free integer")
    _add_limit_arguments(export, "recorded in the export")
    export.add_argument("--image-range", type=_image_range, default=(0.0, 1.0),
                        metavar="LOW,HIGH",
                        help="the pixel values the model was trained on (default 0,1, every "
                             "built-in loader's); requests beyond it by more than half of it "
                             "are refused with the conversion; 'any' accepts any finite values")
    export.set_defaults(run=_export)
    serve = commands.add_parser("serve", help="a local TF Serving stand-in (gRPC + REST)")
    serve.add_argument("--model-base-path", default="saved_models")
    serve.add_argument("--port", type=int, default=8500, help="gRPC port")
    serve.add_argument("--rest-port", type=int, default=8501)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--workers", type=int, default=4,
                       help="gRPC requests answered at once (each may take ~1 GB at the limits)")
    serve.add_argument("--rest-workers", type=int, default=2,
                       help="REST requests parsed, answered and sent at once; more wait, "
                            "then 503")
    serve.add_argument("--poll-seconds", type=float, default=1.0,
                       help="seconds between scans for new versions")
    _add_limit_arguments(serve, "on top of each export's own")
    serve.add_argument("--max-message-bytes", type=int, default=MAX_MESSAGE_BYTES,
                       help="the largest gRPC message (both ways) and response")
    serve.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES,
                       help="the largest REST request body")
    serve.add_argument("--request-timeout", type=float, default=30.0,
                       help="seconds a REST client may take to send its request")
    serve.set_defaults(run=_serve)
    predict = commands.add_parser(
        "predict", help="segment image files of any size: here with --model X.keras, or "
                        "through a server with --target HOST:PORT")
    predict.add_argument("--model", help="a saved .keras model: predict here, without a server "
                                         "(sides the U-Net cannot divide are padded, and the "
                                         "masks cropped back)")
    predict.add_argument("--target", metavar="HOST:PORT",
                         help="a gRPC server (TF Serving or `tfprobunet serve`) to predict "
                              "through instead")
    predict.add_argument("--name", help="with --target: the served model's name (default: "
                                        "probunet)")
    predict.add_argument("--version", type=int, help="with --target: the served version")
    predict.add_argument("--image", nargs="+", required=True, help="PNG or JPEG files")
    predict.add_argument("-n", "--num-samples", type=int, default=16)
    predict.add_argument("--seed", type=int)
    _add_limit_arguments(predict, "checked on each image's header before it is read (as the "
                                  "server checks a request)")
    predict.add_argument("--out", required=True,
                         help="folder: OUT/<image name>/sample_00.png, ..., uncertainty.png")
    predict.set_defaults(run=_predict)
    tune = commands.add_parser(
        "tune", help="Keras Tuner search on val_ged (resumes an interrupted search)")
    _add_data_arguments(tune)
    tune.add_argument("--directory", required=True,
                      help="the search's trials, TensorBoard logs, best model and JSON")
    tune.add_argument("--tuner", choices=("random", "bayesian", "hyperband"), default="random")
    tune.add_argument("--max-trials", type=int, default=10, help="random and bayesian")
    tune.add_argument("--epochs", type=int, default=5,
                      help="per trial (hyperband: the longest trials')")
    tune.add_argument("--steps-per-epoch", type=int, default=100)
    tune.add_argument("--validation-examples", type=int, default=100,
                      help="val images scored for the objective, val_ged")
    tune.add_argument("--strategy", choices=("default", "mirrored"), default="default")
    tune.add_argument("--seed", type=int, default=0)
    tune.add_argument("--fixed", type=_fixed, action="append", default=[],
                      metavar="NAME=VALUE", help="a setting not searched (repeatable): a "
                      "hyper-parameter (latent_dim=8) or a ProbabilisticUNet argument")
    role = tune.add_mutually_exclusive_group()
    role.add_argument("--chief", action="store_true",
                      help="distributed: run the oracle at --oracle and wait for the workers")
    role.add_argument("--worker", type=int, metavar="ID",
                      help="distributed: run trials for the chief at --oracle")
    tune.add_argument("--oracle", metavar="HOST:PORT", help="the chief's address")
    tune.add_argument("--show", type=int, default=5, help="best trials to print")
    tune.add_argument("--verbose", type=int, choices=(0, 1, 2),
                      help="Keras: 1 progress bars, 2 a line per epoch, 0 silent (default: 1 "
                           "on a terminal, else 2)")
    tune.set_defaults(run=_tune)
    compare = commands.add_parser(
        "compare", help="the paper's comparison: train the Probabilistic U-Net and the baselines "
                        "on the same budget, data and seeds; results.json and Figs. 4-5")
    _add_data_arguments(compare)
    compare.add_argument("--out", required=True,
                         help="the runs (one train workdir per model and seed), results.json "
                              "and the figures; a stopped compare continues from there")
    compare.add_argument("--models", type=_model_list,
                         default=list(MODEL_NAMES),
                         help="comma-separated (default: all five)")
    compare.add_argument("--steps", type=int, default=2000, help="training steps of every run")
    compare.add_argument("--steps-per-epoch", type=int,
                         help="steps between checkpoints (default: min(steps, 500))")
    compare.add_argument("--seeds", type=_int_list, default=[0],
                         help="training seeds, comma-separated")
    compare.add_argument("--recipe", choices=sorted(PRESETS), default="cpu",
                         help="the training recipe of every model (its U-Net, optimizer, "
                              "schedule and batch size; the model arguments each model takes)")
    compare.add_argument("--test-examples", type=int,
                         help="test images (default: the dataset's, 500 for flips)")
    compare.add_argument("--set", type=_override, action="append", default=[],
                         metavar="MODEL.NAME=VALUE",
                         help="a model argument on top of the recipe (repeatable), e.g. "
                              "ensemble.num_members=4")
    compare.set_defaults(run=_compare)
    demo = commands.add_parser("demo", help="train a small model on flips and sample from it")
    demo.add_argument("--workdir", default="runs/demo")
    demo.add_argument("--steps", type=int, default=6000,
                      help="training steps (a multiple of 500): the same model on every machine")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--base-dir", default="saved_models", help="where the model is exported")
    demo.set_defaults(run=_demo)
    args = parser.parse_args(argv)
    try:
        _check_data_flags(args)
        if args.debug:
            os.environ[_console.VERBOSE_VARIABLE] = "1"
            print("\n".join(_console.hidden), file=sys.stderr)
            _run(args)
        else:
            with _console.filtered_stderr():
                _run(args)
    except _interrupts.TrainingInterrupted as error:  # a step boundary: checkpoints are whole
        parser.exit(128 + error.signum, f"{parser.prog}: {error}\n")
    except KeyboardInterrupt:
        parser.exit(128 + signal.SIGINT, f"{parser.prog}: interrupted (Ctrl-C); nothing that "
                                         "was written is partial: run the command again.\n")
    except Exception as error:  # noqa: BLE001 -- one line for the user; --debug re-raises
        if args.debug:
            raise
        parser.exit(2, f"{parser.prog}: error: {_one_line(error)}\n")
    return 0


def _run(args):
    """Import the library (the console script parsed its arguments without TensorFlow), then
    run the command."""
    import tfprobunet

    tfprobunet._load()
    args.run(args)


def _one_line(error):
    """An exception as one line: its message, prefixed with its type unless that is a plain
    refusal (`CommandError`, `ValueError`) whose message says it all."""
    message = " ".join(str(error).split()) or "(no message)"
    if isinstance(error, (CommandError, ValueError)):
        return message
    return f"{type(error).__name__}: {message}"


def _check_data_flags(args):
    """Default `--dataset` to flips where a command has that default, and refuse data flags
    that the chosen dataset would ignore (`evaluate` and `inspect` check again once the
    training run's dataset is known)."""
    if not hasattr(args, "data_dir"):
        return
    if args.dataset is None and args.command in ("train", "tune", "compare"):
        if args.data_dir is not None:
            raise CommandError(
                f"--data-dir {args.data_dir} needs --dataset: which layout to read there "
                f"({', '.join(d for d in DATASETS if d not in SYNTHETIC)}). Without --dataset, "
                f"{args.command} uses the synthetic flips data.")
        args.dataset = "flips"
    if args.dataset is not None:
        _check_dataset_flags(args.dataset, args.data_dir, args.image_size)


def _check_dataset_flags(dataset, data_dir, image_size):
    if dataset in SYNTHETIC and data_dir is not None:
        raise CommandError(f"--data-dir is not read by the synthetic dataset {dataset}: pass "
                           "--dataset folder or npz (or lidc, lidc-pickle, cityscapes) to read your "
                           "folder.")
    if dataset in OWN_SIZE and image_size is not None:
        raise CommandError(f"--image-size is not used by --dataset {dataset}: its images keep "
                           "the size they were saved with. Resize them before saving, or drop "
                           "the flag.")


if __name__ == "__main__":
    sys.exit(main())
