"""`lidc-phiseg`: the `data_lidc.hdf5` that PHiSeg's `data/lidc_data_loader.py`
(baumgach/PHiSeg-code) writes from the PyTorch port's pickle, split 64/16/20 % by CT series
(`series_uid`).

Its layout, read from that code (`prepare_data`): one group per split, `train`, `val` and
`test`, each with
- `images`: `(n, 128, 128)` float64, the pickle's image minus 0.5;
- `labels`: `(n, 128, 128, 4)` uint8, the 4 graders' masks on the last axis;
- `uids`: `(n,)` int64, Python's `hash()` of the series id (`series_uid`), which changes from
  one Python process to the next: series can be told apart within one file, but not matched
  across files nor to the pickle.

Its split comes from `sklearn`'s `train_test_split` without a `random_state`: only those who
share the file share the split, which is why this reader takes the file as it is, and
`split_manifest` writes it down (the uids of each group). With a manifest, `dataset` pools the
three groups and takes the series the manifest lists; `load` gives it as a `Source`, for
`tfprobunet.data.load("lidc-phiseg", ...)`. Needs h5py (`pip install "tfprobunet[data]"`;
Keras installs it too).
"""

import numpy as np
import tensorflow as tf

from tfprobunet.catalog import SPLITS
from tfprobunet.data import manifests
from tfprobunet.data.source import Source, check_split

# Each dataset of a split: its dtype kind ("f" float, "u"/"i" integer) and its shape's rank.
LAYOUT = {"images": ("f", 3), "labels": ("u", 4), "uids": ("iu", 1)}
NUM_GRADERS = 4


def _h5py():
    try:
        import h5py
    except ImportError as error:
        raise ImportError("Reading the PHiSeg hdf5 needs h5py: pip install "
                          "'tfprobunet[data]'") from error
    return h5py


def _checked(f, path, split):
    """`{key: h5py dataset}` of `split` in the open file `f`, checked against the layout."""
    check_split(split)
    if split not in f:
        raise ValueError(f"{path} has no group {split!r}: PHiSeg's data_lidc.hdf5 has "
                         f"{list(SPLITS)}. Found: {sorted(f)}")
    datasets = {}
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
        datasets[key] = dataset
    images, labels, uids = datasets["images"].shape, datasets["labels"].shape, \
        datasets["uids"].shape
    if labels[:3] != images or labels[3] != NUM_GRADERS or uids[0] != images[0]:
        raise ValueError(f"{path}: {split!r} holds images {images}, labels {labels} and uids "
                         f"{uids}; expected (n, h, w), (n, h, w, {NUM_GRADERS}) and (n,).")
    return datasets


def read(path, split, rows=None):
    """The arrays of `split` in the PHiSeg hdf5 at `path`, checked against the layout.

    Args:
        path: the hdf5 file.
        split: `"train"`, `"val"` or `"test"`, the group.
        rows: increasing indices of the examples to read; default all.

    Returns:
        `(images (n, h, w, 1) float32 in [0, 1], annotations (n, 4, h, w) int32,
        uids (n,) int64)`.

    Raises:
        ValueError: a missing group or dataset, or one of another dtype or shape, naming the
            file and the key.
    """
    with _h5py().File(path, "r") as f:
        datasets = _checked(f, path, split)
        if rows is None:
            arrays = {key: dataset[()] for key, dataset in datasets.items()}
        else:  # h5py reads a list of rows, but not an empty one
            rows = np.asarray(rows, np.int64)
            arrays = {key: dataset[rows] if len(rows) else
                      np.zeros((0, *dataset.shape[1:]), dataset.dtype)
                      for key, dataset in datasets.items()}
    images, labels, uids = arrays["images"], arrays["labels"], arrays["uids"]
    return ((images + 0.5).astype(np.float32)[..., None],
            labels.transpose(0, 3, 1, 2).astype(np.int32), uids.astype(np.int64))


def uids(path):
    """`{split: uids (n,) int64}` of every group of the PHiSeg hdf5 at `path`."""
    with _h5py().File(path, "r") as f:
        return {split: _checked(f, path, split)["uids"][()].astype(np.int64)
                for split in SPLITS}


def split_manifest(path):
    """The split manifest of the PHiSeg hdf5 at `path` (see `tfprobunet.data.manifests`): the
    uids (as decimal strings) of each group, `"seed": None`, and the file's sha256."""
    return manifests.found("lidc-phiseg", path,
                           {split: ids.astype(str) for split, ids in uids(path).items()})


def dataset(path, split="train", split_manifest=None):
    """`tf.data.Dataset` of `(image (h, w, 1) float32, annotations (4, h, w) int32)`: the group
    `split`, or with `split_manifest` (its JSON file, or the dict; refused unless made from
    this very file, its sha256), the examples of all groups whose uids it puts in `split`."""
    if split_manifest is None:
        images, annotations, _ = read(path, split)
    else:
        manifest = manifests.read(split_manifest, path, "lidc-phiseg")
        parts = [read(path, group, manifests.indices(manifest["splits"], ids.astype(str), split))
                 for group, ids in uids(path).items()]
        images, annotations = (np.concatenate([part[k] for part in parts]) for k in (0, 1))
        if not len(images):
            raise ValueError(f"The split manifest puts no uid of {path} in {split!r}.")
    return tf.data.Dataset.from_tensor_slices((images, annotations))


def load(data_dir, split, image_size=None, seed=0, split_manifest=None):
    """The dataset `"lidc-phiseg"`: `dataset(data_dir, split, split_manifest)` as a `Source`
    of 2 classes, annotations equally likely.

    Args:
        data_dir: PHiSeg's `data_lidc.hdf5`.
        split: `"train"`, `"val"` or `"test"`.
        image_size, seed: unused: the file holds 128x128 images, split.
        split_manifest: as in `dataset`.

    Returns:
        A `Source` of `(image (h, w, 1) float32 in [0, 1], annotations (4, h, w) int32)`.
    """
    return Source(dataset(data_dir, split, split_manifest), 2, None, None)
