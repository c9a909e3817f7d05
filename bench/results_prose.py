"""The sentences of a comparison's page (`docs/results/NAME/README.md`) that order or compare
models, written from the JSON beside it, so that a re-run cannot leave them false: each sits
between `<!-- prose: BLOCK -->` and `<!-- end prose -->` lines, and `bench/results_table.py
FOLDER --write` rewrites it with the table. `tests/test_results_prose.py` checks that every
block is what this module writes, and that every other sentence of the pages that orders
models or counts seeds is one of its registered claims, checked against the JSON.

Blocks (a page uses those that fit it; the text goes at the open marker's indentation):
    ged          the reference (the Probabilistic U-Net) against the paper's baselines at each
                 sample count above 1: on the mean and seed by seed
    wilcoxon     the Wilcoxon tests at the largest count against the baselines, and per seed
    successors   the models after the paper (HPU-Net, SSN): modes, GED, unbiased GED or empty
                 samples, against the reference and the baselines; the lowest model per count
    hpunet-unet  the HPU-Net's U-Net and latent levels here, against its reference's
    hpunet-before  the HPU-Net with a global latent against its runs on the recipe's U-Net
                 (`BEFORE`; nothing until the comparison's runs record another U-Net)
    latents      where each model's samples get their randomness, from the run records
"""

import inspect
import json
import os
import re
import textwrap

from tfprobunet import catalog
from tfprobunet.catalog import PAPER_MODELS, REFERENCE_MODEL as REFERENCE
from tfprobunet.models import hpunet, ssn

BLOCK = re.compile(r"^([ \t]*)<!-- prose: (\S+) -->\n(.*?)^[ \t]*<!-- end prose -->$",
                   re.MULTILINE | re.DOTALL)
WIDTH = 95  # the pages' line width
# How the sentences name the models (the table uses the catalog's labels).
NAMES = {"probunet": "the Probabilistic U-Net", "dropout": "the Dropout U-Net",
         "ensemble": "the ensemble", "mheads": "M-Heads", "i2ivae": "the Image2Image VAE",
         "hpunet": "the HPU-Net", "ssn": "the SSN"}
WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
SIGNIFICANT = 0.05  # a Wilcoxon test with p at or above this orders nothing
# An unbiased GED that moves by at most this from the fewest to the most samples is called flat
# (a calibrated sampler's expectation does not depend on the number of samples).
FLAT = 0.005
# The HPU-Net reference's LIDC setting: 128x128 images (its U-Net's defaults are
# `HierarchicalProbabilisticUNet`'s).
REFERENCE_IMAGE_SIZE = 128


def _word(n):
    return WORDS[n] if n < len(WORDS) else str(n)


def _name(model):
    return NAMES.get(model, catalog.model_label(model))


def _possessive(text):
    return text + ("'" if text.endswith("s") else "'s")


def _join(items):
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def on_seeds(k, n):
    """`on every seed`, `on no seed` or `on two seeds of three`."""
    if k == n:
        return "on every seed"
    return "on no seed" if k == 0 else f"on {_word(k)} seed{'s' * (k > 1)} of {_word(n)}"


def _samples(counts):
    return f"{_join(counts)} sample{'s' * (counts != ['1'])}"


def _p(p):
    return f"{p:.0e}"  # as the table prints it


def _values(values, digits=4):
    return ", ".join(f"{v:.{digits}f}" for v in values)


class Comparison:
    """A published comparison's JSON: `results.json`, `bench.json` and the run records."""

    def __init__(self, folder):
        self.folder = folder
        with open(os.path.join(folder, "results.json")) as f:
            self.results = json.load(f)
        with open(os.path.join(folder, "bench.json")) as f:
            self.bench = json.load(f)
        self.models = list(self.results["models"])
        self.counts = [str(k) for k in self.results["sample_counts"]]
        self.last = self.counts[-1]
        self.num_seeds = len(self.results["seeds"])
        self.baselines = [m for m in self.models if m in PAPER_MODELS and m != REFERENCE]
        self.successors = [m for m in self.models if m not in PAPER_MODELS]

    def spread(self, model, count, key="ged"):
        return self.results["models"][model][key][count]

    def lower_seeds(self, model, other, count, key="ged"):
        """On how many seeds `model`'s value is below `other`'s."""
        return sum(a < b for a, b in zip(self.spread(model, count, key)["seeds"],
                                          self.spread(other, count, key)["seeds"]))

    def run_record(self, model):
        path = os.path.join(self.folder, "runs", f"{model}-seed{self.results['seeds'][0]}",
                            "comparison_run.json")
        with open(path) as f:
            return json.load(f)


