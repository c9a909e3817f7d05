"""The commands that train: `train`, `tune`, `compare` and `demo`. Their flags for library
arguments are generated from the library's signatures (see `flags.py`)."""

import json
import os

from tfprobunet import _console, catalog
from tfprobunet.cli import flags
from tfprobunet.defaults import (MAX_CONNECT_TIMEOUT, MAX_SEED, MAX_TIME_STEPS, MIXED_PRECISION,
                                 MODEL_NUMBERS, MOSE_COSTS, NOISE_SCHEDULES, SCHEDULES,
                                 STRATEGIES)
from tfprobunet.models.presets import PRESETS

# The `train` flags, but the data flags: (argument, argparse spec, help). Every argument of
# `train` and of every model's constructor is here (tests/test_cli.py checks), except those
# only Python can pass (`verbose`, `callbacks`, `validation_data`). Each number is parsed by a
# `flags.number` type: finite, in range, or argparse's one-line refusal.
COUNT, SEED = flags.COUNT, flags.SEED
TRAIN_FLAGS = [
    ("model", {}, "the model: the Probabilistic U-Net, a baseline of the paper's section 3, the "
                  "HPU-Net (hpunet), the SSN (ssn), or a model of your own (registered, or an "
                  "installed package's tfprobunet.models entry point)"),
    ("strategy", dict(choices=STRATEGIES), "multi_worker: one process per worker, configured "
                                           "by TF_CONFIG"),
    ("connect_timeout", dict(type=flags.number(maximum=MAX_CONNECT_TIMEOUT, above=0.0),
                             metavar="SECONDS"),
     "multi_worker: give up when the cluster has not formed after this long (one line names "
     "the tasks that never answered, and the process is killed: TensorFlow's wait cannot be "
     "interrupted)"),
    ("epochs", dict(type=COUNT), ""),
    ("steps_per_epoch", dict(type=COUNT), ""),
    ("batch_size", dict(type=COUNT), "global batch size (a batch a training step cannot hold "
                                     "in the memory available is refused with an estimate)"),
    ("validation_examples", dict(type=flags.number(0, flags.MAX_COUNT, integer=True)),
     "evaluate this many val images after each epoch (val_ged)"),
    ("learning_rate", dict(type=flags.number(maximum=1.0, above=0.0)),
     "Adam's (initial) learning rate"),
    ("schedule", dict(choices=SCHEDULES),
     "learning-rate schedule over epochs * steps-per-epoch: constant, piecewise (the official "
     "Cityscapes configuration's, scaled), cosine (warm-up + decay), wsd (warm-up, stable, "
     "cosine decay over the last third)"),
    ("max_minutes", dict(type=flags.number(above=0.0)),
     "stop at the end of the first epoch past this many minutes"),
    ("tensorboard", dict(metavar="DIR"),
     "TensorBoard logs: losses, val_ged and calibration scalars, and sample grids of 4 "
     "validation images each epoch"),
    ("mixed_precision", dict(choices=[p for p in MIXED_PRECISION if p]),
     "compute in float16 (GPUs) or bfloat16 (TPUs, AMX/AVX-512-BF16 CPUs); variables and "
     "losses stay float32. auto: bfloat16 on CPUs with AMX or AVX-512-BF16, float32 "
     "elsewhere (2-3 times as fast there, but calibration did not always hold: "
     "docs/results/bf16); float32 (the default, every preset's)"),
    ("seed", dict(type=SEED), "the data, the weights and the model's random draws"),
    ("split_manifest", dict(metavar="FILE"),
     "a split manifest (tfprobunet data manifest) fixing which patients train and validate"),
    ("jit_compile", dict(action="store_true"), "XLA-compile the train step"),
]
def _ranges(name):
    """The range of the model argument `name` (`tfprobunet.defaults.MODEL_NUMBERS`)."""
    return {k: v for k, v in MODEL_NUMBERS[name].items() if k != "example"}


