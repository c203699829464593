"""The documentation holds together: README.md and docs/*.md link only to what exists,
every docs page the code and the config name exists, the README stays short, and no
commit hash is left in the prose.  Plain file checks: no database, no daemon."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
BENCH_README = ROOT / "bench" / "README.md"
README_MAX_LINES = 300

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target) or ![alt](target): the text may hold one level of brackets, the target
# one pair of parentheses, or be written <...>.
LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]"
    r"\(\s*(<[^>]*>|[^()\s]*(?:\([^()\s]*\))?[^()\s]*)"
)
HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.*?)[ \t#]*$")
EXTERNAL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # http:, https:, mailto:, ...
# A commit hash: a word of 7 to 40 hex digits with at least one letter and one digit.
COMMIT_HASH = re.compile(
    r"(?<![0-9A-Za-z_])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}(?![0-9A-Za-z_])"
)
DOCS_PAGE = re.compile(r"docs/[A-Za-z0-9_.-]+\.md")


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def linked_files() -> list[Path]:
    """The pages whose links are checked: the docs, and the benchmark's lab notes."""
    return [*markdown_files(), BENCH_README]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def outside_fences(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line that is not in a fenced code block."""
    lines: list[tuple[int, str]] = []
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        opening = FENCE.match(line)
        if fence is not None:
            marker = opening.group(1) if opening else ""
            if marker[:1] == fence[:1] and len(marker) >= len(fence):
                fence = None
        elif opening:
            fence = opening.group(1)
        else:
            lines.append((number, line))
    return lines


def link_targets(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every markdown link, outside code blocks and code spans."""
    found = []
    for number, line in outside_fences(text):
        for match in LINK.finditer(CODE_SPAN.sub("", line)):
            target = match.group(1).strip()
            if target.startswith("<") and target.endswith(">"):
                target = target[1:-1]
            found.append((number, target))
    return found


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text lowercased, punctuation dropped
    (letters, digits, '_', '-' and spaces kept), spaces turned into hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file, numbered as GitHub numbers repeats."""
    seen: dict[str, int] = {}
    result = set()
    for _, line in outside_fences(path.read_text(encoding="utf-8")):
        heading = HEADING.match(line)
        if heading is None:
            continue
        slug = github_slug(heading.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def test_every_relative_link_resolves() -> None:
    """Links to files and directories exist (in README.md, docs/*.md and
    bench/README.md); a #fragment into a .md file (or a bare #anchor in the same page)
    names one of its headings."""
    broken = []
    for source in linked_files():
        for number, target in link_targets(source.read_text(encoding="utf-8")):
            if not target or EXTERNAL.match(target):
                continue  # http(s), mailto and other schemes
            path_part, _, fragment = target.partition("#")
            where = f"{rel(source)}:{number}: ({target})"
            resolved = (source.parent / path_part).resolve() if path_part else source
            if not resolved.exists():
                broken.append(f"{where}: {path_part} does not exist")
            elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
                broken.append(f"{where}: {rel(resolved)} has no heading #{fragment}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def code_and_config_files() -> list[Path]:
    files: list[Path] = []
    for package in ("jobd", "jobd_master", "jobctl", "scripts", "tests", "bench"):
        files += sorted((ROOT / package).rglob("*.py"))
    files += sorted((ROOT / "config").glob("*.yaml"))
    files += sorted(path for path in (ROOT / "systemd").glob("*") if path.is_file())
    files += sorted((ROOT / "scripts").glob("*.sh"))
    this = Path(__file__).resolve()
    return [path for path in files if path.resolve() != this]


def test_every_docs_page_named_by_the_code_exists() -> None:
    missing = []
    for path in code_and_config_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            for page in DOCS_PAGE.findall(line):
                if not (ROOT / page).is_file():
                    missing.append(f"{rel(path)}:{number}: {page}")
    assert not missing, "docs pages named but missing:\n" + "\n".join(missing)


def test_readme_is_short() -> None:
    count = len(README.read_text(encoding="utf-8").splitlines())
    assert count <= README_MAX_LINES, (
        f"README.md has {count} lines, at most {README_MAX_LINES}: move the details to docs/"
    )


def test_no_commit_hash_in_the_docs() -> None:
    found = []
    for source in markdown_files():
        for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
            for match in COMMIT_HASH.finditer(line):
                found.append(f"{rel(source)}:{number}: {match.group(0)}")
    assert not found, "commit hashes in the docs:\n" + "\n".join(found)


def test_the_helpers_on_known_cases() -> None:
    """The checks above are only as good as these helpers."""
    assert github_slug("Protocol notes (hostile input)") == "protocol-notes-hostile-input"
    assert github_slug("`jobctl recover`") == "jobctl-recover"
    assert github_slug("The master's file") == "the-masters-file"
    assert github_slug("Reload (SIGHUP)") == "reload-sighup"
    assert github_slug("CURVE: encryption and authentication") == (
        "curve-encryption-and-authentication"
    )
    text = (
        "see [a](docs/a.md#b), `[not](code.md)`, ![img](<x y.png>) and [web](https://x.org)\n"
        "```\n[in a block](nowhere.md)\n```\n[after](c.md)\n"
    )
    assert link_targets(text) == [
        (1, "docs/a.md#b"),
        (1, "x y.png"),
        (1, "https://x.org"),
        (5, "c.md"),
    ]
    line = "commit cb244b8, `77afb6a`, id 4711, web-1/40718253, deadbeef, utf8mb4, 2026-12-06"
    assert COMMIT_HASH.findall(line) == ["cb244b8", "77afb6a"]


# A test named in the prose: `tests/test_x.py::test_y`, or `::test_y` after such a file.
TEST_REFERENCE = re.compile(r"(tests/[A-Za-z0-9_]+\.py)(?:::(test_\w+))?|(?<![\w/])::(test_\w+)")


def test_every_test_the_docs_name_exists():
    missing = []
    for path in linked_files():
        current: str | None = None
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for match in TEST_REFERENCE.finditer(line):
                file, name = (
                    (match.group(1), match.group(2))
                    if match.group(1)
                    else (current, match.group(3))
                )
                current = file
                where = f"{rel(path)}:{number}"
                if file is None or not (ROOT / file).is_file():
                    missing.append(f"{where}: {file} does not exist")
                elif name and not re.search(rf"def {name}\(", (ROOT / file).read_text()):
                    missing.append(f"{where}: {file} has no {name}")
    assert not missing, "\n".join(missing)