def _status(c, model, count):
    """`lower` / `higher`: the reference is below / above `model` on the mean and on every
    seed; otherwise `mixed`."""
    ref_lower = c.spread(REFERENCE, count)["mean"] < c.spread(model, count)["mean"]
    k = c.lower_seeds(REFERENCE, model, count)
    if ref_lower and k == c.num_seeds:
        return "lower"
    return "higher" if not ref_lower and c.lower_seeds(model, REFERENCE, count) == \
        c.num_seeds else "mixed"


def _mixed(c, model, count):
    """One count at which the mean and the seeds disagree, from `model`'s side."""
    mine, ref = c.spread(model, count), c.spread(REFERENCE, count)
    k = c.lower_seeds(model, REFERENCE, count)
    side = "lower" if mine["mean"] < ref["mean"] else "higher"
    seeds = (f"but {on_seeds(k, c.num_seeds)} only" if side == "lower" and k else
             f"but lower {on_seeds(k, c.num_seeds)}")
    return (f"at {count} samples {side} on the mean ({mine['mean']:.4f} against "
            f"{ref['mean']:.4f}) {seeds} (by seed {_values(mine['seeds'])} against "
            f"{_values(ref['seeds'])})")


def ged(c):
    counts = [k for k in c.counts if k != "1"]
    status = {m: {k: _status(c, m, k) for k in counts} for m in c.baselines}
    below = [m for m in c.baselines if set(status[m].values()) == {"lower"}]
    parts = []
    if below:
        who = "every baseline" if below == c.baselines else _join(map(_name, below))
        low = [v for m in below for v in c.spread(m, c.last)["seeds"]]
        ref = c.spread(REFERENCE, c.last)["seeds"]
        parts.append(f"{_name(REFERENCE)} is lower than {who}, on the mean and on every seed "
                     f"(at {c.last} samples {min(ref):.3f} to {max(ref):.3f} by seed, against "
                     f"{min(low):.3f} to {max(low):.3f})")
    for m in c.baselines:
        if m in below:
            continue
        by = {s: [k for k in counts if status[m][k] == s] for s in ("lower", "higher")}
        said = []
        if by["higher"]:
            said.append(f"lower at {_samples(by['higher'])}, on the mean and on every seed")
        if by["lower"]:
            said.append(f"higher at {_samples(by['lower'])}, on the mean and on every seed")
        said += [_mixed(c, m, k) for k in counts if status[m][k] == "mixed"]
        parts.append(f"{_name(m)} is " + ", and ".join(said))
    return f"- **GED at {_samples(counts)}: " + "; ".join(parts) + ".**"


def _tested(c, models):
    """`lower than A and B (p ...) and higher than C (p ...)` from the Wilcoxon tests."""
    tests = c.results[f"wilcoxon_{c.last}"]
    groups = {"lower than": [], "higher than": [], "not significantly different from": []}
    for m in models:
        test = tests[m]
        key = ("not significantly different from" if test["p"] >= SIGNIFICANT else
               "lower than" if test["reference_lower"] else "higher than")
        groups[key].append(m)
    said = []
    for key, group in groups.items():
        if not group:
            continue
        ps = [tests[m]["p"] for m in group]
        if len({_p(p) for p in ps}) == 1:
            p = f"p {_p(ps[0])}" + (" each" if len(ps) > 1 else "")
        elif len(ps) == 2:
            p = f"p {_p(ps[0])} and {_p(ps[1])}"
        else:
            hi = max(group, key=lambda m: tests[m]["p"])
            lo = min(group, key=lambda m: tests[m]["p"])
            p = (f"p from {_p(tests[hi]['p'])}, {_name(hi)}, to {_p(tests[lo]['p'])}, "
                 f"{_name(lo)}")
        who = ("every baseline" if group == c.baselines and len(group) > 2 else
               "both" if group == models and len(group) == 2 else _join(map(_name, group)))
        said.append(f"{key} {who} ({p})")
    return _join(said)


