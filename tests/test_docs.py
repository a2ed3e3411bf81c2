"""The README and docs/ stay honest: links resolve, the commands the README names exist, the README stays a
short product page, the reliability page's notes survive a regenerated table, and no code comment points
outside the repository."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from affectstream.bench.reliability import NOTES_MARKER, Row, keep_chaos_row, markdown_table, write_keeping_notes
from affectstream.cli import main

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"^```.*?$(.*?)^```", re.S | re.M)
# `affectstream demo`, `.venv/bin/affectstream model list`; not `from affectstream import …`
COMMAND = re.compile(r"(?<![\w.\[])(?<!from )(?<!import )affectstream ([a-z][\w-]*)(?: ([a-z][\w-]*))?")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", page.read_text(), re.M)}


def relative_links(page: Path) -> list[str]:
    return [t for t in LINK.findall(page.read_text()) if "://" not in t and not t.startswith("mailto:")]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and anchor not in anchors(file):
            broken.append(target)
    assert not broken, f"{page.name}: broken links {broken}"


def test_readme_is_a_short_product_page():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"
    assert "bash .ci/run" in README.read_text()
    assert ".venv/bin/affectstream demo" in README.read_text()


def test_every_docs_page_is_reachable_from_the_readme():
    seen, todo = set(), [README.resolve()]
    while todo:
        page = todo.pop()
        if page in seen or page.suffix != ".md" or not page.exists():
            continue
        seen.add(page)
        todo += [(page.parent / t.partition("#")[0]).resolve() for t in relative_links(page) if t.partition("#")[0]]
    orphans = [p.name for p in PAGES[1:] if p.resolve() not in seen]
    assert not orphans, f"docs pages no link from the README leads to: {orphans}"


def named_commands(text: str) -> set[tuple[str, str | None]]:
    """(command, subcommand-or-None) for every `affectstream …` in code spans and fenced blocks."""
    code = [m.group(1) for m in FENCE.finditer(text)]
    code += CODE_SPAN.findall(FENCE.sub("", text))
    return {(m.group(1), m.group(2)) for chunk in code for m in COMMAND.finditer(chunk.replace("\\|", "|"))}


def help_commands(args: list[str]) -> set[str]:
    """The names under "Commands:" in ``affectstream [args] --help``."""
    out = CliRunner().invoke(main, [*args, "--help"], terminal_width=200)
    assert out.exit_code == 0, out.output
    listing = out.output.split("Commands:", 1)[1] if "Commands:" in out.output else ""
    return {line.split()[0] for line in listing.splitlines() if line.strip()}


def test_named_commands_parse_the_readme_forms():
    text = ("run `.venv/bin/affectstream demo`, then `affectstream model list\\|promote`\n"
            "```python\nfrom affectstream import Analyzer\n```")
    assert named_commands(text) == {("demo", None), ("model", "list")}


def test_every_command_the_readme_names_exists():
    assert ("demo", None) in named_commands(README.read_text()) and len(named_commands(README.read_text())) > 10
    named = {c for page in PAGES for c in named_commands(page.read_text())}
    top = help_commands([])
    unknown = sorted(c for c, _ in named if c not in top)
    assert not unknown, f"README or docs/ name commands that `affectstream --help` does not list: {unknown}"
    for command, sub in sorted(named, key=str):
        if sub and isinstance(main.commands[command], click.Group):
            assert sub in help_commands([command]), f"`affectstream {command} {sub}` is not a command"


def test_regenerating_the_reliability_table_keeps_the_pages_notes(tmp_path):
    page = tmp_path / "reliability.md"
    page.write_text((ROOT / "docs" / "reliability.md").read_text())
    _, marker, notes = page.read_text().partition(NOTES_MARKER)
    assert marker and notes.strip(), "docs/reliability.md lost its notes marker"
    table = markdown_table([Row("worker crash", 10, 10, 0, 0, 0)], title="## T", footer="Generated now")
    write_keeping_notes(page, lambda previous: keep_chaos_row(previous, table))
    again = page.read_text()
    assert again.endswith(marker + notes) and "Generated now" in again and "| worker crash |" in again
    assert again.count("| chaos run") == 1, "the chaos row of the previous table is carried over"
    write_keeping_notes(page, lambda previous: keep_chaos_row(previous, table))
    assert page.read_text() == again


def test_no_code_comment_cites_a_file_outside_the_repository():
    listed = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True)
    outside = re.compile(r"\b(DESIGN|STYLE|FACTS)\.md\b")
    hits = [f"{name}:{n}" for name in listed.stdout.split() if (ROOT / name).exists()
            for n, line in enumerate((ROOT / name).read_text().splitlines(), 1) if outside.search(line)]
    assert not hits, f"cite a docs/ page instead: {hits}"
