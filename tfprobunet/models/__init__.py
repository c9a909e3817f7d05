"""The models, one file each, all `SegmentationSampler`s (`base.py`): `sample(images, m, seed)`
gives logits `(b, m, h, w, K)`, which is all that `evaluate`, `fit`'s `val_ged` and the serving
export need of a model.

- `ProbabilisticUNet` (`probabilistic_unet.py`): the paper's model.
- Baselines of the paper's section 3: `DropoutUNet` (`dropout_unet.py`), `UNetEnsemble`
  (`ensemble.py`), `MHeads` (`m_heads.py`), `Image2ImageVAE` (`image2image_vae.py`).
- `HierarchicalProbabilisticUNet` (`hpunet.py`): the HPU-Net of Kohl et al. 2019.
- `StochasticSegmentationNetwork` (`ssn.py`): Monteiro et al. 2020, a low-rank normal over
  the logits.
- `MixtureOfStochasticExperts` (`mose.py`): Gao et al. 2023, experts weighted by a gate,
  trained with an optimal-transport loss.
- `CategoricalDiffusionSegmenter` (`ccdm.py`): Zbinden et al. 2023, a categorical diffusion
  over label maps.
- `presets.py`: the named training recipes (`PRESETS`, `preset`).

`MODELS` maps each name of `tfprobunet.catalog` (`probunet`, `dropout`, ...) to its class, for
`train(model=...)` and `tfprobunet compare --models ...`; `register(name, cls)` adds a model of
your own (see docs/development.md), as does an installed package's `tfprobunet.models` entry
point.

The model classes (and TensorFlow with them) are imported at their first use, so that the
command line can read `presets` without TensorFlow; `import tfprobunet` imports them all.
"""

import importlib

from tfprobunet import catalog
from tfprobunet.models.presets import PRESETS, preset  # noqa: F401  (TensorFlow-free)

# The package's classes by their names, read from the catalog.
_CLASSES = {entry.class_name: entry.name for entry in catalog.BUILTIN_MODELS.values()}


def __getattr__(name):
    """PEP 562: the classes, `SegmentationSampler` and `MODELS` are imported when first used."""
    if name in _CLASSES or name == "SegmentationSampler":
        value = (catalog.model_class(_CLASSES[name]) if name in _CLASSES
                 else importlib.import_module(f"{__name__}.base").SegmentationSampler)
        globals()[name] = value
        return value
    if name == "MODELS":
        return {model: catalog.model_class(model) for model in catalog.model_names()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get(name):
    """The model class named `name` (a name of `tfprobunet.catalog.model_names()`)."""
    return catalog.model_class(name)


def register(name, cls, label=None):
    """Make the model class `cls` known as `name`, as the package's own are: `train(model=name)`,
    `tfprobunet train --model NAME`, `compare(models=[..., name])` and the evaluation then use
    it with the same protocols and metrics.

    Args:
        name: its name, e.g. `"toy"`: lower case letters, digits, `-` and `_`, not a name
            already taken.
        cls: a subclass of `SegmentationSampler` whose constructor takes the shared arguments
            (`num_classes`, `num_channels`, `seed`, ...; see `SegmentationSampler`). Register
            it with `keras.saving.register_keras_serializable` too, so that its `.keras` files
            load.
        label: what tables and figures call it (default: the class's `LABEL`, else its name).

    Returns:
        `cls`, so that `register` can decorate a class: `register("toy", Toy)`.

    A package can make its models known without code: declare them in the entry-point group
    `tfprobunet.models` (`name = "module:Class"`; see `tfprobunet.catalog`).
    """
    import re

    from tfprobunet.models.base import SegmentationSampler

    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
        raise ValueError("`name` must be lower case letters, digits, `-` and `_`, starting with "
                         f"a letter or digit, e.g. 'toy'. Received: {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, SegmentationSampler)):
        raise TypeError("`cls` must be a subclass of tfprobunet.models.SegmentationSampler "
                        f"(with `sample` and `_loss_terms`). Received: {cls!r}")
    catalog.add_model(catalog.class_entry(name, cls, label))
    return cls


__all__ = ["MODELS", "CategoricalDiffusionSegmenter", "DropoutUNet",
           "HierarchicalProbabilisticUNet", "Image2ImageVAE", "MHeads",
           "MixtureOfStochasticExperts", "ProbabilisticUNet",
           "SegmentationSampler", "StochasticSegmentationNetwork", "UNetEnsemble", "get",
           "register"]
