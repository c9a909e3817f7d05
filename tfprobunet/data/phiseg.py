"""`lidc-phiseg`: the `data_lidc.hdf5` that PHiSeg's `data/lidc_data_loader.py`
(baumgach/PHiSeg-code) writes from the PyTorch port's pickle, split 64/16/20 % by patient.

Its layout, read from that code (`prepare_data`): one group per split, `train`, `val` and
`test`, each with
- `images`: `(n, 128, 128)` float64, the pickle's image minus 0.5;
- `labels`: `(n, 128, 128, 4)` uint8, the 4 graders' masks on the last axis;
- `uids`: `(n,)` int64, Python's `hash()` of the series (patient scan) id, so patients can be
  told apart within one file, but not matched across files.

Its split comes from `sklearn`'s `train_test_split` without a `random_state`: only those who
share the file share the split, which is why this reader takes the file as it is. Needs h5py
(`pip install "tfprobunet[data]"`; Keras installs it too).
"""

import numpy as np
import tensorflow as tf

SPLITS = ("train", "val", "test")
# Each dataset of a split: its dtype kind ("f" float, "u"/"i" integer) and its shape's rank.
LAYOUT = {"images": ("f", 3), "labels": ("u", 4), "uids": ("iu", 1)}
NUM_GRADERS = 4


def read(path, split):
    """The arrays of `split` in the PHiSeg hdf5 at `path`, checked against the layout.

    Returns:
        `(images (n, h, w, 1) float32 in [0, 1], annotations (n, 4, h, w) int32,
        uids (n,) int64)`.

    Raises:
        ValueError: a missing group or dataset, or one of another dtype or shape, naming the
            file and the key.
    """
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}. Received: {split!r}")
    try:
        import h5py
    except ImportError as error:
        raise ImportError("Reading the PHiSeg hdf5 needs h5py: pip install "
                          "'tfprobunet[data]'") from error
    with h5py.File(path, "r") as f:
        if split not in f:
            raise ValueError(f"{path} has no group {split!r}: PHiSeg's data_lidc.hdf5 has "
                             f"{list(SPLITS)}. Found: {sorted(f)}")
        arrays = {}
        for key, (kinds, rank) in LAYOUT.items():
            name = f"{split}/{key}"
            if key not in f[split]:
                raise ValueError(f"{path} has no dataset {name!r} (expected {sorted(LAYOUT)} in "
                                 "each split, as PHiSeg's lidc_data_loader writes them).")
            dataset = f[name]
            if dataset.dtype.kind not in kinds or dataset.ndim != rank:
                raise ValueError(f"{path}: {name!r} is {dataset.dtype} of shape "
                                 f"{dataset.shape}; PHiSeg writes a rank-{rank} array of "
                                 f"kind {kinds!r}.")
            arrays[key] = dataset[()]
    images, labels, uids = arrays["images"], arrays["labels"], arrays["uids"]
    if labels.shape[:3] != images.shape or labels.shape[3] != NUM_GRADERS or len(uids) != len(
            images):
        raise ValueError(f"{path}: {split!r} holds images {images.shape}, labels "
                         f"{labels.shape} and uids {uids.shape}; expected (n, h, w), "
                         f"(n, h, w, {NUM_GRADERS}) and (n,).")
    return ((images + 0.5).astype(np.float32)[..., None],
            labels.transpose(0, 3, 1, 2).astype(np.int32), uids.astype(np.int64))


def dataset(path, split="train"):
    """`tf.data.Dataset` of `(image (h, w, 1) float32, annotations (4, h, w) int32)`."""
    images, annotations, _ = read(path, split)
    return tf.data.Dataset.from_tensor_slices((images, annotations))
