"""How every client reaches limitsd: the channel (plaintext, TLS, mTLS) and
the metadata sent with each call (a bearer token, extra pairs). The sync
and asyncio clients, data plane and admin alike, open their channels here."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Union

import grpc
import grpc.aio

from limitsd._common import Metadata

#: A PEM file: its path (``str`` or ``os.PathLike``), or its contents (``bytes``).
Pem = Union[str, "os.PathLike[str]", bytes]
#: A bearer token, or a function returning the current one (tokens that rotate).
Token = Union[str, Callable[[], str]]


def _read(what: str, pem: Pem | None) -> bytes | None:
    if pem is None or isinstance(pem, bytes):
        return pem
    try:
        with open(pem, "rb") as f:
            return f.read()
    except OSError as err:
        raise ValueError(f"TLS {what}: cannot read {os.fspath(pem)!r}: {err.strerror}") from err


@dataclass(frozen=True)
class TLS:
    """TLS to limitsd (``limits.server.tls`` in its config).

    ``ca_cert``: the CA that signed limitsd's certificate (default: the
    system's roots). ``client_cert`` and ``client_key``: a client
    certificate, for mTLS (``client_ca_file``); both or neither.
    ``server_name``: the name to verify limitsd's certificate against when
    it is not the target's host (e.g. ``"localhost"`` when dialling an IP
    address the certificate does not list). Each PEM is a path, or the
    file's contents as ``bytes``; paths are read when the client is made,
    so a missing file fails there, naming it.
    """

    ca_cert: Pem | None = None
    client_cert: Pem | None = None
    client_key: Pem | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("TLS: give client_cert and client_key together, or neither")

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read("ca_cert", self.ca_cert),
            private_key=_read("client_key", self.client_key),
            certificate_chain=_read("client_cert", self.client_cert),
        )

    def options(self) -> list[tuple[str, Any]]:
        if self.server_name is None:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]


def _secure(
    credentials: grpc.ChannelCredentials | None, tls: TLS | None, options: Sequence[tuple[str, Any]]
) -> tuple[grpc.ChannelCredentials | None, list[tuple[str, Any]]]:
    """The channel credentials and options a client's arguments ask for."""
    if tls is not None and credentials is not None:
        raise ValueError("give tls or credentials, not both")
    if tls is not None:
        return tls.credentials(), [*tls.options(), *options]
    return credentials, list(options)


def sync_channel(
    target: str | None,
    credentials: grpc.ChannelCredentials | None,
    tls: TLS | None,
    options: Sequence[tuple[str, Any]],
) -> grpc.Channel:
    if target is None:
        raise ValueError("give a target (host:port) or a channel")
    creds, opts = _secure(credentials, tls, options)
    if creds is not None:
        return grpc.secure_channel(target, creds, options=opts)
    return grpc.insecure_channel(target, options=opts)


def aio_channel(
    target: str | None,
    credentials: grpc.ChannelCredentials | None,
    tls: TLS | None,
    options: Sequence[tuple[str, Any]],
    interceptors: Sequence[grpc.aio.ClientInterceptor],
) -> grpc.aio.Channel:
    if target is None:
        raise ValueError("give a target (host:port) or a channel")
    creds, opts = _secure(credentials, tls, options)
    if creds is not None:
        return grpc.aio.secure_channel(target, creds, options=opts, interceptors=list(interceptors))
    return grpc.aio.insecure_channel(target, options=opts, interceptors=list(interceptors))


def call_metadata(metadata: Metadata, token: Token | None) -> Callable[[], tuple[tuple[str, str], ...]]:
    """A function giving the metadata of one call: ``metadata``'s pairs,
    then ``authorization: Bearer <token>``.

    The token goes in metadata rather than in call credentials, which gRPC
    sends only over TLS: a sidecar on loopback may take tokens in plaintext.
    """
    if token is not None and not callable(metadata) and any(k.lower() == "authorization" for k, _ in metadata):
        raise ValueError("give token or an authorization entry in metadata, not both")

    def pairs() -> tuple[tuple[str, str], ...]:
        md = tuple(metadata() if callable(metadata) else metadata)
        if token is None:
            return md
        t = token() if callable(token) else token
        return (*md, ("authorization", f"Bearer {t}"))

    return pairs
