"""Evaluation protocols: the split, the sample counts and the metric conventions of each
published line of work on LIDC, so that a number reads correctly beside its table.

Published LIDC tables disagree for the same method because they mix two splits and several
conventions (docs/results/lidc.md gives the numbers and their sources):

- `"kohl"`: the Probabilistic U-Net (Kohl et al. 2018) and the Hierarchical Probabilistic
  U-Net (Kohl et al. 2019): the released 180x180 crops and their published test split
  (`--dataset lidc`), GED with 16 samples, HM-IoU of 16 samples against the 4 graders tiled
  to 16 (as MoSE's and CAR's code read Kohl et al. 2019; DeepMind released no evaluation
  code).
- `"phiseg"`: PHiSeg (Baumgartner et al. 2019) and the works that take its data (SSN,
  Monteiro et al. 2020): the 128x128 pickle split 64/16/20 % by CT series (`series_uid`), GED
  and S_NCC with 100 samples, as the SSN fork's evaluation (`phiseg_full_evaluation.py`,
  `--num-samples 100`) and PHiSeg's plotting scripts (its `ged100` files) read them; PHiSeg's
  committed evaluation script draws 50 (`phiseg_test_quantitative.py`, `n_samples = 50`).
  `--dataset lidc-phiseg` reads PHiSeg's own hdf5 (split without a fixed seed); `lidc-pickle`
  needs a split manifest, such as MoSE's (PHiSeg's code with `random_state=0`: `tfprobunet
  data manifest --split mose`). On `lidc-pickle` without one it
  warns (`UnpublishedSplitWarning`): that split is the library's own, no paper's.
- `"custom"`: what the arguments of `evaluate` say, on any dataset.

Every protocol computes GED over all pairs, each map with itself included, and `d = 0` for two
empty masks, as PHiSeg's, SSN's, MoSE's and CAR's code do. A `Protocol` of your own states
other choices (e.g. D-Persona's `d = 1` for two empty masks).
"""

import collections
import warnings

import numpy as np

from tfprobunet import catalog

Protocol = collections.namedtuple(
    "Protocol", "name datasets split sample_counts headline self_pairs empty_pair hm_iou "
                "columns papers")
Protocol.__doc__ = """The split, sample counts and conventions of an evaluation.

Fields:
    name: how tables and reports call it.
    datasets: the dataset names it is defined on, or None for any.
    split: the split it evaluates, or None for the one asked for.
    sample_counts: the numbers of samples scored, or None for the ones asked for.
    headline: the sample count of the table's columns, or None for the largest.
    self_pairs: GED's expectations over all pairs with self-pairs (True) or without.
    empty_pair: `d` between two masks without any scored class (0.0: they agree).
    hm_iou: `metrics.matched_iou`'s form: `"tiled"` or `"one_per_annotation"`.
    columns: the report's metrics the table shows, of `COLUMNS`.
    papers: the works whose evaluation it follows (text): their split, sample counts and
        conventions, not their training.
"""

# Report key: (table heading, higher is better), the catalog's metrics.
COLUMNS = {name: (m.label, m.higher_is_better) for name, m in catalog.METRICS.items()}

PROTOCOLS = {
    "kohl": Protocol(
        "kohl", ("lidc",), "test", (1, 4, 8, 16), 16, True, 0.0, "tiled", ("ged", "hm_iou"),
        "Kohl et al. 2018 (Probabilistic U-Net), Kohl et al. 2019 (HPU-Net)"),
    "phiseg": Protocol(
        "phiseg", ("lidc-phiseg", "lidc-pickle"), "test", (1, 16, 100), 100, True, 0.0,
        "tiled", ("ged", "ncc"),
        "Baumgartner et al. 2019 (PHiSeg), Monteiro et al. 2020 (SSN)"),
    "custom": Protocol("custom", None, None, None, None, True, 0.0, "tiled",
                       ("ged", "hm_iou", "ncc", "ece"), "none: the conventions below"),
}
NAMES = tuple(PROTOCOLS)  # = catalog.PROTOCOL_NAMES (tests/test_catalog.py)
# The datasets on which a protocol scores a published split only with a split manifest: without
# one, the LIDC pickle is split by the library's own seed, which no paper used.
NEEDS_MANIFEST = {"phiseg": ("lidc-pickle",)}


class UnpublishedSplitWarning(UserWarning):
    """A published protocol scores a split that no paper used (the LIDC pickle without a split
    manifest): its numbers are not comparable with the protocol's published tables."""


def get(protocol):
    """`protocol` as a `Protocol`: a name of `PROTOCOLS`, or a `Protocol` of your own."""
    if isinstance(protocol, Protocol):
        return protocol
    if protocol not in PROTOCOLS:
        raise ValueError(f"`protocol` must be one of {NAMES} or a tfprobunet.protocols.Protocol. "
                         f"Received: {protocol!r}")
    return PROTOCOLS[protocol]


