"""Semihosting, the host side: the calls a guest makes with `slli; ebreak; srai`.

The hart spots the sequence (emud/cpu/semihosting.py) and calls `Semihosting.call`
with a0 = operation, a1 = parameter (a value or a pointer to a block of 32-bit
words); the result goes to a0.  Operations and numbering follow the Arm
semihosting specification as RISC-V adopts it, with the 32-bit (AArch32)
semantics on RV32; where it is silent, QEMU 7.2 decides.

What the guest can reach (README "Semihosting", docs/semihosting.md):
- the console, one character backend: SYS_WRITEC/WRITE0, and READ/WRITE on the
  ":tt" handles.  A read with no input makes the hart wait like WFI and retry
  when input arrives, so the event loop never blocks;
- virtual time only (CLOCK, TIME from a fixed epoch, ELAPSED, TICKFREQ), so runs
  stay deterministic in icount mode;
- host files only when a directory was given, and only below it: every path is
  walked component by component from the directory with O_NOFOLLOW, so neither
  "..", an absolute path nor a symlink leads out.

Guest memory is read and written in RAM only (a pointer elsewhere is an error
return, never an exception out of the CPU, and never an MMIO side effect).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

from emud.chardev import CharBackend
from emud.cpu.semihosting import is_call as is_semihosting_call
from emud.hostfiles import private_umask, restrict

if TYPE_CHECKING:
    from emud.cpu.hart import Hart
    from emud.memory import AddressSpace

M = 0xFFFF_FFFF



class Sys(IntEnum):
    """Operation numbers (a0)."""

    OPEN = 0x01
    CLOSE = 0x02
    WRITEC = 0x03
    WRITE0 = 0x04
    WRITE = 0x05
    READ = 0x06
    READC = 0x07
    ISERROR = 0x08
    ISTTY = 0x09
    SEEK = 0x0A
    FLEN = 0x0C
    TMPNAM = 0x0D
    REMOVE = 0x0E
    RENAME = 0x0F
    CLOCK = 0x10
    TIME = 0x11
    SYSTEM = 0x12
    ERRNO = 0x13
    GET_CMDLINE = 0x15
    HEAPINFO = 0x16
    EXIT = 0x18
    EXIT_EXTENDED = 0x20
    ELAPSED = 0x30
    TICKFREQ = 0x31


ADP_STOPPED_APPLICATION_EXIT = 0x20026
TICK_HZ = 1_000_000_000  # SYS_ELAPSED counts virtual nanoseconds
# SYS_TIME: seconds of virtual time after this fixed epoch (2026-01-01 00:00:00 UTC),
# not the host's clock, so that the same inputs give the same bytes.
TIME_EPOCH = 1_767_225_600

# The ":semihosting-features" file: magic, then one byte of feature bits
# (EXIT_EXTENDED, and ":tt" opened for append being stderr).
FEATURES = b"SHFB\x03"
MAX_HANDLES = 64  # open guest files; one more gets EMFILE
MAX_PATH = 4096
# One READ/WRITE moves at most this much per call (the guest sees a short count and
# retries), so a call never stalls the event loop for long.
MAX_TRANSFER = 1 << 20

# SYS_OPEN modes (r, rb, r+, r+b, w, wb, w+, w+b, a, ab, a+, a+b) -> host flags
OPEN_FLAGS = (os.O_RDONLY, os.O_RDWR, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
              os.O_RDWR | os.O_CREAT | os.O_TRUNC, os.O_WRONLY | os.O_CREAT | os.O_APPEND,
              os.O_RDWR | os.O_CREAT | os.O_APPEND)
STDIN, STDOUT, STDERR = "stdin", "stdout", "stderr"


class GuestError(Exception):
    """A call fails: a0 gets -1 (or the call's own failure value), errno `code`."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True)
class SemihostingConfig:
    files_dir: str | None = None  # None: no file calls (console ones only)
    cmdline: str | None = None  # SYS_GET_CMDLINE; None: the image's path


class _Features:
    """The read-only in-memory ":semihosting-features" file."""

    def __init__(self) -> None:
        self.pos = 0


Handle = int | str | _Features  # a host fd, a console stream, or the features file


class Semihosting:
    """The handler the hart calls; also the console backend's front end (input)."""

    def __init__(self, config: SemihostingConfig, console: CharBackend,
                 poweroff: Callable[[int], None]) -> None:
        self.config = config
        self.console = console
        self.poweroff = poweroff
        self.errno = 0
        self.heap_base = 0  # first byte after the image (Machine.load sets it)
        self.cmdline = config.cmdline or ""  # Machine.load fills in the default
        self.handles: dict[int, Handle] = {}
        self.input = bytearray()  # filled only inside _take_input (see can_receive)
        self._wanted = 0
        self.dir_fd: int | None = None
        if config.files_dir is not None:
            self.dir_fd = os.open(config.files_dir,
                                  os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        console.attach(self)

    def close(self) -> None:
        for handle in self.handles.values():
            if isinstance(handle, int):
                os.close(handle)
        self.handles.clear()
        if self.dir_fd is not None:
            os.close(self.dir_fd)
            self.dir_fd = None

    # --- console input (CharFrontend) ---------------------------------------------------

    def can_receive(self) -> int:
        # Console input waits in the backend until a READ/READC takes it: the handler
        # holds none between instructions, so the machine's state (snapshots, replay
        # checkpoints) never misses input taken ahead.
        return self._wanted - len(self.input)

    def receive(self, data: bytes) -> int:
        self.input += data
        return len(data)

    def input_ready(self, hart: Hart) -> bool:
        """Whether a hart waiting in a console read can run it again now.

        Judged from the hart's state alone (its pc is at a READC or READ call), so it
        holds after a snapshot of a waiting hart is loaded too.
        """
        return bool(self.console.pending_input) and hart.x[10] in (Sys.READC, Sys.READ) and \
            is_semihosting_call(hart, hart.pc)

    def _take_input(self, count: int) -> bytes | None:
        self._wanted = count
        self.console.accept_input()  # receive() takes up to `count` held bytes
        self._wanted = 0
        data = bytes(self.input)
        self.input.clear()
        return data or None

    # --- the call ------------------------------------------------------------------

    def call(self, hart: Hart) -> bool:
        op, arg = hart.x[10], hart.x[11]
        try:
            result = self._dispatch(hart, op, arg)
        except GuestError as e:
            self.errno = e.code
            result = -1
        except OSError as e:  # any other host failure (fstat, close...) is the guest's error
            self.errno = _host_errno(e)
            result = -1
        if result is None:  # Machine wakes the hart when input_ready
            hart.waiting = True
            return False
        hart.x[10] = result & M
        return True

    def _dispatch(self, hart: Hart, op: int, arg: int) -> int | None:
        mem = Memory(hart.bus)
        match op:
            case Sys.WRITEC:
                self.console.transmit(mem.read(arg, 1))
                return 0
            case Sys.WRITE0:
                self.console.transmit(mem.string(arg))
                return 0
            case Sys.READC:
                data = self._take_input(1)
                return data[0] if data else None
            case Sys.OPEN:
                path, mode, length = mem.words(arg, 3)
                return self._open(mem.read(path, length) if length <= MAX_PATH else b"", mode)
            case Sys.CLOSE:
                fd = mem.word(arg)
                handle = self._handle(fd)
                del self.handles[fd]
                if isinstance(handle, int):
                    os.close(handle)
                return 0
            case Sys.WRITE:  # returns the bytes NOT written
                fd, buf, length = mem.words(arg, 3)
                count = min(length, MAX_TRANSFER)
                return length - self._write(self._handle(fd), mem.read(buf, count))
            case Sys.READ:  # returns the bytes NOT read
                fd, buf, length = mem.words(arg, 3)
                mem.check(buf, length)
                data = self._read(self._handle(fd), min(length, MAX_TRANSFER))
                if data is None:
                    return None
                mem.write(buf, data)
                return length - len(data)
            case Sys.ISERROR:
                return int(mem.word(arg) & 0x8000_0000 != 0)
            case Sys.ISTTY:
                return int(isinstance(self._handle(mem.word(arg)), str))
            case Sys.SEEK:
                fd, pos = mem.words(arg, 2)
                self._seek(self._handle(fd), pos)
                return 0
            case Sys.FLEN:
                return self._flen(self._handle(mem.word(arg)))
            case Sys.REMOVE:  # 0, or the host's error number
                path, length = mem.words(arg, 2)
                return self._host_call(lambda: self._remove(mem.read(path, length)))
            case Sys.RENAME:
                old, old_len, new, new_len = mem.words(arg, 4)
                return self._host_call(lambda: self._rename(mem.read(old, old_len),
                                                            mem.read(new, new_len)))
            case Sys.CLOCK:  # centiseconds of virtual time
                return hart.clock.now_ns // 10_000_000
            case Sys.TIME:
                return TIME_EPOCH + hart.clock.now_ns // 1_000_000_000
            case Sys.ERRNO:
                return self.errno
            case Sys.GET_CMDLINE:  # block [buffer, size] -> size becomes the length
                buf, size = mem.words(arg, 2)
                text = self.cmdline.encode()
                if len(text) + 1 > size:
                    raise GuestError(errno.E2BIG)
                mem.write(buf, text + b"\0")
                mem.write(arg + 4, len(text).to_bytes(4, "little"))
                return 0
            case Sys.HEAPINFO:  # block [pointer to 4 words]
                ram = hart.bus.ram
                top = ram.base + ram.size
                base = min(max(self.heap_base, ram.base), top)
                mem.write(mem.word(arg), b"".join(
                    v.to_bytes(4, "little") for v in (base, top, top, base)))
                return 0
            case Sys.EXIT:  # on RV32 a1 is the reason itself (AArch32 semantics)
                self.poweroff(0 if arg == ADP_STOPPED_APPLICATION_EXIT else 1)
                return 0
            case Sys.EXIT_EXTENDED:  # block [reason, subcode]
                reason, code = mem.words(arg, 2)
                self.poweroff(code if reason == ADP_STOPPED_APPLICATION_EXIT else 1)
                return 0
            case Sys.ELAPSED:  # block <- 64-bit tick count
                mem.write(arg, (hart.clock.now_ns & ((1 << 64) - 1)).to_bytes(8, "little"))
                return 0
            case Sys.TICKFREQ:
                return TICK_HZ
        # SYS_SYSTEM, SYS_TMPNAM and unknown operations are refused.
        raise GuestError(errno.ENOSYS)

    # --- handles ---------------------------------------------------------------------

    def _handle(self, fd: int) -> Handle:
        handle = self.handles.get(fd)
        if handle is None:
            raise GuestError(errno.EBADF)
        return handle

    def _new_handle(self, handle: Handle) -> int:
        # The lowest free number from 1: 0 is never a handle (picolibc treats it as
        # valid, but the spec reserves -1 only; starting at 1 avoids confusing both).
        fd = next(n for n in range(1, MAX_HANDLES + 2) if n not in self.handles)
        if fd > MAX_HANDLES:
            if isinstance(handle, int):
                os.close(handle)
            raise GuestError(errno.EMFILE)
        self.handles[fd] = handle
        return fd

    def _open(self, raw: bytes, mode: int) -> int:
        if mode > 11:
            raise GuestError(errno.EINVAL)
        name = raw.decode(errors="surrogateescape")
        if name == ":tt":
            return self._new_handle((STDIN, STDOUT, STDERR)[min(mode >> 2, 2)])
        if name == ":semihosting-features":
            if mode >> 1:
                raise GuestError(errno.EACCES)
            return self._new_handle(_Features())
        parent, leaf = self._resolve(raw)
        flags = OPEN_FLAGS[mode >> 1] | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            try:
                with private_umask():
                    fd = os.open(leaf, flags, 0o600, dir_fd=parent)
            finally:
                os.close(parent)
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # no FIFOs, devices, directories
                os.close(fd)
                raise GuestError(errno.EACCES)
            if flags & os.O_CREAT:
                restrict(fd)
            os.set_blocking(fd, True)
        except OSError as e:
            raise GuestError(_host_errno(e)) from None
        return self._new_handle(fd)

    def _resolve(self, raw: bytes) -> tuple[int, str]:
        """The directory fd holding a guest path's last component, and that name.

        Relative paths only, no "..", and every directory on the way is opened with
        O_NOFOLLOW from the one before: the walk cannot leave `files_dir`.
        """
        if self.dir_fd is None:
            raise GuestError(errno.EACCES)  # file calls need --semihosting-dir
        if not raw or b"\0" in raw or raw.startswith(b"/"):
            raise GuestError(errno.EACCES if raw.startswith(b"/") else errno.ENOENT)
        parts = [p.decode(errors="surrogateescape") for p in raw.split(b"/") if p not in
                 (b"", b".")]
        if not parts or ".." in parts:
            raise GuestError(errno.EACCES)
        fd = os.dup(self.dir_fd)
        try:
            for part in parts[:-1]:
                next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                  | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = next_fd
        except OSError as e:
            os.close(fd)
            raise GuestError(_host_errno(e)) from None
        return fd, parts[-1]

    def _remove(self, raw: bytes) -> None:
        parent, leaf = self._resolve(raw)
        try:
            os.unlink(leaf, dir_fd=parent)
        finally:
            os.close(parent)

    def _rename(self, old: bytes, new: bytes) -> None:
        old_parent, old_leaf = self._resolve(old)
        try:
            new_parent, new_leaf = self._resolve(new)
            try:
                os.rename(old_leaf, new_leaf, src_dir_fd=old_parent, dst_dir_fd=new_parent)
            finally:
                os.close(new_parent)
        finally:
            os.close(old_parent)

    def _host_call(self, action: Callable[[], None]) -> int:
        """REMOVE and RENAME return 0 or an error number (and set errno)."""
        try:
            action()
        except OSError as e:
            self.errno = _host_errno(e)
            return self.errno
        except GuestError as e:
            self.errno = e.code
            return e.code
        return 0

    def _write(self, handle: Handle, data: bytes) -> int:
        if isinstance(handle, str):
            if handle == STDIN:
                raise GuestError(errno.EBADF)
            self.console.transmit(data)
            return len(data)
        if isinstance(handle, _Features):
            raise GuestError(errno.EBADF)
        try:
            return os.write(handle, data)
        except OSError as e:
            raise GuestError(_host_errno(e)) from None

    def _read(self, handle: Handle, count: int) -> bytes | None:
        """The bytes read (b"" at end of file); None: wait for console input."""
        if isinstance(handle, str):
            if handle != STDIN:
                raise GuestError(errno.EBADF)
            if not count:
                return b""
            return self._take_input(min(count, MAX_TRANSFER))
        if isinstance(handle, _Features):
            data = FEATURES[handle.pos:handle.pos + count]
            handle.pos += len(data)
            return data
        try:
            return os.read(handle, count)
        except OSError as e:
            raise GuestError(_host_errno(e)) from None

    def _seek(self, handle: Handle, pos: int) -> None:
        if isinstance(handle, str):
            raise GuestError(errno.ESPIPE)
        if isinstance(handle, _Features):
            handle.pos = pos
            return
        try:
            os.lseek(handle, pos, os.SEEK_SET)
        except OSError as e:
            raise GuestError(_host_errno(e)) from None

    def _flen(self, handle: Handle) -> int:
        if isinstance(handle, str):
            raise GuestError(errno.ESPIPE)
        if isinstance(handle, _Features):
            return len(FEATURES)
        return min(os.fstat(handle).st_size, 0x7FFF_FFFF)


def _host_errno(e: OSError) -> int:
    # A symlink met with O_NOFOLLOW is ELOOP (or ENOTDIR on the way): the guest sees
    # EACCES, the same as for any other path that would leave the directory.
    if e.errno in (errno.ELOOP, errno.ENOTDIR) and not isinstance(e, FileNotFoundError):
        return errno.EACCES
    return e.errno or errno.EIO


class Memory:
    """Guest RAM as the handler reaches it; anything outside RAM is EFAULT."""

    def __init__(self, bus: AddressSpace) -> None:
        self.bus = bus
        self.ram = bus.ram

    def check(self, addr: int, length: int) -> int:
        if length and not self.ram.contains(addr, length):
            raise GuestError(errno.EFAULT)
        return addr - self.ram.base

    def read(self, addr: int, length: int) -> bytes:
        offset = self.check(addr, length)
        return bytes(self.ram.data[offset:offset + length])

    def write(self, addr: int, data: bytes) -> None:
        self.check(addr, len(data))
        self.bus.write_bytes(addr, data)  # drops predecoded code it overwrites

    def word(self, addr: int) -> int:
        return int.from_bytes(self.read(addr, 4), "little")

    def words(self, addr: int, n: int) -> list[int]:
        data = self.read(addr, 4 * n)
        return [int.from_bytes(data[i:i + 4], "little") for i in range(0, 4 * n, 4)]

    def string(self, addr: int) -> bytes:
        """A NUL-terminated string (WRITE0); unterminated within RAM is EFAULT."""
        offset = self.check(addr, 1)
        end = self.ram.data.find(b"\0", offset, offset + MAX_TRANSFER)
        if end < 0:
            raise GuestError(errno.EFAULT)
        return bytes(self.ram.data[offset:end])
