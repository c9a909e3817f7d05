"""`Source`, what every loader returns, and its checks: the bottom of `tfprobunet.data`.

Every dataset module (`synthetic`, `lidc`, `phiseg`, `cityscapes`, `arrays`, `folders`) has one
`load(data_dir, split, image_size=None, seed=..., split_manifest=None, ...) -> Source`;
`tfprobunet.data.load(name, ...)` (`sources.py`) opens any of them by name through the catalog
(`tfprobunet.catalog.DATASETS`). This module imports no loader: the loaders import it.
"""

import collections

import numpy as np
import tensorflow as tf

from tfprobunet import catalog
from tfprobunet.data import checks

Source = collections.namedtuple("Source", "dataset num_classes annotation_weights classes")
Source.__doc__ = """A loaded dataset and what evaluating it needs.

Fields:
    dataset: `tf.data.Dataset` of `(image (h, w, c) float32, annotations (A, h, w) int32)`.
    num_classes: K.
    annotation_weights: `(A,)` probabilities of the annotations (the flip modes), or None when
        the annotations are equally likely (graders).
    classes: the classes the metrics score, or None for the default (class 1 for K = 2, all K).

Your own data trains and evaluates as a `Source`, e.g. *flips* with other flip probabilities:

```python
p = (0.5, 0.3, 0.1)
source = tfprobunet.data.Source(synthetic.flips(1000, 32, p), synthetic.flips_num_classes(p),
                                synthetic.flip_modes(p)[1], None)
tfprobunet.train("runs/mine", dataset=source, ...)
```
"""


def check_split(split):
    """Refuse a `split` that is not one of `catalog.SPLITS` ("train", "val", "test")."""
    if split not in catalog.SPLITS:
        raise ValueError(f"`split` must be one of {catalog.SPLITS}. Received: {split!r}")


def refuse_split_manifest(name, split_manifest, split_by):
    """Refuse a `split_manifest` for the dataset `name`, which has no patient ids and is split
    by `split_by` (e.g. "its folders"); do nothing when `split_manifest` is None."""
    if split_manifest is not None:
        raise ValueError(f"A split manifest fixes the split of "
                         f"{', '.join(catalog.MANIFEST_DATASETS)}; {name!r} is split by "
                         f"{split_by}. Received: split_manifest={split_manifest!r}")


def check_source(source):
    """Raise `ValueError` naming what is wrong if `source` cannot be trained or evaluated on:
    its element spec, `num_classes`, `annotation_weights`, and the labels of its first
    `checks.PEEK_EXAMPLES` examples (`checks.check_labels`: 0/255 masks are refused)."""
    if not isinstance(source.dataset, tf.data.Dataset):
        raise ValueError("`Source.dataset` must be a tf.data.Dataset. Received: "
                         f"{type(source.dataset).__name__}")
    spec = source.dataset.element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2 and spec[0].shape.rank == 3
            and spec[1].shape.rank == 3 and spec[0].dtype.is_floating
            and spec[1].dtype.is_integer):
        raise ValueError("The dataset must yield (image (h, w, c) float, annotations (A, h, w) "
                         f"int): every annotation of an image. Received element_spec {spec}.")
    if not isinstance(source.num_classes, (int, np.integer)) or source.num_classes < 2:
        raise ValueError(f"`num_classes` must be an integer >= 2. Received: "
                         f"{source.num_classes!r}")
    if source.annotation_weights is not None:
        weights = np.asarray(source.annotation_weights, np.float64)
        count = spec[1].shape[0]
        if weights.ndim != 1 or (count is not None and len(weights) != count):
            raise ValueError(f"`annotation_weights` must hold one probability per annotation "
                             f"({count}). Received shape {weights.shape}.")
        if not (np.all(weights >= 0) and weights.sum() > 0):
            raise ValueError("`annotation_weights` must be non-negative with a positive sum. "
                             f"Received: {weights.tolist()}")
    checks.check_dataset(source.dataset, source.num_classes, "The annotations of the dataset")