def _per_seed(c, models, count):
    """`lower than A's and B's on every seed, and higher than C's on every seed`."""
    groups = {}
    for m in models:
        groups.setdefault(c.lower_seeds(REFERENCE, m, count), []).append(m)
    said = []
    for k, group in sorted(groups.items(), reverse=True):
        who = ("every baseline's" if group == c.baselines and len(group) > 2 else
               _join(_possessive(_name(m)) for m in group))
        said.append(f"higher than {who} on every seed" if k == 0 else
                    f"lower than {who} {on_seeds(k, c.num_seeds)}")
    return ", and ".join(said)


def wilcoxon(c):
    return (f"Wilcoxon signed-rank tests at {c.last} samples (paired over the "
            f"{c.results['num_test_images']} test images, each image's GED averaged over the "
            f"{_word(c.num_seeds)} seeds; the p-values in the table) put {_name(REFERENCE)} "
            f"{_tested(c, c.baselines)}. Seed by seed, its GED({c.last}) is "
            f"{_per_seed(c, c.baselines, c.last)}.")


def _lowest(c):
    """`the ensemble at 1 sample, M-Heads at 4, 8 and 16 samples` (means)."""
    lowest = {}
    for k in c.counts:
        best = min(c.models, key=lambda m: c.spread(m, k)["mean"])
        lowest.setdefault(best, []).append(k)
    return _join(f"{_name(m)} at {_samples(k)}" for m, k in lowest.items())


def _subject(c):
    return "both" if len(c.successors) == 2 else f"all {_word(len(c.successors))}"


def _against_reference(c, count, key):
    """`both are higher than the reference's on the mean, and on every seed` (or each model's
    seeds, or one clause per model when their means fall on different sides)."""
    sides, seeds = {}, {}
    for m in c.successors:
        higher = c.spread(m, count, key)["mean"] > c.spread(REFERENCE, count, key)["mean"]
        sides[m] = "higher" if higher else "lower"
        k = c.lower_seeds(REFERENCE, m, count, key)
        seeds[m] = on_seeds(k if higher else c.num_seeds - k, c.num_seeds)
    ref = _possessive(_name(REFERENCE))
    if len(set(sides.values())) > 1:
        return "; ".join(f"{_possessive(_name(m))} is {sides[m]} than {ref} on the mean and "
                         f"{seeds[m]}" for m in c.successors)
    text = f"{_subject(c)} are {sides[c.successors[0]]} than {ref} on the mean"
    if len(set(seeds.values())) == 1:
        return f"{text} and {seeds[c.successors[0]]}"
    return f"{text}, " + _join(f"{_possessive(_name(m))} {seeds[m]}" for m in c.successors)


def _short(model):
    return _name(model).removeprefix("the ")


def _values_of(c, count, key, digits=3):
    return _join(f"{c.spread(m, count, key)['mean']:.{digits}f} ({_short(m)})"
                 for m in c.successors)


