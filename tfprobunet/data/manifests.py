"""Split manifests: which patients (series, cases) are in train, val and test, written down so
that a split can be named in a paper and shared ("split: tfprobunet manifest, seed S").

A manifest is JSON:

    {"dataset": "lidc-pickle", "seed": 0, "fractions": [0.64, 0.16, 0.2],
     "sha256": "<of the data>", "splits": {"train": [...], "val": [...], "test": [...]}}

with the ids of each split, sorted: the series of `lidc-pickle`, the patient folders of `lidc`,
the uids (decimal) of `lidc-phiseg`, the image file names of `folder`. A split drawn by a seed
records its seed and shares; a split that comes with the data (the crops' folders, the hdf5's
groups, a folder's split subfolders) has `"seed": null` and the shares of ids found; MoSE's
published split of `lidc-pickle` (`mose_split`) has `"split": "mose"` and its `random_state`
as `"seed"`. Two users with the same data and seed get the same manifest; a manifest is only
used on the data whose sha256 it records (`sha256`). `tfprobunet data manifest --dataset NAME
--data-dir D [--seed S | --split mose] [--out FILE]` writes one, and `load(...,
split_manifest=FILE)` uses one: on data that comes split, the ids of all its splits are pooled
and each split takes those the manifest lists.
"""

import glob
import hashlib
import json
import math
import numbers
import os

import numpy as np

from tfprobunet.catalog import MANIFEST_DATASETS, MANIFEST_SPLITS, SPLITS

# The PHiSeg split's shares of the CT series (Baumgartner et al. 2019: 20 % test, then 20 % of
# the rest val: 64/16/20), the default of the manifests made here.
FRACTIONS = (0.64, 0.16, 0.2)
# The datasets with patient (series, case) ids, and so with manifests.
DATASETS = MANIFEST_DATASETS
# MoSE's split of the LIDC pickle (Gao et al. 2023, gaozhitong/MoSE-AUSeg,
# data/preprocess/lidc_data_loader.py: PHiSeg's preprocessing with a random_state added):
# sklearn's train_test_split of np.unique(series_uid) with this test_size and random_state
# gives test; the same call on the rest gives train and val. By CT series, 64/16/20 %.
MOSE_TEST_SIZE = 0.2
MOSE_RANDOM_STATE = 0


def data_files(path):
    """The files a manifest's sha256 covers: `path`, or the `*.pickle` files of a folder."""
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(glob.escape(path), "*.pickle")))
        if not files:
            raise FileNotFoundError(f"No *.pickle file in {path}.")
        return files
    return [path]


def sha256(path, files=None):
    """The sha256 (hex) of the data at `path`.

    Without `files`: of the file's bytes, or of a folder's `*.pickle` files (each file's name
    and bytes, in sorted order). With `files`, the data files of a folder dataset under `path`
    (the LIDC crops' PNGs, your image folders): of their sorted paths relative to `path` and
    their sizes in bytes, not of their bytes, since reading every byte of the ~45k PNGs of the
    LIDC crops on each load is too slow. A file added, removed, renamed or grown changes it; a
    file rewritten in place at the same size does not.
    """
    digest = hashlib.sha256()
    if files is not None:
        listing = sorted((os.path.relpath(f, path).replace(os.sep, "/"), os.path.getsize(f))
                         for f in files)
        for name, size in listing:
            digest.update(_name_bytes(f"{name}\0{size}\n"))
        return digest.hexdigest()
    for file in data_files(path):
        if os.path.isdir(path):
            digest.update(_name_bytes(os.path.basename(file)) + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _name_bytes(text):
    """`text` (file names) as UTF-8, a name that is not UTF-8 as its bytes on disk (Python keeps
    them as lone surrogates, `os.fsdecode`), so that such a name is hashed rather than refused."""
    return text.encode("utf-8", "surrogateescape")


def split_ids(ids, seed=0, fractions=FRACTIONS):
    """`{split: sorted ids}`: the unique `ids` shuffled with `seed` and cut by `fractions`
    (train, val, test shares, normalised), each id in exactly one split."""
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) <= 0:
        raise ValueError("`fractions` must be three non-negative shares (train, val, test). "
                         f"Received: {fractions}")
    unique = np.unique(np.asarray(ids, str))
    order = np.random.default_rng(seed).permutation(len(unique))
    bounds = np.round(np.cumsum((0.0,) + fractions) / sum(fractions) * len(unique)).astype(int)
    return {split: sorted(unique[order[bounds[i]:bounds[i + 1]]].tolist())
            for i, split in enumerate(SPLITS)}


