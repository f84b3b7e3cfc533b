"""Bounded random guest paths for the semihosting file calls: none reaches outside the directory.

Seeded (hypothesis, derandomized), 400 paths of up to 6 components over names that
include "..", ".", empty components, symlinks leading out of and within the directory,
a FIFO, and absolute paths; every open mode.  Whatever opens must be a regular file
below the directory, reached without a symlink or "..", and nothing outside changes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emud.chardev import CharBackend
from emud.semihosting import GuestError, Semihosting, SemihostingConfig

NAMES = ["a", "f", "new", "..", ".", "", "out", "inlink", "up", "fifo", "secret"]


def make_tree(base: Path) -> tuple[Path, Path]:
    root, outside = base / "root", base / "outside"
    (root / "a").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_text("secret")
    (root / "f").write_text("f")
    (root / "a" / "f").write_text("af")
    (root / "out").symlink_to(outside)  # leads out
    (root / "a" / "up").symlink_to(os.path.join(os.pardir, os.pardir))  # out, relatively
    (root / "inlink").symlink_to("a")  # stays inside, but is a symlink: refused too
    os.mkfifo(root / "fifo")
    return root, outside


def snapshot(tree: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in tree.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_tree(tmp_path_factory.mktemp("paths"))


def test_the_tree_has_reachable_files(tree: tuple[Path, Path]) -> None:
    handler = Semihosting(SemihostingConfig(files_dir=str(tree[0])), CharBackend(),
                          lambda code: None)
    try:
        assert handler._open(b"a//./f", 0) > 0 and handler._open(b"./new", 4) > 0
    finally:
        handler.close()


@settings(derandomize=True, max_examples=400, deadline=None, database=None)
@given(parts=st.lists(st.sampled_from(NAMES), min_size=1, max_size=6),
       absolute=st.booleans(), mode=st.integers(0, 11))
def test_random_paths_stay_inside(tree: tuple[Path, Path], parts: list[str], absolute: bool,
                                  mode: int) -> None:
    root, outside = tree
    before = snapshot(outside)
    handler = Semihosting(SemihostingConfig(files_dir=str(root)), CharBackend(),
                          lambda code: None)
    raw = ("/" if absolute else "") + "/".join(parts)
    try:
        fd = handler._open(raw.encode(), mode)
    except GuestError:
        fd = None
    try:
        if fd is not None:
            host = os.readlink(f"/proc/self/fd/{handler.handles[fd]}")
            assert Path(host).is_relative_to(root.resolve())
            real = [p for p in raw.split("/") if p not in ("", ".")]
            assert not absolute and ".." not in real
            assert not any((root / Path(*real[:i + 1])).is_symlink()
                           for i in range(len(real)))
            assert Path(host).is_file()
    finally:
        handler.close()
    assert snapshot(outside) == before
