"""The baselines of Kohl et al. 2018 (section 3, Fig. 2), to compare the Probabilistic U-Net with
on your own data. Each is a `tfprobunet.models.SegmentationSampler`: trained with `fit` under the
same strategies, saved as `.keras`, and sampled with `sample(images, m, seed)` -> logits
`(b, m, h, w, K)`, which `tfprobunet.evaluate` takes.

- `DropoutUNet`: dropout (p = 0.5) on the three inner-most encoder and decoder blocks, kept on
  while sampling (Fig. 2a).
- `MHeads`: M output heads on a shared U-Net, trained with the oracle set loss (Fig. 2c).
"""

from tfprobunet.models.dropout_unet import DropoutUNet
from tfprobunet.models.m_heads import MHeads

__all__ = ["DropoutUNet", "MHeads"]