MODEL_FLAGS = {
    "num_channels": (dict(type=flags.number_list(1, flags.MAX_COUNT)),
                     "U-Net filters per level, comma-separated"),
    "convs_per_block": (dict(type=COUNT), ""),
    "latent_dim": (dict(type=COUNT), ""),
    "fcomb_layers": (dict(type=COUNT), "hidden 1x1 convolutions of f_comb, before its 1x1 "
                                       "logits convolution (official code: 3 + 1)"),
    "fcomb_channels": (dict(type=COUNT), "their filters (None: the first --num-channels)"),
    "beta": (dict(type=flags.number(**_ranges("beta"))),
             "the KL weight (hpunet: without GECO only)"),
    "reconstruction": (dict(choices=("sum", "mean")), "pixel losses summed or averaged"),
    "kl": (dict(choices=("analytic", "sampled")), ""),
    "use_posterior_mean": (dict(action="store_true"),
                           "decode the posterior mean instead of a posterior sample "
                                                 "while training (deterministic)"),
    "weight_decay": (dict(type=flags.number(**_ranges("weight_decay"))), "L2 on the kernels"),
    "ged_samples": (dict(type=COUNT), "samples per image of the val_ged metric"),
    "ged_classes": (dict(type=flags.number_list(0, flags.MAX_COUNT)),
                    "the classes the GED scores, comma-separated (None: the dataset's)"),
    "geco_target": (dict(type=flags.optional(flags.number(**_ranges("geco_target")))),
                    "GECO (Rezende & Viola 2018, with the HPU-Net reference code's update): "
                    "minimise the KL subject to a reconstruction of kappa nats per (mined) "
                    "pixel; the Lagrange multiplier softplus(v)**2 starts at 1 and v is "
                    "trained by the optimizer, its gradient scaled by -geco_rate; none: the "
                    "beta-ELBO"),
    "geco_rate": (dict(type=flags.number(**_ranges("geco_rate"))),
                  "the GECO multiplier's gradient scale (with Adam only its sign matters)"),
    "blocks_per_level": (dict(type=COUNT), "residual blocks per level"),
    "latent_dims": (dict(type=flags.number_list(1, flags.MAX_COUNT)),
                    "latent channels per latent level, coarse to fine, comma-separated (None: "
                    "1 at each of min(4, levels - 1) levels)"),
    "top_k_fraction": (dict(type=flags.number(maximum=1.0, above=0.0)),
                       "the fraction of each image's pixels whose cross-entropy is mined (1: "
                       "all)"),
    "top_k_mode": (dict(choices=("stochastic", "deterministic")),
                   "mined pixels drawn in proportion to their loss (Gumbel top-k) or the "
                   "largest losses"),
    "beta_warmup_steps": (dict(type=flags.number(0, flags.MAX_COUNT, integer=True)),
                          "KL weight rising from 0 to --beta over this many steps"),
    "energy_weight": (dict(type=flags.number(**_ranges("energy_weight"))),
                      "add this many nats times a differentiable surrogate of the energy score "
                      "(soft 1 - IoU) of prior samples against the annotation (not in the "
                      "paper; 0: off)"),
    "energy_samples": (dict(type=flags.number(2, flags.MAX_COUNT, integer=True)),
                       "prior samples per image for --energy-weight"),
    "dropout_rate": (dict(type=flags.number(maximum=1.0, above=0.0)),
                     "dropout of the inner-most blocks"),
    "dropout_blocks": (dict(type=COUNT), "how many inner-most encoder and decoder blocks get "
                                         "dropout"),
    "num_members": (dict(type=COUNT), "U-Nets of the ensemble"),
    "num_heads": (dict(type=COUNT), "output heads"),
    "epsilon": (dict(type=flags.number(0.0, 1.0)),
                "the oracle set loss's weight on the heads that are not the best"),
    "rank": (dict(type=COUNT), "rank of the logits' covariance factor"),
    "num_mc_samples": (dict(type=COUNT), "logit samples per image of the Monte Carlo loss"),
    "num_experts": (dict(type=COUNT), "the experts, each a Gaussian over the latent"),
    "samples_per_expert": (dict(type=COUNT), "samples drawn from each expert in training (and "
                                             "by weighted_sample)"),
    "cost": (dict(choices=MOSE_COSTS), "the transport cost: 1 - soft IoU (the reference's "
                                       "LIDC one) or the pixel cross-entropy (its Cityscapes "
                                       "one)"),
    "gamma": (dict(type=flags.number(**_ranges("gamma"))),
              "each sample's share of the transported mass at most"),
    "gamma_switch_steps": (dict(type=flags.optional(flags.number(0, flags.MAX_COUNT,
                                                                 integer=True))),
                           "optimizer steps after which gamma is 1 (none: never)"),
    "time_steps": (dict(type=flags.number(1, MAX_TIME_STEPS, integer=True)),
                   "the diffusion's steps T (the reference's: 250)"),
    "noise_schedule": (dict(choices=NOISE_SCHEDULES),
                       "the diffusion's noise schedule (the reference's: cosine)"),
    "sampling_steps": (dict(type=flags.optional(flags.number(1, MAX_TIME_STEPS, integer=True))),
                       "denoising steps of a sample, at most --time-steps (none: all T); fewer "
                       "skip steps, faster and coarser"),
}


