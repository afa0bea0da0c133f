"""The docs point at things that exist (issue 16: "a newcomer can find any method's code, test and numbers
from docs/architecture.md alone").

* docs/architecture.md, section "Where each method lives": every backticked path exists, every name given
  in parentheses after a ``.py`` path is defined at the top level of that file, and every method a user can
  name (``uqkit bench --methods``: :data:`uqkit.bench.registry.METHODS` and the UCI recipes of
  :data:`uqkit.bench.regression.REGRESSION_METHODS`) has its row; every module the data-flow picture at the
  top names exists.
* README.md and docs/*.md: every relative link (``[text](path)``, ``![alt](path)``) points at an existing
  file, and its ``#anchor``, if any, at a heading of that file (GitHub's heading ids).

Reading the files is all these tests do, apart from one import of :mod:`uqkit.bench` for its registries.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "docs" / "architecture.md"
INDEX_HEADING = "## Where each method lives"
INDEX_ANCHOR = "#where-each-method-lives"
CLASSIFICATION_TABLE = "**Benchmark methods, classification tasks**"
REGRESSION_TABLE = "**Benchmark methods, UCI regression tasks**"

_FENCE = re.compile(r"^ {0,3}```.*?^ {0,3}```", re.M | re.S)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", re.M)
_CODE = re.compile(r"`([^`\n]+)`")
_PATH = re.compile(r"[\w.\-]+(?:/[\w.\-]+)+/?|[\w.\-]+/")
_DEFINED_IN = re.compile(r"`([\w.\-/]+\.py)` \(([^()]*)\)")
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*:")


def github_slug(heading: str) -> str:
    """The id GitHub gives a Markdown heading: lower case, every character that is not a letter, digit,
    ``_``, ``-`` or space removed (backticks, ``*``, punctuation), each space made a ``-``."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@cache
def _file_heading_ids(path: Path) -> frozenset[str]:
    return frozenset(heading_ids(path.read_text(encoding="utf-8")))


def heading_ids(text: str) -> set[str]:
    """Every heading id of a Markdown text (outside fenced code), with GitHub's ``-1``, ``-2`` suffixes for
    repeated headings."""
    seen: dict[str, int] = {}
    ids = set()
    for match in _HEADING.finditer(_FENCE.sub("", text)):
        slug = github_slug(match.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        ids.add(slug if count == 0 else f"{slug}-{count}")
    return ids


def broken_links(markdown: Path) -> list[str]:
    """The relative links of ``markdown`` whose file, or whose ``#anchor`` in that file, does not exist
    (links inside code are not links)."""
    text = _INLINE_CODE.sub("", _FENCE.sub("", markdown.read_text(encoding="utf-8")))
    broken = []
    for match in _LINK.finditer(text):
        target = match.group(1)
        if _URL.match(target):
            continue
        path, _, anchor = target.partition("#")
        file = (markdown.parent / path).resolve() if path else markdown
        if not file.exists():
            broken.append(f"{markdown.relative_to(ROOT)}: {target} (no file {path})")
        elif anchor and file.suffix == ".md" and anchor not in _file_heading_ids(file):
            broken.append(
                f"{markdown.relative_to(ROOT)}: {target} (no heading #{anchor} in {path or 'itself'})"
            )
    return broken


def section(text: str, heading: str) -> str:
    """The lines of ``text`` from ``heading`` (a whole line) up to the next heading of level 1 or 2."""
    lines = text.splitlines()
    try:
        start = lines.index(heading)
    except ValueError:
        raise AssertionError(f"docs/architecture.md has no line {heading!r}") from None
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"#{1,2} ", lines[i])), len(lines))
    return "\n".join(lines[start:end])


