"""The timeline recorder: what the machine did, on its virtual-time axis.

`--trace-file FILE.json` writes Chrome's trace-event format (a JSON array, which
Perfetto and chrome://tracing open); `--vcd FILE.vcd` writes the interrupt lines
and the UARTs' transmitted bytes as a waveform for GTKWave (pyvcd).

The recorder only observes: it wraps the sinks of the board's IRQ lines, the
serial devices' transmit and receive, the trace sink, the clock's timer
observer, trap entry (emud.log.trap_hooks), the daemon's events and the
snapshot service's save/load.  Nothing of it runs unless a file was asked for.

Every event carries the virtual time in µs ("ts" = ns / 1000) and, in "args",
the exact ns and icount.  A loadvm moves virtual time back: the JSON keeps the
true times (the viewers sort), the VCD, whose times must grow, holds the
restored levels at the time it had reached.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from emud import log, trace
from emud.clock import Timer
from emud.hostfiles import open_private

if TYPE_CHECKING:
    from emud.cpu.hart import Hart
    from emud.daemon import Daemon
    from emud.irq import IRQ
    from emud.machine import Machine

# Chrome trace "threads": one row per kind of event.
TRACKS = {"cpu": 1, "irq": 2, "timer": 3, "uart": 4, "trace": 5, "daemon": 6}


def _private_text(path: str, buffering: int = -1) -> IO[str]:
    return os.fdopen(open_private(path), "w", buffering=buffering, encoding="utf-8")


def timer_name(timer: Timer) -> str:
    """A timer named by what it calls back: `clint._update_mtip`, `hpet0.timer2`..."""
    callback = timer.callback
    owner = getattr(callback, "__self__", None)
    if owner is None and getattr(callback, "__closure__", None):
        # a lambda over its owner (the HPET's per-timer callbacks close over the timer)
        cells = [c.cell_contents for c in callback.__closure__ or ()]
        owner = next((c for c in cells if hasattr(c, "tn")),
                     next((c for c in cells if hasattr(c, "id")), None))
    if owner is not None and hasattr(owner, "tn") and hasattr(owner, "hpet"):
        return f"{owner.hpet.id}.timer{owner.tn}"
    if owner is not None and hasattr(owner, "id"):
        return f"{owner.id}.{callback.__name__.lstrip('_')}"
    return getattr(callback, "__qualname__", "timer").replace(".<locals>", "")


class ChromeTrace:
    """A JSON array of trace events, written as they come; `close` ends the array.

    Line-buffered, one event a line: whatever kills the daemon, the file holds whole
    events, a valid array but for the closing bracket (which the format tolerates)."""

    def __init__(self, path: str) -> None:
        self.out = _private_text(path, buffering=1)
        self.out.write("[\n")
        self.first = True
        self.closed = False
        self.meta("process_name", 0, {"name": "emud"})
        for name, tid in TRACKS.items():
            self.meta("thread_name", tid, {"name": name})

    def _put(self, event: dict[str, Any]) -> None:
        if self.closed:
            return
        self.out.write(("" if self.first else ",\n") + json.dumps(event, sort_keys=True))
        self.first = False

    def meta(self, name: str, tid: int, args: dict[str, Any]) -> None:
        self._put({"name": name, "ph": "M", "pid": 1, "tid": tid, "args": args})

    def instant(self, ns: int, track: str, name: str, args: dict[str, Any]) -> None:
        self._put({"name": name, "cat": track, "ph": "i", "s": "t", "ts": ns / 1000, "pid": 1,
                   "tid": TRACKS[track], "args": args})

    def counter(self, ns: int, name: str, value: int) -> None:
        self._put({"name": name, "cat": "irq", "ph": "C", "ts": ns / 1000, "pid": 1,
                   "tid": TRACKS["irq"], "args": {"level": value}})

    def close(self) -> None:
        if not self.closed:
            self.out.write("\n]\n")
            self.closed = True
            self.out.close()


class Waveform:
    """IRQ lines as 1-bit wires and UART TX bytes as 8-bit registers, times in ns."""

    def __init__(self, path: str, lines: dict[str, bool], uarts: list[str]) -> None:
        from vcd import VCDWriter  # only a --vcd run needs pyvcd

        self.out = _private_text(path)
        self.writer = VCDWriter(self.out, timescale="1 ns", date="", version="emud")
        self.vars: dict[str, Any] = {}
        for name, level in lines.items():
            scope, _, short = name.rpartition(".")
            self.vars[name] = self.writer.register_var(scope or "top", short, "wire", size=1,
                                                       init=int(level))
        for uart in uarts:
            # The byte, and an event per byte (a repeated byte is no value change).
            self.vars[f"{uart}.tx"] = self.writer.register_var(uart, "tx", "reg", size=8, init=0)
            self.vars[f"{uart}.tx_strobe"] = self.writer.register_var(uart, "tx_strobe", "event")
        self.last = 0
        self.closed = False

    def change(self, ns: int, name: str, value: int | bool) -> None:
        if self.closed or name not in self.vars:
            return
        self.last = max(self.last, ns)
        self.writer.change(self.vars[name], self.last, value)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.close(self.last)
            self.out.close()


class Recorder:
    """Attaches the observers to a machine (and, when given, its daemon)."""

    def __init__(self, machine: Machine, json_path: str | None = None,
                 vcd_path: str | None = None) -> None:
        self.machine = machine
        self.clock = machine.clock
        self.json = ChromeTrace(json_path) if json_path else None
        lines = self._irq_lines()
        uarts = [d.id for d in machine.devices_of_serial()]
        self.vcd = Waveform(vcd_path, {n: irq.level for n, irq in lines.items()}, uarts) \
            if vcd_path else None
        for name, irq in lines.items():
            irq.sink = self._watch_line(name, irq.sink)
        for device in machine.devices_of_serial():
            self._watch_serial(device)
        self._previous_sink = trace.set_sink(self._trace_line) if self.json else None
        self.clock.observer = self._timer
        log.trap_hooks.append(self._trap)

    # --- sources ----------------------------------------------------------------------

    def _irq_lines(self) -> dict[str, IRQ]:
        """Every device output line and the hart's inputs, by `device.line` name."""
        lines: dict[str, IRQ] = {}
        for device in self.machine.devices:
            for name, irq in device.output_lines().items():
                lines[f"{device.id}.{name}"] = irq
        for name, irq in self.machine._cpu.input_lines().items():
            lines[f"cpu.{name}"] = irq
        return lines

    def _watch_line(self, name: str, sink: Callable[[bool], None] | None
                    ) -> Callable[[bool], None]:
        def observed(level: bool) -> None:
            self.line(name, level)
            if sink is not None:
                sink(level)

        return observed

    def _watch_serial(self, device: Any) -> None:
        transmit, receive = device.transmit, device.receive

        def observed_tx(data: bytes) -> None:
            for byte in data:
                self.uart(device.id, "tx", byte)
            transmit(data)

        def observed_rx(data: bytes) -> int:
            taken: int = receive(data)
            for byte in data[:taken]:
                self.uart(device.id, "rx", byte)
            return taken

        device.transmit, device.receive = observed_tx, observed_rx

    def attach_daemon(self, daemon: Daemon) -> None:
        daemon.listeners.append(self._daemon_event)
        service = daemon.snapshots
        if service is None:
            return
        save, load = service.save, service.load

        def observed_save(tag: str) -> dict[str, Any]:
            result: dict[str, Any] = save(tag)
            self.event("daemon", "savevm", {"tag": tag})
            return result

        def observed_load(tag: str) -> None:
            load(tag)
            self.event("daemon", "loadvm", {"tag": tag})

        setattr(service, "save", observed_save)  # noqa: B010 - an instance override
        setattr(service, "load", observed_load)  # noqa: B010

    # --- events -------------------------------------------------------------------------

    def _args(self, extra: dict[str, Any]) -> dict[str, Any]:
        return {"ns": self.clock.now_ns, "icount": self.clock.icount, **extra}

    def event(self, track: str, name: str, args: dict[str, Any]) -> None:
        if self.json:
            self.json.instant(self.clock.now_ns, track, name, self._args(args))

    def line(self, name: str, level: bool) -> None:
        if self.json:
            self.json.counter(self.clock.now_ns, name, int(level))
        if self.vcd:
            self.vcd.change(self.clock.now_ns, name, int(level))

    def uart(self, ident: str, direction: str, byte: int) -> None:
        char = chr(byte) if 32 <= byte < 127 else f"\\x{byte:02x}"
        self.event("uart", f"{ident} {direction}", {"byte": byte, "char": char})
        if self.vcd and direction == "tx":
            self.vcd.change(self.clock.now_ns, f"{ident}.tx", byte)
            self.vcd.change(self.clock.now_ns, f"{ident}.tx_strobe", True)

    def _trace_line(self, line: str) -> None:
        name, _, message = line.partition(" ")
        self.event("trace", name, {"message": message})

    def _timer(self, what: str, timer: Timer) -> None:
        args = {"deadline_ns": timer.expire_time} if what == "arm" else {}
        self.event("timer", f"{what} {timer_name(timer)}", args)

    def _trap(self, hart: Hart, cause: int, tval: int, pc: int) -> None:
        self.event("cpu", log.cause_name(cause),
                   {"cause": cause, "epc": f"0x{pc:08x}", "tval": f"0x{tval:08x}"})

    def _daemon_event(self, name: str, data: dict[str, Any]) -> None:
        args = dict(data)
        stop = self.machine.hart.debug_stop
        if name == "STOP" and stop is not None:
            args["debug"] = f"{stop.kind} at 0x{stop.pc:08x}"
        self.event("daemon", name, args)

    # --- end ------------------------------------------------------------------------------

    def close(self) -> None:
        """Detach and finish both files (the JSON array's closing bracket)."""
        if self.clock.observer == self._timer:
            self.clock.observer = None
        if self._trap in log.trap_hooks:
            log.trap_hooks.remove(self._trap)
        if self.json:
            trace.set_sink(self._previous_sink)
            self.json.close()
        if self.vcd:
            self.vcd.close()
