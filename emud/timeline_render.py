"""`emud timeline FILE.json -o OUT.svg`: a picture of a recorded timeline.

One lane per IRQ line that moved (a waveform), per timer that fired, and one each
for traps, UART bytes and the daemon's events (ticks), on a shared virtual-time
axis in µs.  The SVG is plain text written here: no dependency.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

from emud.hostfiles import open_private

LANE = 22  # px per lane
LABEL = 190  # px for the lane names
WIDTH = 1200
TOP = 30
COLOURS = {"irq": "#1f77b4", "timer": "#2ca02c", "cpu": "#d62728", "uart": "#9467bd",
           "daemon": "#7f7f7f", "trace": "#8c564b"}


@dataclass
class Lane:
    name: str
    kind: str
    levels: list[tuple[float, int]] = field(default_factory=list)  # (µs, level) for lines
    ticks: list[tuple[float, str]] = field(default_factory=list)  # (µs, label) for events


class TimelineError(ValueError):
    """The file is not a timeline this renderer reads."""


def load(path: str) -> list[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            events = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise TimelineError(f"cannot read {path}: {e}") from None
    if isinstance(events, dict):  # the object form of the format
        events = events.get("traceEvents", [])
    if not isinstance(events, list):
        raise TimelineError(f"{path}: not a trace-event array")
    return [e for e in events if isinstance(e, dict) and isinstance(e.get("ts"), int | float)]


def lanes(events: Iterable[dict[str, Any]], start: float, end: float) -> list[Lane]:
    """The lanes, in a stable order: lines by name, then timers, traps, UART, daemon."""
    by_key: dict[tuple[str, str], Lane] = {}
    for e in sorted(events, key=lambda e: float(e["ts"])):
        ts, cat, name = float(e["ts"]), str(e.get("cat", "")), str(e.get("name", ""))
        args = e.get("args") or {}
        if e.get("ph") == "C":
            lane = by_key.setdefault(("irq", name), Lane(name, "irq"))
            lane.levels.append((ts, int(args.get("level", 0))))
        elif start <= ts <= end and cat in COLOURS:
            if cat == "timer":
                if not name.startswith("fire "):
                    continue  # arms are many; a fire is what a reader looks for
                key = ("timer", name.removeprefix("fire "))
            elif cat == "uart":
                key = ("uart", name)
            else:
                key = (cat, cat)
            label = str(args.get("char", "")) if cat == "uart" else name
            by_key.setdefault(key, Lane(key[1], cat)).ticks.append((ts, label))
    order = ["irq", "timer", "cpu", "uart", "trace", "daemon"]
    picked = [lane for lane in by_key.values()
              if lane.ticks or any(start <= t <= end for t, _ in lane.levels)
              or any(level for _, level in lane.levels)]
    return sorted(picked, key=lambda lane: (order.index(lane.kind), lane.name))


def _nice_step(span: float, count: int = 8) -> float:
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)


def render(events: list[dict[str, Any]], start: float | None = None,
           end: float | None = None, title: str = "") -> str:
    """The SVG text for the events between start and end (µs; default: all of them)."""
    times = [float(e["ts"]) for e in events]
    lo = start if start is not None else min(times, default=0.0)
    hi = end if end is not None else max(times, default=1.0)
    if hi <= lo:
        hi = lo + 1.0
    rows = lanes(events, lo, hi)
    plot = WIDTH - LABEL - 20
    height = TOP + LANE * len(rows) + 40

    def x(ts: float) -> float:
        return LABEL + (min(max(ts, lo), hi) - lo) / (hi - lo) * plot

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           f'font-family="monospace" font-size="11">',
           f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
           f'<text x="8" y="18" font-size="13">{escape(title or "emud timeline")} '
           f'({lo:g} to {hi:g} µs of virtual time)</text>']
    for i, lane in enumerate(rows):
        y = TOP + i * LANE
        colour = COLOURS[lane.kind]
        out.append(f'<text x="8" y="{y + 15}">{escape(lane.name)}</text>')
        out.append(f'<line x1="{LABEL}" y1="{y + LANE}" x2="{LABEL + plot}" y2="{y + LANE}" '
                   'stroke="#eee"/>')
        if lane.kind == "irq":
            out.append(_waveform(lane.levels, lo, hi, x, y, colour))
        for ts, label in lane.ticks:
            out.append(f'<line x1="{x(ts):.1f}" y1="{y + 4}" x2="{x(ts):.1f}" y2="{y + LANE - 3}"'
                       f' stroke="{colour}"><title>{escape(label)} @ {ts:g} µs</title></line>')
    axis = TOP + LANE * len(rows) + 12
    out.append(f'<line x1="{LABEL}" y1="{axis}" x2="{LABEL + plot}" y2="{axis}" stroke="black"/>')
    step = _nice_step(hi - lo)
    tick = math.ceil(lo / step) * step
    while tick <= hi:
        out.append(f'<line x1="{x(tick):.1f}" y1="{axis}" x2="{x(tick):.1f}" y2="{axis + 5}" '
                   'stroke="black"/>')
        out.append(f'<text x="{x(tick):.1f}" y="{axis + 17}" text-anchor="middle">'
                   f'{tick:g}</text>')
        tick += step
    out.append(f'<text x="{LABEL + plot}" y="{axis + 30}" text-anchor="end">µs</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _waveform(levels: list[tuple[float, int]], lo: float, hi: float, x: Any, y: int,
              colour: str) -> str:
    """A step line: high at the lane's top, low at its bottom."""
    level = 0
    for ts, value in levels:  # the level the line had when the window opens
        if ts > lo:
            break
        level = value
    points = [(x(lo), level)]
    for ts, value in levels:
        if lo < ts <= hi:
            points += [(x(ts), level), (x(ts), value)]
            level = value
    points.append((x(hi), level))
    coords = " ".join(f"{px:.1f},{y + 4 if v else y + LANE - 4}" for px, v in points)
    return f'<polyline points="{coords}" fill="none" stroke="{colour}"/>'


def main(path: str, output: str, start: float | None, end: float | None) -> int:
    events = load(path)
    svg = render(events, start, end, title=path.rsplit("/", 1)[-1])
    with os.fdopen(open_private(output), "w", encoding="utf-8") as f:
        f.write(svg)
    return 0