def table_after(text: str, title: str) -> list[list[str]]:
    """The body rows of the first Markdown table after the line that starts with ``title``, as lists of
    cells."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rows = []
    for line in lines[start + 1 :]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if not all(re.fullmatch(r":?-+:?", cell) for cell in cells):
            rows.append(cells)
    return rows[1:]  # without the header


def backticked_paths(text: str) -> list[str]:
    """Backticked tokens of ``text`` that are repository paths (a ``/`` inside, no spaces)."""
    return [token for token in _CODE.findall(text) if _PATH.fullmatch(token)]


@cache
def _source(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def defines(path: Path, name: str) -> bool:
    """Whether the Python file ``path`` defines ``name`` at its top level: ``class name``, ``def name`` or
    ``name = ...`` / ``name: type = ...`` at the start of a line (a regular expression: parsing ~40 files
    with ``ast`` costs more than the rest of this file's tests)."""
    pattern = rf"^(?:(?:async\s+)?def|class)\s+{re.escape(name)}\b|^{re.escape(name)}\s*(?::[^=\n]*)?="
    return re.search(pattern, _source(path), re.M) is not None


def missing_definitions(text: str) -> list[str]:
    """``file.py (Name, ...)`` mentions of ``text`` whose file does not define ``Name`` at its top level
    (``Name.attribute`` and ``name(...)`` count as ``Name``)."""
    missing = []
    for match in _DEFINED_IN.finditer(text):
        path = ROOT / match.group(1)
        if not path.is_file():
            missing.append(f"{match.group(1)} (no such file)")
            continue
        for name in _CODE.findall(match.group(2)):
            head = re.split(r"[.(\[ ]", name, maxsplit=1)[0]
            if not defines(path, head):
                missing.append(f"{match.group(1)}: {name}")
    return missing


@pytest.fixture(scope="module")
def index() -> str:
    return section(ARCHITECTURE.read_text(encoding="utf-8"), INDEX_HEADING)


def test_the_index_is_linked_from_the_top_of_architecture_md():
    text = ARCHITECTURE.read_text(encoding="utf-8")
    top = text[: text.index("\n## ")]
    assert f"]({INDEX_ANCHOR})" in top
    assert INDEX_ANCHOR[1:] in heading_ids(text)


_FLOW_MODULE = re.compile(r"(?<![\w/<>.\-])(?:[a-z_]+/)*[\w*]+(?:\.[\w*]+)*\.(?:py|json)\b")


def data_flow_modules(text: str) -> list[str]:
    """The module files (``bench/trainer.py``, ``bench/methods_*.py``, ``prediction.py``; paths under
    ``uqkit/``) named in the first fenced block of ``text``, the data-flow picture; bare ``.json`` names
    are run files (``results.json``), not modules."""
    block = _FENCE.search(text).group(0)
    return [name for name in _FLOW_MODULE.findall(block) if name.endswith(".py") or "/" in name]


def test_every_module_of_the_data_flow_exists():
    modules = data_flow_modules(ARCHITECTURE.read_text(encoding="utf-8"))
    assert len(modules) > 20
    missing = [name for name in modules if not any((ROOT / "uqkit").glob(name))]
    assert not missing, f"docs/architecture.md's data flow names modules that do not exist: {missing}"


def test_every_path_in_the_index_exists(index):
    paths = backticked_paths(index)
    assert len(paths) > 100  # the parser found the table, not nothing
    missing = sorted({path for path in paths if not (ROOT / path).exists()})
    assert not missing, f"docs/architecture.md, {INDEX_HEADING[3:]}: no such path: {missing}"


def test_every_results_directory_in_the_index_is_a_directory(index):
    directories = [path for path in backticked_paths(index) if path.startswith("benchmarks/results/")]
    assert directories
    not_directories = [path for path in directories if path.endswith("/") and not (ROOT / path).is_dir()]
    assert not not_directories


def test_every_class_and_function_named_in_the_index_lives_in_its_file(index):
    assert len(_DEFINED_IN.findall(index)) > 40
    missing = missing_definitions(index)
    assert not missing, f"docs/architecture.md, {INDEX_HEADING[3:]}: not defined there: {missing}"


def test_every_method_a_user_can_name_has_a_row(index):
    import uqkit.bench  # noqa: F401  (registers every method)
    from uqkit.bench.registry import METHODS
    from uqkit.bench.regression import REGRESSION_METHODS

    for title, registered in ((CLASSIFICATION_TABLE, METHODS), (REGRESSION_TABLE, REGRESSION_METHODS)):
        rows = table_after(index, title)
        named = [_CODE.findall(row[0])[0] for row in rows]
        assert len(named) == len(set(named)), f"{title}: a method has two rows"
        assert set(named) == set(registered), (
            f"{title}: rows {sorted(named)}, registered {sorted(registered)}"
        )
        for row in rows:
            assert all(cell for cell in row), f"{title}: an empty cell in {row[0]}'s row"
            assert backticked_paths(row[3]), f"{title}: no test file for {row[0]}"
            assert all(path.startswith("tests/") for path in backticked_paths(row[3]))


@pytest.mark.parametrize(
    "markdown", [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))], ids=lambda path: path.name
)
def test_every_relative_link_resolves(markdown):
    assert not broken_links(markdown)


# The checkers themselves, on text made to fail them.


def test_github_slug_matches_anchors_github_gives():
    assert (
        github_slug("APD: `uqkit.APD(template, ...)`, `apd.fit(samples)`")
        == "apd-uqkitapdtemplate--apdfitsamples"
    )
    assert (
        github_slug("Opt-in: sampling and hyper-deep ensembles") == "opt-in-sampling-and-hyper-deep-ensembles"
    )
    assert github_slug("Regression: the UCI benchmark with the literature's splits") == (
        "regression-the-uci-benchmark-with-the-literatures-splits"
    )
    assert heading_ids("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}


def test_broken_links_finds_a_missing_file_and_a_missing_anchor(tmp_path, monkeypatch):
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    (tmp_path / "other.md").write_text("# Title\n\n## A section\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n[ok](other.md#a-section) [self](#page) [web](https://example.org/x.md)\n"
        "[gone](missing.md) [bad anchor](other.md#no-such-section) `[in code](missing2.md)`\n"
        "```\n[in a fence](missing3.md)\n```\n",
        encoding="utf-8",
    )
    found = broken_links(page)
    assert len(found) == 2
    assert "missing.md" in found[0] and "#no-such-section" in found[1]


def test_data_flow_modules_reads_module_paths_not_run_files():
    text = (
        "```\n bench/trainer.py, bench/methods_*.py (prediction.py); results.json, methods/<t>/<m>.json\n```"
    )
    assert data_flow_modules(text) == ["bench/trainer.py", "bench/methods_*.py", "prediction.py"]


def test_index_checkers_find_a_missing_path_and_a_missing_definition():
    text = (
        "| `x` | `uqkit/prediction.py` (`Prediction`, `NoSuchThing`) | `tests/test_prediction.py` |\n"
        "| `y` | `uqkit/no_such_module.py` (`Anything`) | `benchmarks/results/no-such-run/` |\n"
    )
    assert missing_definitions(text) == [
        "uqkit/prediction.py: NoSuchThing",
        "uqkit/no_such_module.py (no such file)",
    ]
    assert [path for path in backticked_paths(text) if not (ROOT / path).exists()] == [
        "uqkit/no_such_module.py",
        "benchmarks/results/no-such-run/",
    ]
