"""The published LIDC numbers (docs/results/lidc.json) and their page (docs/results/lidc.md):
every cell has a source a reader can open, the page's block is what `bench/results_table.py`
writes from the JSON, and the page's "best published value" sentence names the best cell of
each column, worked out here from the JSON on its own."""

import json
import os
import re

import pytest

from fixtures import bench_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUMBERS = "docs/results/lidc.json"
PAGE = "docs/results/lidc.md"


def _results_table():
    return bench_module("results_table")


def _load():
    with open(os.path.join(ROOT, NUMBERS)) as f:
        return json.load(f)


def _block(text):
    start = text.index(f"<!-- published: {NUMBERS} -->")
    return text[start:text.index("<!-- end published -->", start) + len("<!-- end published -->")]


def test_every_cell_names_an_openable_source_and_is_a_fraction():
    numbers = _load()
    for block in numbers["blocks"]:
        for row in block["rows"]:
            source = numbers["sources"][row["source"]]
            assert source["cite"] and source["read"], row
            cells = {k: v for k, v in row.items() if k in numbers["columns"]}
            assert cells, f"{row['method']}: no number"
            for key, value in cells.items():
                # GED and HM-IoU lie in [0, 1]; ECE is in percent, MoSE's unit.
                assert 0.0 <= value <= (100.0 if key == "ece_percent" else 1.0), (row, key)
        for method in block["caveats"]:
            assert method in [row["method"] for row in block["rows"]], method


def test_the_page_holds_what_results_table_writes(monkeypatch):
    monkeypatch.chdir(ROOT)
    with open(os.path.join(ROOT, PAGE)) as f:
        text = f.read()
    assert _block(text) == _results_table().published(NUMBERS), \
        f"run python bench/results_table.py {NUMBERS} --write"


def _check_best(numbers, text):
    """For each block and column, the lowest GED or ECE, the highest HM-IoU, worked out from
    `numbers` here: the page's sentence must name that method (ties all) and value."""
    sentences = re.findall(r"Best published value of each column in this block: (.*)\.", text)
    assert len(sentences) == len(numbers["blocks"])
    for block, sentence in zip(numbers["blocks"], sentences):
        parts = sentence.split("; ")
        for key, heading in numbers["columns"].items():
            cells = [(row[key], row["method"]) for row in block["rows"] if key in row]
            if not cells:
                continue
            best = (max if key.startswith("hm_iou") else min)(v for v, _ in cells)
            winners = " and ".join(m for v, m in cells if v == best)
            expected = f"{heading[:-2]} {winners} ({best:.3f})"
            assert expected in parts, f"{block['key']}: {expected!r} not in {sentence!r}"


def test_best_value_sentences_name_the_best_cells():
    with open(os.path.join(ROOT, PAGE)) as f:
        _check_best(_load(), f.read())


def test_the_best_value_check_fails_on_a_false_sentence():
    """The check is not vacuous: with the two GED(16) cells of the released crops' block
    swapped in the JSON, the page's sentence no longer names the best method."""
    numbers = _load()
    rows = numbers["blocks"][1]["rows"]
    rows[0]["ged16"], rows[1]["ged16"] = rows[1]["ged16"], rows[0]["ged16"]
    with open(os.path.join(ROOT, PAGE)) as f:
        text = f.read()
    with pytest.raises(AssertionError, match="Probabilistic U-Net"):
        _check_best(numbers, text)
