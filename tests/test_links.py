"""Every relative link of README.md and docs/**/*.md points to a committed file or folder, and
every `#anchor` (on its own page or another) to a heading of that page, slugged as GitHub does."""

import glob
import os
import re
from urllib.parse import unquote

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENTS = sorted([os.path.join(ROOT, "README.md"),
                    *glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True)])
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^()\s]+)\)")


def _prose(text):
    """The text without fenced code blocks and inline code, where brackets are not links."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _slug(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped (hyphens kept), spaces to
    hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path):
    with open(path) as f:
        text = re.sub(r"^```.*?^```", "", f.read(), flags=re.S | re.M)
    seen = {}
    result = set()
    for heading in re.findall(r"^#{1,6} (.+?)\s*#*$", text, re.M):
        slug = _slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def links(path):
    with open(path) as f:
        return [target for target in LINK.findall(_prose(f.read()))
                if not re.match(r"^[a-z][a-z0-9+.-]*:", target)]  # not http:, mailto:, ...


def test_the_slugs_are_githubs():
    assert _slug("What calibrates at CPU budgets: the ablation") == \
        "what-calibrates-at-cpu-budgets-the-ablation"
    assert _slug("*graders*: binary masks, some of them empty") == \
        "graders-binary-masks-some-of-them-empty"
    assert _slug("Several devices: `--strategy mirrored`") == "several-devices---strategy-mirrored"


def test_links_are_found_outside_code_only():
    found = LINK.findall(_prose("[a](x.md) `[b](y.md)` ![c](z.png) [d](https://e)\n"
                                "```sh\n[f](g.md)\n```\n"))
    assert found == ["x.md", "z.png", "https://e"]


def test_the_pages_are_linked():
    """Every docs page is reachable: linked from the README or from another page."""
    linked = set()
    for document in DOCUMENTS:
        for target in links(document):
            path = target.split("#")[0]
            if path:
                linked.add(os.path.normpath(os.path.join(os.path.dirname(document), unquote(path))))
    assert [d for d in DOCUMENTS if d != os.path.join(ROOT, "README.md") and d not in linked] == []


@pytest.mark.parametrize("document", DOCUMENTS, ids=[os.path.relpath(d, ROOT) for d in DOCUMENTS])
def test_every_relative_link_points_to_a_file_and_heading(document):
    broken = []
    for target in links(document):
        path, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(document), unquote(path))) \
            if path else document
        if not resolved.startswith(ROOT + os.sep) or not os.path.exists(resolved):
            broken.append(f"{target}: no such file")
        elif anchor and not (resolved.endswith(".md") and anchor in anchors(resolved)):
            broken.append(f"{target}: no heading #{anchor} in {os.path.relpath(resolved, ROOT)}")
    assert broken == [], f"{os.path.relpath(document, ROOT)}: " + "; ".join(broken)
