"""Command line: `emud run IMAGE …`, `emud shell`.  Parsing only; the work happens elsewhere."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

from emud import __version__
from emud.device import DeviceError
from emud.listen import (
    Address,
    AddressError,
    Listener,
    ListenError,
    default_socket_path,
    parse_address,
    runtime_dirs,
)

# A plain `emud run` imports only what it uses (tests/test_startup.py): the control
# planes, snapshots, record/replay and the timeline are imported where they are needed.
if TYPE_CHECKING:
    from emud.board import Board, Slot
    from emud.chardev import CharBackend
    from emud.daemon import Daemon
    from emud.machine import Machine
    from emud.replay import Replay
    from emud.replay.sessionfile import SessionWriter

GDB_DEFAULT = "tcp:127.0.0.1:1234"  # QEMU's -s, but on loopback
_SIZE = re.compile(r"^(\d+)([KMGkmg]?)[iI]?[bB]?$")


def parse_budget(text: str) -> int:
    """--replay-budget: bytes with an optional K/M/G suffix; 0 turns reverse execution off."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    number, unit = (text[:-1], units[text[-1].lower()]) if text[-1:].lower() in units \
        else (text, 1)
    if not number.isdigit():
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (e.g. 256M, 1G, 0)")
    size = int(number) * unit
    if 0 < size < 32 << 20:
        raise argparse.ArgumentTypeError(f"replay budget {text!r} is below 32M (two "
                                         "checkpoints of RAM must fit), or 0 for off")
    return size


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


def address_type(text: str) -> Address:
    """An address option's value (--gdb, --qmp, shell --qmp): argparse names the option."""
    try:
        return parse_address(text)
    except AddressError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_semihosting_config(text: str) -> tuple[bool, str | None]:
    """QEMU's -semihosting-config: (enabled, command line or None).  Only what emud
    means the same way is accepted: file access still needs --semihosting-dir."""
    enabled, args = False, []
    for item in text.split(","):
        key, _, value = item.partition("=")
        if key == "enable" and value in ("on", "off"):
            enabled = value == "on"
        elif key == "target" and value in ("native", "auto"):
            pass  # emud is the only host there is
        elif key == "arg":
            args.append(value)
        else:
            raise argparse.ArgumentTypeError(
                f"unsupported -semihosting-config item {item!r} (enable=on|off, "
                "target=native|auto, arg=TEXT; the console is --semihosting-console)")
    return enabled, " ".join(args) if args else None


def serial_type(text: str) -> str:
    """-serial: a socket's address is checked here like the other address options."""
    if text.startswith(("unix:", "tcp:")):
        from emud.chardev import parse_serial_socket

        try:
            parse_serial_socket(text)
        except AddressError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return text


