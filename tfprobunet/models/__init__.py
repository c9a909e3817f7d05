"""The models, one file each, all `SegmentationSampler`s (`base.py`): `sample(images, m, seed)`
gives logits `(b, m, h, w, K)`, which is all that `evaluate`, `fit`'s `val_ged` and the serving
export need of a model.

- `ProbabilisticUNet` (`probabilistic_unet.py`): the paper's model.
- Baselines of the paper's section 3: `DropoutUNet` (`dropout_unet.py`), `UNetEnsemble`
  (`ensemble.py`), `MHeads` (`m_heads.py`), `Image2ImageVAE` (`image2image_vae.py`).
- `HierarchicalProbabilisticUNet` (`hpunet.py`): the HPU-Net of Kohl et al. 2019.
- `StochasticSegmentationNetwork` (`ssn.py`): Monteiro et al. 2020, a low-rank normal over
  the logits.
- `presets.py`: the named training recipes (`PRESETS`, `preset`).

`MODELS` names them for `train(model=...)` and `tfprobunet compare --models ...`.

The model classes (and TensorFlow with them) are imported at their first use, so that the
command line can read `presets` without TensorFlow; `import tfprobunet` imports them all.
"""

import importlib

from tfprobunet.defaults import MODEL_NAMES
from tfprobunet.models.presets import PRESETS, preset  # noqa: F401  (TensorFlow-free)

# Each class, and the module that defines it, in the order of `MODEL_NAMES`.
_CLASSES = {"ProbabilisticUNet": "probabilistic_unet", "DropoutUNet": "dropout_unet",
            "UNetEnsemble": "ensemble", "MHeads": "m_heads", "Image2ImageVAE": "image2image_vae",
            "HierarchicalProbabilisticUNet": "hpunet", "StochasticSegmentationNetwork": "ssn"}


def _import_models():
    """Import every model module (registering their Keras classes) and bind the names."""
    classes = {name: getattr(importlib.import_module(f"{__name__}.{module}"), name)
               for name, module in _CLASSES.items()}
    base = importlib.import_module(f"{__name__}.base")
    globals().update(classes, SegmentationSampler=base.SegmentationSampler,
                     MODELS=dict(zip(MODEL_NAMES, classes.values())))


def __getattr__(name):
    if name in (*_CLASSES, "SegmentationSampler", "MODELS"):
        _import_models()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get(name):
    """The model class named `name` in `MODELS`."""
    if name not in MODEL_NAMES:
        raise ValueError(f"`model` must be one of {', '.join(MODEL_NAMES)}. Received: {name!r}")
    return (globals().get("MODELS") or __getattr__("MODELS"))[name]


__all__ = ["MODELS", "DropoutUNet", "HierarchicalProbabilisticUNet", "Image2ImageVAE", "MHeads",
           "ProbabilisticUNet", "SegmentationSampler", "StochasticSegmentationNetwork",
           "UNetEnsemble", "get"]
