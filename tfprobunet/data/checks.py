"""Checks of the label maps where they enter the library: the loaders, `Source`, the pipelines,
`fit`, `train` and `evaluate`.

Label 255 is the ignore label: its pixels count in neither the loss nor the metrics. A binary
mask saved as 0/255, as annotation tools and image libraries save them, therefore reads as "all
background, foreground ignored": training learns nothing while the metrics, which score only the
background, look excellent. `check_labels` refuses such masks, and labels outside
`[0, num_classes)` other than 255, with the conversion to use; and warns when most pixels are
ignored.
"""

import warnings

import numpy as np
import tensorflow as tf

from tfprobunet.catalog import IGNORE_LABEL

# Examples (or batches, in `fit`) read ahead of training to check their labels: what a user's
# mask set holds is seen in its first few dozen masks.
PEEK_EXAMPLES = 32
PEEK_BATCHES = 4
# Datasets this library has checked carry this attribute, so `fit` does not read them again.
_CHECKED = "_tfprobunet_labels_checked"
BINARIZE_HINT = ("binarise them, e.g. `masks = (masks > 127).astype(np.uint8)`, or pass "
                 "`binarize=True` to tfprobunet.data.from_folders")


def implied_num_classes(labels):
    """The number of classes the label maps `labels` (any shape, ints) imply when nothing says
    it: their largest label but the ignore label, plus one, and at least 2."""
    labels = np.asarray(labels)
    valid = labels[labels != IGNORE_LABEL]
    return max(2, int(valid.max()) + 1 if valid.size else 2)


def check_implied_classes(labels, num_classes, where="the masks"):
    """Refuse `num_classes` implied by `labels` (their largest label + 1) when most of those
    classes never appear and there are more than 8: grey levels read as labels (a 16-bit
    0/65535 mask, JPEG masks, {0, 128, 255}), which would build a model of hundreds of output
    channels. Naming `num_classes` explicitly is not checked. `labels`: an int array, or a
    list of them (the label volumes of a dataset)."""
    parts = [np.asarray(a) for a in (labels if isinstance(labels, list) else [labels])]
    if num_classes <= 8 or any(a.dtype.kind not in "iu" for a in parts):
        return
    counts = sum(np.bincount(a[a != IGNORE_LABEL].ravel().astype(np.int64),
                             minlength=num_classes) for a in parts)
    found = np.flatnonzero(counts)
    if 2 * len(found) < num_classes:
        shown = f"{found[:8].tolist()}{' ...' if len(found) > 8 else ''}"
        raise ValueError(
            f"{where} hold the labels {shown}: read as classes 0..{num_classes - 1}, "
            f"{num_classes - len(found)} of the {num_classes} classes never appear. Grey levels "
            "rather than classes (0/255 or 0/65535 masks, JPEG masks)? Read them as binary "
            "masks (binarize=True; command line: --labels binary). Else give the number of "
            "classes (num_classes=K, --num-classes K), or number the labels 0..n-1.")


def check_labels(labels, num_classes=None, where="the masks"):
    """Raise `ValueError` if `labels` cannot be trained on; warn if most of them are ignored.

    Refused, with the conversion in the message:

    - negative labels, and labels >= `num_classes` other than 255 (the ignore label);
    - masks whose only labels are 0 and one value >= `num_classes` (0/255 masks above all):
      every foreground pixel would be ignored or out of range.

    Args:
        labels: int array of any shape, e.g. `(n, A, h, w)` annotations.
        num_classes: K, or None when unknown (then only negative labels and 0/255 masks are
            refused).
        where: what the labels are, for the messages (e.g. a file name).
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        return
    upper = IGNORE_LABEL if num_classes is None else num_classes
    bad = (labels < 0) | ((labels >= upper) & (labels != IGNORE_LABEL))
    foreground = np.count_nonzero((labels > 0) & (labels < upper))
    if bad.any():
        values = np.unique(labels[bad])
        shown = f"{values[:8].tolist()}{' ...' if len(values) > 8 else ''}"
        if foreground == 0 and len(values) == 1 and values[0] > 0 and (labels == 0).any():
            raise ValueError(f"{where} hold only the labels 0 and {values[0]}: binary masks saved "
                             f"as 0/{values[0]}? Binarise them, e.g. `masks = (masks > "
                             f"{values[0] // 2}).astype(np.uint8)`.")
        bound = "" if num_classes is None else f" (num_classes={num_classes})"
        raise ValueError(f"{where} must hold labels in [0, {upper - 1}]{bound} or {IGNORE_LABEL} "
                         f"(ignore); they hold {shown}. Pass the right `num_classes` or map the "
                         "values to class indices.")
    ignored = np.count_nonzero(labels == IGNORE_LABEL)
    if ignored and foreground == 0:
        raise ValueError(
            f"{where} hold only the labels 0 and {IGNORE_LABEL}, and {IGNORE_LABEL} is the ignore "
            "label: every foreground pixel would be left out of the loss and the metrics, so "
            "nothing would be learned while the scores look excellent. These are binary masks "
            f"saved as 0/255: {BINARIZE_HINT}.")
    if ignored > labels.size // 2:
        warnings.warn(f"{where}: {ignored} of {labels.size} label pixels "
                      f"({ignored / labels.size:.0%}) are the ignore label {IGNORE_LABEL} and "
                      "count in neither the loss nor the metrics.", stacklevel=3)


def check_dataset(dataset, num_classes=None, where="the dataset", index=1,
                  count=PEEK_EXAMPLES):
    """`check_labels` on component `index` of the first `count` elements of a `tf.data.Dataset`
    (read eagerly, before any training), then mark the dataset as checked."""
    if is_checked(dataset) or not isinstance(dataset, tf.data.Dataset):
        return
    spec = dataset.element_spec
    if not isinstance(spec, (tuple, list)) or len(spec) <= index \
            or not spec[index].dtype.is_integer:
        return
    labels = [np.ravel(element[index]) for element in dataset.take(count).as_numpy_iterator()]
    if labels:
        check_labels(np.concatenate(labels), num_classes,
                     f"{where} (its first {len(labels)} elements)")
    mark_checked(dataset)


def is_checked(dataset):
    """Whether `dataset`'s labels were checked (`check_dataset`, `mark_checked`)."""
    return getattr(dataset, _CHECKED, False)


def mark_checked(dataset):
    """Record that `dataset`'s labels were checked (`check_dataset` and `fit` skip it)."""
    setattr(dataset, _CHECKED, True)
    return dataset