class TraceAction(argparse.Action):
    """--trace PATTERN (repeatable); `--trace help` lists the events and exits, those of
    the -device plug-ins given before it too (it needs no image)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        if values == "help":
            from emud import trace

            try:
                build_board(getattr(namespace, "board", None), getattr(namespace, "devices", []))
            except DeviceError as e:
                parser.exit(1, f"emud: {e}\n")
            print("\n".join(ev.name for ev in trace.events()))
            parser.exit()
        setattr(namespace, self.dest, [*getattr(namespace, self.dest), values])  # default kept


class LogAction(argparse.Action):
    """-d ITEM[,ITEM...] (QEMU's log items); `-d help` lists them and exits."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        from emud import log

        if values == "help":
            print(log.help_text())
            parser.exit()
        try:
            setattr(namespace, self.dest, log.parse_items(str(values)))
        except ValueError as e:
            parser.error(str(e))


class DeviceAction(argparse.Action):
    """-device SPEC (repeatable); `-device help` lists the types, `-device TYPE,help` a
    type's properties (QEMU's), and both exit."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        from emud.board import BoardError, device_types, find_type, parse_device, type_help

        text = str(values)
        try:
            if text == "help":
                for name, where in device_types().items():
                    desc = find_type(name).description if where == "built in" else where
                    print(f'name "{name}", desc "{desc}"')
                parser.exit()
            if parse_device(text) is None:
                print("\n".join(type_help(find_type(text.split(",")[0]))))
                parser.exit()
        except BoardError as e:
            parser.exit(1, f"emud: {e}\n")
        setattr(namespace, self.dest, [*getattr(namespace, self.dest), text])


async def serve(daemon: Daemon, gdb: Address | None, qmp: Address | None = None,
                ready: Callable[[str], None] | None = None, *, signals: bool = True) -> int:
    """Start the control planes, then run the machine until quit.

    `ready` gets the banner (where everything listens) once all sockets are up.
    Whatever was started is closed again on the way out, also when a later
    socket fails to start (a ListenError naming its option).
    """
    import asyncio
    import signal

    from emud.chardev import SocketServerBackend
    from emud.gdbserver import start_gdb_server
    from emud.monitor import Monitor
    from emud.monitor.qmp import QmpServer

    banner = []
    started = contextlib.AsyncExitStack()
    try:
        if gdb:
            listener = Listener("--gdb", gdb)
            started.callback(listener.close)
            server = await start_gdb_server(daemon, listener.sock)
            started.push_async_callback(server.close)
            banner.append(f"emud: gdb server listening on {listener}")
        if qmp:
            qmp_server = QmpServer(Monitor(daemon), qmp)
            await qmp_server.start()
            started.push_async_callback(qmp_server.close)
            banner.append(f"emud: QMP listening on {qmp_server.description}")
        for n, (serial, device) in enumerate(zip(daemon.machine.serials,
                                                 daemon.machine.devices_of_serial(),
                                                 strict=True)):
            await serial.start(daemon.wake.set)
            if isinstance(serial, SocketServerBackend):
                banner.append(f"emud: serial{n} ({device.id}) listening on "
                              f"{serial.describe()}")
        semihosting = daemon.machine.semihosting
        if semihosting is not None:
            await semihosting.console.start(daemon.wake.set)
            if isinstance(semihosting.console, SocketServerBackend):
                banner.append(f"emud: semihosting console listening on "
                              f"{semihosting.console.describe()}")
        if signals:  # only the main thread may; Machine.serving runs in another
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, daemon.quit,
                                                          "host-signal")
        text = "".join(line + "\n" for line in banner)
        if ready:
            ready(text)
        else:
            print(text, end="", file=sys.stderr, flush=True)
        return await daemon.run()
    finally:
        await started.aclose()


def parse_globals(items: list[str]) -> dict[str, dict[str, str]]:
    """QEMU's -global DEVICE.PROP=VALUE, collected per device (values parsed at realize)."""
    props: dict[str, dict[str, str]] = {}
    for item in items:
        match = re.fullmatch(r"([\w-]+)\.([\w-]+)=(.*)", item)
        if not match:
            raise ValueError(f"invalid -global {item!r} (use DEVICE.PROP=VALUE)")
        props.setdefault(match.group(1), {})[match.group(2)] = match.group(3)
    return props


def build_board(path: str | None, specs: list[str]) -> tuple[Board, list[Slot]]:
    """--board and the -device slots, every type resolved now: a plug-in that does not
    import fails here, and the events it declares exist before --trace is applied."""
    from emud.board import default_board, find_type, load_board, parse_device

    board = load_board(path) if path else default_board()
    devices = [slot for slot in map(parse_device, specs) if slot is not None]
    for slot in [*board.slots, *devices]:
        find_type(slot.type)
    return board, devices


def close_all(serials: list[CharBackend]) -> None:
    for serial in serials:
        serial.close()


def fail(serials: list[CharBackend], error: Exception) -> int:
    """A machine that cannot be built: its backends closed, one line, status 1."""
    close_all(serials)
    print(f"emud: {error}", file=sys.stderr)
    return 1


def build_parser() -> argparse.ArgumentParser:
    from emud.machine import ACCELERATORS, DEFAULT_ACCEL, DEFAULT_RAM_SIZE

    parser = argparse.ArgumentParser(prog="emud", description="emulator daemon for emud-virt")
    parser.add_argument("--version", action="version", version=f"emud {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run an ELF image")
    run.add_argument("image", metavar="IMAGE", help="RISC-V RV32 ELF file")
    run.add_argument("-m", dest="memory", type=parse_size, default=DEFAULT_RAM_SIZE,
                     metavar="SIZE", help="RAM size (default 16M)")
    run.add_argument("-serial", "--serial", dest="serial", metavar="DEV", type=serial_type,
                     action="append", default=[],
                     help="serial backend: stdio (default; ringbuf with --daemonize), "
                          "file:PATH, ringbuf, null, unix:PATH,server, tcp:HOST:PORT,server; "
                          "repeatable: serial0, serial1... bind to the UARTs in board order")
    run.add_argument("--board", metavar="FILE.toml",
                     help="build this board instead of the built-in emud-virt (README: Boards)")
    run.add_argument("-device", "--device", dest="devices", action=DeviceAction, default=[],
                     metavar="TYPE[,id=ID][,addr=ADDR][,irq=N][,PROP=VALUE...]",
                     help="add a device (TYPE, file.py:Class or module:Class); 'help' lists "
                          "the types, TYPE,help a type's properties")
    run.add_argument("--icount", type=parse_icount, default=0, metavar="shift=N",
                     help="virtual time per instruction is 2**N ns (default 0)")
    run.add_argument("--accel", choices=ACCELERATORS, default=DEFAULT_ACCEL,
                     help=f"interp: the reference interpreter; translate: hot code compiled to "
                          f"Python, same results (default {DEFAULT_ACCEL})")
    run.add_argument("--translation-cache", metavar="off|DIR",
                     help="keep translated code between runs in DIR (default "
                          "$XDG_CACHE_HOME/emud/translations, or $EMUD_TRANSLATION_CACHE); "
                          "off: translate afresh (README: Accelerators)")
    run.add_argument("--gdb", type=address_type, metavar="tcp:HOST:PORT|unix:PATH",
                     help="serve the GDB remote protocol (the daemon outlives gdb sessions)")
    run.add_argument("-s", dest="gdb", action="store_const", const=parse_address(GDB_DEFAULT),
                     help=f"shorthand for --gdb {GDB_DEFAULT}")
    run.add_argument("-S", dest="paused", action="store_true",
                     help="start with the guest paused until gdb or QMP resumes it "
                          "(needs --gdb/-s or --qmp)")
    run.add_argument("--qmp", nargs="?", const=default_socket_path(), type=address_type,
                     metavar="unix:PATH|tcp:HOST:PORT",
                     help=f"serve QMP (default address {default_socket_path()}, mode 0600)")
    run.add_argument("--daemonize", "--daemon", action="store_true",
                     help="detach once the sockets listen; guest power-off does not end emud "
                          "(stop it with QMP/shell `quit` or SIGTERM)")
    run.add_argument("--pidfile", metavar="FILE",
                     help="write the daemon's pid to FILE once it serves (refused while FILE "
                          "names a running process)")
    run.add_argument("--snapshots", metavar="PATH",
                     help="SQLite snapshot store for savevm/loadvm (default: one file per image "
                          "under $XDG_STATE_HOME/emud/snapshots)")
    run.add_argument("--export-dir", metavar="DIR",
                     help="the only directory snapshot export/import use, by file name (an "
                          "existing private directory; default $XDG_STATE_HOME/emud/exports)")
    run.add_argument("--tcp-host-files", action="store_true",
                     help="allow snapshot export/import through gdb or QMP on TCP, which every "
                          "local user can reach (refused there by default)")
    run.add_argument("--record", metavar="FILE",
                     help="write the session (initial state and every input) to FILE "
                          "(docs/replay.md)")
    run.add_argument("--replay", metavar="FILE",
                     help="replay a session recorded with --record (same image and -m); "
                          "it pauses at the recording's end")
    run.add_argument("--replay-budget", type=parse_budget, default=None,
                     metavar="SIZE",
                     help="memory for reverse-execution checkpoints (default 256M; 0 turns "
                          "recording and reverse execution off)")
    run.add_argument("--trace", "-trace", dest="trace", action=TraceAction, default=[],
                     metavar="PATTERN",
                     help="enable trace events matching the glob (QEMU's names, e.g. 'hpet_*'; "
                          "--trace=-PATTERN disables; 'help' lists them); lines go to stderr")
    run.add_argument("-d", dest="log_items", action=LogAction, default=set(),
                     metavar="ITEM[,ITEM...]",
                     help="log QEMU's items (in_asm, exec, cpu, int, guest_errors, unimp; "
                          "'help' lists them) to stderr or -D FILE")
    run.add_argument("-D", dest="logfile", metavar="FILE", help="write the -d log to FILE")
    run.add_argument("--trace-file", metavar="FILE.json",
                     help="record a timeline (Chrome trace-event JSON, for Perfetto)")
    run.add_argument("--vcd", metavar="FILE.vcd",
                     help="record the interrupt lines and UART bytes as a VCD waveform")
    run.add_argument("-global", "--global", dest="globals", action="append", default=[],
                     metavar="DEVICE.PROP=VALUE",
                     help="set a device property, e.g. hpet.timers=8 or pl011.migrate-clk=off")
    run.add_argument("--semihosting", action="store_true",
                     help="serve the guest's semihosting calls: console, exit, clock "
                          "(README: Semihosting); no host files without --semihosting-dir")
    run.add_argument("--semihosting-dir", metavar="DIR",
                     help="also allow semihosting file calls, inside DIR only (implies "
                          "--semihosting)")
    run.add_argument("--semihosting-cmdline", metavar="TEXT",
                     help="what SYS_GET_CMDLINE returns (default: the image's path)")
    run.add_argument("-semihosting-config", dest="semihosting_config",
                     type=parse_semihosting_config, metavar="enable=on[,arg=TEXT...]",
                     help="QEMU's spelling: enable=on|off, target=native|auto, arg=TEXT "
                          "(repeatable, joined by spaces) for the command line")
    run.add_argument("--semihosting-console", metavar="DEV", type=serial_type,
                     help="the semihosting console's backend, as for -serial (default stdio, "
                          "ringbuf with --daemonize)")
    shell = commands.add_parser("shell", help="interactive monitor shell (a QMP client)")
    shell.add_argument("--qmp", type=address_type, metavar="unix:PATH|tcp:HOST:PORT",
                       help=f"the daemon's QMP socket (default {default_socket_path()})")
    shell.add_argument("-c", dest="script", metavar="'CMD; CMD'",
                       help="run these monitor commands and exit (status 1 on the first error)")
    picture = commands.add_parser("timeline", help="draw a --trace-file timeline as an SVG")
    picture.add_argument("file", metavar="FILE.json", help="a timeline from run --trace-file")
    picture.add_argument("-o", dest="output", metavar="OUT.svg", required=True)
    picture.add_argument("--start", type=float, metavar="US", help="window start (µs)")
    picture.add_argument("--end", type=float, metavar="US", help="window end (µs)")
    return parser


def start_shell(address: Address | None, script: str | None) -> int:
    from shell.main import run_shell

    if address is None:  # the default socket: trusted only in a directory nobody else controls
        return run_shell(default_socket_path(), script, private_dirs=runtime_dirs())
    return run_shell(address.path if address.kind == "unix" else str(address), script)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "shell":
        return start_shell(args.qmp, args.script)
    if args.command == "timeline":
        from emud import timeline_render

        try:
            return timeline_render.main(args.file, args.output, args.start, args.end)
        except (timeline_render.TimelineError, OSError) as e:
            print(f"emud: {e}", file=sys.stderr)
            return 1
    if args.paused and not (args.gdb or args.qmp):
        print("emud: -S would wait forever: nothing could resume the guest "
              "(add --gdb/-s or --qmp)", file=sys.stderr)
        return 1
    from emud import log, trace
    from emud.chardev import SocketServerBackend, StdioBackend, open_backend

    try:
        board, devices = build_board(args.board, args.devices)
        for pattern in args.trace:  # after the plug-ins declared their events
            trace.enable(pattern)
        device_props = parse_globals(args.globals)
    except (ValueError, DeviceError) as e:
        print(f"emud: {e}", file=sys.stderr)
        return 1
    if args.export_dir:
        from emud.snapshots import ExportDir, StoreError

        try:
            ExportDir(args.export_dir).check()  # refuse an unsafe directory now, not later
        except StoreError as e:
            print(f"emud: {e}", file=sys.stderr)
            return 1
    if not args.serial:
        args.serial = ["ringbuf" if args.daemonize else "stdio"]
    if args.daemonize and "stdio" in args.serial:
        print("emud: --daemonize cannot use -serial stdio (try unix:PATH,server)", file=sys.stderr)
        return 1
    if args.serial.count("stdio") > 1:
        print("emud: only one -serial can be stdio", file=sys.stderr)
        return 1
    semihosting = None
    if args.semihosting_config is not None:
        enabled, cmdline = args.semihosting_config
        args.semihosting = args.semihosting or enabled
        args.semihosting_cmdline = args.semihosting_cmdline or cmdline
    if args.semihosting or args.semihosting_dir:
        from emud.semihosting import SemihostingConfig

        if args.semihosting_dir and not os.path.isdir(args.semihosting_dir):
            print(f"emud: --semihosting-dir {args.semihosting_dir}: not a directory",
                  file=sys.stderr)
            return 1
        semihosting = SemihostingConfig(args.semihosting_dir, args.semihosting_cmdline)
    console_spec = args.semihosting_console or ("ringbuf" if args.daemonize else "stdio")
    if semihosting and args.daemonize and console_spec == "stdio":
        print("emud: --daemonize cannot use --semihosting-console stdio", file=sys.stderr)
        return 1
    from emud.pidfile import Pidfile, PidfileError

    pidfile = Pidfile(args.pidfile) if args.pidfile else None
    serials: list[CharBackend] = []
    console = None
    try:
        if pidfile:
            pidfile.check()  # before anything is created
        for spec in args.serial:
            serials.append(open_backend(spec))
        if semihosting:
            # stdin belongs to a -serial stdio: the console then only writes to stdout.
            console = StdioBackend(input_fd=-1) if console_spec == "stdio" and \
                "stdio" in args.serial else open_backend(console_spec)
            serials.append(console)  # closed with them (it is bound to no UART)
    except (ValueError, OSError) as e:
        close_all(serials)
        print(f"emud: {e}", file=sys.stderr)
        return 1
    uarts = serials[:len(args.serial)]
    # Nothing to serve (no control plane, no socket, nothing recorded): no event loop.
    plain = not (args.gdb or args.qmp or args.daemonize or args.pidfile or args.record
                 or args.replay or args.trace_file or args.vcd
                 or any(isinstance(serial, SocketServerBackend) for serial in serials))
    machine = None  # the API's Machine, for a daemon: a plain run builds without the API
    if plain:
        from emud.loader import ImageError
        from emud.machine import build

        try:
            core = build(args.image, uarts, ram_size=args.memory, icount_shift=args.icount,
                         accel=args.accel, device_props=device_props, board=board,
                         devices=devices, semihosting=semihosting, semihosting_console=console,
                         translation_cache=args.translation_cache or True)
        except (ImageError, DeviceError, ValueError, OSError) as e:
            return fail(serials, e)
    else:
        from emud import api

        try:
            machine = api.Machine(args.image, ram=args.memory, icount=args.icount,
                                  accel=args.accel, globals=device_props, board=board,
                                  devices=devices, serial=uarts, snapshots=args.snapshots,
                                  semihosting=semihosting or False,
                                  semihosting_console=console or "ringbuf",
                                  translation_cache=args.translation_cache or True)
        except api.ConfigError as e:
            return fail(serials, e)
        core = machine.core
    try:
        if core.image is not None:
            log.symbolize = core.image.symbolize
        log.set_file(args.logfile)
        log.set_items(args.log_items)
        recorder = None
        if args.trace_file or args.vcd:
            from emud.timeline import Recorder

            recorder = Recorder(core, args.trace_file, args.vcd)
    except OSError as e:
        core.close()
        print(f"emud: cannot write {e.filename}: {e.strerror}", file=sys.stderr)
        return 1
    stdio = any(isinstance(serial, StdioBackend) for serial in serials)
    if plain:
        from emud import foreground

        try:
            with foreground.terminal_cbreak() if stdio else contextlib.nullcontext():
                return foreground.run(core)
        except KeyboardInterrupt:
            return 130
        finally:
            log.set_file(None)
            core.close()
    from emud.replay.sessionfile import SessionError

    try:
        replay, writer = start_replay(core, args.record, args.replay, args.replay_budget)
    except (SessionError, OSError) as e:
        if recorder:
            recorder.close()
        core.close()
        print(f"emud: {e}", file=sys.stderr)
        return 1
    from emud.daemon import Detached

    assert machine is not None  # built with the API: not plain
    detached = Detached() if args.daemonize else None

    def ready(banner: str) -> None:
        if pidfile:
            pidfile.write()  # only now: every socket listens
        if detached:
            detached.ready(banner)
        else:
            print(banner, end="", file=sys.stderr, flush=True)

    # With a control plane attached, guest power-off is reported there, not the end.
    daemon = machine.daemon(paused=args.paused,
                            exit_on_poweroff=not (args.gdb or args.qmp or args.daemonize),
                            export_dir=args.export_dir, tcp_host_files=args.tcp_host_files)
    if recorder:
        recorder.attach_daemon(daemon)
    if replay is not None:
        daemon.attach_replay(replay)
    try:
        from emud.foreground import terminal_cbreak

        with terminal_cbreak() if stdio else contextlib.nullcontext():
            return machine.serve(gdb=args.gdb, qmp=args.qmp, ready=ready, daemon=daemon)
    except OSError as e:  # ListenError and PidfileError name their option
        message = f"emud: {e}\n" if isinstance(e, ListenError | PidfileError) else \
            f"emud: cannot start: {e}\n"
        if detached:
            detached.fail(message)  # the waiting parent prints it, once
        else:
            print(message, end="", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if writer is not None:
            writer.close(core.clock.icount, core.clock.now_ns)
        if recorder:
            recorder.close()  # the JSON array's "]": after SIGTERM and guest poweroff too
        log.set_file(None)
        core.close()  # the serials, the semihosting console and its host files
        if pidfile:
            pidfile.remove()


def start_replay(machine: Machine, record: str | None, play: str | None, budget: int | None
                 ) -> tuple[Replay | None, SessionWriter | None]:
    """Reverse execution (unless the budget is 0; None is the default budget), a session
    to play, one to write."""
    from emud.replay import DEFAULT_BUDGET, Replay, sessionfile
    from emud.replay.sessionfile import SessionError, SessionWriter

    if budget is None:
        budget = DEFAULT_BUDGET
    if record and play:
        raise SessionError("--record and --replay cannot be combined")
    if not budget:
        if record or play:
            raise SessionError("--record and --replay need a --replay-budget above 0")
        return None, None
    session = sessionfile.load(play, machine) if play else None
    replay = Replay(machine, budget=budget)
    if session is not None:
        replay.load_events(session.events, session.end)
        if not session.complete:
            print(f"emud: {play}: the recording did not end cleanly; it replays up to "
                  f"icount {session.end[0]}", file=sys.stderr)
    writer = None
    if record:
        writer = SessionWriter(record, machine)
        out = writer
        replay.on_event = out.event
        replay.on_checkpoint = lambda: out.mark(machine.clock.icount, machine.clock.now_ns)

        def branch(head: tuple[int, int, int]) -> None:
            out.close(head[0], head[2])
            print(f"emud: {record}: loadvm started a new branch of history; the file ends "
                  "before it", file=sys.stderr)

        replay.on_branch = branch
    return replay, writer


def console() -> NoReturn:
    """The `emud` command and `python -m emud`: main(), then the process ends with its code.

    Without an event loop (a plain `emud run`, `emud timeline`, an error before any
    serving) main has closed everything it opened when it returns, and the interpreter's
    teardown (a full collection, every module's objects freed: ~10 ms, more than a short
    run takes to emulate) changes nothing outside the process: the process ends at once,
    stdout and stderr flushed.  After serving (asyncio: threads, sockets) it exits as usual.
    """
    code = main()
    if "asyncio" not in sys.modules:
        try:
            for stream in (sys.stdout, sys.stderr):
                if stream is not None:  # None when the process was started without it
                    stream.flush()
        except (OSError, ValueError):
            pass  # the usual exit reports it, as Python does
        else:
            os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    console()