def successors(c):
    if not c.successors:
        return ""
    bullets = []
    ref = _name(REFERENCE)
    if "true_probabilities" in c.results:
        total = len(c.results["true_probabilities"])

        def found(m):
            seeds = [int(v) for v in c.results["models"][m]["modes_found"]["seeds"]]
            return (f"all {total} modes on every seed" if min(seeds) == total else
                    f"{min(seeds)} to {max(seeds)} of the {total} modes (by seed)")
        if len({found(m) for m in c.successors}) == 1:
            lead = f"{_subject(c)} find {found(c.successors[0])}"
        else:
            lead = _join(f"{_name(m)} finds {found(m)}" for m in c.successors)
        r = {m: c.results["models"][m]["pearson_r"]["mean"] for m in [REFERENCE, *c.successors]}
        sides = {"above" if r[m] > r[REFERENCE] else "below" for m in c.successors}
        side = sides.pop() if len(sides) == 1 else "against"
        bullets.append(
            f"**Mode frequencies: {lead}**, with a Pearson r of " +
            _join(f"{r[m]:.3f} ({_short(m)})" for m in c.successors) +
            f", {side} {_possessive(ref)} {r[REFERENCE]:.3f} (which finds {found(REFERENCE)}).")
    last = c.last
    text = (f"**GED({last}): {_against_reference(c, last, 'ged')}**: " +
            _values_of(c, last, "ged") +
            f" against {c.spread(REFERENCE, last)['mean']:.3f} (noise floor "
            f"{c.results['ged_noise_floor'][last]:.3f}). Against the baselines at {last} "
            "samples (means): ")
    groups = {}
    for m in c.successors:
        mean = c.spread(m, last)["mean"]
        below = tuple(b for b in c.baselines if mean < c.spread(b, last)["mean"])
        groups.setdefault(below, []).append(m)
    said = []
    for below, group in groups.items():
        above = [b for b in c.baselines if b not in below]
        who = ("both are" if group == c.successors and len(group) == 2 else
               _join(map(_name, group)) + (" are" if len(group) > 1 else " is"))
        parts = []
        if below:
            parts.append("lower than " + ("every baseline" if len(below) == len(c.baselines)
                                          else _join(map(_name, below))))
        if above:
            parts.append("higher than " + ("every baseline" if len(above) == len(c.baselines)
                                           else _join(map(_name, above))))
        said.append(f"{who} " + ", and ".join(parts))
    text += "; ".join(said) + (f". The Wilcoxon tests at {last} samples put {ref} "
                               f"{_tested(c, c.successors)}. Lowest mean GED of all "
                               f"{_word(len(c.models))} models: {_lowest(c)}.")
    bullets.append(text)
    if "true_probabilities" in c.results:
        counts = [k for k in c.counts if k != "1"]
        first = counts[0]

        def moves(m):
            means = [c.spread(m, k, "ged_unbiased")["mean"] for k in counts]
            return max(means) - min(means)
        flat = all(moves(m) <= FLAT for m in c.successors)
        lead = ("flat in the number of samples**, as a sampler's should be" if flat else
                "not flat in the number of samples**")
        bullets.append(
            f"**Unbiased GED: {lead}: " + _join(
                f"{c.spread(m, first, 'ged_unbiased')['mean']:.3f} to "
                f"{c.spread(m, last, 'ged_unbiased')['mean']:.3f} ({_short(m)})"
                for m in c.successors) +
            f" from {first} to {last} samples (means, moving by at most "
            f"{max(map(moves, c.successors)):.3f}), against {_possessive(ref)} "
            f"{c.spread(REFERENCE, first, 'ged_unbiased')['mean']:.3f} to "
            f"{c.spread(REFERENCE, last, 'ged_unbiased')['mean']:.3f}; at {last} samples "
            f"{_against_reference(c, last, 'ged_unbiased')}.")
    if "empty_fraction_graders" in c.results:
        graders = c.results["empty_fraction_graders"]
        empty = {m: c.results["models"][m]["empty_fraction_samples"]["mean"]
                 for m in [REFERENCE, *c.successors]}
        groups = {}
        for m in c.successors:
            key = ("fewer" if empty[m] < graders else "more",
                   "fewer" if empty[m] < empty[REFERENCE] else "more")
            groups.setdefault(key, []).append(m)
        said = []
        for (to_graders, to_ref), group in groups.items():
            who = ("both have" if group == c.successors and len(group) == 2 else
                   _join(map(_name, group)) + (" have" if len(group) > 1 else " has"))
            said.append(f"{who} {to_graders} than the graders' and " +
                        ("" if to_ref == to_graders else f"{to_ref} ") +
                        f"than {_possessive(ref)}")
        bullets.append(
            "**Empty samples**: " + _join(f"{100 * empty[m]:.0f} % ({_short(m)})"
                                          for m in c.successors) +
            f" of their samples are empty, against the graders' {100 * graders:.0f} % and "
            f"{_possessive(ref)} {100 * empty[REFERENCE]:.0f} %: " + "; ".join(said) + ".")
    return "\n".join("- " + b for b in bullets)


def _hpunet_channels(c):
    return c.bench.get("hpunet_num_channels") or c.run_record("hpunet")["num_channels"]


