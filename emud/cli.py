"""Command line: `emud run IMAGE …`, `emud shell`.  Parsing only; the work happens elsewhere."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import Callable

from emud import trace
from emud.chardev import SocketServerBackend, StdioBackend, open_backend
from emud.daemon import Daemon, Detached, terminal_cbreak
from emud.device import DeviceError
from emud.gdbserver import start_gdb_server
from emud.loader import ImageError, load_elf
from emud.machine import ACCELERATORS, DEFAULT_ACCEL, DEFAULT_RAM_SIZE, Machine
from emud.monitor import Monitor, SnapshotService
from emud.monitor.qmp import QmpServer, default_socket_path
from emud.snapshots import ExportDir, StoreError
from gdbstub.server import Address, parse_address

GDB_DEFAULT = "tcp:127.0.0.1:1234"  # QEMU's -s, but on loopback
_SIZE = re.compile(r"^(\d+)([KMGkmg]?)[iI]?[bB]?$")


def parse_size(text: str) -> int:
    """QEMU's -m syntax: a number with an optional K/M/G suffix; no suffix means MiB."""
    match = _SIZE.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"invalid memory size {text!r} (e.g. 16M, 1G)")
    unit = {"": 20, "K": 10, "M": 20, "G": 30}[match.group(2).upper()]
    size = int(match.group(1)) << unit
    if size < 64 << 10 or size % 4096 or size > 2 << 30:
        raise argparse.ArgumentTypeError(
            f"memory size {text!r} must be a multiple of 4 KiB between 64K and 2G"
        )
    return size


def parse_icount(text: str) -> int:
    match = re.fullmatch(r"(?:shift=)?(\d+)", text)
    if not match or int(match.group(1)) > 10:
        raise argparse.ArgumentTypeError(f"invalid --icount {text!r} (use shift=N, N in 0..10)")
    return int(match.group(1))


def parse_gdb_address(text: str) -> Address:
    try:
        return parse_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


async def serve(daemon: Daemon, gdb: Address | None, qmp: str | None = None,
                ready: Callable[[str], None] | None = None) -> int:
    """Start the control planes, then run the machine until quit.

    `ready` gets the banner (where everything listens) once all sockets are up.
    """
    banner = []
    server = await start_gdb_server(daemon, gdb) if gdb else None
    if server:
        banner.append(f"emud: gdb server listening on {server.address}")
    qmp_server = QmpServer(Monitor(daemon), qmp) if qmp else None
    if qmp_server:
        await qmp_server.start()
        banner.append(f"emud: QMP listening on {qmp_server.description}")
    serial = daemon.machine.serial
    await serial.start(daemon.wake.set)
    if isinstance(serial, SocketServerBackend):
        banner.append(f"emud: serial0 (PL011) listening on {serial.describe()}")
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, daemon.quit, "host-signal")
    text = "".join(line + "\n" for line in banner)
    if ready:
        ready(text)
    else:
        print(text, end="", file=sys.stderr, flush=True)
    try:
        return await daemon.run()
    finally:
        if qmp_server:
            await qmp_server.close()
        if server:
            await server.close()