def add_parsers(commands, models=()):
    """Add `train`, `tune`, `compare` and `demo` to the subparsers `commands`; `models`: names of
    models of your own whose constructor arguments become `train` flags too."""
    train = commands.add_parser(
        "train", help="train on a built-in benchmark or your data (resumes a killed run, "
                      "continues a finished one to more --epochs)")
    flags.add_data_flags(train, flags.TRAIN)
    train.add_argument("--workdir", required=True, help="checkpoints, log.csv, model.keras")
    for name, spec, help in TRAIN_FLAGS:
        if name == "model":
            spec = dict(choices=catalog.model_names())
        flags.add_library_flag(train, flags.TRAIN, name, help, **spec)
    for name, takers in flags.model_arguments((*catalog.BUILTIN_MODELS, *models)).items():
        # A model of your own: its other arguments read as JSON, else as text (`--size 8`).
        spec, help = MODEL_FLAGS.get(name, (dict(type=flags.json_or_text), ""))
        flags.add_library_flag(train, flags.TRAIN, name, help, models=takers, **spec)
    train.add_argument("--preset", choices=sorted(PRESETS),
                       help="defaults for the training recipe (explicit flags override them): "
                            + "; ".join(f"{k}: {v['description']}" for k, v in
                                        sorted(PRESETS.items())))
    train.set_defaults(run=_train)
    _add_tune_parser(commands)
    _add_compare_parser(commands)
    demo = commands.add_parser("demo", help="train a small model on flips and sample from it")
    demo.add_argument("--workdir", default="runs/demo")
    demo.add_argument("--steps", type=COUNT, default=6000,
                      help="training steps (a multiple of 500): the same model on every machine")
    demo.add_argument("--seed", type=SEED, default=0)
    demo.add_argument("--base-dir", default="saved_models", help="where the model is exported")
    demo.set_defaults(run=_demo)


def train_arguments(args):
    """The `train` keyword arguments of the parsed `args`: the preset's (those the model takes),
    then the flags given; the library's defaults fill in the rest."""
    model = getattr(args, "model", catalog.REFERENCE_MODEL)
    given = flags.given(args, flags.TRAIN, *catalog.BUILTIN_MODELS,
                        *([] if model in catalog.BUILTIN_MODELS else [model]))
    given.pop("workdir", None)
    options = flags.data_options(args)
    if options:
        given["data_options"] = options
    if args.preset is None:
        return given
    accepted = {*flags.signature_defaults(flags.TRAIN), *flags.signature_defaults(
        model)} - {"workdir", "model"}
    settings = {k: v for k, v in PRESETS[args.preset].items() if k in accepted}
    return {**settings, **given}


def _train(args):
    from tfprobunet import training

    training.train(args.workdir, verbose=_console.progress_verbosity(), **train_arguments(args))
    print(f"model saved to {os.path.join(args.workdir, training.workdir.MODEL)}")


def _add_tune_parser(commands):
    tune = commands.add_parser(
        "tune", help="Keras Tuner search on val_ged (resumes an interrupted search)")
    flags.add_data_flags(tune, flags.TUNE)
    tune.add_argument("--directory", required=True,
                      help="the search's trials, TensorBoard logs, best model and JSON")
    for name, spec, help in [
            ("tuner", dict(choices=("random", "bayesian", "hyperband")), ""),
            ("max_trials", dict(type=COUNT), "random and bayesian"),
            ("epochs", dict(type=COUNT), "per trial (hyperband: the longest trials')"),
            ("steps_per_epoch", dict(type=COUNT), ""),
            ("validation_examples", dict(type=COUNT), "val images scored for the objective, "
                                                      "val_ged"),
            ("strategy", dict(choices=("default", "mirrored")), ""),
            ("seed", dict(type=SEED), "")]:
        flags.add_library_flag(tune, flags.TUNE, name, help, **spec)
    tune.add_argument("--fixed", type=flags.fixed, action="append", default=[],
                      metavar="NAME=VALUE", help="a setting not searched (repeatable): a "
                      "hyper-parameter (latent_dim=8) or a ProbabilisticUNet argument")
    role = tune.add_mutually_exclusive_group()
    role.add_argument("--chief", action="store_true",
                      help="distributed: run the oracle at --oracle and wait for the workers")
    role.add_argument("--worker", type=flags.number(0, flags.MAX_COUNT, integer=True),
                      metavar="ID",
                      help="distributed: run trials for the chief at --oracle")
    tune.add_argument("--oracle", metavar="HOST:PORT", help="the chief's address")
    tune.add_argument("--show", type=COUNT, default=5, help="best trials to print")
    tune.add_argument("--verbose", type=int, choices=(0, 1, 2),
                      help="Keras: 1 progress bars, 2 a line per epoch, 0 silent (default: 1 "
                           "on a terminal, else 2)")
    tune.set_defaults(run=_tune)


