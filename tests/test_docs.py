"""Every published number equals its JSON: each table of README.md and docs/**/*.md (the
comparisons' pages, `docs/results/NAME/README.md`) that follows a `<!-- results: PATH -->` line
is read cell by cell against the committed `results.json` (and the `bench.json` beside it), to
the digits printed, and is exactly what `bench/results_table.py` writes; every committed
`results.json` under docs/ has such a table, on the page in its own folder."""

import glob
import json
import os
import re

import pytest

from fixtures import bench_module
from tfprobunet.plots import MODEL_LABELS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = re.compile(r"<!-- results: (\S+) -->")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e-?\d+)?")


def _tables():
    """`(document, json path, header, rows)` for every marked table."""
    documents = [os.path.join(ROOT, "README.md"),
                 *glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True)]
    for document in documents:
        with open(document) as f:
            lines = f.read().splitlines()
        for i, line in enumerate(lines):
            match = MARKER.search(line)
            if not match:
                continue
            table = []
            for row in lines[i + 1:]:
                if not row.startswith("|"):
                    break
                cells = row.strip("|").split("|")
                table.append([cell.strip().strip("*").strip() for cell in cells])
            yield os.path.relpath(document, ROOT), match.group(1), table[0], table[2:]


def _equal(cell, value, what):
    """The number printed in `cell` is `value` rounded to the digits printed."""
    numbers = NUMBER.findall(cell)
    assert numbers, f"{what}: no number in {cell!r}"
    printed = numbers[0]
    if "e" in printed:
        assert f"{value:.0e}".replace("e-0", "e-").replace("e+00", "e+0") == \
            printed.replace("e-0", "e-"), f"{what}: {cell!r} against {value!r}"
        return
    digits = len(printed.split(".")[1]) if "." in printed else 0
    assert float(printed) == pytest.approx(round(value, digits), abs=10 ** -(digits + 3)), \
        f"{what}: {cell!r} against {value!r}"


def _spread(cell, spread, what, scale=1.0):
    """`mean (seed, seed, ...)`, `seed, seed, ...` or `mean` against `{"mean", "seeds"}`."""
    numbers = NUMBER.findall(cell)
    seeds = [v * scale for v in spread["seeds"]]
    if len(numbers) == 1 and len(seeds) > 1:  # the mean alone (columns without "(seeds)")
        _equal(numbers[0], spread["mean"] * scale, what)
        return
    if len(numbers) == len(seeds) + 1:
        _equal(numbers[0], spread["mean"] * scale, what)
        numbers = numbers[1:]
    assert len(numbers) == len(seeds), f"{what}: {cell!r} has not one value per seed {seeds}"
    for number, value in zip(numbers, seeds):
        _equal(number, value, what)


def _check_model_cell(column, cell, name, results, what):
    entry = results["models"][name]
    ged = re.match(r"(unbiased )?GED\((\d+)\)", column)
    if ged:
        _spread(cell, entry["ged_unbiased" if ged.group(1) else "ged"][ged.group(2)], what)
    elif column.startswith("mode r"):
        _spread(cell, entry["pearson_r"], what)
    elif column.startswith("modes found"):
        _spread(cell, entry["modes_found"], what)
    elif column.startswith("Wilcoxon"):
        test = results[f"wilcoxon_{results['sample_counts'][-1]}"][name]
        _equal(cell, test["p"], what)
        assert cell.endswith("lower" if test["reference_lower"] else "higher"), what
    elif column.startswith("empty samples"):
        _equal(cell, 100 * entry["empty_fraction_samples"]["mean"], what)
    else:
        raise AssertionError(f"{what}: unknown column {column!r}")


TABLES = list(_tables())


def _results_table():
    return bench_module("results_table")


def test_every_committed_results_json_has_a_table_on_its_page():
    committed = {os.path.relpath(p, ROOT) for p in glob.glob(
        os.path.join(ROOT, "docs", "**", "results.json"), recursive=True)}
    assert committed, "no results.json under docs/"
    pages = {(document, path) for document, path, _, _ in TABLES}
    for path in committed:
        assert (os.path.join(os.path.dirname(path), "README.md"), path) in pages, path


