"""The one error type every monitor door understands."""

from __future__ import annotations

import sys
import traceback


class MonitorError(Exception):
    """A command failed; `error_class` is QEMU's QMP class, `desc` the message.

    HMP prints `Error: <desc>` (just `<desc>` when `plain`, for the messages QEMU
    prints bare); QMP answers `{"error": {"class", "desc"}}`.
    """

    def __init__(self, desc: str, error_class: str = "GenericError", plain: bool = False) -> None:
        super().__init__(desc)
        self.desc = desc
        self.error_class = error_class
        self.plain = plain


def internal_error(command: str, e: BaseException) -> MonitorError:
    """What a client is told when `command` hit a bug: one line naming the command
    and the exception.  The traceback goes to the daemon's stderr for the report."""
    traceback.print_exception(e, file=sys.stderr)
    detail = " ".join(str(e).split())[:200] or type(e).__name__
    return MonitorError(f"internal error in '{command}': {detail}")
