"""Where emud listens: one address grammar and one way to bind, for --gdb, --qmp and -serial.

Every address option takes the same forms and fails the same way, with one
line naming the option.  Binding takes care of the file system, because a
failed start must never damage a daemon that is already running:

- a Unix socket is born 0600;
- only the runtime directory (`$XDG_RUNTIME_DIR/emud`, or `/tmp/emud-$UID/emud`)
  is ever created, and it is refused when another user could reach into it;
  any other socket's directory must already exist;
- at the socket's path, a live socket is "in use", a stale one (nobody
  accepts) is replaced, and anything else is refused, never deleted;
- a listener removes at close only the socket file it created itself.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, NamedTuple

from emud.hostfiles import SOCKET_UMASK, check_private_dir, ensure_private_dir, private_umask

LOOPBACK = "127.0.0.1"
FORMS = "use unix:PATH or tcp:HOST:PORT"
UNIX_PATH_MAX = 107  # sun_path is 108 bytes, the last one a NUL
_PORT = re.compile(r"[0-9]{1,5}")
if TYPE_CHECKING:  # asyncio and socket only when something listens (a plain run never)
    import asyncio
    import socket

    ClientHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class AddressError(ValueError):
    """A malformed address.  The message is one line; the caller adds the option's name."""


class ListenError(OSError):
    """Binding failed.  The message is one line and names the option."""


class Address(NamedTuple):
    kind: str  # "tcp" or "unix"
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"


def parse_address(text: str) -> Address:
    """`unix:PATH`, `tcp:HOST:PORT`, `tcp::PORT` (loopback), `tcp:[::1]:PORT`.

    Shorthands: `PORT` or `:PORT` is a loopback port (gdb's and QEMU's `-gdb`
    habit), and a bare PATH containing a `/` is a Unix socket (qemu.qmp's).
    Port 0 picks a free port.
    """
    if "\0" in text:
        raise AddressError(f"invalid address {text!r}: it contains a NUL byte")
    if text.startswith("unix:"):
        return _unix(text, text[5:])
    if text.startswith("tcp:"):
        return _tcp(text, text[4:])
    if re.fullmatch(r":?[0-9]+", text):
        return _tcp(text, text if text.startswith(":") else ":" + text)
    if "/" in text:
        return _unix(text, text)
    raise AddressError(f"invalid address {text!r} ({FORMS})")


def _unix(text: str, path: str) -> Address:
    if not path:
        raise AddressError(f"invalid address {text!r}: the path is empty ({FORMS})")
    size = len(os.fsencode(path))
    if size > UNIX_PATH_MAX:
        raise AddressError(f"invalid address {text!r}: the path is {size} bytes long, a Unix "
                           f"socket path holds at most {UNIX_PATH_MAX}")
    return Address("unix", path=path)


def _tcp(text: str, rest: str) -> Address:
    host, sep, port = rest.rpartition(":")
    if not sep:
        raise AddressError(f"invalid address {text!r}: no port ({FORMS})")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise AddressError(f"invalid address {text!r}: put an IPv6 host in brackets "
                           "(tcp:[::1]:PORT)")
    if "[" in host or "]" in host:
        raise AddressError(f"invalid address {text!r}: stray bracket in the host")
    if not _PORT.fullmatch(port):
        raise AddressError(f"invalid address {text!r}: port {port!r} is not a number in 0..65535")
    if int(port) > 65535:
        raise AddressError(f"invalid address {text!r}: port {port} is out of range (0..65535)")
    return Address("tcp", host=host or LOOPBACK, port=int(port))


# --- the runtime directory ----------------------------------------------------------------

def _runtime_base() -> tuple[str, bool]:
    """The per-user base directory, and whether emud may create it (only its own fallback)."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return (xdg, False) if xdg else (f"/tmp/emud-{os.getuid()}", True)


def runtime_dir() -> str:
    """The directory of emud's default sockets."""
    return os.path.join(_runtime_base()[0], "emud")


def default_socket_path() -> str:
    """Where `emud run --qmp` listens and `emud shell` connects when given no address."""
    return os.path.join(runtime_dir(), "qmp.sock")


def runtime_dirs() -> list[str]:
    """The directories a client must check before trusting a socket in `runtime_dir()`."""
    base = _runtime_base()[0]
    return [base, os.path.join(base, "emud")]


def prepare_runtime_dir() -> None:
    """Create what is missing of the runtime directory (0700) and refuse an unsafe one.

    A `/tmp/emud-$UID` made by another user, or one others may write to, could
    hold their socket in place of ours (the check ssh-agent and tmux make).
    """
    base, ours = _runtime_base()
    if ours:
        ensure_private_dir(base)
    else:
        check_private_dir(base)
    ensure_private_dir(os.path.join(base, "emud"))


# --- binding --------------------------------------------------------------------------------

def _clear_path(path: str) -> None:
    """Make room for a socket at `path`: only a stale socket is removed."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, "the path exists and is not a socket (it is left alone)")
    import socket

    with socket.socket(socket.AF_UNIX) as probe:
        probe.setblocking(False)  # a full backlog answers EAGAIN instead of blocking us
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)  # nobody accepts: left over from a run that died
            return
        except BlockingIOError:
            pass
    raise OSError(errno.EADDRINUSE, "in use by a running program")


def _bind_unix(path: str) -> socket.socket:
    directory = os.path.dirname(os.path.abspath(path))
    if directory == os.path.abspath(runtime_dir()):
        prepare_runtime_dir()
    elif not os.path.isdir(directory):
        raise OSError(errno.ENOENT, f"directory {directory} does not exist")
    _clear_path(path)
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with private_umask(SOCKET_UMASK):  # born 0600: no window in which others can connect
            sock.bind(path)
        sock.listen()
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_tcp(address: Address) -> socket.socket:
    import socket

    infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen()
    except BaseException:
        sock.close()
        raise
    return sock


def _reason(error: Exception) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror[0].lower() + error.strerror[1:]
    return str(error)


class Listener:
    """A listening socket bound for one option (`--qmp`, …), to hand to an asyncio server.

    Raises ListenError naming the option.  `close` unlinks the socket file only
    if it is still the one this listener created.
    """

    def __init__(self, option: str, address: Address) -> None:
        self.option = option
        try:
            self.sock = _bind_unix(address.path) if address.kind == "unix" else _bind_tcp(address)
        except (OSError, ValueError) as e:  # ValueError: e.g. an IDNA host name too long
            raise ListenError(f"{option}: cannot listen on {address}: {_reason(e)}") from None
        self._created: tuple[int, int] | None = None
        if address.kind == "unix":
            st = os.lstat(address.path)
            self._created = (st.st_dev, st.st_ino)
            self.address = address
        else:
            host, port = self.sock.getsockname()[:2]
            self.address = Address("tcp", host=host, port=port)

    def __str__(self) -> str:
        """The bound address (the real port when port 0 was asked for)."""
        return str(self.address)

    async def start_server(self, connected: ClientHandler) -> asyncio.Server:
        """An asyncio stream server calling `connected` for each client of this socket."""
        import asyncio

        if self.address.kind == "unix":
            return await asyncio.start_unix_server(connected, sock=self.sock)
        return await asyncio.start_server(connected, sock=self.sock)

    def close(self) -> None:
        self.sock.close()
        created, self._created = self._created, None
        if created is None:
            return
        with contextlib.suppress(OSError):
            st = os.lstat(self.address.path)
            if (st.st_dev, st.st_ino) == created:
                os.unlink(self.address.path)
