"""The persistent translation cache (emud/cpu/codecache.py): what it returns, what it
refuses, where and how it writes, and how `emud run` / emud.Machine turn it on and off."""

from __future__ import annotations

import marshal
import os
import stat
import subprocess
import sys
import types
from pathlib import Path

import pytest

import emud
from conftest import IMAGES, ROOT
from emud.cpu import codecache
from emud.cpu.codecache import HEADER, CodeCache
from emud.machine import Machine


def code(value: int) -> types.CodeType:
    return compile(f"def region(x, r):\n    return {value}, r\n", "<region>", "exec")


def run_code(obj: types.CodeType) -> object:
    namespace: dict[str, object] = {}
    exec(obj, namespace)
    region = namespace["region"]
    assert callable(region)
    return region(None, 7)


def entry(cache: CodeCache, key: bytes) -> Path:
    """The file `key` is stored in."""
    assert cache.directory is not None
    return cache.directory / cache._digest(key).hex()


def test_round_trip(tmp_path: Path) -> None:
    cache = CodeCache(tmp_path / "tc")
    assert cache.get(b"k1") is None
    cache.put(b"k1", code(41))
    cache.put(b"k2", code(42))
    again = CodeCache(tmp_path / "tc")  # another run
    loaded = again.get(b"k1")
    assert loaded is not None and run_code(loaded) == (41, 7)
    assert run_code(again.get(b"k2") or code(0)) == (42, 7)
    assert (cache.misses, cache.stores, again.hits, again.misses) == (1, 2, 2, 0)


def test_values_other_than_code(tmp_path: Path) -> None:
    """The translator's records (tuples of bytes and ints) round-trip as code does; a
    value marshal cannot write is not stored, and nothing is left behind."""
    cache = CodeCache(tmp_path)
    record = (b"key", ((0x8000_0000, 0x13, 4), (0x8000_0004, 0, 0)),
              ((0x8000_0000, b"\x13\0\0\0"),))
    cache.put(b"record", record)
    cache.put(b"unwritable", (b"key", object()))
    assert CodeCache(tmp_path).get(b"record") == record
    assert cache.get(b"unwritable") is None and cache.stores == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [entry(cache, b"record").name]


@pytest.mark.parametrize("what", ["version", "cache_tag", "translator"])
def test_another_salt_misses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             what: str) -> None:
    """A new emud version, another Python, or an edited translate.py never sees old code."""
    CodeCache(tmp_path).put(b"key", code(1))
    monkeypatch.setattr(codecache, "_salt", None)
    if what == "version":
        monkeypatch.setattr(codecache, "__version__", "99.0")
    elif what == "cache_tag":
        monkeypatch.setattr(sys.implementation, "cache_tag", "cpython-399")
    else:
        monkeypatch.setattr(codecache, "_translator_hash", lambda: b"edited")
    cache = CodeCache(tmp_path)
    assert cache.get(b"key") is None and cache.misses == 1
    monkeypatch.undo()
    codecache._salt = None
    assert CodeCache(tmp_path).get(b"key") is not None  # the original salt finds it again


def corrupt(path: Path, how: str) -> None:
    blob = path.read_bytes()
    if how == "truncated":
        path.write_bytes(blob[:-3])
    elif how == "header-only":
        path.write_bytes(blob[:HEADER.size - 1])
    elif how == "flipped":
        path.write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    elif how == "magic":
        path.write_bytes(b"XXXXXXXX" + blob[8:])
    elif how == "format":
        path.write_bytes(HEADER.pack(codecache.MAGIC, codecache.FORMAT + 1,
                                     *HEADER.unpack_from(blob)[2:]) + blob[HEADER.size:])
    elif how == "swapped":  # the same length, valid marshal, another code: the checksum
        other = marshal.dumps(code(9))
        assert len(other) == len(blob) - HEADER.size
        path.write_bytes(blob[:HEADER.size] + other)
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "group-readable":
        path.chmod(0o640)
    elif how == "directory":
        path.unlink()
        path.mkdir()


@pytest.mark.parametrize("how", ["truncated", "header-only", "flipped", "swapped", "magic",
                                 "format", "empty", "group-readable", "directory"])
