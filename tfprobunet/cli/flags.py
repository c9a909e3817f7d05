"""The flags of the commands, and the one rule that keeps their defaults in one home.

A flag that stands for a library argument (`train`'s, a model's, `tune`'s, `compare`'s) has no
default of its own (`argparse.SUPPRESS`): only the flags a user gives are passed, and the
library's signature supplies the rest. Its help shows that default, read from `signatures.json`
beside this file (`signature_defaults`), because `tfprobunet --help` answers without importing
TensorFlow: the defaults of those functions and of the package's models, written by
`python -m tfprobunet.cli.flags` (tests/test_cli.py fails when it is stale). A model of your own
(`tfprobunet.models.register`, or a `tfprobunet.models` entry point) is inspected instead, when
a command names it. Importable without TensorFlow.
"""

import argparse
import functools
import importlib
import inspect
import json
import os

from tfprobunet import catalog
from tfprobunet.defaults import MAX_PIXELS, MAX_SAMPLE_PIXELS, MAX_SAMPLES, MAX_SEED, check_number

# The library functions the commands forward to: name -> (module, attribute).
FUNCTIONS = {"train": ("tfprobunet.training.train", "train"),
             "tune": ("tfprobunet.tuning", "tune"),
             "compare": ("tfprobunet.comparison", "compare")}
TRAIN, TUNE, COMPARE = FUNCTIONS
SIGNATURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "signatures.json")
# Model arguments that are not flags: the dataset sets `num_classes`; `train`'s `seed` is the
# model's too.
NOT_MODEL_FLAGS = ("num_classes", "seed")
DATA_HELP = "; ".join(f"{name}: {entry.help}" for name, entry in catalog.DATASETS.items())


# The ranges of the numeric flags (the library checks its arguments again, some more tightly,
# e.g. a model's size limits). Counts become int32 tensors in places.
MAX_COUNT = 2**31 - 1
# The longest image side --image-size takes (a 8192 x 8192 image is 64 million pixels).
MAX_SIDE = 8192


class CommandError(Exception):
    """A command refused its arguments: printed as one line, `tfprobunet: error: ...`."""


def _bounds(minimum, maximum, above):
    parts = [(">", above), (">=", minimum), ("<=", maximum)]
    return " and ".join(f"{sign} {value if isinstance(value, int) else f'{value:g}'}"
                        for sign, value in parts if value is not None)


def number(minimum=None, maximum=None, *, above=None, integer=False):
    """An argparse `type=`: the flag's text as a finite number (an int if `integer`) with
    `minimum <= value <= maximum` and `value > above` (`defaults.check_number`). Anything else
    (`nan`, `inf`, `1e3` for an integer, out of range) is argparse's one-line refusal naming
    the flag, e.g. `argument --seed: expected an integer >= 0 and <= 2147483647, got '-5'`."""
    wanted = f"{'an integer' if integer else 'a finite number'} {_bounds(minimum, maximum, above)}"

    def parse(text):
        try:
            value = int(text) if integer else float(text)
            return check_number("value", value, minimum, maximum, above=above, integer=integer)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"expected {wanted.strip()}, got {text!r}") from None

    parse.__name__ = "integer" if integer else "number"
    return parse


def number_list(minimum=None, maximum=None, *, integer=True):
    """An argparse `type=`: `8,16,32` as [8, 16, 32], each value checked as `number` checks
    one."""
    parse_one = number(minimum, maximum, integer=integer)
    wanted = f"{'integers' if integer else 'finite numbers'} {_bounds(minimum, maximum, None)}"

    def parse(text):
        try:
            values = [parse_one(v) for v in text.split(",") if v]
        except argparse.ArgumentTypeError:
            values = []
        if not values:
            raise argparse.ArgumentTypeError(f"expected comma-separated {wanted.strip()}, got "
                                             f"{text!r}")
        return values

    parse.__name__ = "list"
    return parse


