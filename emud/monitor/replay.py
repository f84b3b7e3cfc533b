"""Record/replay commands with QEMU's names (docs/replay.md).

  (QMP) query-replay: {mode, icount, start, head, checkpoints, memory, budget}
  (QMP) replay-break {icount} / replay-delete-break: pause when replay reaches a count
  (QMP) replay-seek {icount}: go to any count of the history, backwards or forwards
  (HMP) info replay, replay_break ICOUNT, replay_delete_break, replay_seek ICOUNT
"""

from __future__ import annotations

from typing import Any

from emud.monitor.commands import command
from emud.monitor.core import Monitor
from emud.monitor.errors import MonitorError
from emud.replay import Replay


def _replay(m: Monitor) -> Replay:
    replay = m.daemon.replay
    if replay is None:
        raise MonitorError("Record/replay is not enabled (it is off with --replay-budget 0)")
    return replay


def _render_info(r: dict[str, Any]) -> str:
    return (f"{r['mode'].capitalize()} mode: icount {r['icount']} (history {r['start']}.."
            f"{r['head']}, {r['checkpoints']} checkpoints, {r['memory'] >> 20} of "
            f"{r['budget'] >> 20} MiB)\n")


@command(info="replay", qmp="query-replay", help="show the record/replay state",
         render=_render_info)
def query_replay(m: Monitor) -> dict[str, Any]:
    replay = m.daemon.replay
    if replay is None:
        return {"mode": "none", "icount": m.machine.clock.icount, "start": 0, "head": 0,
                "checkpoints": 0, "memory": 0, "budget": 0}
    return {"mode": replay.mode, "icount": replay.icount, "start": replay.start,
            "head": replay.head[0], "checkpoints": len(replay.ring.items),
            "memory": replay.ring.memory, "budget": replay.ring.budget}


@command("replay_break", qmp="replay-break", args="icount:l", params="icount",
         help="pause when execution reaches 'icount' (one break at a time, as in QEMU)")
def replay_break(m: Monitor, icount: int) -> None:
    replay = _replay(m)
    if icount <= replay.icount:
        raise MonitorError(f"icount {icount} is not ahead of the current {replay.icount}")
    replay.breaks = {icount}


@command("replay_delete_break", qmp="replay-delete-break", help="remove the replay break")
def replay_delete_break(m: Monitor) -> None:
    _replay(m).breaks = set()


@command("replay_seek", qmp="replay-seek", args="icount:l", params="icount",
         help="go to 'icount' of the recorded history, backwards or forwards; pauses")
async def replay_seek(m: Monitor, icount: int) -> None:
    replay = _replay(m)
    if icount < 0 or icount > replay.head[0]:
        raise MonitorError(f"icount {icount} is outside the history {replay.start}.."
                           f"{replay.head[0]}")
    if icount < replay.start:
        raise MonitorError(f"icount {icount} is before the start of history ({replay.start}; "
                           "older checkpoints were dropped under the budget)")
    m.daemon.stop()
    travel = replay.seek_travel(icount)
    await m.daemon.run_job(travel)  # slice by slice: the loop serves the others meanwhile
    if travel.cancelled:
        raise MonitorError("replay-seek was cancelled (by stop, cont, a reset or an input); "
                           f"the machine stays at icount {replay.icount}")
