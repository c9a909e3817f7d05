"""Every table of measurements in README.md and docs/**/*.md names the committed JSON it was
written from (issue 37): a table with a cell that holds a decimal number (`0.117`, `2.2`) or a
number with a unit (`24 s`, `39 %`, `2.2 GB`, `1.36x`, `7.6/s`) has, in the `ABOVE` lines above
it, a link or path to a `.json` (or JSON-lines `.jsonl`) file that exists in the repository
and that git does not ignore:
`JSON: [results/speed/pipeline.json](results/speed/pipeline.json)`, or the comparisons' marker
`<!-- results: docs/results/flips/results.json -->` (a path from the page's folder or from the
root). A table inside a block that a script writes, between `<!-- NAME: PATH.json -->` and
`<!-- end NAME -->` (`bench/results_table.py`'s `published` block), names that block's JSON.

A table of settings, defaults or versions, which measures nothing, says so on the line right above
it: `<!-- not measured: settings -->` (a reason after the colon). The exemption is in the page,
where its reader and reviewer see it; this file lists none. A marker that stands above no table
is an error, so none outlives its table.

Tables of integers alone (counts, `41 (17)`) are not caught: they carry no unit to tell a
measurement from a setting."""

import glob
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABOVE = 6  # the lines above a table where its JSON is named: its caption, or the sentence before
DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.])")
UNIT = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:\s?%|\s?(?:ms|s|sec|seconds?|min|minutes?|h|hours?"
                  r"|[KMGT]i?B|bytes)\b|x(?!\w)|\s?(?:examples)?/s\b)")
JSON_PATH = re.compile(r"[\w./-]*\w\.jsonl?\b")  # .jsonl: bench/ablation.py's --out
EXEMPT = re.compile(r"^\s*<!-- not measured: (\S.*?) -->\s*$")
BLOCK = re.compile(r"^\s*<!-- ([\w-]+): (\S+\.jsonl?) -->\s*$")
SEPARATOR = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")


def tables(lines):
    """`(first line index, table lines)` of every Markdown table outside fenced code."""
    fenced = False
    i = 0
    while i < len(lines):
        if lines[i].lstrip().startswith("```"):
            fenced = not fenced
        elif (not fenced and lines[i].lstrip().startswith("|") and i + 1 < len(lines)
              and SEPARATOR.match(lines[i + 1])):
            end = i + 2
            while end < len(lines) and lines[end].lstrip().startswith("|"):
                end += 1
            yield i, lines[i:end]
            i = end
            continue
        i += 1


def measured_cells(table):
    """The cells (header included) that hold a decimal number or a number with a unit."""
    cells = [cell.strip() for row in table[:1] + table[2:] for cell in row.strip().strip("|")
             .split("|")]
    return [cell for cell in cells if DECIMAL.search(cell) or UNIT.search(cell)]


def _ignored(path):
    """Whether git ignores `path` (a run's output under runs/, say): such a file is never
    committed. Outside a git checkout nothing is ignored."""
    try:
        result = subprocess.run(["git", "-C", ROOT, "check-ignore", "-q", path],
                                capture_output=True)
    except OSError:
        return False
    return result.returncode == 0


def committed_json(text, page_dir):
    """The `.json` paths named in `text` that exist in the repository (from the page's folder or
    from the root) and that git does not ignore."""
    found = []
    for name in JSON_PATH.findall(text):
        for base in (page_dir, ROOT):
            path = os.path.normpath(os.path.join(base, name))
            if (path.startswith(ROOT + os.sep) and os.path.isfile(path)
                    and not _ignored(path)):
                found.append(os.path.relpath(path, ROOT))
                break
    return found


def blocks(lines):
    """`(opening line index, closing line index, JSON path)` of every block between
    `<!-- NAME: PATH.json -->` and its `<!-- end NAME -->`."""
    found = []
    for i, line in enumerate(lines):
        match = BLOCK.match(line)
        if match:
            end = next((j for j in range(i + 1, len(lines))
                        if lines[j].strip() == f"<!-- end {match.group(1)} -->"), None)
            if end is not None:
                found.append((i, end, match.group(2)))
    return found


def untraced(lines, page_dir):
    """`(line number, measured cells)` of every table of measurements in `lines` that names no
    committed JSON above it and is not marked `not measured`."""
    problems = []
    for start, table in tables(lines):
        cells = measured_cells(table)
        if not cells:
            continue
        above = [line for line in lines[:start] if line.strip()]
        if above and EXEMPT.match(above[-1]):
            continue
        if committed_json("\n".join(lines[max(0, start - ABOVE):start]), page_dir):
            continue
        if any(first < start < last and committed_json(path, page_dir)
               for first, last, path in blocks(lines)):
            continue
        problems.append((start + 1, cells))
    return problems