def train_test_split(ids, test_size, random_state):
    """`(train, test)`: scikit-learn's `train_test_split(ids, test_size=test_size,
    random_state=random_state)` (a float `test_size`, no `train_size`, no `stratify`), in its
    order, without scikit-learn. As its `ShuffleSplit`: `n_test = ceil(test_size * n)`, the
    rest train; `permutation = np.random.RandomState(random_state).permutation(n)` (numpy keeps
    RandomState's stream fixed across versions); test `ids[permutation[:n_test]]`, train
    `ids[permutation[n_test:]]`. Raises `ValueError` where sklearn does: `test_size` outside
    (0, 1), or an empty train set."""
    ids = np.asarray(ids)
    if not 0 < test_size < 1:
        raise ValueError(f"`test_size` must be a share in (0, 1). Received: {test_size!r}")
    n_test = math.ceil(test_size * len(ids))
    n_train = len(ids) - n_test
    if n_train <= 0:
        raise ValueError(f"{len(ids)} ids split with test_size={test_size}: the train set would "
                         "be empty.")
    permutation = np.random.RandomState(random_state).permutation(len(ids))
    return ids[permutation[n_test:n_test + n_train]], ids[permutation[:n_test]]


def mose_split(ids):
    """`{split: sorted ids}`: MoSE's split of the unique `ids` (the LIDC pickle's series):
    `train_test_split` of the sorted unique ids with `MOSE_TEST_SIZE` and `MOSE_RANDOM_STATE`
    gives test, the same call on the rest gives train and val, as MoSE's
    `data/preprocess/lidc_data_loader.py` does with scikit-learn."""
    unique = np.unique(np.asarray(ids, str))
    rest, test = train_test_split(unique, MOSE_TEST_SIZE, MOSE_RANDOM_STATE)
    train, val = train_test_split(rest, MOSE_TEST_SIZE, MOSE_RANDOM_STATE)
    return {split: sorted(chosen.tolist()) for split, chosen in zip(SPLITS, (train, val, test))}


def check_split(split, dataset):
    """Refuse a `split` (how a manifest splits) that is not one of `MANIFEST_SPLITS`, or
    MoSE's split of a dataset other than `lidc-pickle`."""
    if split not in MANIFEST_SPLITS:
        raise ValueError(f"`split` must be one of {MANIFEST_SPLITS}. Received: {split!r}")
    if split == "mose" and dataset != "lidc-pickle":
        raise ValueError(f"MoSE's split is of lidc-pickle (the PyTorch port's pickle: its "
                         f"series uids). Received dataset {dataset!r}: make its manifest with "
                         "the default split, 'seed'.")


def make(dataset, path, ids, seed=0, fractions=FRACTIONS, files=None, split="seed"):
    """The manifest of the data at `path` (its `files`, see `sha256`) whose examples have the
    ids `ids`, split by `seed` and `fractions`, or with `split="mose"` by MoSE's split
    (`mose_split`, `lidc-pickle` only), which fixes both: `seed` must be its random_state
    (`MOSE_RANDOM_STATE`) and `fractions` its shares (`FRACTIONS`)."""
    check_split(split, dataset)
    if split == "seed":
        return {"dataset": dataset, "seed": seed, "fractions": list(fractions),
                "sha256": sha256(path, files), "splits": split_ids(ids, seed, fractions)}
    if seed != MOSE_RANDOM_STATE:
        raise ValueError(f"MoSE's split is sklearn's train_test_split with random_state "
                         f"{MOSE_RANDOM_STATE}. Received seed={seed}: leave the seed out.")
    if tuple(float(f) for f in fractions) != FRACTIONS:
        raise ValueError(f"MoSE's split takes test_size {MOSE_TEST_SIZE} twice ("
                         f"{', '.join(f'{f:g}' for f in FRACTIONS)} of the series). Received "
                         f"fractions={list(fractions)}: leave the fractions out.")
    return {"dataset": dataset, "split": "mose", "seed": MOSE_RANDOM_STATE,
            "fractions": list(FRACTIONS), "sha256": sha256(path, files),
            "splits": mose_split(ids)}


def found(dataset, path, ids, files=None):
    """The manifest of the split the data at `path` (its `files`, see `sha256`) comes with:
    `ids` is `{split: the ids of its examples}`; `"seed"` is None and `"fractions"` the shares
    of the ids found. Raises `ValueError` if an id is in two splits."""
    splits = {split: sorted(set(np.asarray(ids.get(split, ()), str).tolist()))
              for split in SPLITS}
    _check_disjoint(splits, f"The data at {path}")
    total = sum(len(v) for v in splits.values())
    return {"dataset": dataset, "seed": None,
            "fractions": [round(len(splits[s]) / max(total, 1), 4) for s in SPLITS],
            "sha256": sha256(path, files), "splits": splits}


