"""The baselines of Kohl et al. 2018 (section 3, Fig. 2), to compare the Probabilistic U-Net with
on your own data. Each is a `tfprobunet.models.SegmentationSampler`: trained with `fit` under the
same strategies, saved as `.keras`, and sampled with `sample(images, m, seed)` -> logits
`(b, m, h, w, K)`, which `tfprobunet.evaluate` takes.

- `DropoutUNet`: dropout (p = 0.5) on the three inner-most encoder and decoder blocks, kept on
  while sampling (Fig. 2a).
- `UNetEnsemble`: M U-Nets initialised and trained independently (Fig. 2b).
- `MHeads`: M output heads on a shared U-Net, trained with the oracle set loss (Fig. 2c).
- `Image2ImageVAE`: a latent at the U-Net's input, a fixed N(0, I) prior, a posterior that sees
  only the segmentation (Fig. 2d).
"""

from tfprobunet.models import DropoutUNet, Image2ImageVAE, MHeads, UNetEnsemble

__all__ = ["DropoutUNet", "Image2ImageVAE", "MHeads", "UNetEnsemble"]
