"""Fixtures: real limitsd processes (see procs.py), stopped after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any
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


_FIGURES: dict[str, Any] = {}


@pytest.fixture(scope="session")
def figures() -> dict[str, Any]:
    """Measured figures that the run reports at its end (admissions and
    spend of the LiteLLM burst, limitsd's and LiteLLM's own)."""
    return _FIGURES


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _FIGURES:
        terminalreporter.section("measured")
        for k, v in sorted(_FIGURES.items()):
            terminalreporter.write_line(f"{k}: {v}")