def test_bad_entries_are_misses_and_rebuilt(tmp_path: Path, how: str) -> None:
    cache = CodeCache(tmp_path)
    cache.put(b"key", code(5))
    path = entry(cache, b"key")
    corrupt(path, how)
    assert cache.get(b"key") is None and cache.misses == 1
    if how != "directory":  # a stray directory cannot be unlinked, the put replaces it not
        assert not path.exists()  # removed, not tried again
        cache.put(b"key", code(6))
        assert run_code(cache.get(b"key") or code(0)) == (6, 7) and cache.hits == 1


def test_entry_of_another_key_is_not_loaded(tmp_path: Path) -> None:
    """A file copied or renamed to another key's name: the header's key digest differs."""
    cache = CodeCache(tmp_path)
    cache.put(b"a", code(1))
    entry(cache, b"a").rename(entry(cache, b"b"))
    assert cache.get(b"b") is None and not entry(cache, b"b").exists()


def test_symlinked_entry_is_never_followed(tmp_path: Path) -> None:
    cache = CodeCache(tmp_path / "tc")
    cache.put(b"real", code(1))
    target = tmp_path / "elsewhere"  # a valid entry for the link's key, private: only
    target.write_bytes(codecache.encode(cache._digest(b"link"), code(1)))  # O_NOFOLLOW
    target.chmod(0o600)
    entry(cache, b"link").symlink_to(target)
    assert cache.get(b"link") is None and cache.misses == 1
    assert not entry(cache, b"link").is_symlink() and target.exists()  # link gone, not target
    cache.put(b"link", code(2))
    assert run_code(cache.get(b"link") or code(0)) == (2, 7)
    assert not entry(cache, b"link").is_symlink()


