"""The documentation: links resolve, commands exist, examples run, no pointer outside the repo.

The site itself is built by ``mkdocs build --strict`` in ``.ci/run``; these checks are fast and
need no mkdocs.
"""

from __future__ import annotations

import argparse
import doctest
import importlib
import re
from pathlib import Path

import pytest

from diffptycho.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
README = ROOT / "README.md"
MARKDOWN = [README, *PAGES]

# Spelled in pieces so that this file does not itself hold the strings it forbids.
FORBIDDEN = ("DESIGN" + ".md", ".." + "/shared")

FENCE = re.compile(r"^(```|~~~)([^\n]*)\n(.*?)^\1[ \t]*$", re.S | re.M)
INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.M)
# A command where a shell would see one: at the start of a line (or a code span), or after
# &&, ;, | or a $ prompt. Not "ruff check diffptycho tests", not "import diffptycho".
COMMAND = re.compile(
    r"(?:^[ \t]*|[&;|][ \t]*|\$[ \t]+)diffptycho[ \t]+([a-z][\w-]*)(?:[ \t]+(\S+))?", re.M
)


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code (links there are not links)."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def _code(text: str) -> list[str]:
    """Contents of fenced code blocks and inline code spans."""
    blocks = [m.group(3) for m in FENCE.finditer(text)]
    return blocks + [m.group(2) for m in INLINE_CODE.finditer(FENCE.sub("", text))]


def _slug(heading: str) -> str:
    """Python-Markdown's default toc slug of a heading (as mkdocs makes anchors)."""
    text = re.sub(r"<[^>]+>", "", heading)
    text = re.sub(r"[`*_]", "", text)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    anchors = set()
    for heading in re.findall(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", text, re.M):
        slug, n = _slug(heading), 1
        while slug in anchors:  # repeated headings get _1, _2, ...
            slug = f"{_slug(heading)}_{n}"
            n += 1
        anchors.add(slug)
    return anchors


def _package_files() -> list[Path]:
    return [
        p for p in (ROOT / "diffptycho").rglob("*") if p.is_file() and "__pycache__" not in p.parts
    ]


def test_there_is_documentation():
    names = {_rel(p) for p in PAGES}
    assert {"docs/index.md", "docs/getting-started.md", "docs/conventions.md"} <= names
    assert (ROOT / "mkdocs.yml").is_file()


def test_nothing_points_outside_the_repository():
    files = [*MARKDOWN, ROOT / "mkdocs.yml", *_package_files()]
    offenders = [
        f"{_rel(path)} mentions {word!r}"
        for path in files
        for word in FORBIDDEN
        if word in path.read_text(encoding="utf-8", errors="replace")
    ]
    assert len(files) > 50
    assert not offenders, "\n".join(offenders)


def test_every_relative_link_resolves():
    broken = []
    for page in MARKDOWN:
        text = _prose(page.read_text(encoding="utf-8"))
        for target in LINK.findall(text) + REF_LINK.findall(text):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = page if not file_part else (page.parent / file_part).resolve()
            if not dest.exists():
                broken.append(f"{_rel(page)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{_rel(page)}: {target} (no heading #{anchor} in {dest.name})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_command_shown_exists():
    commands = _subcommands(build_parser())
    shown, unknown = 0, []
    for page in MARKDOWN:
        for code in _code(page.read_text(encoding="utf-8")):
            for name, second in COMMAND.findall(code):
                shown += 1
                if name not in commands:
                    unknown.append(f"{_rel(page)}: diffptycho {name}")
                    continue
                nested = _subcommands(commands[name])
                if nested and second and not second.startswith("-") and second not in nested:
                    unknown.append(f"{_rel(page)}: diffptycho {name} {second}")
    assert shown > 10, "the command pattern found almost no command: is it still right?"
    assert not unknown, "commands not in the CLI parser:\n" + "\n".join(unknown)


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = set(re.findall(r"^\s*-.*?([\w/.-]+\.md)\s*$", config, re.M))
    pages = {str(p.relative_to(DOCS)) for p in PAGES}
    assert nav <= pages, f"nav entries without a page: {sorted(nav - pages)}"
    assert pages <= nav, f"pages missing from the nav: {sorted(pages - nav)}"


def test_api_pages_name_importable_modules():
    names = [
        m
        for page in DOCS.glob("api/*.md")
        for m in re.findall(r"^::: ([\w.]+)", page.read_text(), re.M)
    ]
    assert len(names) > 20
    for name in names:
        importlib.import_module(name)


def _example_blocks() -> list:
    """Every ``pycon`` block of the docs, with an id ``page:line``."""
    blocks = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            if m.group(2).strip() == "pycon":
                line = text.count("\n", 0, m.start()) + 1
                blocks.append(pytest.param(page, line, m.group(3), id=f"{_rel(page)}:{line}"))
    return blocks


def test_pages_have_examples():
    assert len(_example_blocks()) >= 7


@pytest.mark.parametrize(("page", "line", "source"), _example_blocks())
def test_example_runs(page, line, source):
    """Each ``pycon`` block is a doctest that runs on its own (so a reader can paste it)."""
    name = f"{_rel(page)}:{line}"
    test = doctest.DocTestParser().get_doctest(source, {}, name, str(page), line)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} example(s) of {name} failed (output above)"
