"""The monitor: one command registry behind three doors.

Every command (`info registers`, `x/8wx 0x80000000`, `run-for 10ms`, …) is a
handler in `emud.monitor.commands` that returns structured data; HMP text is
a renderer over that data.  The doors:

- HMP text, for the shell and gdb's `monitor …` (qRcmd)::

      monitor = Monitor(daemon)             # one per session: /fmt is sticky per session
      text = await monitor.execute_hmp("info registers")   # raises MonitorError
      text = monitor.execute_hmp_now("x/4i $pc")           # same, for synchronous callers;
                                                           # refuses commands that must wait
                                                           # for the guest or yield to
                                                           # the loop (run-for, step)

  `MonitorError.desc` is the message; `hmp_error_text(e)` renders it as HMP
  does (`Error: …`, or bare for parse errors and unknown commands).
- QMP (`emud.monitor.qmp.QmpServer`): `execute_qmp(name, arguments)` with
  QEMU's error classes; `human-monitor-command` returns HMP text (errors
  included, as QEMU does) and `x-emud-hmp` the same text but with failures
  as real QMP errors.
- Snapshots: set `daemon.snapshots` (or pass `snapshots=`) to an object with
  save/load/delete/list (see `SnapshotHook`); every door then has
  savevm/loadvm/delvm/info snapshots.  Without one they answer
  "Snapshots are not available".
"""

from emud.monitor import replay as _replay_commands  # noqa: F401 - registers them
from emud.monitor.core import Monitor, SnapshotHook, hmp_error_text
from emud.monitor.errors import MonitorError
from emud.monitor.snapshots import SnapshotService

__all__ = ["Monitor", "MonitorError", "SnapshotHook", "SnapshotService", "hmp_error_text"]
