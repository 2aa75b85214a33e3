"""The README stays short and every relative link in the docs leads somewhere that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_MAX_LINES = 250

_FENCE = re.compile(r"^(```|~~~)")
_INLINE_CODE = re.compile(r"`[^`]*`")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _markdown_files() -> list[Path]:
    pages = [README, ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
    return pages + sorted((ROOT / "bench" / "results").glob("*.md"))


def _prose_lines(text: str, *, keep_code: bool = False) -> list[str]:
    """The lines outside fenced code blocks, with inline code removed unless ``keep_code``."""
    lines = []
    fenced = False
    for line in text.splitlines():
        if _FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line if keep_code else _INLINE_CODE.sub("", line))
    return lines


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for line in _prose_lines(path.read_text(encoding="utf-8"), keep_code=True):
        match = _HEADING.match(line)
        if not match:
            continue
        slug = _slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _relative_links(path: Path) -> list[str]:
    links = []
    for line in _prose_lines(path.read_text(encoding="utf-8")):
        for target in _LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            links.append(target)
    return links


def test_the_link_checker_sees_links_and_anchors(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n## The `lineage` command\n\n## Remote access: TCP, token, TLS\n\n"
        "See [a](other.md#x) and [b](#title), not `[c](code.md)` nor https://x.\n\n"
        "```\n[d](fenced.md)\n```\n[e](https://example.com)\n",
        encoding="utf-8",
    )
    assert _relative_links(page) == ["other.md#x", "#title"]
    assert _anchors(page) == {"title", "the-lineage-command", "remote-access-tcp-token-tls"}


@pytest.mark.parametrize("page", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file_and_anchor_that_exist(page: Path) -> None:
    assert page.is_file(), f"{page} is missing"
    broken = []
    for link in _relative_links(page):
        target, _, anchor = link.partition("#")
        destination = (page.parent / target).resolve() if target else page
        if not destination.exists():
            broken.append(f"{link}: no {destination.relative_to(ROOT)}")
        elif anchor and destination.suffix == ".md" and anchor not in _anchors(destination):
            broken.append(f"{link}: no heading with anchor #{anchor}")
    assert not broken, f"{page.relative_to(ROOT)} has broken links:\n" + "\n".join(broken)


def test_the_readme_links_every_docs_page() -> None:
    linked = {
        (README.parent / link.partition("#")[0]).resolve() for link in _relative_links(README)
    }
    unlinked = [
        str(page.relative_to(ROOT))
        for page in (ROOT / "docs").glob("*.md")
        if page.resolve() not in linked
    ]
    # Pages being added beside this one are linked when they are merged; these must be.
    required = {
        "architecture.md",
        "cli.md",
        "design.md",
        "development.md",
        "grpc-api.md",
        "json.md",
        "operations.md",
        "performance.md",
        "python-client.md",
        "reliability.md",
    }
    missing = sorted(name for name in required if f"docs/{name}" in unlinked)
    assert not missing, f"README.md does not link {missing}"


def test_the_readme_stays_short() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < README_MAX_LINES, (
        f"README.md has {len(lines)} lines; move detail into docs/ (limit {README_MAX_LINES})"
    )


def test_the_readmes_first_code_block_is_the_two_set_up_commands() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if _FENCE.match(line.strip()))
    end = next(i for i in range(start + 1, len(lines)) if _FENCE.match(lines[i].strip()))
    commands = [line.split("#", 1)[0].strip() for line in lines[start + 1 : end]]
    assert [command for command in commands if command] == ["make run", "make test"]