def _tune(args):
    from tfprobunet import tuning

    if args.chief or args.worker is not None:
        host, _, port = (args.oracle or "").rpartition(":")
        if not host or not port.isdigit():
            raise flags.CommandError("--chief and --worker need --oracle HOST:PORT (the "
                                     f"chief's address). Received: --oracle {args.oracle!r}")
        os.environ.update({tuning.ORACLE_IP: host, tuning.ORACLE_PORT: port,
                           tuning.TUNER_ID: "chief" if args.chief else f"tuner{args.worker}"})
    settings = {k: v for k, v in flags.given(args, flags.TUNE).items() if k != "verbose"}
    settings["data_options"] = flags.data_options(args)
    trials = tuning.tune(
        args.directory, **settings,
        verbose=_console.progress_verbosity() if args.verbose is None else args.verbose,
        **dict(args.fixed))
    if args.worker is not None:
        print(f"worker {args.worker}: no more trials; the chief reports the best one")
        return
    print(json.dumps({"best_trials": trials[:args.show]}, indent=2))
    print(f"best model: {os.path.join(args.directory, tuning.BEST_MODEL)}; its hyper-parameters: "
          f"{os.path.join(args.directory, tuning.BEST_HYPERPARAMETERS)}")


def _add_compare_parser(commands):
    compare = commands.add_parser(
        "compare", help="the paper's comparison: train the Probabilistic U-Net and the baselines "
                        "on the same budget, data and seeds; results.json and Figs. 4-5")
    flags.add_data_flags(compare, flags.COMPARE)
    compare.add_argument("--out", required=True, dest="out_dir",
                         help="the runs (one train workdir per model and seed), results.json "
                              "and the figures; a stopped compare continues from there")
    for name, spec, help, default_help in [
            ("models", dict(type=flags.model_list), "comma-separated",
             "the paper's five: probunet,dropout,ensemble,mheads,i2ivae"),
            ("steps", dict(type=COUNT), "training steps of every run", None),
            ("steps_per_epoch", dict(type=COUNT), "steps between checkpoints",
             "min(steps, 500)"),
            ("seeds", dict(type=flags.number_list(0, MAX_SEED)),
             "training seeds, comma-separated", None),
            ("recipe", dict(choices=sorted(PRESETS)), "the training recipe of every model (its "
             "U-Net, optimizer, schedule and batch size; the model arguments each model takes)",
             None),
            ("test_examples", dict(type=COUNT), "test images", "the dataset's, 500 for flips")]:
        flags.add_library_flag(compare, flags.COMPARE, name, help, default_help=default_help,
                               **spec)
    compare.add_argument("--set", type=flags.override, action="append", default=[],
                         metavar="MODEL.NAME=VALUE",
                         help="a model argument on top of the recipe (repeatable), e.g. "
                              "ensemble.num_members=4")
    compare.set_defaults(run=_compare)


def _compare(args):
    from tfprobunet import comparison

    overrides = {}
    for model, argument, value in args.set:
        overrides.setdefault(model, {})[argument] = value
    results = comparison.compare(args.out_dir, model_overrides=overrides,
                                 verbose=_console.progress_verbosity(),
                                 **flags.given(args, flags.COMPARE))
    counts = [str(k) for k in results["sample_counts"]]
    print(f"{'GED':<10}" + "".join(f"{k:>9}" for k in counts) + f"{'mode r':>9}")
    for name, entry in results["models"].items():
        r = entry.get("pearson_r", {}).get("mean")
        print(f"{name:<10}" + "".join(f"{entry['ged'][k]['mean']:>9.4f}" for k in counts)
              + (f"{r:>9.3f}" if r is not None else ""))
    print(f"{'floor':<10}" + "".join(f"{results['ged_noise_floor'][k]:>9.4f}" for k in counts))
    for name, test in results.get(f"wilcoxon_{counts[-1]}", {}).items():
        print(f"Wilcoxon at {counts[-1]} samples, probunet against {name}: p = {test['p']:.2g}")
    print(f"results.json and {', '.join(results['figures'])} written to {args.out_dir}")


def _demo(args):
    from tfprobunet import demo

    print(json.dumps(demo.run(args.workdir, steps=args.steps, seed=args.seed,
                              base_dir=args.base_dir), indent=2))

