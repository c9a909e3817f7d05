"""The table of a published comparison's page (`docs/results/NAME/README.md`), written from the
committed JSON beside it (so no number in it is typed by hand): `results.json` of
`tfprobunet compare` and `bench.json` of `bench/compare.py --publish`. `tests/test_docs.py`
checks every such table against its JSON, and that it is what this script writes.

    python bench/results_table.py docs/results/flips            # prints the table
    python bench/results_table.py docs/results/flips --write    # replaces it in the page

Columns: GED at each sample count (mean over seeds; at the largest count each seed's value
follows), the same for the unbiased GED (self-pairs left out, from 2 samples), and, where
they apply, the mode r and the modes found (*flips*), the Wilcoxon test of the Probabilistic
U-Net against each model at the largest count and the fraction of empty samples (binary
tasks). The line before the table names the JSON, as the test expects.

`--write` also rewrites the page's sentences that order or compare models, each between a
`<!-- prose: BLOCK -->` and an `<!-- end prose -->` line, from the same JSON
(`bench/results_prose.py`; `tests/test_results_prose.py` checks them and the others).
"""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tfprobunet import catalog  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import results_prose  # noqa: E402

FIXED_SET = "the 16 most probable modes as a fixed set"


def _seeds(values, digits):
    return ", ".join(f"{v:.{digits}f}" for v in values)


def _ged(entry, last):
    text = f"{entry['mean']:.3f}"
    return f"{text} ({_seeds(entry['seeds'], 3)})" if last else text


def table(folder):
    with open(os.path.join(folder, "results.json")) as f:
        results = json.load(f)
    with open(os.path.join(folder, "bench.json")) as f:
        bench = json.load(f)
    counts = [str(k) for k in results["sample_counts"]]
    last = counts[-1]
    seeds = ", ".join(str(s) for s in results["seeds"])
    tests = results.get(f"wilcoxon_{last}", {})
    modes = "true_probabilities" in results
    binary = "empty_fraction_graders" in results
    unbiased = [c for c in counts if c != "1"]
    header = ["model", *[f"GED({c})" for c in counts[:-1]], f"GED({last}) (seeds {seeds})",
              *[f"unbiased GED({c})" for c in unbiased[:-1]], f"unbiased GED({last}) (seeds)"]
    if modes:
        header += ["mode r (seeds)", "modes found (seeds)"]
    if tests:
        header.append(f"Wilcoxon p at {last}, Prob. U-Net")
    if binary:
        header.append(f"empty samples (graders: {100 * results['empty_fraction_graders']:.0f} %)")
    rows = []
    for name, entry in results["models"].items():
        label = entry.get("label") or catalog.model_label(name)
        if name == "ensemble" and bench.get("ensemble_members"):
            label += f" ({bench['ensemble_members']} members)"
        row = [label,
               *[_ged(entry["ged"][c], c == last) for c in counts],
               *[_ged(entry["ged_unbiased"][c], c == last) for c in unbiased]]
        if modes:
            row += [f"{entry['pearson_r']['mean']:.2f} ({_seeds(entry['pearson_r']['seeds'], 2)})",
                    ", ".join(str(int(v)) for v in entry["modes_found"]["seeds"])]
        if tests:
            test = tests.get(name)
            row.append("" if test is None else
                       f"{test['p']:.0e}, {'lower' if test['reference_lower'] else 'higher'}")
        if binary:
            row.append(f"{100 * entry['empty_fraction_samples']['mean']:.0f} %")
        rows.append(row)
    floor = ["noise floor", *[f"{results['ged_noise_floor'][c]:.3f}" for c in counts]]
    rows.append(floor + [""] * (len(header) - len(floor)))
    if "most_probable_modes_ged" in bench:
        fixed = [FIXED_SET, *[f"{bench['most_probable_modes_ged'][c]:.3f}" for c in counts],
                 *[f"{bench['most_probable_modes_ged_unbiased'][c]:.3f}" for c in unbiased]]
        rows.append(fixed + [""] * (len(header) - len(fixed)))
    lines = [f"<!-- results: {folder}/results.json -->",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


PAGE = "README.md"  # the page of a comparison, in its folder


def write(folder):
    """Replace the table that follows the folder's marker line in its page (the marker and
    the table's rows, up to the first line that is not a row) by `table(folder)`, and its
    prose blocks by `results_prose.write_blocks`."""
    page = os.path.join(folder, PAGE)
    with open(page) as f:
        lines = f.read().split("\n")
    marker = f"<!-- results: {folder}/results.json -->"
    start = lines.index(marker)
    end = start + 1
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    lines[start:end] = table(folder).split("\n")
    with open(page, "w") as f:
        f.write(results_prose.write_blocks("\n".join(lines), folder))
    return page


def _best(rows, key, higher):
    """The rows with the best value of `key` (ties all kept) and that value."""
    values = [row[key] for row in rows if key in row]
    best = max(values) if higher else min(values)
    return [row["method"] for row in rows if row.get(key) == best], best


def published(path):
    """The published numbers of `path` (`docs/results/lidc.json`) as the page's Markdown: per
    data block its title, the protocol that follows it, a table with each cell's source, the
    best value of each column (ties named) and the caveats. Nothing in it is typed twice."""
    with open(path) as f:
        numbers = json.load(f)
    columns, sources = numbers["columns"], numbers["sources"]
    lines = [f"<!-- published: {path} -->"]
    for block in numbers["blocks"]:
        keys = [k for k in columns if any(k in row for row in block["rows"])]
        lines += ["", f"**{block['title']}.** In this library: {block['protocol']}.", "",
                  "| method | " + " | ".join(columns[k] for k in keys) + " | source |",
                  "|" + "---|" * (len(keys) + 2)]
        for row in block["rows"]:
            cells = [f"{row[k]:.3f}" if k in row else "" for k in keys]
            lines.append(f"| {row['method']} | " + " | ".join(cells) +
                         f" | {sources[row['source']]['short']} |")
        best = []
        for key in keys:
            methods, value = _best(block["rows"], key, higher="↑" in columns[key])
            best.append(f"{columns[key][:-2]} {' and '.join(methods)} ({value:.3f})")
        lines += ["", "Best published value of each column in this block: " + "; ".join(best)
                  + "."]
        lines += [f"- {method}: {text}." for method, text in block["caveats"].items()]
    lines += ["", "Where the cells were read:"]
    lines += [f"- {source['short']}: {source['cite']}; {source['read']}."
              for source in sources.values()]
    lines.append("<!-- end published -->")
    return "\n".join(lines)


def write_published(path, page):
    """Replace the block between `<!-- published: path -->` and `<!-- end published -->` in
    `page` by `published(path)`."""
    with open(page) as f:
        text = f.read()
    start = text.index(f"<!-- published: {path} -->")
    end = text.index("<!-- end published -->", start) + len("<!-- end published -->")
    with open(page, "w") as f:
        f.write(text[:start] + published(path) + text[end:])
    return page


PUBLISHED = {"docs/results/lidc.json": "docs/results/lidc.md"}  # numbers -> their page


if __name__ == "__main__":
    folder = sys.argv[1].rstrip("/")
    if folder in PUBLISHED:
        if sys.argv[2:] == ["--write"]:
            print(f"wrote the numbers of {folder} into "
                  f"{write_published(folder, PUBLISHED[folder])}")
        else:
            print(published(folder))
    elif sys.argv[2:] == ["--write"]:
        print(f"wrote the table of {folder}/results.json into {write(folder)}")
    elif sys.argv[2:]:
        sys.exit("usage: python bench/results_table.py docs/results/NAME [--write]")
    else:
        print(table(folder))
