"""A firmware test suite as a user writes one: the emud plugin gives the fixtures.

Run it with `pytest examples/firmware-tests` (add `-n auto` with pytest-xdist).
The plugin is found through its `pytest11` entry point once emud is installed; the line
below also loads it when emud is only on PYTHONPATH (a source checkout).
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["emud.pytest_plugin"]

IMAGES = Path(__file__).resolve().parents[2] / "images"


@pytest.fixture
def image() -> Path:
    return IMAGES