def resolve(protocol, dataset, split, sample_counts, default_counts):
    """The split and sample counts `protocol` evaluates `dataset` with; refuses a dataset, a
    split or sample counts that contradict a published protocol, saying what it needs."""
    if protocol.datasets is not None and dataset not in protocol.datasets:
        raise ValueError(
            f"The {protocol.name!r} protocol is defined on {' or '.join(protocol.datasets)} "
            f"({protocol.papers}). Received dataset {dataset!r}: evaluate with "
            "protocol='custom' (--protocol custom) to score other data.")
    if protocol.split is not None and split != protocol.split:
        raise ValueError(f"The {protocol.name!r} protocol evaluates the {protocol.split!r} "
                         f"split. Received split={split!r}.")
    counts = tuple(sorted(set(int(k) for k in sample_counts)))
    if protocol.sample_counts is not None:
        if counts not in (tuple(default_counts), tuple(protocol.sample_counts)):
            raise ValueError(
                f"The {protocol.name!r} protocol scores {list(protocol.sample_counts)} samples. "
                f"Received sample_counts={list(counts)}: leave them out, or use "
                "protocol='custom' (--protocol custom).")
        counts = tuple(protocol.sample_counts)
    if not counts or counts[0] < 1:
        raise ValueError(f"`sample_counts` must be integers >= 1. Received: {sample_counts}")
    if protocol.headline is not None and protocol.headline not in counts:
        raise ValueError(f"The protocol's headline sample count {protocol.headline} is not in "
                         f"its sample_counts {list(counts)}.")
    return split if protocol.split is None else protocol.split, counts


def warn_if_unpublished(protocol, dataset, data_dir=None, split_manifest=None):
    """Warn (`UnpublishedSplitWarning`, one line) when `protocol` would score `dataset` without
    the split manifest that makes its split a published one (`NEEDS_MANIFEST`), saying how to
    write MoSE's split of the pickle and use it."""
    if split_manifest is not None or dataset not in NEEDS_MANIFEST.get(protocol.name, ()):
        return
    warnings.warn(
        f"{dataset} without a split manifest is tfprobunet's own seeded split of its CT "
        f"series, which no paper used: the {protocol.name!r} protocol's numbers are not "
        "comparable with published tables. For MoSE's published split: `tfprobunet data "
        f"manifest --dataset {dataset} --split mose --data-dir {data_dir or 'DIR'} --out FILE`, "
        "then evaluate with --split-manifest FILE (Python: split_manifest=FILE).",
        UnpublishedSplitWarning, stacklevel=3)


def conventions(protocol, sample_counts):
    """The conventions used, as the report records them (a dict)."""
    headline = protocol.headline or max(sample_counts)
    return {"name": protocol.name, "papers": protocol.papers, "samples": headline,
            "self_pairs": protocol.self_pairs, "empty_pair": protocol.empty_pair,
            "hm_iou": protocol.hm_iou}


def describe(used):
    """One line saying which conventions were used (`conventions`' dict)."""
    pairs = ("all pairs, self-pairs included" if used["self_pairs"]
             else "pairs of two different maps")
    matching = {"tiled": "annotations tiled to the sample count, every sample matched",
                "one_per_annotation": "each annotation matched to one sample"}[used["hm_iou"]]
    return (f"protocol {used['name']}: {used['samples']} samples; GED over {pairs}; d = "
            f"{used['empty_pair']:g} for two empty masks; HM-IoU: {matching}")


def _cell(value):
    if value is None:
        return "n/a"
    mean, sem = value["mean"], value.get("sem", float("nan"))
    return f"{mean:.4f}" if np.isnan(sem) else f"{mean:.4f} ± {sem:.4f}"


def table(report, method="this model"):
    """The report as a Markdown table in the protocol's published layout: one row for the
    model (mean ± standard error over images), then the conventions used.

    Args:
        report: what `tfprobunet.evaluate` returns (with its `protocol` entry).
        method: the row's name.

    Returns:
        The table's lines (a list of str).
    """
    used = report["protocol"]
    protocol = get(used["name"]) if used["name"] in PROTOCOLS else None
    columns = protocol.columns if protocol is not None else ("ged", "hm_iou", "ncc", "ece")
    samples = str(used["samples"])
    headings = []
    for key in columns:
        name, higher = COLUMNS[key]
        count = f" ({samples})" if key in ("ged", "hm_iou", "ncc") else ""
        headings.append(f"{name}{count} {'↑' if higher else '↓'}")
    row = []
    for key in columns:
        value = report.get(key)
        if key == "ged":
            value = report["ged"].get(samples)
        elif isinstance(value, float):
            value = {"mean": value}
        row.append(_cell(value))
    count = report["num_images"]
    split = f"{report['dataset']} {report['split']} ({count} image{'' if count == 1 else 's'})"
    lines = [f"| Method | Split | {' | '.join(headings)} |",
             "|" + "---|" * (len(columns) + 2),
             f"| {method} | {split} | {' | '.join(row)} |",
             "", f"Conventions: {describe(used)}."]
    if report["dataset"] == "lidc":
        from tfprobunet.data.lidc import PUBLISHED_CROPS

        published = PUBLISHED_CROPS[report["split"]]
        lines.append(f"The published {report['split']} split of the crops has "
                     f"{published['images']} images of {published['patients']} patients.")
    return lines
