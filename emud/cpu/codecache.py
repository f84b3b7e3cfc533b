"""The persistent translation cache: compiled regions kept on disk between runs.

The translator compiles a region's Python source to a code object; compiling
costs more than most short runs execute.  This cache keeps, for each region, a
record holding its code object and the code bytes it was built from
(translate.py, `Translator._recall`), under `$XDG_CACHE_HOME/emud/translations/`
(default `~/.cache/emud/...`), so a run of an image that ran before (a test suite
running the same guest again) starts hot.  It holds any value `marshal` writes;
what a value means is the translator's business.

- Keys: the translator's key bytes (`translate.entry_key`), salted with emud's
  version, the Python bytecode tag (`sys.implementation.cache_tag`), a hash of
  the translator's sources (translate.py, shapes.py that compiles its sources,
  and interp.py and decode.py it builds on) and FORMAT, so a changed translator
  never loads old code, even at the same version.  A file's name is the sha256
  of the salted key, in hex.
- Files: a header (MAGIC, FORMAT, the full key digest, the payload's length and
  sha256), then `marshal` of the value.  A file that is truncated,
  corrupt, of another key or another format, not a regular file of ours or open
  to other users is a miss: it is removed (and the region rebuilt and stored
  again), never loaded.
- Writes go to a temporary file in the same directory, then `os.replace`: a
  reader sees a whole file or none, whatever other emud processes do at the
  same time.  Nothing is fsynced: a file cut short by a crash fails its check.
- Unusable directories (not ours, open to others, unwritable): the cache turns
  itself off with one line on stderr, and the run goes on without it.
- Size: at most `max_files` files and `max_bytes` bytes; beyond either, the
  oldest written are removed.

`EMUD_TRANSLATION_CACHE=off` turns it off, `EMUD_TRANSLATION_CACHE=DIR` moves it
(`emud run --translation-cache off|DIR` does the same for one run).  Removing the
directory (`rm -r ~/.cache/emud/translations`) clears it.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import marshal
import os
import stat
import struct
import sys
import time
from pathlib import Path
from typing import Any

from emud import __version__
from emud.hostfiles import FILE_MODE, UnsafePathError, ensure_private_dir, open_private

ENV = "EMUD_TRANSLATION_CACHE"
FORMAT = 2  # of the files, and of what they hold: bump on any change to either
MAGIC = b"EMUDTC\r\n"  # a text-mode mangling shows as a wrong magic
HEADER = struct.Struct("<8sI32sQ32s")  # magic, format, key digest, payload length, sha256
MAX_FILES = 8192
MAX_BYTES = 64 << 20
LOW_WATER = 0.9  # eviction leaves this fraction of either bound: not one file per store
TEMP_PREFIX = "."  # ".NAME.PID.N.tmp": never an entry's name (hex digits only)
STALE_TEMP = 3600  # seconds after which a temporary file is a dead writer's, removed

_warned: set[str] = set()  # directories already warned about, once per process
_writes = itertools.count()  # temporary names unique among this process's threads


def default_dir() -> Path:
    """$XDG_CACHE_HOME/emud/translations (default ~/.cache/emud/translations)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "emud" / "translations"


# What a region's code is made from: the translator and its compiler, and the decoder and
# ALU semantics (interp.ALU_RR) it folds constants with.
TRANSLATOR_SOURCES = ("translate.py", "shapes.py", "interp.py", "decode.py")


def _translator_hash() -> bytes:
    """sha256 of the translator's sources: what it generates changes with them."""
    digest = hashlib.sha256()
    for name in TRANSLATOR_SOURCES:
        # No source to hash (a frozen install): only the version salts.
        with contextlib.suppress(OSError):
            digest.update((Path(__file__).parent / name).read_bytes())
    return digest.digest()


_salt: bytes | None = None


def salt() -> bytes:
    """What every key is salted with (computed once per process)."""
    global _salt
    if _salt is None:
        _salt = hashlib.sha256(b"\0".join([
            b"emud translation cache", str(FORMAT).encode(), __version__.encode(),
            str(sys.implementation.cache_tag).encode(), _translator_hash()])).digest()
    return _salt


def encode(digest: bytes, value: Any) -> bytes:
    """A cache file's contents for `value` (anything marshal writes; else ValueError) under
    the salted key `digest`."""
    payload = marshal.dumps(value)
    return HEADER.pack(MAGIC, FORMAT, digest, len(payload),
                       hashlib.sha256(payload).digest()) + payload


def decode(digest: bytes, blob: bytes) -> object:
    """The value of a cache file, or None unless it is whole and of this key."""
    if len(blob) < HEADER.size:
        return None
    magic, version, stored, length, checksum = HEADER.unpack_from(blob)
    payload = blob[HEADER.size:]
    if (magic != MAGIC or version != FORMAT or stored != digest or length != len(payload)
            or hashlib.sha256(payload).digest() != checksum):
        return None
    try:
        return marshal.loads(payload)
    except (ValueError, EOFError, TypeError):  # checked above: only another Python's
        return None


