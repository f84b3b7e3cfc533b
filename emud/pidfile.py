"""`--pidfile FILE`: written once the daemon serves, removed only by the daemon that wrote it.

A pidfile naming a live process means another emud (or whatever now has
that pid) owns it: the start is refused before anything is created.  One
naming a dead process, or holding no pid, is stale and is replaced.  A path
that is not a regular file (a symlink, a directory, a FIFO) is refused.
"""

from __future__ import annotations

import contextlib
import os
import stat

from emud.hostfiles import open_private

MAX_SIZE = 64  # a pid and a newline; more is not a pidfile of ours


class PidfileError(OSError):
    """The message is one line and names the option."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # exists, but belongs to someone else
        return True
    return True


def read_pid(path: str) -> int | None:
    """The pid in a regular file at `path`, None if there is none (missing or not a pid)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        text = f.read(MAX_SIZE + 1)
    if len(text) > MAX_SIZE or not text.strip().isdigit():
        return None
    return int(text)


class Pidfile:
    def __init__(self, path: str) -> None:
        self.path = path
        self._pid: int | None = None  # set once written, by the process that wrote it

    def check(self) -> None:
        """Refuse to start over a live pidfile or a path that is not a regular file."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            if not os.path.isdir(os.path.dirname(os.path.abspath(self.path))):
                raise PidfileError(f"--pidfile {self.path}: its directory does not exist") \
                    from None
            return
        except OSError as e:
            raise PidfileError(f"--pidfile {self.path}: {e.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise PidfileError(f"--pidfile {self.path}: not a regular file (it is left alone)")
        pid = read_pid(self.path)
        if pid is not None and pid != os.getpid() and _alive(pid):
            raise PidfileError(f"--pidfile {self.path}: in use by running process {pid}")

    def write(self) -> None:
        pid = os.getpid()
        try:
            fd = open_private(self.path)
        except OSError as e:
            raise PidfileError(f"--pidfile {self.path}: cannot write: {e.strerror}") from None
        with os.fdopen(fd, "w") as f:
            f.write(f"{pid}\n")
        self._pid = pid

    def remove(self) -> None:
        """Unlink the pidfile if this process wrote it and it still names this process."""
        if self._pid is not None and self._pid == os.getpid() and read_pid(self.path) == self._pid:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        self._pid = None
