"""Recorded sessions on disk (`--record FILE`, `--replay FILE`); docs/replay.md has the format.

The file is a magic line and a sequence of records, each
`u32 length | u8 type | payload | u32 crc32(type + payload)` (little-endian):
a HEADER (the machine's configuration as JSON), a STATE (the initial machine as
a migration stream), then EVENTs and MARKs (how far the recording got) as they
happen, and an END when the recording closes cleanly.  Every record is written
with one write, so a killed emud leaves a file that ends on a record boundary:
it replays up to its last MARK.  A file that ends inside a record is truncated
and refused.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

from emud import migration
from emud.hostfiles import open_private
from emud.machine import Machine
from emud.replay.events import Event, decode, encode

MAGIC = b"EMUD-RR\x01"
FORMAT_VERSION = 1
_RECORD = struct.Struct("<IB")
_CRC = struct.Struct("<I")
_MARK = struct.Struct("<QQ")
MAX_RECORD = 1 << 31  # a STATE of the largest RAM fits


class RecordType(IntEnum):
    HEADER = 1
    STATE = 2
    EVENT = 3
    MARK = 4
    END = 5


class SessionError(Exception):
    """A session file that cannot be replayed here; the message names what is wrong."""


def record(kind: RecordType, payload: bytes) -> bytes:
    body = bytes([kind]) + payload
    return _RECORD.pack(len(payload), kind) + payload + _CRC.pack(zlib.crc32(body))


class SessionWriter:
    """Appends one record per write to a private file."""

    def __init__(self, path: str | Path, machine: Machine) -> None:
        self.path = Path(path)
        self._fd = open_private(self.path)
        config = migration.machine_config(machine)
        header = {"format": FORMAT_VERSION, "config": config}
        self._write(RecordType.HEADER, json.dumps(header, sort_keys=True).encode())
        state = migration.export_stream(machine, migration.capture(machine))
        self._write(RecordType.STATE, state)

    def _write(self, kind: RecordType, payload: bytes) -> None:
        if self._fd < 0:
            return
        if kind is RecordType.HEADER:
            os.write(self._fd, MAGIC)
        os.write(self._fd, record(kind, payload))

    def event(self, event: Event) -> None:
        self._write(RecordType.EVENT, encode(event))

    def mark(self, icount: int, now_ns: int) -> None:
        self._write(RecordType.MARK, _MARK.pack(icount, now_ns))

    def close(self, icount: int, now_ns: int) -> None:
        if self._fd >= 0:
            self._write(RecordType.END, _MARK.pack(icount, now_ns))
            os.close(self._fd)
            self._fd = -1


@dataclass
class Session:
    config: dict[str, Any]
    state: bytes
    events: list[Event]
    end: tuple[int, int]  # (icount, now_ns) the recording reached
    complete: bool  # it has its END record


def parse(data: bytes, name: str = "session file") -> Session:
    """Read a whole session file; SessionError names the first problem."""
    if not data.startswith(MAGIC):
        raise SessionError(f"{name}: not an emud session file (bad magic)")
    pos = len(MAGIC)
    records: list[tuple[RecordType, bytes, int]] = []
    while pos < len(data):
        if pos + _RECORD.size > len(data):
            raise SessionError(f"{name}: truncated at byte {len(data)} (record header at "
                               f"byte {pos} is incomplete)")
        length, kind = _RECORD.unpack_from(data, pos)
        end = pos + _RECORD.size + length + _CRC.size
        if length > MAX_RECORD or end > len(data):
            raise SessionError(f"{name}: truncated at byte {len(data)} (the record at byte "
                               f"{pos} needs {end - pos} bytes)")
        payload = data[pos + _RECORD.size : end - _CRC.size]
        (crc,) = _CRC.unpack_from(data, end - _CRC.size)
        if zlib.crc32(bytes([kind]) + payload) != crc:
            raise SessionError(f"{name}: corrupt record at byte {pos} (checksum mismatch)")
        try:
            records.append((RecordType(kind), payload, pos))
        except ValueError:
            raise SessionError(f"{name}: unknown record type {kind} at byte {pos}") from None
        pos = end
    if len(records) < 2 or records[0][0] is not RecordType.HEADER \
            or records[1][0] is not RecordType.STATE:
        raise SessionError(f"{name}: truncated: it needs a header and an initial state")
    try:
        header = json.loads(records[0][1])
        config = header["config"]
        if header.get("format") != FORMAT_VERSION or not isinstance(config, dict):
            raise ValueError(f"format {header.get('format')!r}")
    except (ValueError, KeyError, TypeError) as e:
        raise SessionError(f"{name}: unusable header ({e})") from None
    events: list[Event] = []
    reached: tuple[int, int] = (0, 0)
    complete = False
    for kind, payload, at in records[2:]:
        if complete:
            raise SessionError(f"{name}: record after the end record at byte {at}")
        if kind is RecordType.EVENT:
            try:
                event = decode(payload)
            except ValueError as e:
                raise SessionError(f"{name}: bad event at byte {at}: {e}") from None
            events.append(event)
            reached = max(reached, (event.icount, event.now_ns))
        elif kind in (RecordType.MARK, RecordType.END) and len(payload) == _MARK.size:
            reached = max(reached, _MARK.unpack(payload))
            complete = kind is RecordType.END
        else:
            raise SessionError(f"{name}: unexpected {kind.name} record at byte {at}")
    return Session(config, records[1][1], events, reached, complete)


def check_config(session: Session, machine: Machine, name: str) -> None:
    """The image and RAM must be the ones recorded (named first: the usual mistakes)."""
    here = migration.machine_config(machine)
    recorded = session.config
    if recorded.get("image_sha256") != here.get("image_sha256"):
        raise SessionError(f"{name}: recorded with {migration.describe_image(recorded)}, "
                           f"this run has {migration.describe_image(here)}")
    if recorded.get("ram_size") != here.get("ram_size"):
        raise SessionError(f"{name}: recorded with {recorded.get('ram_size')} bytes of RAM, "
                           f"this run has {here.get('ram_size')} (-m)")


def load(path: str | Path, machine: Machine) -> Session:
    """Parse `path` and put `machine` in its initial state; all or nothing."""
    name = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise SessionError(f"{name}: {e.strerror}") from None
    session = parse(data, name)
    check_config(session, machine, name)
    try:
        snap = migration.import_stream(machine, session.state)
        apply = migration.stage(machine, snap)
    except migration.MigrationError as e:
        raise SessionError(f"{name}: initial state: {e}") from None
    apply()
    return session
