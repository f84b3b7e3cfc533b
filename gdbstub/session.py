"""One gdb connection as a sans-IO state machine: bytes in, bytes out.

`feed` takes what arrived from gdb, `stopped` takes a stop of the running
target, `drain` hands back what to send.  The session talks to a `Target`
synchronously; resume packets get no reply until the target stops, and then
exactly one stop reply.

gdb sends Ctrl-C (0x03) only while it waits for a stop reply, but a single step
is answered at once, so during `stepi N` the byte nearly always arrives just
after a step's reply, while gdb reads memory before the next step.  Such an
interrupt is kept and answers the next resume with SIGINT instead of running:
gdb then ends its step loop with exactly one stop reply (gdbserver does the same
by leaving the SIGINT pending in the process).
"""

from __future__ import annotations

from collections.abc import Callable

from gdbstub.codec import (
    Ack,
    Corrupt,
    Decoder,
    Interrupt,
    Packet,
    encode_le,
    escape,
    frame,
    hex_decode,
    hex_encode,
    parse_int,
    unescape,
)
from gdbstub.target import (
    BreakpointHit,
    Exited,
    HistoryEnd,
    Interrupted,
    Reverse,
    StopReason,
    Target,
    WatchKind,
    WatchpointHit,
)

DEFAULT_PACKET_SIZE = 0x10000  # payload bytes: 32 KiB of memory per `m` reply
THREAD = b"1"  # the only thread: a single hart
_OUR_THREADS = frozenset((b"1", b"-1", b"0", b"p1.1", b"p1.-1", b"p-1.-1", b"p1.0"))
_WATCH_TYPES = {2: WatchKind.WRITE, 3: WatchKind.READ, 4: WatchKind.ACCESS}
# QEMU's single-step flags (`maint packet Qqemu.sstep=…`); only NOIRQ changes anything here.
SSTEP_ENABLE, SSTEP_NOIRQ, SSTEP_NOTIMER = 1, 2, 4

Handler = Callable[["Session", bytes], bytes | None]
PacketLog = Callable[[bool, bytes], None]  # (received?, payload): for tracing


