"""The one error type every monitor door understands."""

from __future__ import annotations


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