def stray_markers(lines):
    """Line numbers of `not measured` markers whose next non-blank line starts no table."""
    starts = {start for start, _ in tables(lines)}
    stray = []
    for i, line in enumerate(lines):
        if EXEMPT.match(line):
            following = next((j for j in range(i + 1, len(lines)) if lines[j].strip()), None)
            if following not in starts:
                stray.append(i + 1)
    return stray


PAGES = sorted(os.path.relpath(p, ROOT) for p in [
    os.path.join(ROOT, "README.md"),
    *glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True)])


def _lines(page):
    with open(os.path.join(ROOT, page)) as f:
        return f.read().splitlines()


@pytest.mark.parametrize("page", PAGES)
def test_every_table_of_measurements_names_its_committed_json(page):
    problems = untraced(_lines(page), os.path.dirname(os.path.join(ROOT, page)))
    assert not problems, "\n".join(
        f"{page}:{line}: a table of measurements ({', '.join(repr(c[:60]) for c in cells[:3])}) "
        f"names no committed .json in the {ABOVE} lines above it: link the JSON it was written "
        f"from, or, if it measures nothing, mark it `<!-- not measured: settings -->` on the "
        f"line above" for line, cells in problems)


@pytest.mark.parametrize("page", PAGES)
def test_every_not_measured_marker_stands_above_a_table(page):
    assert not stray_markers(_lines(page)), f"{page}: lines {stray_markers(_lines(page))}"


PAGE = """Intro.

{above}
| recipe | GED(16) |
|---|---|
| cpu | {value} |
"""


@pytest.mark.parametrize("above,value,flagged", [
    ("Measured once.", "0.117", True),                          # a decimal, no JSON
    ("Measured once.", "27 %", True),                           # a number with a unit
    ("Measured once.", "1.36x", True),
    ("Measured once.", "24 s", True),
    ("Measured once.", "2.2 GB", True),
    ("Measured once.", "32", False),                            # integers alone pass
    ("Measured once.", "`--preset cpu`", False),                # words alone pass
    ("JSON: [pipeline.json](results/speed/pipeline.json)", "0.117", False),
    ("JSON in `docs/results/speed/pipeline.json`.", "0.117", False),  # a path from the root
    ("<!-- results: docs/results/flips/results.json -->", "0.117", False),
    ("JSON: [missing.json](results/speed/missing.json)", "0.117", True),  # not in the repo
    ("<!-- not measured: settings -->", "0.117", False),
    ("<!-- not measured: -->", "0.117", True),                  # an exemption needs its reason
])
def test_a_table_of_measurements_without_its_json_is_caught(above, value, flagged):
    lines = PAGE.format(above=above, value=value).splitlines()
    assert bool(untraced(lines, os.path.join(ROOT, "docs"))) == flagged


def test_a_json_that_git_ignores_is_never_committed():
    if subprocess.run(["git", "-C", ROOT, "rev-parse"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    assert _ignored(os.path.join(ROOT, "runs", "demo", "evaluation", "report.json"))
    assert not _ignored(os.path.join(ROOT, "docs", "results", "speed", "pipeline.json"))


def test_the_json_must_be_within_the_lines_above_the_table():
    table = ["| a | b |", "|---|---|", "| 1.5 s | 2 |"]
    json_line = "JSON: [pipeline.json](results/speed/pipeline.json)"
    far = [json_line, *["Another line."] * ABOVE, *table]
    near = [json_line, *["Another line."] * (ABOVE - 1), *table]
    assert untraced(far, os.path.join(ROOT, "docs")) == [(ABOVE + 2, ["1.5 s"])]
    assert not untraced(near, os.path.join(ROOT, "docs"))


def test_a_table_in_a_block_written_from_json_names_it():
    table = ["| a | b |", "|---|---|", "| 1.5 s | 2 |"]
    filler = ["Another line."] * ABOVE
    opened = "<!-- published: docs/results/speed/pipeline.json -->"
    assert not untraced([opened, *filler, *table, "<!-- end published -->"], ROOT)
    assert untraced([opened, *filler, *table], ROOT)  # a block without its end is none
    assert untraced([opened, "<!-- end published -->", *filler, *table], ROOT)  # after its end
    missing = "<!-- published: docs/results/missing.json -->"
    assert untraced([missing, *filler, *table, "<!-- end published -->"], ROOT)


def test_tables_in_code_blocks_are_not_tables():
    lines = ["```", "| a | b |", "|---|---|", "| 1.5 s | 2 |", "```"]
    assert not untraced(lines, ROOT)
    assert stray_markers(["<!-- not measured: settings -->", "", "Text."]) == [1]
    assert not stray_markers(["<!-- not measured: settings -->", "| a |", "|---|", "| 1.5 |"])