COUNT = number(1, MAX_COUNT, integer=True)  # epochs, steps, batch sizes, images, trials
SEED = number(0, MAX_SEED, integer=True)
# Classes are labels 0..K-1 of 8-bit masks, and 255 the ignore label: K is 2 to 255.
CLASSES = number(2, catalog.IGNORE_LABEL, integer=True)


def int_list(text):
    """`8,16,32` as [8, 16, 32]."""
    return [int(v) for v in text.split(",") if v]


def optional(parse):
    """An argparse `type=`: `none` as None, any other text as `parse` reads it."""
    def parse_optional(text):
        return None if text.lower() == "none" else parse(text)

    parse_optional.__name__ = f"optional {parse.__name__}"
    return parse_optional


def size(text):
    """`64` or `256,512`: one or two integers from 1 to `MAX_SIDE` (which sides a model's U-Net
    divides, `train` checks once it knows the model)."""
    try:
        values = number_list(1, MAX_SIDE)(text)
    except argparse.ArgumentTypeError:
        values = []
    if len(values) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected SIZE or HEIGHT,WIDTH, positive integers "
                                         f"<= {MAX_SIDE}, got {text!r}")
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


def json_or_text(text):
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
    parsed = json_or_text(value)
    if isinstance(parsed, str) and "," in value:
        parsed = [json_or_text(v) for v in value.split(",") if v]
    return name.replace("-", "_"), parsed


def model_list(text):
    """`probunet,dropout` as a list of model names (`tfprobunet.catalog.model_names()`)."""
    names = [v for v in text.split(",") if v]
    known = catalog.model_names()
    unknown = [v for v in names if v not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(known)}; got {text!r}")
    return names


def override(text):
    """`MODEL.NAME=VALUE`, e.g. `ensemble.num_members=4`."""
    name, value = fixed(text)
    model, sep, argument = name.partition(".")
    if not sep or not argument:
        raise argparse.ArgumentTypeError(f"expected MODEL.NAME=VALUE, got {text!r}")
    return model, argument, value


def inspected_defaults(function):
    """The defaults of `function` (or of a class's constructor) as JSON values (tuples as
    lists): `{argument: value}`, arguments without a default left out."""
    if isinstance(function, type):
        function = function.__init__
    return json.loads(json.dumps({name: p.default for name, p in
                                  inspect.signature(function).parameters.items()
                                  if p.default is not p.empty}))


def library_signatures():
    """What `signatures.json` holds, read off the library (imports it, and TensorFlow):
    `{"functions": {name: defaults}, "models": {model: defaults}}`."""
    functions = {name: inspected_defaults(getattr(importlib.import_module(module), attribute))
                 for name, (module, attribute) in FUNCTIONS.items()}
    models = {name: inspected_defaults(catalog.model_class(name))
              for name in catalog.BUILTIN_MODELS}
    from tfprobunet.data import sources

    datasets = {name: json.loads(json.dumps(sources.dataset_options(name)))
                for name in catalog.DATASET_NAMES}
    return {"functions": functions, "models": models,
            "datasets": {k: v for k, v in datasets.items() if v}}


@functools.lru_cache(maxsize=None)
def _stored_signatures():
    with open(SIGNATURES) as f:
        return json.load(f)


def signature_defaults(where):
    """The defaults of the library function `where` (`TRAIN`, `TUNE`, `COMPARE`) or of the
    constructor of the model named `where`: `{argument: value}`, arguments without a default
    left out. The package's own are read from `signatures.json` (no TensorFlow); a model
    registered or declared as an entry point is imported and inspected."""
    stored = _stored_signatures()
    if where in stored["functions"]:
        return stored["functions"][where]
    if where in stored["models"]:
        return stored["models"][where]
    return inspected_defaults(catalog.model_class(where))


