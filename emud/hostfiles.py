"""Files, directories and sockets emud creates on the host are private to the user.

Every file emud creates is mode 0600 and every directory 0700, whatever the
umask: guest RAM in a snapshot store or a serial log is nobody else's
business.  A directory emud reuses (the runtime directory with the QMP
socket, the state directory with the stores) must belong to the user and be
closed to others, as ssh-agent and tmux insist, or another local user could
swap in a socket of their own.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700
SOCKET_UMASK = 0o177  # a Unix socket is born 0777 & ~umask: this makes it 0600


class UnsafePathError(OSError):
    """A directory or file that emud refuses to use; the message says why, in one line."""


def check_private_dir(path: str | Path, forbidden: int = 0o077) -> None:
    """Refuse a directory that is a symlink, not the user's, or open to group or others.

    `forbidden` are the mode bits that must be clear (0o022: others may look but not write).
    """
    try:
        st = os.lstat(path)
    except OSError as e:
        raise UnsafePathError(f"cannot use directory {path}: {e.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(f"refusing directory {path}: it is a symbolic link")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"refusing {path}: not a directory")
    if st.st_uid != os.getuid():
        raise UnsafePathError(f"refusing directory {path}: owned by uid {st.st_uid}, "
                              f"not by you (uid {os.getuid()})")
    if st.st_mode & forbidden:
        raise UnsafePathError(f"refusing directory {path}: mode {stat.S_IMODE(st.st_mode):04o} "
                              "lets other users in (chmod 700 it)")


def ensure_private_dir(path: str | Path) -> Path:
    """Create `path` and its missing parents with mode 0700, then check `path` as above.

    Parents that already exist are left as they are (they are the user's own
    business, e.g. ~/.local/state); only the directory emud uses itself must be private.
    """
    path = Path(path)
    with private_umask():
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    check_private_dir(path)
    return path


@contextlib.contextmanager
def private_umask(mask: int = 0o077) -> Iterator[None]:
    """Files made inside are born 0600 and directories 0700: no window for others.

    A socket takes its mode from the umask alone (0777 masked), so binding one
    needs SOCKET_UMASK to be born 0600.
    """
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def open_private(path: str | Path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> int:
    """os.open for a file emud writes: never through a symlink, and 0600 afterwards.

    An existing file of the user's keeps its contents policy (flags decide) but
    loses any group or other access bits.
    """
    with private_umask():
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        restrict(fd)
    except OSError:
        os.close(fd)
        raise
    return fd


def restrict(fd: int) -> None:
    """Take group and other access away from an open regular file (never a device or FIFO)."""
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode) and stat.S_IMODE(mode) & 0o077:
        os.fchmod(fd, FILE_MODE)
