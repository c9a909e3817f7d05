"""`load(name, split)`: every dataset the library knows by name, as `(image, annotations)`."""

import collections

from tfprobunet.data import cityscapes, lidc, synthetic

DATASETS = ("flips", "graders", "lidc", "lidc-pickle", "cityscapes")
SYNTHETIC = ("flips", "graders")
SPLITS = ("train", "val", "test")
# The synthetic splits are drawn with these offsets added to the seed, so they never overlap.
SPLIT_SEEDS = {"train": 0, "val": 1_000_003, "test": 2_000_003}

Source = collections.namedtuple("Source", "dataset num_classes annotation_weights classes")
Source.__doc__ = """A loaded dataset and what evaluating it needs.

Fields:
    dataset: `tf.data.Dataset` of `(image (h, w, c) float32, annotations (A, h, w) int32)`.
    num_classes: K.
    annotation_weights: `(A,)` probabilities of the annotations (the flip modes), or None when
        the annotations are equally likely (graders).
    classes: the classes the metrics score, or None for the default (class 1 for K = 2, all K).
"""


def load(name, split="train", data_dir=None, image_size=None, num_examples=None, seed=0):
    """Load a dataset by name.

    Args:
        name: `"flips"` or `"graders"` (synthetic, see `tfprobunet.data.synthetic`), `"lidc"`
            (the PNG crops), `"lidc-pickle"` (the PyTorch port's pickle) or `"cityscapes"`.
        split: `"train"`, `"val"` or `"test"`.
        data_dir: where the real data lives (the crops folder, the pickle file or folder, the
            Cityscapes root); unused for the synthetic sets.
        image_size: height and width (an int, or `(h, w)` for Cityscapes). Default: 64 for the
            synthetic sets, 128 for LIDC, `(256, 512)` for Cityscapes.
        num_examples: the first n examples; default all (synthetic: 1000 for train, 100 else).
        seed: synthetic data and the LIDC pickle's split by series.

    Returns:
        A `Source`.
    """
    if name not in DATASETS:
        raise ValueError(f"`dataset` must be one of {DATASETS}. Received: {name!r}")
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}. Received: {split!r}")
    if name in SYNTHETIC:
        return _synthetic(name, split, image_size or 64, num_examples, seed)
    if data_dir is None:
        raise ValueError(f"Dataset {name!r} is read from files: pass `data_dir` (CLI: "
                         "--data-dir).")
    if name == "lidc":
        # As in the paper: random crops of the 180x180 tiles for training, center crops else.
        source = Source(lidc.crops(data_dir, split, image_size or 128,
                                   random_crop=split == "train", seed=seed), 2, None, None)
    elif name == "lidc-pickle":
        source = Source(lidc.pickle_dataset(data_dir, split, image_size, seed), 2, None, None)
    else:
        source = Source(cityscapes.dataset(data_dir, split, image_size or (256, 512)),
                        cityscapes.NUM_CLASSES, cityscapes.mode_probabilities(),
                        list(cityscapes.SCORED_CLASSES))
    if num_examples is not None:
        source = source._replace(dataset=source.dataset.take(num_examples))
    return source


def _synthetic(name, split, image_size, num_examples, seed):
    if num_examples is None:
        num_examples = 1000 if split == "train" else 100
    seed = seed + SPLIT_SEEDS[split]
    if name == "flips":
        _, probabilities = synthetic.flip_modes()
        num_classes = synthetic.flips_num_classes()
        # As the official Cityscapes evaluation: score the flippable classes and their twins.
        return Source(synthetic.flips(num_examples, image_size, seed=seed), num_classes,
                      probabilities, list(range(1, num_classes)))
    return Source(synthetic.graders(num_examples, image_size, seed=seed), 2, None, None)

