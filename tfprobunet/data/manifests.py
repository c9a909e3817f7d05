"""Split manifests: which patients (series) are in train, val and test, written down so that a
split can be named in a paper and shared ("split: tfprobunet manifest, seed S").

A manifest is JSON:

    {"dataset": "lidc-pickle", "seed": 0, "fractions": [0.64, 0.16, 0.2],
     "sha256": "<of the data file>", "splits": {"train": [...], "val": [...], "test": [...]}}

with the series ids of each split, sorted. Two users with the same file and seed get the same
manifest; a manifest is only used on the file whose sha256 it records. `tfprobunet data
manifest --dataset lidc-pickle --data-dir D [--seed S] [--out FILE]` writes one, and
`load(..., split_manifest=FILE)` uses one.
"""

import glob
import hashlib
import json
import os

import numpy as np

from tfprobunet.defaults import MANIFEST_DATASETS

SPLITS = ("train", "val", "test")
# The PHiSeg split's shares of the patients (Baumgartner et al. 2019: 60 % of 80 % and so on,
# 64/16/20), the default of the manifests made here.
FRACTIONS = (0.64, 0.16, 0.2)
# The datasets whose splits are drawn by a seed, and so have manifests.
DATASETS = MANIFEST_DATASETS


def data_files(path):
    """The files a manifest's sha256 covers: `path`, or the `*.pickle` files of a folder."""
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "*.pickle")))
        if not files:
            raise FileNotFoundError(f"No *.pickle file in {path}.")
        return files
    return [path]


def sha256(path):
    """The sha256 (hex) of the data at `path`: of the file, or of a folder's `*.pickle` files
    (each file's name and bytes, in sorted order)."""
    digest = hashlib.sha256()
    for file in data_files(path):
        if os.path.isdir(path):
            digest.update(os.path.basename(file).encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


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


def make(dataset, path, ids, seed=0, fractions=FRACTIONS):
    """The manifest of the data at `path` whose examples have the series `ids`."""
    return {"dataset": dataset, "seed": seed, "fractions": list(fractions),
            "sha256": sha256(path), "splits": split_ids(ids, seed, fractions)}


def read(manifest, path, dataset):
    """The manifest `manifest` (a dict, or a JSON file's path), checked against the data at
    `path` of `dataset`: its dataset, its keys, its sha256, and no id in two splits. Raises
    `ValueError` saying which and what to do."""
    where = manifest if isinstance(manifest, str) else "the split manifest"
    if isinstance(manifest, str):
        with open(manifest) as f:
            manifest = json.load(f)
    keys = {"dataset", "seed", "fractions", "sha256", "splits"}
    if not isinstance(manifest, dict) or not keys <= set(manifest) or not (
            isinstance(manifest["splits"], dict) and set(SPLITS) <= set(manifest["splits"])):
        raise ValueError(f"{where} is not a split manifest: expected a JSON object with "
                         f"{sorted(keys)} and splits {list(SPLITS)}.")
    if manifest["dataset"] != dataset:
        raise ValueError(f"{where} is a manifest of {manifest['dataset']!r}, not of "
                         f"{dataset!r}.")
    found = sha256(path)
    if manifest["sha256"] != found:
        raise ValueError(
            f"{where} was made for other data: its sha256 is {manifest['sha256']}, the data at "
            f"{path} hash to {found}. Use the data file it was made from, or make a manifest "
            "of this one (tfprobunet data manifest).")
    seen = {}
    for split in SPLITS:
        for id_ in manifest["splits"][split]:
            if id_ in seen:
                raise ValueError(f"{where}: {id_!r} is in both {seen[id_]} and {split}.")
            seen[id_] = split
    return manifest


def indices(splits, ids, split):
    """The indices of the examples (with series `ids`) that `splits` (a manifest's
    `{split: ids}`) puts in `split`; every id must be in one of them."""
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}. Received: {split!r}")
    ids = np.asarray(ids, str).tolist()
    unknown = sorted(set(ids) - {id_ for s in SPLITS for id_ in splits[s]})
    if unknown:
        raise ValueError(f"The split manifest does not place {len(unknown)} series of the data, "
                         f"e.g. {unknown[0]!r}: it was made for other data.")
    chosen = set(splits[split])
    return np.array([k for k, id_ in enumerate(ids) if id_ in chosen], np.int64)
