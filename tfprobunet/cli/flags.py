"""The flags of the commands, and the one rule that keeps their defaults in one home.

A flag that stands for a library argument (`train`'s, a model's, `tune`'s, `compare`'s) has no
default of its own (`argparse.SUPPRESS`): only the flags a user gives are passed, and the
library's signature supplies the rest. Its help shows that default, read from the library's
source with `ast` (`signature_defaults`), because `tfprobunet --help` answers without importing
TensorFlow. Importable without TensorFlow.
"""

import argparse
import ast
import functools
import importlib
import json
import os

from tfprobunet.defaults import (DATASETS, MAX_PIXELS, MAX_SAMPLE_PIXELS, MAX_SAMPLES,
                                 MODEL_NAMES)

PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where each library function or class a command forwards to is defined (module, name).
TRAIN = ("training/train.py", "train")
TUNE = ("tuning.py", "tune")
COMPARE = ("comparison.py", "compare")
MODELS = {"probunet": ("models/probabilistic_unet.py", "ProbabilisticUNet"),
          "dropout": ("models/dropout_unet.py", "DropoutUNet"),
          "ensemble": ("models/ensemble.py", "UNetEnsemble"),
          "mheads": ("models/m_heads.py", "MHeads"),
          "i2ivae": ("models/image2image_vae.py", "Image2ImageVAE"),
          "hpunet": ("models/hpunet.py", "HierarchicalProbabilisticUNet"),
          "ssn": ("models/ssn.py", "StochasticSegmentationNetwork")}
# Model arguments that are not flags: the dataset sets `num_classes`; `train`'s `seed` is the
# model's too.
NOT_MODEL_FLAGS = ("num_classes", "seed")
DATA_HELP = ("flips, graders: synthetic; lidc: the PNG crops folder; "
             "lidc-pickle: the PyTorch port's data_lidc.pickle; lidc-phiseg: PHiSeg's "
             "data_lidc.hdf5; cityscapes: the folder with "
             "leftImg8bit/ and gtFine/; your own data: npz, a folder with train.npz, val.npz, "
             "test.npz; folder, a folder with images/ and masks/ (NAME_0.png, NAME_1.png, ... per "
             "image NAME.png; see docs/data.md)")


class CommandError(Exception):
    """A command refused its arguments: printed as one line, `tfprobunet: error: ...`."""


def int_list(text):
    """`8,16,32` as [8, 16, 32]."""
    return [int(v) for v in text.split(",") if v]


def optional_float(text):
    """A number, or `none` (None)."""
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or none, got {text!r}") from None


def size(text):
    """`64` or `256,512`."""
    values = int_list(text)
    if len(values) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected SIZE or HEIGHT,WIDTH, got {text!r}")
    return values[0] if len(values) == 1 else tuple(values)


def image_range(text):
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


def fixed(text):
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


def model_list(text):
    """`probunet,dropout` as a list of names of `tfprobunet.models.MODELS`."""
    names = [v for v in text.split(",") if v]
    unknown = [v for v in names if v not in MODEL_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(MODEL_NAMES)}; got {text!r}")
    return names


def override(text):
    """`MODEL.NAME=VALUE`, e.g. `ensemble.num_members=4`."""
    name, value = fixed(text)
    model, sep, argument = name.partition(".")
    if not sep or not argument:
        raise argparse.ArgumentTypeError(f"expected MODEL.NAME=VALUE, got {text!r}")
    return model, argument, value


