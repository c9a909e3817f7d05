"""The house's nouns, each written once: the models, the datasets, the split names, the
evaluation protocols, the metrics and the ignore label. Every other place reads them from here:
the command line's choices and flags, `compare`'s labels and columns, the plots, the protocols,
the evaluation and `tfprobunet.models.MODELS` (by name, never by position).

Importable without TensorFlow (`tfprobunet --help` builds its parser from it).

Models come from three places, in this order: the package's own (`BUILTIN_MODELS`), those a
program registers (`tfprobunet.models.register`, which calls `add_model`) and those an installed
package declares in the entry-point group `tfprobunet.models` (`ENTRY_POINT_GROUP`), e.g. in its
`pyproject.toml`:

    [project.entry-points."tfprobunet.models"]
    toy = "my_package.toy:ToySampler"

`model_names()` lists them all without importing any model; `model_entry(name)` gives one's
`ModelEntry`, importing an entry point's module only when its class is asked for.
"""

import collections
import importlib
import importlib.metadata

# Label 255 in a segmentation means "not scored": padding, the void of Cityscapes, a pixel no
# grader saw. A model has at most 255 classes.
IGNORE_LABEL = 255

# The splits every dataset has.
SPLITS = ("train", "val", "test")

ModelEntry = collections.namedtuple(
    "ModelEntry", "name module class_name label paper serving cls", defaults=(None,))
ModelEntry.__doc__ = """One model the library trains, compares and serves by name.

Fields:
    name: its name for `train(model=...)`, `--model` and `compare --models`.
    module: the module that defines its class (imported when the class is first needed).
    class_name: the class's name in `module`.
    label: what tables, figures and reports call it.
    paper: whether it is one of the paper's comparison (section 4), which `compare` runs by
        default.
    serving: the serving signatures its export has (`tfprobunet.serving.signatures`).
    cls: the class itself, for a model registered at run time (None: import `module`).
"""

_FOUR = ("serving_default", "features", "sample", "decode")
_THREE = ("serving_default", "features", "sample")
_ONE = ("serving_default",)

BUILTIN_MODELS = {e.name: e for e in (
    ModelEntry("probunet", "tfprobunet.models.probabilistic_unet", "ProbabilisticUNet",
               "Probabilistic U-Net", True, _FOUR),
    ModelEntry("dropout", "tfprobunet.models.dropout_unet", "DropoutUNet", "Dropout U-Net",
               True, _ONE),
    ModelEntry("ensemble", "tfprobunet.models.ensemble", "UNetEnsemble", "U-Net Ensemble",
               True, _ONE),
    ModelEntry("mheads", "tfprobunet.models.m_heads", "MHeads", "M-Heads", True, _ONE),
    ModelEntry("i2ivae", "tfprobunet.models.image2image_vae", "Image2ImageVAE",
               "Image2Image VAE", True, _ONE),
    ModelEntry("hpunet", "tfprobunet.models.hpunet", "HierarchicalProbabilisticUNet",
               "HPU-Net", False, _ONE),
    ModelEntry("ssn", "tfprobunet.models.ssn", "StochasticSegmentationNetwork",
               "Stochastic Segmentation Network", False, _THREE),
    ModelEntry("mose", "tfprobunet.models.mose", "MixtureOfStochasticExperts", "MoSE", False,
               _THREE),
    ModelEntry("ccdm", "tfprobunet.models.ccdm", "CategoricalDiffusionSegmenter", "CCDM",
               False, _ONE),
)}
# The paper's comparison, the Probabilistic U-Net (the reference of every comparison) first.
PAPER_MODELS = tuple(name for name, entry in BUILTIN_MODELS.items() if entry.paper)
REFERENCE_MODEL = "probunet"

ENTRY_POINT_GROUP = "tfprobunet.models"
_registered = {}


def add_model(entry):
    """Add the `ModelEntry` `entry` (its `cls` set) to the models known by name; refuses a name
    already taken. `tfprobunet.models.register` checks the class and calls this."""
    if entry.name in model_names():
        raise ValueError(f"A model named {entry.name!r} exists already "
                         f"({model_entry(entry.name).label}); register yours under another "
                         "name.")
    _registered[entry.name] = entry


def remove_model(name):
    """Forget the model registered at run time as `name` (tests; a package's own stay)."""
    if name not in _registered:
        raise ValueError(f"No model was registered as {name!r}; registered: "
                         f"{sorted(_registered) or 'none'}.")
    del _registered[name]


def _entry_points():
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def model_names():
    """Every model's name: the package's, then those registered, then the entry points'."""
    names = [*BUILTIN_MODELS, *_registered]
    return tuple(names + [n for n in sorted(_entry_points()) if n not in names])


def model_entry(name):
    """The `ModelEntry` of the model named `name`; an entry point's module is imported here.
    Raises `ValueError` naming the models known when there is none of that name."""
    if name in BUILTIN_MODELS:
        return BUILTIN_MODELS[name]
    if name in _registered:
        return _registered[name]
    entry_point = _entry_points().get(name)
    if entry_point is None:
        raise ValueError(f"`model` must be one of {', '.join(model_names())} (or a model "
                         "registered with tfprobunet.models.register). Received: "
                         f"{name!r}")
    return class_entry(name, entry_point.load())