def test_writes_are_atomic(tmp_path: Path) -> None:
    """A writer's temporary file (another process midway) is never read as an entry,
    and a store replaces the whole file at once."""
    cache = CodeCache(tmp_path)
    digest = cache._digest(b"key")
    whole = codecache.encode(digest, code(3))
    partial = tmp_path / f".{digest.hex()}.{os.getpid() + 1}.0.tmp"
    partial.write_bytes(whole[: len(whole) // 2])
    partial.chmod(0o600)
    assert cache.get(b"key") is None
    cache.put(b"key", code(3))
    assert entry(cache, b"key").read_bytes() == whole
    assert partial.exists()  # another writer's file: not ours to take away yet
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([partial.name,
                                                                  digest.hex()])


def test_stale_temporary_files_are_cleaned(tmp_path: Path) -> None:
    cache = CodeCache(tmp_path, max_files=2)
    stale = tmp_path / ".dead.123.0.tmp"
    stale.write_bytes(b"half")
    os.utime(stale, (1, 1))
    for n in range(3):
        cache.put(bytes([n]), code(n))
    assert not stale.exists()


def test_created_private(tmp_path: Path) -> None:
    old = os.umask(0o002)
    try:
        cache = CodeCache(tmp_path / "a" / "translations")
        cache.put(b"key", code(1))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a" / "translations").stat().st_mode) == 0o700
    assert stat.S_IMODE(entry(cache, b"key").stat().st_mode) == 0o600


def test_unsafe_directory_turns_the_cache_off(tmp_path: Path,
                                              capfd: pytest.CaptureFixture[str]) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    cache = CodeCache(shared)
    cache.put(b"key", code(1))
    assert cache.get(b"key") is None and not cache.enabled
    assert list(shared.iterdir()) == []
    CodeCache(shared).get(b"key")  # warned once per directory
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "translation cache off" in err and "chmod 700" in err


def test_file_in_the_way_turns_the_cache_off(tmp_path: Path,
                                             capfd: pytest.CaptureFixture[str]) -> None:
    """The cache directory's path is a file: nothing can be stored, the run goes on."""
    (tmp_path / "file").write_text("")
    cache = CodeCache(tmp_path / "file")
    cache.put(b"key", code(1))
    assert not cache.enabled and cache.get(b"key") is None
    assert "translation cache off" in capfd.readouterr().err


def test_size_bound_by_files(tmp_path: Path) -> None:
    cache = CodeCache(tmp_path, max_files=10)
    for n in range(25):
        cache.put(n.to_bytes(2, "little"), code(n))
        os.utime(entry(cache, n.to_bytes(2, "little")), (n, n))  # write order, 1 s apart
    names = {p.name for p in tmp_path.iterdir()}
    assert len(names) <= 10
    assert entry(cache, (24).to_bytes(2, "little")).name in names  # the newest stay
    assert entry(cache, (0).to_bytes(2, "little")).name not in names  # the oldest went


def test_size_bound_by_bytes(tmp_path: Path) -> None:
    one = len(codecache.encode(bytes(32), code(0)))
    cache = CodeCache(tmp_path, max_bytes=5 * one)
    for n in range(12):
        cache.put(bytes([n]), code(n))
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= 5 * one


def test_disabled_by_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMUD_TRANSLATION_CACHE", "off")
    assert not codecache.default_cache().enabled
    monkeypatch.setenv("EMUD_TRANSLATION_CACHE", str(tmp_path / "moved"))
    assert codecache.default_cache().directory == tmp_path / "moved"
    monkeypatch.delenv("EMUD_TRANSLATION_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert codecache.default_cache().directory == tmp_path / "xdg" / "emud" / "translations"


def test_machine_keyword(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """emud.Machine uses the user's cache by default, honours off and a directory; the
    interpreter and the internal Machine (tests) get none."""
    monkeypatch.setenv("EMUD_TRANSLATION_CACHE", str(tmp_path / "env"))

    def cache_of(m: emud.Machine) -> CodeCache | None:
        return getattr(m.core.hart.accel, "cache", None)

    with emud.Machine(IMAGES / "hello.elf") as m:
        assert (c := cache_of(m)) is not None and c.directory == tmp_path / "env"
    with emud.Machine(IMAGES / "hello.elf", translation_cache=tmp_path / "kw") as m:
        assert (c := cache_of(m)) is not None and c.directory == tmp_path / "kw"
    for off in (False, "off"):
        with emud.Machine(IMAGES / "hello.elf", translation_cache=off) as m:
            assert cache_of(m) is None
    with emud.Machine(IMAGES / "hello.elf", accel="interp") as m:
        assert m.core.hart.accel is None
    assert getattr(Machine().hart.accel, "cache", None) is None


def test_emud_run_flag_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                       ) -> None:
    """`emud run` gives the translator the user's cache, or the flag's directory (which
    wins over the variable's), or none with `--translation-cache off` or the variable
    off, or with --accel interp."""
    from emud import cli, foreground

    seen: list[CodeCache | None] = []

    def run(machine: Machine) -> int:  # instead of running: what did the translator get?
        seen.append(getattr(machine.hart.accel, "cache", None))
        return 0

    monkeypatch.setattr(foreground, "run", run)
    monkeypatch.setenv("EMUD_TRANSLATION_CACHE", str(tmp_path / "env"))
    image = str(IMAGES / "hello.elf")
    for args in ([], ["--translation-cache", str(tmp_path / "flag")],
                 ["--translation-cache", "off"], ["--accel", "interp"]):
        assert cli.main(["run", "-serial", "null", *args, image]) == 0
    monkeypatch.setenv("EMUD_TRANSLATION_CACHE", "off")
    assert cli.main(["run", "-serial", "null", image]) == 0
    assert [c.directory if c else None for c in seen] == [tmp_path / "env", tmp_path / "flag",
                                                          None, None, None]


WRITER = """
import sys
from emud.cpu import codecache
torn = 0
decode = codecache.decode
def counting(digest, blob):  # a file that is there but not whole: a torn write
    global torn
    code = decode(digest, blob)
    torn += code is None
    return code
codecache.decode = counting
cache = codecache.CodeCache(sys.argv[1])
codes = [compile(f"def region(x, r):\\n    return {n}, r\\n" + "#" * 4000 * n, "<r>", "exec")
         for n in range(4)]
bad = 0
for i in range(300):
    n = i % 4
    cache.put(bytes([n]), codes[n])
    got = cache.get(bytes([(i + 1) % 4]))
    if got is not None:
        ns = {}
        exec(got, ns)
        bad += ns["region"](None, 0)[0] != (i + 1) % 4
print(bad, cache.hits, torn)
"""


def test_two_processes_filling_one_cache(tmp_path: Path) -> None:
    """Two writers replacing the same entries (of different sizes) while reading them:
    every read is a whole entry of its own key or a miss, never half of one."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "tc")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [p.communicate(timeout=60) for p in procs]
    for out, err in results:
        assert err == "" and out.split()[0] == out.split()[2] == "0", (out, err)
    assert sum(int(out.split()[1]) for out, _ in results) > 0  # they did share entries
    assert not [p for p in (tmp_path / "tc").iterdir() if p.name.startswith(".")]