def parse_globals(items: list[str]) -> dict[str, dict[str, str]]:
    """QEMU's -global DEVICE.PROP=VALUE, collected per device (values parsed at realize)."""
    props: dict[str, dict[str, str]] = {}
    for item in items:
        match = re.fullmatch(r"([\w-]+)\.([\w-]+)=(.*)", item)
        if not match:
            raise ValueError(f"invalid -global {item!r} (use DEVICE.PROP=VALUE)")
        props.setdefault(match.group(1), {})[match.group(2)] = match.group(3)
    return props


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emud", description="emulator daemon for emud-virt")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run an ELF image")
    run.add_argument("image", nargs="?", help="RISC-V RV32 ELF file")
    run.add_argument("-m", dest="memory", type=parse_size, default=DEFAULT_RAM_SIZE,
                     metavar="SIZE", help="RAM size (default 16M)")
    run.add_argument("-serial", "--serial", dest="serial", metavar="DEV",
                     help="PL011 backend: stdio (default; ringbuf with --daemonize), file:PATH, "
                          "ringbuf, null, unix:PATH,server, tcp:HOST:PORT,server")
    run.add_argument("--icount", type=parse_icount, default=0, metavar="shift=N",
                     help="virtual time per instruction is 2**N ns (default 0)")
    run.add_argument("--accel", choices=ACCELERATORS, default=DEFAULT_ACCEL,
                     help=f"interp: the reference interpreter; translate: hot code compiled to "
                          f"Python, same results (default {DEFAULT_ACCEL})")
    run.add_argument("--gdb", type=parse_gdb_address, metavar="tcp:HOST:PORT|unix:PATH",
                     help="serve the GDB remote protocol (the daemon outlives gdb sessions)")
    run.add_argument("-s", dest="gdb", action="store_const", const=parse_gdb_address(GDB_DEFAULT),
                     help=f"shorthand for --gdb {GDB_DEFAULT}")
    run.add_argument("-S", dest="paused", action="store_true",
                     help="start with the guest paused (e.g. until gdb continues)")
    run.add_argument("--qmp", nargs="?", const=default_socket_path(),
                     metavar="unix:PATH|tcp:HOST:PORT",
                     help=f"serve QMP (default address {default_socket_path()}, mode 0600)")
    run.add_argument("--daemonize", "--daemon", action="store_true",
                     help="detach once the sockets listen; guest power-off does not end emud "
                          "(stop it with QMP/shell `quit` or SIGTERM)")
    run.add_argument("--pidfile", metavar="FILE", help="write the daemon's pid to FILE")
    run.add_argument("--snapshots", metavar="PATH",
                     help="SQLite snapshot store for savevm/loadvm (default: one file per image "
                          "under $XDG_STATE_HOME/emud/snapshots)")
    run.add_argument("--export-dir", metavar="DIR",
                     help="the only directory snapshot export/import use, by file name (an "
                          "existing private directory; default $XDG_STATE_HOME/emud/exports)")
    run.add_argument("--tcp-host-files", action="store_true",
                     help="allow snapshot export/import through gdb or QMP on TCP, which every "
                          "local user can reach (refused there by default)")
    run.add_argument("--trace", "-trace", dest="trace", action="append", default=[],
                     metavar="PATTERN",
                     help="enable trace events matching the glob (QEMU's names, e.g. 'hpet_*'; "
                          "--trace=-PATTERN disables; 'help' lists them); lines go to stderr")
    run.add_argument("-global", "--global", dest="globals", action="append", default=[],
                     metavar="DEVICE.PROP=VALUE",
                     help="set a device property, e.g. hpet.timers=8 or pl011.migrate-clk=off")
    shell = commands.add_parser("shell", help="interactive monitor shell (a QMP client)")
    shell.add_argument("--qmp", default=default_socket_path(), metavar="unix:PATH|tcp:HOST:PORT",
                       help=f"the daemon's QMP socket (default {default_socket_path()})")
    shell.add_argument("-c", dest="script", metavar="'CMD; CMD'",
                       help="run these monitor commands and exit (status 1 on the first error)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "shell":
        from shell.main import run_shell

        return run_shell(args.qmp, args.script)
    if "help" in args.trace:
        print("\n".join(ev.name for ev in trace.events()))
        return 0
    if args.image is None:
        print("emud run: error: the following arguments are required: image", file=sys.stderr)
        return 2
    try:
        for pattern in args.trace:
            trace.enable(pattern)
        device_props = parse_globals(args.globals)
        if args.export_dir:
            ExportDir(args.export_dir).check()  # refuse an unsafe directory now, not later
    except (ValueError, StoreError) as e:
        print(f"emud: {e}", file=sys.stderr)
        return 1
    if args.serial is None:
        args.serial = "ringbuf" if args.daemonize else "stdio"
    if args.daemonize and args.serial == "stdio":
        print("emud: --daemonize cannot use -serial stdio (try unix:PATH,server)", file=sys.stderr)
        return 1
    try:
        serial = open_backend(args.serial)
        machine = Machine(serial, ram_size=args.memory, icount_shift=args.icount,
                          accel=args.accel, device_props=device_props)
        machine.load(load_elf(args.image))
    except (ImageError, ValueError, DeviceError) as e:
        print(f"emud: {e}", file=sys.stderr)
        return 1
    detached = Detached() if args.daemonize else None
    if args.pidfile:
        with open(args.pidfile, "w") as f:
            f.write(f"{os.getpid()}\n")
    # With a control plane attached, guest power-off is reported there, not the end.
    daemon = Daemon(machine, start_paused=args.paused,
                    exit_on_poweroff=not (args.gdb or args.qmp or args.daemonize))
    daemon.snapshots = SnapshotService(daemon, args.snapshots, export_dir=args.export_dir,
                                       tcp_host_files=args.tcp_host_files)  # opens on first use
    try:
        with terminal_cbreak() if isinstance(serial, StdioBackend) else contextlib.nullcontext():
            return asyncio.run(serve(daemon, args.gdb, args.qmp,
                                     detached.ready if detached else None))
    except OSError as e:
        message = f"emud: cannot listen: {e}\n"
        if detached:
            detached.fail(message)
        print(message, end="", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        serial.close()
        if args.pidfile:
            with contextlib.suppress(OSError):
                os.unlink(args.pidfile)


if __name__ == "__main__":
    sys.exit(main())
