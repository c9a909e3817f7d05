"""The commands about data: `data manifest` (the split manifest of a dataset: which patients,
series or images are in each split)."""

import argparse
import json

from tfprobunet import catalog
from tfprobunet.cli import flags


def add_parsers(commands):
    """Add `data` (and its `manifest`) to the subparsers `commands`."""
    data = commands.add_parser("data", help="data tools: split manifests")
    tools = data.add_subparsers(dest="tool", required=True)
    manifest = tools.add_parser(
        "manifest", help="the split manifest of a dataset: which patients (series, images) are "
                         "in train, val and test, and the data's sha256 (JSON)")
    manifest.add_argument("--dataset", required=True, choices=catalog.MANIFEST_DATASETS)
    manifest.add_argument("--data-dir", required=True,
                          help="the data, as for train and evaluate (lidc-pickle: "
                               "data_lidc.pickle or a folder of *.pickle)")
    manifest.add_argument("--split", choices=catalog.MANIFEST_SPLITS, default="seed",
                          help="seed (default): the library's own split by --seed and "
                               "--fractions, or the split the data comes with; mose: MoSE's "
                               "published split of lidc-pickle (gaozhitong/MoSE-AUSeg: "
                               "sklearn's train_test_split of the sorted series uids, "
                               "test_size 0.2, random_state 0, for test, then again on the "
                               "rest for val; 64/16/20 %%), for --protocol phiseg")
    manifest.add_argument("--seed", type=flags.SEED, default=0,
                          help="shuffles the ids of the datasets split by a seed (lidc-pickle, "
                               "folder without split subfolders); the others come split "
                               "(lidc, lidc-phiseg, folder with subfolders): their manifest is "
                               "the split found")
    manifest.add_argument("--fractions", type=_fractions, default=None, metavar="TRAIN,VAL,TEST",
                          help="shares of the ids when split by a seed (default: lidc-pickle "
                               "0.64,0.16,0.2, PHiSeg's; folder 0.8,0.1,0.1)")
    manifest.add_argument("--out", metavar="FILE",
                          help="write the manifest there (default: print it)")
    manifest.set_defaults(run=_manifest)


def _fractions(text):
    values = [float(v) for v in text.split(",") if v]
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected TRAIN,VAL,TEST shares, got {text!r}")
    return tuple(values)


def _manifest(args):
    from tfprobunet import _io
    from tfprobunet.data import sources

    manifest = sources.make_manifest(args.dataset, args.data_dir, args.seed, args.fractions,
                                     split=args.split)
    if args.out is None:
        print(json.dumps(manifest, indent=2))
        return
    _io.write_json(args.out, manifest)
    counts = ", ".join(f"{len(v)} {k}" for k, v in manifest["splits"].items())
    how = ("as found" if manifest["seed"] is None else
           f"MoSE's split, random_state {manifest['seed']}" if manifest.get("split") == "mose"
           else f"seed {manifest['seed']}")
    print(f"wrote {args.out}: {counts} ids ({how})")
