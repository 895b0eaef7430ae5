"""Fixtures: real limitsd processes (see procs.py), stopped after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from procs import Limitsd


@pytest.fixture
def start_limitsd(tmp_path: Path) -> Iterator[Callable[[str], Limitsd]]:
    started: list[Limitsd] = []

    def start(config_yaml: str) -> Limitsd:
        d = Limitsd(config_yaml, tmp_path / f"limitsd-{len(started)}")
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()