@functools.lru_cache(maxsize=None)
def signature_defaults(where):
    """The defaults of the function (or class constructor) `where`, `(module path under the
    package, name)`, read from its source without importing it: `{argument: value}`, values
    as Python literals, or a module constant's value (`_cluster.CONNECT_TIMEOUT`) when the
    module is importable without TensorFlow (else `Unresolved`, its text). Arguments without a
    default are left out."""
    path, name = where
    with open(os.path.join(PACKAGE, path)) as f:
        tree = ast.parse(f.read())
    (node,) = [n for n in tree.body if getattr(n, "name", None) == name]
    if isinstance(node, ast.ClassDef):
        (node,) = [n for n in node.body if getattr(n, "name", None) == "__init__"]
    args = node.args
    positional = [*args.posonlyargs, *args.args]
    pairs = [*zip(positional[len(positional) - len(args.defaults):], args.defaults),
             *((a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None)]
    return {arg.arg: _literal(default) for arg, default in pairs}


class Unresolved(str):
    """A default that cannot be read without running its module (`MODELS`, a constant of a
    module that imports TensorFlow): its source text."""


# Modules whose constants a default may name and that import without TensorFlow.
LIGHT_MODULES = ("_cluster", "defaults")


def _literal(node):
    try:
        return ast.literal_eval(node)
    except ValueError:
        text = ast.unparse(node)
        module, _, attribute = text.rpartition(".")
        if module in LIGHT_MODULES:  # e.g. `_cluster.CONNECT_TIMEOUT`
            return getattr(importlib.import_module(f"tfprobunet.{module}"), attribute)
        return Unresolved(text)


def model_arguments():
    """Every model's constructor arguments that are flags: `{argument: [model names]}`."""
    taken = {}
    for model, where in MODELS.items():
        for argument in signature_defaults(where):
            if argument not in NOT_MODEL_FLAGS:
                taken.setdefault(argument, []).append(model)
    return taken


def _shown(value):
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def add_library_flag(parser, where, name, help="", models=None, default_help=None, **spec):
    """Add `--NAME` for the argument `name` of the library function `where` (or, with `models`,
    of those models' constructors): no default of its own, its help ending with the library's
    (or `default_help`, where the library's None means "the dataset's" or the like).
    `spec`: argparse's `type`, `choices`, `action`, `metavar`, ... as for `add_argument`."""
    if models is None:
        defaults = {None: signature_defaults(where).get(name)}
    else:
        defaults = {m: signature_defaults(MODELS[m]).get(name) for m in models}
    shown = sorted({_shown(v) for v in defaults.values()})
    if default_help is not None:
        default = default_help
    elif len(shown) > 1:
        default = "; ".join(f"{m}: {_shown(v)}" for m, v in defaults.items())
    else:
        default = shown[0]
    if models is not None and len(models) < len(MODELS):
        help = f"{help}{'; ' if help else ''}with --model {' or '.join(models)}"
    help = f"{help}{' ' if help else ''}(default: {default})".replace("%", "%%")
    parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=argparse.SUPPRESS,
                        help=help, **spec)


def given(args, where, *more):
    """The arguments of the library function `where` (and of the `more` ones) that the user
    gave as flags."""
    names = set(signature_defaults(where))
    for other in more:
        names |= set(signature_defaults(other))
    return {k: v for k, v in vars(args).items() if k in names}


def add_data_flags(parser, library=None):
    """`--dataset`, `--data-dir`, `--image-size`, `--num-examples`; as library flags of the
    function `library` when given (`train`, `tune`, `compare`)."""
    specs = [("dataset", dict(choices=DATASETS), DATA_HELP, None),
             ("data_dir", {}, "where --dataset folder, npz, lidc, lidc-pickle, lidc-phiseg or "
                              "cityscapes is read from (needs --dataset)", "none"),
             ("image_size", dict(type=size), "SIZE or HEIGHT,WIDTH",
              "64 synthetic, 128 LIDC, 256,512 Cityscapes"),
             ("num_examples", dict(type=int), "images of the split",
              "all; synthetic: 1000 train, 100 val/test")]
    for name, spec, help, default_help in specs:
        if library is None:  # evaluate, inspect: the training run's (its train_config.json)
            parser.add_argument(f"--{name.replace('_', '-')}",
                                help=f"{help} (default: the training run's)", **spec)
        else:
            add_library_flag(parser, library, name, help, default_help=default_help, **spec)


def add_limit_flags(parser, whose):
    """The request limits, whose defaults are `tfprobunet.defaults`' (the library's too)."""
    parser.add_argument("--max-samples", type=int, default=MAX_SAMPLES,
                        help=f"{whose}: the most samples per image one request may ask for")
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                        help=f"{whose}: the most image pixels (b*h*w) per request")
    parser.add_argument("--max-sample-pixels", type=int, default=MAX_SAMPLE_PIXELS,
                        help=f"{whose}: the most sampled pixels (b*m*h*w) per request")


def limits(args):
    """The request limits given (or defaulted) on the command line."""
    return {"max_samples": args.max_samples, "max_pixels": args.max_pixels,
            "max_sample_pixels": args.max_sample_pixels}