def hpunet_unet(c):
    if "hpunet" not in c.models:
        return ""
    size = c.bench["image_size"]
    channels = _hpunet_channels(c)
    others = c.run_record(REFERENCE)["num_channels"]
    sides = hpunet.latent_resolutions(channels, size)
    reference = inspect.signature(hpunet.HierarchicalProbabilisticUNet).parameters[
        "num_channels"].default
    ref_sides = hpunet.latent_resolutions(reference, REFERENCE_IMAGE_SIZE)
    how = ("the U-Net of every model here" if channels == others else
           f"the other models' {_join(map(str, others))} continued to a "
           f"{size // 2 ** (len(channels) - 1)}x{size // 2 ** (len(channels) - 1)} level")
    return (f"The HPU-Net's U-Net here has {_word(len(channels))} levels of "
            f"{_join(map(str, channels))} channels at {size}x{size} ({how}), so "
            f"{_word(len(sides))} latent level{'s' * (len(sides) > 1)} at "
            f"{_join(f'{s}x{s}' for s in sides)}; its reference's, at "
            f"{REFERENCE_IMAGE_SIZE}x{REFERENCE_IMAGE_SIZE}, has {_word(len(reference))} "
            f"levels and {_word(len(ref_sides))} latent levels at "
            f"{_join(f'{s}x{s}' for s in ref_sides)}.")


# The HPU-Net's runs of a comparison published before it had a global latent (its results.json
# entry then), beside the page: `hpunet_before` sets the runs with a global latent beside them.
BEFORE = "hpunet_recipe_levels.json"


def _sides(channels, size):
    return _join(f"{s}x{s}" for s in hpunet.latent_resolutions(channels, size))


def hpunet_before(c):
    """The HPU-Net with a global latent against its runs on the recipe's U-Net (`BEFORE`):
    GED at the largest count on the mean and seed by seed, and mode r and modes found (*flips*)
    or empty samples (binary tasks); nothing until the comparison's runs record a U-Net
    (`hpunet_num_channels`) other than those runs'."""
    path = os.path.join(c.folder, BEFORE)
    channels = c.bench.get("hpunet_num_channels")
    if "hpunet" not in c.models or not os.path.exists(path) or channels is None:
        return ""
    with open(path) as f:
        before = json.load(f)
    if channels == before["num_channels"]:
        return ""
    # The earlier runs on this comparison's seeds (it may have fewer).
    keep = [before["seeds"].index(s) for s in c.results["seeds"]]

    def spread(entry):
        values = [entry["seeds"][i] for i in keep]
        return {"mean": sum(values) / len(values), "seeds": values}

    new, k = c.results["models"]["hpunet"], c.last
    old = {key: spread(before["hpunet"][key][k] if key in ("ged",) else before["hpunet"][key])
           for key in ("ged", "pearson_r", "modes_found", "empty_fraction_samples")
           if key in before["hpunet"] and key in new}
    old["ged"] = {k: old["ged"]}
    size = before["image_size"]
    lower = sum(a < b for a, b in zip(new["ged"][k]["seeds"], old["ged"][k]["seeds"]))
    mean_lower = new["ged"][k]["mean"] < old["ged"][k]["mean"]
    mean_equal = new["ged"][k]["mean"] == old["ged"][k]["mean"]
    relation = "equal" if mean_equal else "lower" if mean_lower else "higher"
    said = [f"its GED({k}) is {new['ged'][k]['mean']:.3f} against {old['ged'][k]['mean']:.3f}, "
            + (f"{relation} (seed {c.results['seeds'][0]} alone)" if c.num_seeds == 1 else
               f"{relation} on the mean and lower {on_seeds(lower, c.num_seeds)}")]
    if "pearson_r" in new:
        said.append(f"mode r {new['pearson_r']['mean']:.2f} against "
                    f"{old['pearson_r']['mean']:.2f}, modes found "
                    f"{', '.join(str(int(v)) for v in new['modes_found']['seeds'])} against "
                    f"{', '.join(str(int(v)) for v in old['modes_found']['seeds'])}")
    if "empty_fraction_samples" in new:
        said.append(f"{100 * new['empty_fraction_samples']['mean']:.0f} % of its samples are "
                    f"empty against {100 * old['empty_fraction_samples']['mean']:.0f} % (the "
                    f"graders' {100 * c.results['empty_fraction_graders']:.0f} %)")
    return (f"**The global latent.** With latents at {_sides(channels, size)}, against its runs "
            f"on the recipe's {_word(len(before['num_channels']))} levels (latents at "
            f"{_sides(before['num_channels'], size)}; published before, their results in "
            f"[{BEFORE}]({BEFORE})): " + "; ".join(said) + ". " + _ranking(c, old["ged"][k]))


ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth",
            "ninth", "tenth")


