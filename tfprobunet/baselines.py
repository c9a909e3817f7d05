"""Deprecated: the baselines of Kohl et al. 2018 (section 3, Fig. 2) live in
`tfprobunet.models`, one file each, beside the Probabilistic U-Net. Their names stay importable
from here, with a `DeprecationWarning`.

- `DropoutUNet`: dropout (p = 0.5) on the three inner-most encoder and decoder blocks, kept on
  while sampling (Fig. 2a).
- `UNetEnsemble`: M U-Nets initialised and trained independently (Fig. 2b).
- `MHeads`: M output heads on a shared U-Net, trained with the oracle set loss (Fig. 2c).
- `Image2ImageVAE`: a latent at the U-Net's input, a fixed N(0, I) prior, a posterior that sees
  only the segmentation (Fig. 2d).
"""

import warnings

from tfprobunet.models import DropoutUNet, Image2ImageVAE, MHeads, UNetEnsemble

warnings.warn("tfprobunet.baselines is deprecated and will be removed in tfprobunet 0.3.0: import "
              "DropoutUNet, UNetEnsemble, MHeads and Image2ImageVAE from tfprobunet.models",
              DeprecationWarning, stacklevel=2)

__all__ = ["DropoutUNet", "Image2ImageVAE", "MHeads", "UNetEnsemble"]
