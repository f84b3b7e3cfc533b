"""After a rebuild the default store is another file: `loadvm` says where the tag is."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from conftest import IMAGES
from emud.chardev import RingBackend
from emud.daemon import Daemon
from emud.loader import load_elf
from emud.machine import Machine
from emud.monitor import MonitorError, SnapshotService


def daemon_for(image: Path) -> Daemon:
    machine = Machine(RingBackend())
    machine.load(load_elf(image))
    return Daemon(machine)


def test_a_tag_of_an_earlier_build_is_found_and_explained(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    image = tmp_path / "prog.elf"
    shutil.copy(IMAGES / "counter.elf", image)
    first = SnapshotService(daemon_for(image))
    first.save("mywork")
    shutil.copy(IMAGES / "hello.elf", image)  # the rebuild: same path, another digest
    rebuilt = daemon_for(image)
    second = SnapshotService(rebuilt)
    assert second.path != first.path
    with pytest.raises(MonitorError) as error:
        second.load("mywork")
    message = str(error.value)
    old, new = first.daemon.machine.image, rebuilt.machine.image
    assert old is not None and new is not None
    assert f"does not exist for this build of prog.elf (sha256 {new.digest[:16]})" in message
    assert f"earlier build, prog.elf (sha256 {old.digest[:16]})" in message
    assert message.endswith(f"run that build with --snapshots {first.path} to load it")
    assert "\n" not in message
    # Following the hint with the old build loads it; with the new one the mismatch
    # names both builds by file name and short digest.
    SnapshotService(daemon_for(IMAGES / "counter.elf"), first.path).load("mywork")
    with pytest.raises(MonitorError, match=re.escape(
            f"the snapshot is of prog.elf (sha256 {old.digest[:16]}), this machine runs "
            f"prog.elf (sha256 {new.digest[:16]})")):
        SnapshotService(rebuilt, first.path).load("mywork")
    # A tag that exists nowhere, and another file's stores, give the plain answer.
    with pytest.raises(MonitorError, match=r"Snapshot 'other' does not exist'?$"):
        second.load("other")
    unrelated = SnapshotService(daemon_for(IMAGES / "compute.elf"))
    with pytest.raises(MonitorError, match=r"'mywork' does not exist$"):
        unrelated.load("mywork")