class Session:
    def __init__(self, target: Target, packet_size: int = DEFAULT_PACKET_SIZE,
                 packet_log: PacketLog | None = None) -> None:
        self.target = target
        self.packet_size = packet_size
        self.packet_log = packet_log
        self.decoder = Decoder(packet_size)
        self.ack_mode = True
        self.running = False  # a resume is in flight: the next stop gets a reply
        self.interrupt_pending = False  # a Ctrl-C came between resumes: stop the next one
        self.closed = False  # the connection should end (after the output is sent)
        self.gdb_features: set[bytes] = set()
        self.points: set[tuple[int, int, int]] = set()  # (Z type, addr, kind) we inserted
        self._out = bytearray()
        self._last = b""  # the last packet sent, for a resend on '-'
        self._ended = False
        self.last_stop: StopReason = target.attach()

    # --- the interface: bytes in, stops in, bytes out ---------------------------------

    def feed(self, data: bytes) -> None:
        for event in self.decoder.feed(data):
            if self.closed:
                return
            match event:
                case Packet(payload):
                    if self.ack_mode:
                        self._out += b"+"
                    if self.packet_log:
                        self.packet_log(True, payload)
                    self._handle(payload)
                case Corrupt():
                    if self.ack_mode:
                        self._out += b"-"
                case Ack(positive=False):
                    if self.ack_mode and self._last:
                        self._out += self._last
                case Interrupt():
                    if self.running:
                        self.target.interrupt()
                    else:
                        self.interrupt_pending = True
                case Ack():
                    pass

    def stopped(self, reason: StopReason) -> None:
        """The target stopped; answers the resume in flight (and nothing otherwise)."""
        if not self.running or self.closed:
            return
        self.running = False
        self.last_stop = reason
        self._send(self._stop_reply(reason))

    def drain(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def close(self) -> None:
        """The connection is gone: remove this client's points and let the target go
        (a disconnect without `D` behaves like `D`)."""
        if self._ended:
            return
        self._ended = True
        self.closed = True
        self._remove_points()
        self.target.detach()

    # --- plumbing ------------------------------------------------------------------

    def _send(self, payload: bytes) -> None:
        if self.packet_log:
            self.packet_log(False, payload)
        self._last = frame(payload)
        self._out += self._last

    def _handle(self, payload: bytes) -> None:
        try:
            reply = self._dispatch(payload)
        except ValueError:  # malformed arguments of a known packet
            reply = b"E22"
        if reply is not None:
            self._send(reply)

    def _dispatch(self, payload: bytes) -> bytes | None:
        handler = _HANDLERS.get(payload[:1]) or _EXACT.get(payload)
        if handler is not None:
            return handler(self, payload)
        for prefix, handler in _PREFIXED:
            if payload.startswith(prefix):
                return handler(self, payload)
        return b""  # unsupported: the empty reply

    def _stop_reply(self, reason: StopReason) -> bytes:
        if isinstance(reason, Exited):
            return b"W%02x" % (reason.code & 0xFF)
        signal, why = b"05", b""
        match reason:
            case Interrupted():
                signal = b"02"
            case BreakpointHit(hardware):
                kind = b"hwbreak" if hardware else b"swbreak"
                why = kind + b":;" if kind + b"+" in self.gdb_features else b""
            case WatchpointHit(kind, addr):
                why = b"%s:%x;" % (kind.value.encode(), addr)
            case HistoryEnd(begin):
                why = b"replaylog:%s;" % (b"begin" if begin else b"end")
        registers = b"".join(b"%02x:%s;" % (n, self._register_hex(n))
                             for n in self.target.expedited_registers)
        return b"T" + signal + why + registers + b"thread:" + THREAD + b";"

    def _resume(self, step: bool, addr: bytes = b"") -> None:
        if addr and not self.target.write_register(self.target.pc_regnum, parse_int(addr)):
            raise ValueError("cannot set pc")
        self.running = True
        if self.interrupt_pending:
            self.interrupt_pending = False
            self.stopped(Interrupted())
            return
        reason = self.target.resume(step)
        if reason is not None:
            self.stopped(reason)

    def _remove_points(self) -> None:
        for point in sorted(self.points):
            self._point(False, *point)
        self.points.clear()

    def _point(self, insert: bool, ztype: int, addr: int, kind: int) -> bool | None:
        """Insert or remove one Z point; None when the target lacks that type."""
        if ztype in (0, 1):
            bps = self.target.breakpoints()
            if bps is None:
                return None
            hw = ztype == 1
            return bps.add_breakpoint(addr, hw) if insert else bps.remove_breakpoint(addr, hw)
        if ztype in _WATCH_TYPES:
            wps = self.target.watchpoints()
            if wps is None:
                return None
            wk = _WATCH_TYPES[ztype]
            return (wps.add_watchpoint(wk, addr, kind) if insert
                    else wps.remove_watchpoint(wk, addr, kind))
        return None

    def _register_hex(self, regnum: int) -> bytes:
        value = self.target.read_register(regnum)
        if value is None:
            return b"xx" * self.target.register_size
        return encode_le(value, self.target.register_size)

    def _xfer(self, document: str | None, span: bytes) -> bytes:
        if document is None:
            return b"E00"
        offset, length = _addr_len(span)
        data = document.encode()
        chunk = data[offset : offset + min(length, self.packet_size // 2)]
        return (b"l" if offset + len(chunk) >= len(data) else b"m") + escape(chunk)

    # --- packet handlers -------------------------------------------------------------

    def _q_halt_reason(self, payload: bytes) -> bytes:
        return self._stop_reply(self.last_stop)

    def _q_read_registers(self, payload: bytes) -> bytes:
        return b"".join(self._register_hex(n) for n in range(self.target.gdb_register_count))

    def _write_registers(self, payload: bytes) -> bytes:
        size = self.target.register_size
        data = hex_decode(payload[1:])
        if len(data) % size:
            raise ValueError("partial register")
        for n in range(min(len(data) // size, self.target.gdb_register_count)):
            value = int.from_bytes(data[n * size : (n + 1) * size], "little")
            if not self.target.write_register(n, value):
                return b"E01"
        return b"OK"

    def _read_register(self, payload: bytes) -> bytes:
        return self._register_hex(parse_int(payload[1:]))

    def _write_register(self, payload: bytes) -> bytes:
        regnum, _, value = payload[1:].partition(b"=")
        data = hex_decode(value)
        if len(data) != self.target.register_size:
            raise ValueError("wrong register size")
        ok = self.target.write_register(parse_int(regnum), int.from_bytes(data, "little"))
        return b"OK" if ok else b"E01"

    def _read_memory(self, payload: bytes) -> bytes:
        addr, length = _addr_len(payload[1:])
        data = self.target.read_memory(addr, min(length, self.packet_size // 2))
        return hex_encode(data) if data or not length else b"E14"

    def _write_memory(self, payload: bytes) -> bytes:
        header, sep, body = payload[1:].partition(b":")
        if not sep:
            raise ValueError("no data")
        addr, length = _addr_len(header)
        data = hex_decode(body) if payload[:1] == b"M" else unescape(body)
        if len(data) != length:
            raise ValueError("length mismatch")
        return b"OK" if not data or self.target.write_memory(addr, data) else b"E14"

    def _continue(self, payload: bytes) -> None:
        self._resume(payload[:1] == b"s", payload[1:])

    def _continue_signal(self, payload: bytes) -> None:
        signal, _, addr = payload[1:].partition(b";")
        parse_int(signal)  # a signal means nothing to a bare machine; only check the syntax
        self._resume(payload[:1] == b"S", addr)

    def _vcont(self, payload: bytes) -> bytes | None:
        if payload == b"vCont?":
            return b"vCont;c;C;s;S"
        for action in payload[len(b"vCont;") :].split(b";"):
            op, _, thread = action.partition(b":")
            if thread and thread not in _OUR_THREADS:
                continue
            if op[:1] in (b"c", b"C", b"s", b"S"):
                if len(op) > 1:
                    parse_int(op[1:])
                self._resume(op[:1] in (b"s", b"S"))
                return None
            raise ValueError("unsupported vCont action")
        raise ValueError("no vCont action for our thread")

    def _z(self, payload: bytes) -> bytes:
        fields = payload[1:].split(b";")[0].split(b",")
        if len(fields) != 3:
            raise ValueError("Z needs type,addr,kind")
        ztype, addr, kind = (parse_int(f) for f in fields)
        key = (ztype, addr, kind)
        insert = payload[:1] == b"Z"
        if insert == (key in self.points):  # already there / already gone: idempotent
            return b"OK" if self._point_supported(ztype) else b""
        result = self._point(insert, *key)
        if result is None:
            return b""
        if result:
            (self.points.add if insert else self.points.discard)(key)
        return b"OK" if result else b"E01"

    def _point_supported(self, ztype: int) -> bool:
        if ztype in (0, 1):
            return self.target.breakpoints() is not None
        return ztype in _WATCH_TYPES and self.target.watchpoints() is not None

    def _detach(self, payload: bytes) -> None:
        self._send(b"OK")  # queued before the connection closes
        self.close()

    def _kill(self, payload: bytes) -> bytes | None:
        self._remove_points()
        self._ended = self.closed = True
        self.target.kill()
        return b"OK" if payload.startswith(b"vKill") else None

    def _thread_ok(self, payload: bytes) -> bytes:
        return b"OK"

    def _supported(self, payload: bytes) -> bytes:
        _, _, offered = payload.partition(b":")
        self.gdb_features = set(offered.split(b";"))
        features = [b"PacketSize=%x" % self.packet_size, b"QStartNoAckMode+",
                    b"qXfer:features:read+", b"vContSupported+"]
        if self.target.memory_map() is not None:
            features.append(b"qXfer:memory-map:read+")
        if self.target.breakpoints() is not None:
            features += [b"swbreak+", b"hwbreak+"]
        if self._reverse_capability() is not None:
            features += [b"ReverseStep+", b"ReverseContinue+"]
        return b";".join(features)

    def _reverse_capability(self) -> Reverse | None:
        """Targets written before reverse execution existed need not have the accessor."""
        accessor = getattr(self.target, "reverse", None)
        return accessor() if accessor is not None else None

    def _reverse(self, payload: bytes) -> bytes | None:
        """`bs` / `bc`: answered with a stop reply, like the forward resume packets."""
        reverse = self._reverse_capability()
        if reverse is None or payload not in (b"bs", b"bc"):
            return b""
        self.running = True
        if self.interrupt_pending:
            self.interrupt_pending = False
            self.stopped(Interrupted())
            return None
        reason = reverse.reverse_step() if payload == b"bs" else reverse.reverse_continue()
        if reason is not None:  # None: the target reports the stop later, as for `c`
            self.stopped(reason)
        return None

    def _no_ack(self, payload: bytes) -> None:
        self._send(b"OK")
        self.ack_mode = False  # only after the OK: that one is still acknowledged
        return None

    def _features(self, payload: bytes) -> bytes:
        # qXfer:features:read:ANNEX:OFFSET,LENGTH
        parts = payload.split(b":")
        if len(parts) != 5 or parts[3] != b"target.xml":
            return b"E00"
        return self._xfer(self.target.target_xml(), parts[4])

    def _memory_map(self, payload: bytes) -> bytes:
        parts = payload.split(b":")
        if len(parts) != 5:
            raise ValueError("bad qXfer")
        return self._xfer(self.target.memory_map(), parts[4])

    def _monitor(self, payload: bytes) -> bytes:
        monitor = self.target.monitor()
        if monitor is None:
            return b""
        command = hex_decode(payload[len(b"qRcmd,") :]).decode(errors="replace")
        output = monitor.monitor_command(command).encode()
        chunk = (self.packet_size - 1) // 2
        for i in range(0, len(output), chunk):
            self._send(b"O" + hex_encode(output[i : i + chunk]))
        return b"OK"

    def _sstep_bits(self, payload: bytes) -> bytes:
        return b"ENABLE=%x,NOIRQ=%x,NOTIMER=%x" % (SSTEP_ENABLE, SSTEP_NOIRQ, SSTEP_NOTIMER)

    def _sstep(self, payload: bytes) -> bytes:
        noirq = 0 if self.target.step_irqs else SSTEP_NOIRQ
        return b"0x%x" % (SSTEP_ENABLE | noirq | SSTEP_NOTIMER)

    def _set_sstep(self, payload: bytes) -> bytes:
        bits = parse_int(payload[len(b"Qqemu.sstep=") :])
        self.target.step_irqs = not bits & SSTEP_NOIRQ
        return b"OK"

    def _attached(self, payload: bytes) -> bytes:
        return b"1"  # quitting gdb detaches; it never kills the machine unasked

    def _current_thread(self, payload: bytes) -> bytes:
        return b"QC" + THREAD

    def _first_thread(self, payload: bytes) -> bytes:
        return b"m" + THREAD

    def _more_threads(self, payload: bytes) -> bytes:
        return b"l"


def _addr_len(text: bytes) -> tuple[int, int]:
    addr, sep, length = text.partition(b",")
    if not sep:
        raise ValueError("expected addr,length")
    return parse_int(addr), parse_int(length)


_HANDLERS: dict[bytes, Handler] = {
    b"?": Session._q_halt_reason,
    b"g": Session._q_read_registers,
    b"G": Session._write_registers,
    b"p": Session._read_register,
    b"P": Session._write_register,
    b"m": Session._read_memory,
    b"M": Session._write_memory,
    b"X": Session._write_memory,
    b"c": Session._continue,
    b"s": Session._continue,
    b"C": Session._continue_signal,
    b"S": Session._continue_signal,
    b"Z": Session._z,
    b"z": Session._z,
    b"D": Session._detach,
    b"k": Session._kill,
    b"b": Session._reverse,
    b"H": Session._thread_ok,
    b"T": Session._thread_ok,
}

# Checked in order; more specific prefixes first.
_PREFIXED: list[tuple[bytes, Handler]] = [
    (b"vCont?", Session._vcont),
    (b"vCont;", Session._vcont),
    (b"vKill", Session._kill),
    (b"qSupported", Session._supported),
    (b"QStartNoAckMode", Session._no_ack),
    (b"qXfer:features:read:", Session._features),
    (b"qXfer:memory-map:read:", Session._memory_map),
    (b"qRcmd,", Session._monitor),
    (b"qAttached", Session._attached),
    (b"qfThreadInfo", Session._first_thread),
    (b"qsThreadInfo", Session._more_threads),
    (b"Qqemu.sstep=", Session._set_sstep),
]

_EXACT: dict[bytes, Handler] = {
    b"qC": Session._current_thread,
    b"qqemu.sstepbits": Session._sstep_bits,
    b"qqemu.sstep": Session._sstep,
}