def model_arguments(models=tuple(catalog.BUILTIN_MODELS)):
    """The constructor arguments that are flags of the models named `models` (the package's by
    default): `{argument: [model names]}`."""
    taken = {}
    for model in models:
        for argument in signature_defaults(model):
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
        defaults = {m: signature_defaults(m).get(name) for m in models}
    shown = sorted({_shown(v) for v in defaults.values()})
    if default_help is not None:
        default = default_help
    elif len(shown) > 1:
        default = "; ".join(f"{m}: {_shown(v)}" for m, v in defaults.items())
    else:
        default = shown[0]
    if models is not None and set(catalog.BUILTIN_MODELS) - set(models):
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


def pair(text):
    """`LOW,HIGH` as two floats."""
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH (two numbers), got {text!r}") \
            from None
    return [low, high]


def crop_size(text):
    """`128` or `128,96` as [height, width], positive."""
    value = size(text)
    value = [value, value] if isinstance(value, int) else list(value)
    if min(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive H,W window, got {text!r}")
    return value


# The flags of the options of the datasets read from your files (`tfprobunet.data.
# dataset_options`: the folder's, the volumes'): (flag's argument, argparse spec, help). They
# become `data_options` (see `data_options`); evaluate and inspect default to the run's. A
# dataset refuses the options it does not take, naming its own.
DATA_OPTION_FLAGS = [
    ("pattern", {}, "where each image's masks are, relative to the mask folder: {stem} for the "
                    "image's name without extension, * for the rater, e.g. '{stem}_*.png', "
                    "'*/{stem}.png' (a subfolder per rater), '{stem}.png' (one rater); none "
                    "tries those three"),
    ("labels", dict(choices=("binary", "multiclass")),
     "binary: masks of 0/255 or 0/1, read as lesion/background; multiclass: the mask values "
     "are class labels 0..K-1 (255 ignored)"),
    ("num_classes", dict(type=CLASSES), "K of multiclass labels, 2 to 255 (label 255 is the "
                                        "ignore label; implies --labels multiclass; none: the "
                                        "largest label + 1)"),
    ("missing_mask", dict(choices=("error", "empty")),
     "a rater's mask that is missing for an image: refused (error), or read as all "
     "background (empty)"),
    ("crop", dict(type=crop_size, metavar="H,W"),
     "train on random H,W windows of each image (a share centred on labels); evaluation and "
     "prediction take whole images (none: whole images)"),
    ("window", dict(type=pair, metavar="LOW,HIGH"),
     "scale intensities by this window, in the file's units after its rescaling (e.g. "
     "-1000,400 Hounsfield units for CT); none: by the data type's range, 255 or 65535"),
    ("percentiles", dict(type=pair, metavar="LOW,HIGH"),
     "scale intensities by each image's own percentiles, e.g. 0.5,99.5 (MR)"),
    ("axis", dict(type=number(0, 2, integer=True)), "the array axis to slice volumes along, "
                                                    "as stored: 0, 1 or 2"),
    ("empty_share", dict(type=number(0, 1), metavar="SHARE"),
     "the share of a volume's slices that no rater labelled kept; every labelled slice is"),
]
# The option flags' arguments of `tfprobunet.data.load` (`labels` stands for `binarize`).
_OPTION_ARGUMENTS = {"labels": "binarize"}


def _option_default(name):
    """`folder: X; volumes: Y`: the defaults of the datasets that take option `name`, from
    signatures.json."""
    argument = _OPTION_ARGUMENTS.get(name, name)
    defaults = {dataset: options[argument] for dataset, options in
                _stored_signatures().get("datasets", {}).items() if argument in options}
    if argument == "binarize":
        defaults = {k: "binary" if v else "multiclass" for k, v in defaults.items()}
    shown = {_shown(v).lower() for v in defaults.values()}
    if len(shown) == 1:
        return f"{shown.pop()}; {' and '.join(defaults)} only"
    return "; ".join(f"{k}: {_shown(v).lower()}" for k, v in defaults.items())


def add_data_flags(parser, library=None):
    """`--dataset`, `--data-dir`, `--image-size`, `--num-examples`; as library flags of the
    function `library` when given (`train`, `tune`, `compare`); and, but for `compare`, the
    dataset options' flags (`DATA_OPTION_FLAGS`)."""
    read = [n for n in catalog.DATASET_NAMES if catalog.DATASETS[n].needs_data_dir]
    specs = [("dataset", dict(choices=catalog.DATASET_NAMES), DATA_HELP, None),
             ("data_dir", {}, f"where --dataset {' or '.join(read)} is read from (needs "
                              "--dataset)", "none"),
             ("image_size", dict(type=size), "SIZE or HEIGHT,WIDTH",
              "64 synthetic, 128 LIDC, 256,512 Cityscapes"),
             ("num_examples", dict(type=COUNT), "images of the split",
              "all; synthetic: 1000 train, 100 val/test")]
    for name, spec, help, default_help in specs:
        if library is None:  # evaluate, inspect: the training run's (its train_config.json)
            parser.add_argument(f"--{name.replace('_', '-')}",
                                help=f"{help} (default: the training run's)", **spec)
        else:
            add_library_flag(parser, library, name, help, default_help=default_help, **spec)
    if library == COMPARE:
        return
    for name, spec, help in DATA_OPTION_FLAGS:
        default = "the training run's" if library is None else _option_default(name)
        help = f"{help} (default: {default})"
        spec = {"metavar": name.upper(), **spec} if "choices" not in spec else spec
        parser.add_argument(f"--{name.replace('_', '-')}", dest=f"data_{name}",
                            default=None, help=help.replace("%", "%%"), **spec)


def data_options(args, recorded=None):
    """The dataset options the flags of `args` give (`DATA_OPTION_FLAGS`), over `recorded`
    (a training run's `data_options`, for evaluate and inspect): `{option: value}` as
    `tfprobunet.data.load` takes them, None when there are none."""
    given = {name: getattr(args, f"data_{name}", None) for name, _, _ in DATA_OPTION_FLAGS}
    given = {k: v for k, v in given.items() if v is not None}
    labels = given.pop("labels", None)
    if labels is not None:
        given["binarize"] = labels == "binary"
    if given.get("num_classes") is not None:
        if labels == "binary":
            raise CommandError("--num-classes is for --labels multiclass (binary masks have "
                               f"2 classes). Received: --num-classes {given['num_classes']} "
                               "--labels binary")
        given["binarize"] = False
    if "window" in given or "percentiles" in given:  # one rule replaces the other
        recorded = {k: v for k, v in (recorded or {}).items()
                    if k not in ("window", "percentiles")}
    return {**(recorded or {}), **given} or None


def add_limit_flags(parser, whose):
    """The request limits, whose defaults are `tfprobunet.defaults`' (the library's too)."""
    parser.add_argument("--max-samples", type=COUNT, default=MAX_SAMPLES,
                        help=f"{whose}: the most samples per image one request may ask for")
    parser.add_argument("--max-pixels", type=COUNT, default=MAX_PIXELS,
                        help=f"{whose}: the most image pixels (b*h*w) per request")
    parser.add_argument("--max-sample-pixels", type=COUNT, default=MAX_SAMPLE_PIXELS,
                        help=f"{whose}: the most sampled pixels (b*m*h*w) per request")


def limits(args):
    """The request limits given (or defaulted) on the command line."""
    return {"max_samples": args.max_samples, "max_pixels": args.max_pixels,
            "max_sample_pixels": args.max_sample_pixels}



def write_signatures():
    """Rewrite `signatures.json` from the library (after a signature changed):
    `python -c "from tfprobunet.cli import flags; flags.write_signatures()"`."""
    with open(SIGNATURES, "w") as f:
        json.dump(library_signatures(), f, indent=1)
        f.write("\n")
