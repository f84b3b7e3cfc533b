"""Record/replay and reverse execution (docs/replay.md)."""

from emud.replay.engine import DEFAULT_BUDGET, Hit, Replay

__all__ = ["DEFAULT_BUDGET", "Hit", "Replay"]