def class_entry(name, cls, label=None):
    """The `ModelEntry` of a model class of your own known as `name`: labelled `label`, else
    the class's `LABEL`, else its name; not the paper's; `serving_default` alone."""
    label = label or getattr(cls, "LABEL", None) or cls.__name__
    return ModelEntry(name, cls.__module__, cls.__name__, str(label), False, _ONE, cls)


def entry_point_class(module, class_name):
    """The class `module:class_name` if an installed package declares it in the entry-point
    group (its module imported), else None: how `tfprobunet.saving.load_model` finds the class
    of a model file of your own."""
    for entry_point in _entry_points().values():
        if entry_point.value.replace(" ", "") == f"{module}:{class_name}":
            return entry_point.load()
    return None


def model_class(name):
    """The class of the model named `name` (imports its module, and TensorFlow with it)."""
    entry = model_entry(name)
    if entry.cls is not None:
        return entry.cls
    return getattr(importlib.import_module(entry.module), entry.class_name)


def model_label(name):
    """What tables and figures call the model `name`; the name itself for a model unknown
    here (a run recorded by a program that registered it)."""
    if name in BUILTIN_MODELS or name in _registered:
        return model_entry(name).label
    return name


DatasetEntry = collections.namedtuple(
    "DatasetEntry", "name module image_size keeps_sizes needs_data_dir manifests help")
DatasetEntry.__doc__ = """One dataset `tfprobunet.data.load` reads by name.

Fields:
    name: its name for `dataset=` and `--dataset`.
    module: the module under `tfprobunet.data` that reads it.
    image_size: its default image size (an int, or `(height, width)`), or None: its images
        keep the size they were saved with (`image_size` is refused).
    keeps_sizes: whether its images keep their own sizes (padded per batch) by default.
    needs_data_dir: whether it is read from files (`data_dir`); else generated.
    manifests: whether it has patient (series, image) ids, so a split manifest can fix its
        split (`tfprobunet.data.manifests`).
    help: what it is, in a few words (the command line's help).
"""

DATASETS = {e.name: e for e in (
    DatasetEntry("flips", "synthetic", 64, False, False, False, "synthetic"),
    DatasetEntry("graders", "synthetic", 64, False, False, False, "synthetic"),
    DatasetEntry("lidc", "lidc", 128, False, True, True, "the LIDC PNG crops folder"),
    DatasetEntry("lidc-pickle", "lidc", 128, False, True, True,  # 128: the pickle's own
                 "the PyTorch port's data_lidc.pickle"),
    DatasetEntry("lidc-phiseg", "phiseg", None, False, True, True, "PHiSeg's data_lidc.hdf5"),
    DatasetEntry("cityscapes", "cityscapes", (256, 512), False, True, False,
                 "the folder with leftImg8bit/ and gtFine/"),
    DatasetEntry("npz", "arrays", None, False, True, False,
                 "your own arrays: a folder with train.npz, val.npz, test.npz"),
    DatasetEntry("folder", "folders", None, True, True, True,
                 "your own images: a folder with images/ and masks/ (NAME_0.png, NAME_1.png, "
                 "..., or RATER/NAME.png, or NAME.png, per image NAME.png; see docs/data.md)"),
    DatasetEntry("volumes", "volumes", None, True, True, True,
                 "your own scans: a folder with images/ and masks/ (NIfTI files or DICOM "
                 "series folders; NAME_0.nii.gz, ... per volume NAME; sliced; see "
                 "docs/data.md)"),
)}
DATASET_NAMES = tuple(DATASETS)
SYNTHETIC_DATASETS = tuple(n for n, e in DATASETS.items() if not e.needs_data_dir)
# Those whose images keep the size they were saved with (`image_size` is refused).
OWN_SIZE_DATASETS = tuple(n for n, e in DATASETS.items() if e.image_size is None)
MANIFEST_DATASETS = tuple(n for n, e in DATASETS.items() if e.manifests)
# How `tfprobunet data manifest --split` splits: "seed", the library's own split by a seed (or
# the split the data comes with); "mose", MoSE's published split of lidc-pickle
# (`tfprobunet.data.manifests.mose_split`).
MANIFEST_SPLITS = ("seed", "mose")


def dataset_entry(name):
    """The `DatasetEntry` of the dataset `name`; `ValueError` naming them all if unknown."""
    if name not in DATASETS:
        raise ValueError(f"`dataset` must be one of {', '.join(DATASET_NAMES)}. Received: "
                         f"{name!r}")
    return DATASETS[name]


MetricEntry = collections.namedtuple("MetricEntry", "name label higher_is_better")
MetricEntry.__doc__ = """One metric of the evaluation report.

Fields:
    name: its key in `report.json` and in `compare`'s results.
    label: a table's heading.
    higher_is_better: its direction (GED and ECE: lower is better).
"""

METRICS = {e.name: e for e in (
    MetricEntry("ged", "D²_GED", False),
    MetricEntry("hm_iou", "HM-IoU", True),
    MetricEntry("ncc", "S_NCC", True),
    MetricEntry("ece", "ECE", False),
    MetricEntry("sample_diversity", "diversity", True),
)}

# The evaluation protocols (`tfprobunet.protocols.PROTOCOLS` defines each).
PROTOCOL_NAMES = ("kohl", "phiseg", "custom")
