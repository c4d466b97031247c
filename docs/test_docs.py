"""The docs stay a map that resolves: the README is short; in the repository's Markdown (the
README, the CHANGELOG, docs/*.md and the folders' READMEs) every relative link and #anchor points
at something that exists, every repository path quoted in backticks exists, and no page cites a
commit hash or an issue number (the repository carries neither; a page says what is true now).

Run with ``python -m pytest -q docs`` from the repository root (``make check`` does).
"""

from __future__ import annotations

import re
import subprocess
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_MAX_BYTES = 12 * 1024

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
INLINE_CODE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s+<?(\S+?)>?(?:\s|$)", re.M)
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.M)
HASH = re.compile(r"\b[0-9a-f]{7,40}\b")
ISSUE_WORD = re.compile(r"\b(?:issues?|pull requests?|PRs?)\s*(?:no\.?\s*)?#?\d+\b", re.I)
ISSUE_HASH = re.compile(r"(?<![\w&/(\]])#\d+\b")
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)


def without_fences(text: str) -> str:
    """The text with fenced code blocks blanked (their lines kept, so line numbers hold)."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def without_code(text: str) -> str:
    """Prose only: fenced blocks and inline code spans blanked."""
    return INLINE_CODE.sub("``", without_fences(text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces to
    hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").replace("*", "").strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for m in HEADING.finditer(without_fences(page.read_text(encoding="utf-8"))):
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def broken_links(text: str, page: Path) -> list[str]:
    """Every relative link of `text` (as written in `page`) whose file or anchor does not exist."""
    prose = without_code(text)
    targets = [m.group(1) for m in LINK.finditer(prose)] + [m.group(1) for m in REFERENCE.finditer(prose)]
    errors = []
    for target in targets:
        if SCHEME.match(target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.is_relative_to(ROOT):
            errors.append(f"{target}: outside the repository")
            continue
        if not resolved.exists():
            errors.append(f"{target}: no such file")
            continue
        if anchor:
            if resolved.suffix != ".md" or resolved.is_dir():
                errors.append(f"{target}: an anchor into a file that is not Markdown")
            elif anchor not in anchors(resolved):
                errors.append(f"{target}: no heading with the anchor #{anchor} in {resolved.relative_to(ROOT)}")
    return errors


def tracked() -> tuple[set[str], set[str]]:
    """The repository's top-level folders and top-level files, as git tracks them."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, text=True
    ).stdout.split("\0")
    folders = {f.split("/", 1)[0] for f in files if "/" in f}
    top = {f for f in files if f and "/" not in f}
    return folders, top


FOLDERS, TOP_FILES = tracked()
# Every Markdown page of the repository: the README, the CHANGELOG and docs/, and the folders' own
# READMEs, which link into docs/ too.
PAGES = sorted(
    ROOT / f
    for f in subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "*.md"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        text=True,
    ).stdout.split("\0")
    if f
)


def quoted_paths(text: str) -> list[str]:
    """Words in inline code (outside fenced blocks) that name a path of the repository: they start
    with one of its top-level folders, or are one of its top-level files. Placeholders (`<name>`,
    `{…}`, `…`) are not paths."""
    paths = []
    for span in INLINE_CODE.finditer(without_fences(text)):
        for raw in span.group(1).split():
            word = raw.strip("()[],;:'\"").rstrip(".")
            if not word or any(c in word for c in "<>{}…$=|"):
                continue
            head = word.split("/", 1)[0]
            if ("/" in word and head in FOLDERS) or word in TOP_FILES:
                paths.append(word)
    return paths


def missing_paths(text: str) -> list[str]:
    missing = []
    for path in quoted_paths(text):
        if "*" in path or "?" in path:
            if not any(ROOT.glob(path.rstrip("/"))):
                missing.append(f"`{path}`: matches nothing")
        elif not (ROOT / path).exists():
            missing.append(f"`{path}`: no such path")
    return missing


def commit_hashes(text: str) -> list[str]:
    """Hex words of 7 to 40 characters with a digit and a letter: abbreviated or full hashes."""
    return [w for w in HASH.findall(text) if re.search(r"\d", w) and re.search(r"[a-f]", w)]


def issue_references(text: str) -> list[str]:
    prose = without_code(text)
    words = [m.group(0) for m in ISSUE_WORD.finditer(prose)]
    return words + ISSUE_HASH.findall(ISSUE_WORD.sub(" ", prose))


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


# ---------------------------------------------------------------------------------------------
# The pages


def test_the_readme_is_a_map_of_at_most_12_kib():
    size = README.stat().st_size
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; at most {README_MAX_BYTES}: move detail to docs/"


def test_the_pages_exist():
    names = {p.name for p in PAGES}
    for required in (
        "contract.md",
        "exactly-once.md",
        "local-runner.md",
        "local-stack.md",
        "observability.md",
        "fault-suite.md",
        "performance.md",
        "kubernetes.md",
        "energy.md",
        "troubleshooting.md",
    ):
        assert required in names, f"docs/{required} is missing"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_relative_link_and_anchor_resolves(page):
    assert broken_links(page.read_text(encoding="utf-8"), page) == []


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_quoted_repository_path_exists(page):
    assert missing_paths(page.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_no_commit_hashes(page):
    assert commit_hashes(page.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_no_issue_references(page):
    assert issue_references(page.read_text(encoding="utf-8")) == []


# ---------------------------------------------------------------------------------------------
# The checks themselves catch what they are for


def test_slugs_follow_github():
    assert slug("Checked by Knative's and Kubernetes' own code (`knative/check-k8s`, `make check`)") == (
        "checked-by-knatives-and-kubernetes-own-code-knativecheck-k8s-make-check"
    )
    assert slug("Safe retries: `Idempotency-Key`") == "safe-retries-idempotency-key"
    assert slug("The fault suite: nothing lost, nothing counted twice") == (
        "the-fault-suite-nothing-lost-nothing-counted-twice"
    )


def test_broken_links_are_found():
    page = ROOT / "docs" / "contract.md"
    text = (
        "[a](exactly-once.md) [b](no-such-page.md) [c](exactly-once.md#no-such-heading) "
        "[d](#answers) [e](#nowhere) [f](../../outside.md) [g](https://example.org/x#y)\n"
        "```\n[h](in-a-code-block.md)\n```\n"
    )
    errors = broken_links(text, page)
    assert [e.split(":")[0] for e in errors] == [
        "no-such-page.md",
        "exactly-once.md#no-such-heading",
        "#nowhere",
        "../../outside.md",
    ]


def test_missing_paths_are_found():
    text = (
        "`runner/src/lib.rs` `runner/src/nope.rs` `functions/*/tests/it` `functions/*/nothing` "
        "`target/release/runner` `dev/stack up` `Makefile` `common::tweet` `/api/traces/<id>` "
        "`functions/<name>/src`"
    )
    assert missing_paths(text) == ["`runner/src/nope.rs`: no such path", "`functions/*/nothing`: matches nothing"]


def test_hashes_and_issue_references_are_found():
    assert commit_hashes("before (604311c) and 3cd6ed8f0b3c4a1e9d7f2a6b5c8e0d1f2a3b4c5d") == [
        "604311c",
        "3cd6ed8f0b3c4a1e9d7f2a6b5c8e0d1f2a3b4c5d",
    ]
    assert commit_hashes("a decade of 2026-12-02 runs at 1500000 tweets; facade") == []
    assert issue_references("(issue 12; see #34) and Issue #5") == ["issue 12", "Issue #5", "#34"]
    assert issue_references("[anchor](#section) `#12 in code` &#8212;") == []
