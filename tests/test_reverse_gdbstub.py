"""The stub's generic reverse capability: qSupported, `bs`/`bc`, replaylog stop replies."""

from __future__ import annotations

from test_gdbstub_session import FakeTarget, ask

from gdbstub.session import Session
from gdbstub.target import HistoryEnd, Stepped, StopReason


class ReverseTarget(FakeTarget):
    def __init__(self) -> None:
        super().__init__()
        self.rev: list[str] = []
        self.at_start = False

    def reverse(self) -> ReverseTarget:
        return self

    def reverse_step(self) -> StopReason:
        self.rev.append("bs")
        return HistoryEnd() if self.at_start else Stepped()

    def reverse_continue(self) -> StopReason:
        self.rev.append("bc")
        return HistoryEnd()


def start(target: FakeTarget) -> Session:
    session = Session(target)
    ask(session, b"QStartNoAckMode")
    return session


def test_reverse_is_advertised_and_served_only_with_the_capability() -> None:
    plain = start(FakeTarget())
    assert b"ReverseStep+" not in ask(plain, b"qSupported")[0]
    assert ask(plain, b"bs") == [b""] and ask(plain, b"bc") == [b""]
    target = ReverseTarget()
    session = start(target)
    assert b"ReverseStep+;ReverseContinue+" in ask(session, b"qSupported")[0]
    assert ask(session, b"bs")[0].startswith(b"T05") and target.rev == ["bs"]
    reply = ask(session, b"bc")[0]
    assert reply.startswith(b"T05replaylog:begin;") and target.rev == ["bs", "bc"]
    target.at_start = True
    assert ask(session, b"bs")[0].startswith(b"T05replaylog:begin;")
    assert ask(session, b"bx") == [b""]  # not a reverse packet