class CodeCache:
    """Values by key (the translator's records of its regions), in `directory` (None: a
    cache that is off)."""

    def __init__(self, directory: str | Path | None, *, max_files: int = MAX_FILES,
                 max_bytes: int = MAX_BYTES) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self.stores = 0
        self._checked = False
        self._usage: tuple[int, int] | None = None  # (files, bytes), counted on first store

    @property
    def enabled(self) -> bool:
        return self.directory is not None

    def __repr__(self) -> str:
        where = self.directory or "off"
        return (f"CodeCache({where}: {self.hits} hits, {self.misses} misses, "
                f"{self.stores} stores)")

    # --- the translator's side ----------------------------------------------------------

    def get(self, key: bytes) -> object:
        """The value stored under `key`; None for a miss or when the cache is off."""
        if not self._ready():
            return None
        assert self.directory is not None
        digest = self._digest(key)
        path = os.path.join(self.directory, digest.hex())
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            self.misses += 1
            return None
        except OSError:  # a symlink (ELOOP), or unreadable: never follow or trust it
            self._discard(path)
            self.misses += 1
            return None
        try:
            st = os.fstat(fd)
            blob = os.read(fd, st.st_size + 1) if _ours(st) else b""
        except OSError:
            blob = b""
        finally:
            os.close(fd)
        value = decode(digest, blob)
        if value is None:
            self._discard(path)
            self.misses += 1
            return None
        self.hits += 1
        return value

    def put(self, key: bytes, value: object) -> None:
        """Store `value` under `key` (atomically; quietly nothing when the cache is off)."""
        if not self._ready():
            return
        assert self.directory is not None
        digest = self._digest(key)
        try:
            blob = encode(digest, value)
        except ValueError:  # holds something marshal cannot write: not cacheable
            return
        name = digest.hex()
        temp = os.path.join(self.directory,
                            f"{TEMP_PREFIX}{name}.{os.getpid()}.{next(_writes)}.tmp")
        try:
            fd = open_private(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            try:
                view = memoryview(blob)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.replace(temp, os.path.join(self.directory, name))
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            self._disable(f"cannot write {temp}: {e.strerror or e}")
            return
        self.stores += 1
        self._account(len(blob))

    # --- the directory --------------------------------------------------------------------

    def _digest(self, key: bytes) -> bytes:
        return hashlib.sha256(salt() + key).digest()

    def _ready(self) -> bool:
        """The directory exists and is private (checked once); else the cache turns off."""
        if self.directory is None:
            return False
        if not self._checked:
            self._checked = True
            try:
                ensure_private_dir(self.directory)
            except UnsafePathError as e:
                self._disable(str(e))
            except OSError as e:
                self._disable(f"cannot create {self.directory}: {e.strerror or e}")
        return self.directory is not None

    def _disable(self, why: str) -> None:
        if self.directory is not None and str(self.directory) not in _warned:
            _warned.add(str(self.directory))
            sys.stderr.write(f"emud: translation cache off: {why}\n")
        self.directory = None

    @staticmethod
    def _discard(path: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(path)

    def _account(self, size: int) -> None:
        """Count a store; past a bound, remove the oldest entries (by write time)."""
        if self._usage is None:
            self._usage = self._scan_usage()
        files, used = self._usage[0] + 1, self._usage[1] + size
        self._usage = (files, used)
        if files > self.max_files or used > self.max_bytes:
            self._usage = self.evict()

    def _entries(self) -> list[tuple[float, int, str]]:
        """(mtime, size, path) of every entry; stale temporary files are removed."""
        assert self.directory is not None
        found = []
        with os.scandir(self.directory) as scan:
            for entry in scan:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if entry.name.startswith(TEMP_PREFIX):
                    # another process's write in progress, unless it is long dead
                    if entry.name.endswith(".tmp") and st.st_mtime < time.time() - STALE_TEMP:
                        self._discard(entry.path)
                    continue
                found.append((st.st_mtime, st.st_size, entry.path))
        return found

    def _scan_usage(self) -> tuple[int, int]:
        try:
            entries = self._entries()
        except OSError:
            return (0, 0)
        return (len(entries), sum(size for _, size, _ in entries))

    def evict(self) -> tuple[int, int]:
        """Remove the oldest entries until both bounds have room; returns (files, bytes)."""
        if self.directory is None:
            return (0, 0)
        try:
            entries = sorted(self._entries())
        except OSError:
            return (0, 0)
        files, used = len(entries), sum(size for _, size, _ in entries)
        keep_files, keep_bytes = int(self.max_files * LOW_WATER), int(self.max_bytes * LOW_WATER)
        for _, size, path in entries:
            if files <= keep_files and used <= keep_bytes:
                break
            self._discard(path)
            files, used = files - 1, used - size
        return (files, used)


def _ours(st: os.stat_result) -> bool:
    """A regular file of this user that no one else may read or write."""
    return (stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid()
            and not stat.S_IMODE(st.st_mode) & ~FILE_MODE)


def from_spec(spec: str | Path | None) -> CodeCache:
    """A cache from `--translation-cache` / EMUD_TRANSLATION_CACHE's syntax: "off", a
    directory, or None (or "") for the default directory."""
    if spec == "off":
        return CodeCache(None)
    return CodeCache(spec or default_dir())


def default_cache() -> CodeCache:
    """The user's cache, as EMUD_TRANSLATION_CACHE says (default: default_dir())."""
    return from_spec(os.environ.get(ENV))
