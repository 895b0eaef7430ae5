"""Fixtures: real limitsd processes (see procs.py), stopped after each test,
plaintext or with TLS and tokens."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from pathlib import Path

import pytest

from pki import CA, Leaf
from procs import Limitsd

#: The tokens a secure limitsd knows: ``ops`` may change (``write``),
#: ``auditor`` may read, ``gateway`` may only use the data plane.
WRITE_TOKEN = "w-5d0c8e1f7a2b4c6e"
READ_TOKEN = "r-9a8b7c6d5e4f3a2b"
DATA_TOKEN = "d-1f2e3d4c5b6a7988"
#: The client certificate's name, which ``security.clients`` maps to ``write``.
CLIENT_CN = "ops.example.com"


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class Secure:
    """A limitsd serving TLS (a certificate for localhost and 127.0.0.1,
    signed by ``ca``) that asks for a credential; ``client`` is a client
    certificate for mTLS (``CLIENT_CN``), signed by the same CA."""

    d: Limitsd
    ca: CA
    client: Leaf

    @property
    def target(self) -> str:
        return self.d.grpc_addr


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


def secure_config(ca: CA, server: Leaf, body: str = "", data_plane_auth: bool = False) -> str:
    """limitsd's config: TLS with optional client certificates, the three
    tokens and the client certificate's scope, the memory store, and
    ``body`` (more keys under ``limits:``, indented two spaces)."""
    return f"""limits:
  server:
    tls:
      cert_file: {server.cert}
      key_file: {server.key}
      client_ca_file: {ca.cert}
      client_auth: optional
  security:
    data_plane_auth: {str(data_plane_auth).lower()}
    tokens:
      - {{ name: ops, sha256: "{_sha(WRITE_TOKEN)}", scope: write }}
      - {{ name: auditor, sha256: "{_sha(READ_TOKEN)}", scope: read }}
      - {{ name: gateway, sha256: "{_sha(DATA_TOKEN)}", scope: data }}
    clients:
      - {{ subject: {CLIENT_CN}, scope: write }}
  storage: {{ backend: memory }}
{body}"""


@pytest.fixture
def start_secure(start_limitsd: Callable[[str], Limitsd], tmp_path: Path) -> Callable[..., Secure]:
    """Starts a limitsd with TLS and tokens: ``start_secure(body="",
    data_plane_auth=False)``."""

    started = 0

    def start(body: str = "", data_plane_auth: bool = False) -> Secure:
        nonlocal started
        started += 1
        # Files of their own: limitsd serves certificate files anew when they change.
        ca = CA(tmp_path / f"pki-{started}")
        server = ca.leaf("limitsd", ["localhost", "127.0.0.1"])
        client = ca.leaf(CLIENT_CN, [CLIENT_CN], server=False)
        d = start_limitsd(secure_config(ca, server, body, data_plane_auth))
        return Secure(d, ca, client)

    return start


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
