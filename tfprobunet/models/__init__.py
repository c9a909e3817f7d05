"""The models, one file each, all `SegmentationSampler`s (`base.py`): `sample(images, m, seed)`
gives logits `(b, m, h, w, K)`, which is all that `evaluate`, `fit`'s `val_ged` and the serving
export need of a model.

- `ProbabilisticUNet` (`probabilistic_unet.py`): the paper's model.
- Baselines of the paper's section 3: `DropoutUNet` (`dropout_unet.py`), `UNetEnsemble`
  (`ensemble.py`), `MHeads` (`m_heads.py`), `Image2ImageVAE` (`image2image_vae.py`).

`MODELS` names them for `train(model=...)` and `tfprobunet compare --models ...`.
"""

from tfprobunet.defaults import MODEL_NAMES
from tfprobunet.models.base import SegmentationSampler
from tfprobunet.models.dropout_unet import DropoutUNet
from tfprobunet.models.ensemble import UNetEnsemble
from tfprobunet.models.image2image_vae import Image2ImageVAE
from tfprobunet.models.m_heads import MHeads
from tfprobunet.models.probabilistic_unet import ProbabilisticUNet

# The names `train(model=...)`, `compare` and the CLI know the models by.
MODELS = dict(zip(MODEL_NAMES, (ProbabilisticUNet, DropoutUNet, UNetEnsemble, MHeads,
                                Image2ImageVAE)))


def get(name):
    """The model class named `name` in `MODELS`."""
    if name not in MODELS:
        raise ValueError(f"`model` must be one of {', '.join(MODELS)}. Received: {name!r}")
    return MODELS[name]


__all__ = ["MODELS", "DropoutUNet", "Image2ImageVAE", "MHeads", "ProbabilisticUNet",
           "SegmentationSampler", "UNetEnsemble", "get"]
