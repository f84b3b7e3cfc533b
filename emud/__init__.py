"""emud: an emulator daemon for a small RISC-V machine, and its Python API.

``emud.Machine`` builds and runs a machine in this process; ``emud.connect`` talks to a
running daemon over QMP.  Names are imported on first use, so ``import emud`` stays
cheap (it loads neither asyncio nor pyelftools nor qemu.qmp).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emud.api import (
        Change,
        ConfigError,
        Csrs,
        EmudError,
        Machine,
        Registers,
        Server,
        Snapshot,
        SnapshotError,
        Stop,
        TimeoutError,
        Uart,
    )
    from emud.client import Client, connect

# emud's version: pyproject.toml's (tests/test_startup.py keeps them equal), here so that
# `emud --version` and the translation cache's key need no importlib.metadata.
__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {name: "emud.api" for name in (
    "Change", "ConfigError", "Csrs", "EmudError", "Machine", "Registers", "Server",
    "Snapshot", "SnapshotError", "Stop", "TimeoutError", "Uart")} | {
    "Client": "emud.client", "connect": "emud.client"}

__all__ = ["Change", "Client", "ConfigError", "Csrs", "EmudError", "Machine", "Registers",
           "Server", "Snapshot", "SnapshotError", "Stop", "TimeoutError", "Uart", "connect"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'emud' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
