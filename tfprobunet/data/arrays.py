"""Your own data as numpy arrays: a folder with `train.npz`, `val.npz` and `test.npz`, read by
`tfprobunet.data.load("npz", split, data_dir=folder)` and `tfprobunet train|evaluate --dataset
npz --data-dir folder`.

Each file holds (`numpy.savez`):

- `images`: `(n, h, w, c)` float in [0, 1], or uint8 (divided by 255);
- `annotations`: `(n, A, h, w)` int, every annotation of each image (A graders, or A modes),
  labels in `[0, num_classes)` or 255 (ignored); `(n, h, w)` is read as A = 1. Binary masks
  saved as 0/255 are refused (255 is the ignore label): store `(masks > 127)` instead;
- optionally `num_classes` (a scalar; default: the largest label + 1), `annotation_weights`
  `(A,)` (the probabilities of the annotations when they are not equally likely, e.g. known
  modes, which `evaluate` then reports frequencies for) and `classes` (the classes the metrics
  score; default class 1 for two classes, all otherwise).

Files are read with `allow_pickle=False`: object arrays are refused.
"""

import os

import numpy as np
import tensorflow as tf

from tfprobunet.data import checks
from tfprobunet.losses import IGNORE_LABEL

KEYS = ("images", "annotations", "num_classes", "annotation_weights", "classes")


def npz_split(data_dir, split):
    """Read `data_dir/<split>.npz`.

    Returns:
        `(dataset, num_classes, annotation_weights, classes)`, the fields of a
        `tfprobunet.data.Source`; dataset yields `(image (h, w, c) float32, annotations
        (A, h, w) int32)`.
    """
    path = os.path.join(data_dir, f"{split}.npz")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No {split} split at {path}: the npz layout is one file per "
                                "split, train.npz, val.npz and test.npz, each with `images` "
                                "(n, h, w, c) and `annotations` (n, A, h, w).")
    try:
        with np.load(path, allow_pickle=False) as f:
            content = {k: f[k] for k in f.files}
    except ValueError as error:
        raise ValueError(f"{path} is not a plain npz of numeric arrays ({error}).") from None
    unknown = sorted(set(content) - set(KEYS))
    missing = [k for k in KEYS[:2] if k not in content]
    if missing or unknown:
        raise ValueError(f"{path} must hold `images` and `annotations` (and optionally "
                         f"num_classes, annotation_weights, classes). Missing: {missing}; "
                         f"unknown: {unknown}.")
    images, annotations = content["images"], content["annotations"]
    if annotations.ndim == 3:
        annotations = annotations[:, None]
    if images.ndim != 4 or annotations.ndim != 4 or len(images) != len(annotations) \
            or images.shape[1:3] != annotations.shape[2:]:
        raise ValueError(f"{path}: `images` must be (n, h, w, c) and `annotations` (n, A, h, w) "
                         f"with the same n, h and w. Received images {images.shape}, "
                         f"annotations {content['annotations'].shape}.")
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    if not np.issubdtype(images.dtype, np.floating) or not np.issubdtype(annotations.dtype,
                                                                         np.integer):
        raise ValueError(f"{path}: `images` must be float (or uint8) and `annotations` int. "
                         f"Received {images.dtype} and {annotations.dtype}.")
    labels = annotations[annotations != IGNORE_LABEL]
    if "num_classes" in content:
        num_classes = int(content["num_classes"])
    else:
        present = np.unique(labels)
        if len(present) == 2 and present[0] == 0 and present[1] > 1:
            raise ValueError(
                f"{path}: the annotations hold only the labels 0 and {present[1]}: binary masks "
                f"saved as 0/{present[1]}? Binarise them, e.g. `(masks > {present[1] // 2})"
                ".astype(np.uint8)`, or store `num_classes` in the file if the classes in "
                "between exist.")
        num_classes = max(2, int(present[-1]) + 1 if labels.size else 2)
    checks.check_labels(annotations, num_classes, f"The annotations of {path}")
    weights = content.get("annotation_weights")
    classes = content.get("classes")
    dataset = tf.data.Dataset.from_tensor_slices((images.astype(np.float32),
                                                  annotations.astype(np.int32)))
    return (dataset, num_classes, None if weights is None else weights.astype(np.float64),
            None if classes is None else [int(c) for c in np.ravel(classes)])