def _check_disjoint(splits, where):
    seen = {}
    for split in SPLITS:
        for id_ in splits[split]:
            if id_ in seen:
                raise ValueError(f"{where}: {id_!r} is in both {seen[id_]} and {split}.")
            seen[id_] = split


def read(manifest, path, dataset, files=None):
    """The manifest `manifest` (a dict, or a JSON file's path), checked against the data at
    `path` (its `files`, see `sha256`) of `dataset`: its form (`check_form`), its dataset, its
    sha256, and no id in two splits. Raises `ValueError` naming the file and saying which and
    what to do."""
    where = os.fspath(manifest) if isinstance(manifest, (str, os.PathLike)) else \
        "the split manifest"
    if isinstance(manifest, (str, os.PathLike)):
        try:
            with open(manifest, encoding="utf-8") as f:
                manifest = json.load(f)
        except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError
            raise ValueError(f"{where} is not a split manifest: it is not JSON text "
                             f"({type(error).__name__}: {error}). Write one with tfprobunet "
                             "data manifest.") from None
    check_form(manifest, where)
    if manifest["dataset"] != dataset:
        raise ValueError(f"{where} is a manifest of {manifest['dataset']!r}, not of "
                         f"{dataset!r}.")
    digest = sha256(path, files)
    if manifest["sha256"] != digest:
        of = "the paths and sizes of its files" if files is not None else "its bytes"
        raise ValueError(
            f"{where} was made for other data: its sha256 {manifest['sha256']} does not match "
            f"{digest}, the sha256 of the data at {path} ({of}). Use the data it was made "
            "from, or make a manifest of this data (tfprobunet data manifest).")
    _check_disjoint(manifest["splits"], where)
    return manifest


# A manifest's keys and what each holds (`check_form`); others (MoSE's `"split"`) are allowed.
FORM = {"dataset": "a dataset's name (a string)", "seed": "an integer, or null",
        "fractions": "three shares (numbers)", "sha256": "a hex digest (a string)",
        "splits": f"an object of {list(SPLITS)}, each a list of ids (strings)"}


def check_form(manifest, where="the split manifest"):
    """Refuse a `manifest` (a dict, as read from JSON) whose keys or values are not those of a
    split manifest (`FORM`): a `ValueError` naming `where` (its file), the key and what it
    holds instead."""
    if not isinstance(manifest, dict):
        raise ValueError(f"{where} is not a split manifest: it holds a JSON "
                         f"{type(manifest).__name__}, not an object with the keys "
                         f"{list(FORM)}. Write one with tfprobunet data manifest.")
    missing = [key for key in FORM if key not in manifest]
    if missing:
        raise ValueError(f"{where} is not a split manifest: it has no {missing} (it has "
                         f"{sorted(manifest)[:8]}). Write one with tfprobunet data manifest.")
    splits, fractions = manifest["splits"], manifest["fractions"]
    valid = {
        "dataset": isinstance(manifest["dataset"], str),
        "seed": manifest["seed"] is None or (isinstance(manifest["seed"], numbers.Integral)
                                             and not isinstance(manifest["seed"], bool)),
        "fractions": isinstance(fractions, (list, tuple)) and len(fractions) == 3 and all(
            isinstance(f, numbers.Real) and not isinstance(f, bool) for f in fractions),
        "sha256": isinstance(manifest["sha256"], str),
        "splits": isinstance(splits, dict) and set(SPLITS) <= set(splits) and all(
            isinstance(splits[s], list) and all(isinstance(i, str) for i in splits[s])
            for s in SPLITS)}
    for key, fine in valid.items():
        if not fine:
            raise ValueError(f"{where} is not a split manifest: its {key!r} must be "
                             f"{FORM[key]}; it holds {json.dumps(manifest[key])[:80]}. "
                             "Write one with tfprobunet data manifest.")


def indices(splits, ids, split):
    """The indices of the examples (with ids `ids`) that `splits` (a manifest's `{split: ids}`)
    puts in `split`; every id must be in one of them."""
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}. Received: {split!r}")
    ids = np.asarray(ids, str).tolist()
    unknown = sorted(set(ids) - {id_ for s in SPLITS for id_ in splits[s]})
    if unknown:
        raise ValueError(f"The split manifest does not place {len(unknown)} ids of the data "
                         f"(patients, series or images), e.g. {unknown[0]!r}: it was made for "
                         "other data.")
    chosen = set(splits[split])
    return np.array([k for k, id_ in enumerate(ids) if id_ in chosen], np.int64)