@pytest.mark.parametrize("document,path", sorted({(d, p) for d, p, _, _ in TABLES}))
def test_the_table_is_what_results_table_writes(document, path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the script's marker names the folder as given, from the root
    with open(os.path.join(ROOT, document)) as f:
        text = f.read()
    expected = _results_table().table(os.path.dirname(path))
    assert expected in text, f"{document}: run python bench/results_table.py " \
                             f"{os.path.dirname(path)} --write"


@pytest.mark.parametrize("document,path,header,rows", TABLES,
                         ids=[f"{d}:{p}" for d, p, _, _ in TABLES])
def test_table_numbers_equal_the_json(document, path, header, rows):
    with open(os.path.join(ROOT, path)) as f:
        results = json.load(f)
    with open(os.path.join(os.path.dirname(os.path.join(ROOT, path)), "bench.json")) as f:
        bench = json.load(f)
    names = {label: name for name, label in MODEL_LABELS.items()}
    seen = set()
    for row in rows:
        label = re.sub(r" \(.*\)$", "", row[0])
        for column, cell in zip(header[1:], row[1:]):
            what = f"{document}, {path}, {row[0]}, {column}"
            if not cell:
                continue
            if label in names:
                _check_model_cell(column, cell, names[label], results, what)
            elif label == "noise floor":
                _equal(cell, results["ged_noise_floor"][re.match(r"GED\((\d+)\)", column)
                                                        .group(1)], what)
            elif label.startswith("the 16 most probable modes"):
                ged = re.match(r"(unbiased )?GED\((\d+)\)", column)
                key = "most_probable_modes_ged" + ("_unbiased" if ged.group(1) else "")
                _equal(cell, bench[key][ged.group(2)], what)
            else:
                raise AssertionError(f"{what}: unknown row")
        seen.add(names.get(label))
    assert set(results["models"]) <= seen, f"{document}: models missing from the table of {path}"


def _numbers(value):
    """Every number in the JSON value `value`, nested."""
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def test_every_number_of_the_instruction_set_section_is_in_its_json():
    """docs/benchmarks.md's "The training step per instruction set" quotes its JSON: every
    decimal it prints (but PyTorch's version and the 1.3x target) is a number of a JSON the
    section links, at the precision printed, and each table row's ratio is its tfprobunet
    median over its PyTorch median as that row's JSON records them."""
    with open(os.path.join(ROOT, "docs", "benchmarks.md"), encoding="utf-8") as f:
        page = f.read()
    start = page.index("## The training step per instruction set")
    section = page[start:page.index("\n## ", start + 1)]
    linked = sorted(set(re.findall(r"\]\((results/speed/[\w.]+\.json)\)", section)))
    assert len(linked) >= 7, linked
    known = []
    for path in linked:
        with open(os.path.join(ROOT, "docs", path)) as f:
            known += _numbers(json.load(f))
    printed = re.findall(r"(?<![\w.])(\d+\.\d+)(?![\w.])", section)
    assert len(printed) > 30, printed
    for text in printed:
        if text in ("2.13", "1.3"):
            continue
        decimals = len(text.split(".")[1])
        assert any(round(n, decimals) == float(text) for n in known), text
    rows = [line.split("|")[1:-1] for line in section.split("<!-- isa-ratios -->")[1]
            .strip().splitlines()[2:] if line.startswith("|")]
    assert len(rows) == 3, rows
    for cells in rows:
        path = re.search(r"\((results/speed/[\w.]+\.json)\)", cells[-1]).group(1)
        with open(os.path.join(ROOT, "docs", path)) as f:
            result = json.load(f)
        rates = result["examples_per_s"]
        for cell, config in ((cells[3], "float32"), (cells[4], "torch")):
            median, worst, best = map(float, re.findall(r"\d+\.\d+|\d+", cell))
            assert (median, worst, best) == tuple(rates[config][k] for k in
                                                  ("median", "worst", "best")), (path, cell)
        assert float(cells[5]) == result["ratios"]["float32_over_torch"]["median"], path
        assert abs(float(cells[5]) - rates["float32"]["median"] / rates["torch"]["median"]) \
            < 0.01, path
