"""The repository is self-contained: what a tracked file refers to, a clone has.

A clone holds only the tracked files, so no tracked file may point outside the
repository (a relative path that climbs above its root, or an absolute path
into somebody's checkout or home directory), every Markdown document a file
names must exist, and every relative link in README.md and docs/*.md must lead
to an existing file (and, for a `#fragment` into a Markdown file, to one of its
headings).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from conftest import ROOT

# Top-level directories that hold checkouts and home directories, never anything
# emud or its guests use at run time.  The directory this clone lives under is
# added, unless it is one of the system places emud does name (sockets, devices).
CHECKOUT_ROOTS = {"work", "workspace", "home", "root", "Users", "mnt", "opt", "srv"}
SYSTEM_ROOTS = {"tmp", "run", "dev", "proc", "sys", "usr", "bin", "etc", "var", "path"}

# A path token: what may precede it rules out URLs, `x/fmt`, `$DIR/…` and `</tag>`.
ABSOLUTE = re.compile(r"(?<![\w.~$}/:<%*\\)\]-])/([A-Za-z_][\w.-]*)/[\w./-]*")
CLIMBING = re.compile(r"(?:\.\./)+[\w./-]*")
MARKDOWN_NAME = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w-]+\.md)\b")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def tracked_files(root: Path) -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True,
                         check=True).stdout
    return [root / name for name in out.decode().split("\0") if name]


def text_of(path: Path) -> str | None:
    """The file's text, or None for binaries (ELFs) and files gone from the worktree."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def forbidden_roots(root: Path) -> set[str]:
    top = root.resolve().parts[1] if len(root.resolve().parts) > 1 else ""
    return CHECKOUT_ROOTS | ({top} - SYSTEM_ROOTS - {""})


def outside_references(root: Path, path: Path, text: str) -> list[str]:
    """Relative paths that climb out of `root` and absolute paths into checkouts."""
    problems = []
    roots = forbidden_roots(root)
    for m in ABSOLUTE.finditer(text):
        if m.group(1) in roots:
            problems.append(m.group(0))
    base = path.parent.resolve()
    for m in CLIMBING.finditer(text):
        target = (base / m.group(0)).resolve()
        if not target.is_relative_to(root.resolve()):
            problems.append(m.group(0))
    return problems


def missing_markdown(root: Path, path: Path, text: str, names: set[str]) -> list[str]:
    """Markdown documents named in `text` that the repository does not have."""
    problems = []
    for m in MARKDOWN_NAME.finditer(text):
        name = m.group(1)
        if "/" in name:
            if not ((root / name).is_file() or (path.parent / name).is_file()):
                problems.append(name)
        elif name not in names:
            problems.append(name)
    return problems


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    return {slug(h) for h in HEADING.findall(FENCE.sub("", markdown))}


def broken_links(root: Path, path: Path) -> list[str]:
    """Relative links of a Markdown file that lead nowhere (or out of the repository)."""
    problems = []
    markdown = path.read_text(encoding="utf-8")
    for target in LINK.findall(FENCE.sub("", markdown)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        file_part, _, fragment = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path.resolve()
        if not (dest.is_relative_to(root.resolve()) and dest.exists()
                and (not fragment or dest.suffix != ".md"
                     or fragment in anchors(dest.read_text(encoding="utf-8")))):
            problems.append(target)
    return problems


def markdown_documents(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


# --- the checks on this repository ---------------------------------------------------


def scanned_files() -> list[Path]:
    """Every tracked file but this one, whose examples are broken on purpose."""
    return [p for p in tracked_files(ROOT) if p.resolve() != Path(__file__).resolve()]


def test_no_tracked_file_refers_outside_the_repository() -> None:
    problems = []
    for path in scanned_files():
        text = text_of(path)
        if text is not None:
            rel = path.relative_to(ROOT)
            problems += [f"{rel}: {ref}" for ref in outside_references(ROOT, path, text)]
    assert not problems, "references outside the repository:\n" + "\n".join(problems)


def test_every_markdown_document_named_exists() -> None:
    files = scanned_files()
    names = {p.name for p in files if p.suffix == ".md"}
    problems = []
    for path in files:
        text = text_of(path)
        if text is not None:
            rel = path.relative_to(ROOT)
            problems += [f"{rel}: {n}" for n in missing_markdown(ROOT, path, text, names)]
    assert not problems, "documents that do not exist:\n" + "\n".join(problems)


def test_relative_links_in_the_docs_resolve() -> None:
    documents = markdown_documents(ROOT)
    assert (ROOT / "docs" / "README.md") in documents  # the index exists
    problems = []
    for path in documents:
        rel = path.relative_to(ROOT)
        problems += [f"{rel}: {target}" for target in broken_links(ROOT, path)]
    assert not problems, "broken links:\n" + "\n".join(problems)


# --- the checks themselves catch what they are for -----------------------------------


def test_the_checks_catch_each_kind_of_reference(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    (repo / "docs" / "a.md").write_text("# Time model\n\n## Why `icount`?\n")
    readme = repo / "README.md"
    sibling = "../" + "sibling/note.md"
    checkout = "/" + "home/someone/spec.md"
    readme.write_text(
        f"See {sibling}, {checkout}, /tmp/emud.sock and /dev/null.\n"
        "[ok](docs/a.md#time-model) [ok](docs/a.md#why-icount) [ok](https://example.org/x)\n"
        "[gone](docs/b.md) [anchor](docs/a.md#nothing) [out](../x.md)\n"
        "```\n[in a fence](nowhere.md)\n```\n")
    text = readme.read_text()
    assert outside_references(repo, readme, text) == [checkout, sibling, "../x.md"]
    assert missing_markdown(repo, readme, text, {"a.md", "README.md"}) == [
        sibling, "docs/b.md", "../x.md", "nowhere.md"]
    assert broken_links(repo, readme) == ["docs/b.md", "docs/a.md#nothing", "../x.md"]
