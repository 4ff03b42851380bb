"""A fresh clone must be complete: nothing may point at files outside the repository.

The code and docs were once written next to a folder of reference notes beside the checkout; a
user's clone has no such folder, so every reference to it, or to the notes by name, is an error
(the same facts live in docs/). Relative links of the markdown pages must resolve too.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]
THIS_FILE = Path(__file__).resolve().relative_to(REPO_ROOT).as_posix()

# Assembled from pieces so that this file does not contain what it forbids.
_NOTES = ("MODEL" + "_SPEC", "UPSTREAM" + "_README", "ARCHITECTURE" + ".md", "STYLE" + ".md")
FORBIDDEN = (".." + "/shared", *_NOTES)

_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def repo_files() -> list[str]:
    """Tracked files plus new ones git would add (so a file is checked before its first commit)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=REPO_ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"cannot list the repository's files with git in {REPO_ROOT}: {exc}")
    files = [name for name in out.decode().split("\0") if name]
    if not files:
        pytest.fail(f"git lists no files in {REPO_ROOT}; is this a checkout?")
    # A file deleted in the working tree but still in the index is not part of a clone's future.
    return sorted(f for f in set(files) if (REPO_ROOT / f).is_file())


def markdown_pages() -> list[str]:
    return [f for f in repo_files() if f.endswith(".md")]


def test_no_reference_to_files_outside_the_repository() -> None:
    offenders: list[str] = []
    for name in repo_files():
        if name == THIS_FILE:
            continue
        data = (REPO_ROOT / name).read_bytes()
        for needle in FORBIDDEN:
            if needle.encode() in data:
                line = data[: data.index(needle.encode())].count(b"\n") + 1
                offenders.append(f"{name}:{line}: {needle}")
    assert not offenders, (
        "references to files that are not in the repository (point to docs/ instead):\n"
        + "\n".join(offenders)
    )


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = _CODE_SPAN.sub(lambda m: m.group(0).strip("`"), heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link keeps only its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors_of(page: Path) -> set[str]:
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out: set[str] = set()
    for heading in _HEADING.findall(text):
        base = github_anchor(heading)
        # Repeated headings get -1, -2, ... on GitHub.
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def relative_links(page: Path) -> list[str]:
    text = _CODE_SPAN.sub("", _FENCE.sub("", page.read_text(encoding="utf-8")))
    return [
        target
        for target in _LINK.findall(text)
        if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target)  # http:, mailto:, ...
    ]


@pytest.mark.parametrize("page", markdown_pages())
def test_relative_markdown_links_resolve(page: str) -> None:
    source = REPO_ROOT / page
    broken: list[str] = []
    for target in relative_links(source):
        path_part, _, anchor = target.partition("#")
        resolved = (source.parent / path_part).resolve() if path_part else source.resolve()
        if not resolved.exists():
            broken.append(f"{target}: no such file")
            continue
        try:
            resolved.relative_to(REPO_ROOT)
        except ValueError:
            broken.append(f"{target}: outside the repository")
            continue
        if anchor and resolved.suffix == ".md" and anchor not in anchors_of(resolved):
            broken.append(f"{target}: no heading with that anchor in {resolved.name}")
    assert not broken, f"{page}: broken links:\n" + "\n".join(broken)


def test_link_check_covers_readme_and_docs() -> None:
    # The link check must cover the README and every docs page, or it proves nothing.
    pages = set(markdown_pages())
    assert "README.md" in pages
    assert {p for p in pages if p.startswith("docs/")} >= {
        "docs/checkpoints.md",
        "docs/streaming.md",
        "docs/wavtokenizer.md",
        "docs/model.md",
    }
    assert "tests/golden/cases/README.md" in pages


def test_golden_cases_are_in_the_repository() -> None:
    # The golden suite reads these by default; they must travel with a clone (and not be ignored).
    files = set(repo_files())
    assert "tests/golden/cases/index.json" in files
    assert any(f.startswith("tests/golden/cases/") and f.endswith(".pt") for f in files)