def _ranking(c, before):
    """Whether the HPU-Net's place by mean GED at the largest count, among the page's models
    and against the reference, is what it was with its earlier runs (`before`, their spread)."""
    k = c.last
    means = {m: c.spread(m, k)["mean"] for m in c.models}

    def place(value):
        return 1 + sum(v < value for m, v in means.items() if m != "hpunet")

    now, then = place(means["hpunet"]), place(before["mean"])
    reference = means[REFERENCE]
    side_now = "lower" if means["hpunet"] < reference else "higher"
    side_then = "lower" if before["mean"] < reference else "higher"
    where = (f"its place by mean GED({k}) among the {_word(len(means))} models is "
             f"{ORDINALS[now - 1]}" + (", as before" if now == then else
                                       f", where it was {ORDINALS[then - 1]}"))
    against = (f"{side_now} than {_name(REFERENCE)}'s"
               + (", as before" if side_now == side_then else f", where it was {side_then}"))
    changed = now != then or side_now != side_then
    return (f"The global latent {'changes' if changed else 'does not change'} its ranking: "
            f"{where}, and {against}.")


def _latent(model, record, image_size):
    """Where `model`'s samples get their randomness, from its run's record (`record`: the
    settings it was trained with; a setting it does not record is the model's default)."""
    if model == "hpunet":
        sides = hpunet.latent_resolutions(record["num_channels"], image_size)
        return (f"latents of one channel per pixel at {_sides(record['num_channels'], image_size)}"
                f" ({'a global latent' if sides[0] == 1 else 'none of them global'})")
    if model in ("probunet", "i2ivae"):
        return f"one global latent of {record['latent_dim']} dimensions (1x1)"
    if model == "ssn":
        rank = record.get("rank", inspect.signature(
            ssn.StochasticSegmentationNetwork).parameters["rank"].default)
        return (f"no latent: a normal over all the logits, its covariance of rank {rank} plus "
                "a diagonal")
    return {"dropout": "no latent: dropout masks", "ensemble": "no latent: its members",
            "mheads": "no latent: its heads"}.get(model, "not recorded")


def latents(c):
    return "\n".join(["Where each model's samples get their randomness (from each run's "
                      "`comparison_run.json`):"] +
                     [f"- {catalog.model_label(m)}: "
                      f"{_latent(m, c.run_record(m), c.bench['image_size'])}" for m in c.models])


GENERATORS = {"ged": ged, "wilcoxon": wilcoxon, "successors": successors,
              "hpunet-unet": hpunet_unet, "hpunet-before": hpunet_before, "latents": latents}
# A wrapped line must not begin with what would start a list, a quote, a heading or a table.
_MARKUP_START = re.compile(r"^([-+*>#|]|\d+[.)])(\s|$)")


def _wrap(text, indent):
    """`text` (paragraphs and `- ` items, one a line) wrapped to `WIDTH` at `indent`."""
    lines = []
    for line in text.split("\n"):
        item = line.startswith("- ")
        for width in range(WIDTH, WIDTH - 20, -1):
            wrapped = textwrap.wrap(line, width, initial_indent=indent,
                                    subsequent_indent=indent + "  " * item,
                                    break_on_hyphens=False, break_long_words=False)
            if not any(_MARKUP_START.match(w.strip()) for w in wrapped[1:]):
                break
        lines += wrapped
    return lines


def block(folder, name, indent=""):
    """The lines of block `name` of `folder`'s page, indented by `indent`."""
    if name not in GENERATORS:
        raise KeyError(f"unknown prose block {name!r}: known are {sorted(GENERATORS)}")
    text = GENERATORS[name](Comparison(folder))
    return _wrap(text, indent) if text else []


def write_blocks(text, folder):
    """`text` (a page) with every prose block rewritten from `folder`'s JSON."""
    def rewrite(match):
        indent, name = match.group(1), match.group(2)
        close = match.group(0).rstrip("\n").split("\n")[-1]
        return "\n".join([f"{indent}<!-- prose: {name} -->",
                          *block(folder, name, indent), close])
    return BLOCK.sub(rewrite, text)
