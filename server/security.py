"""Transport security: TLS / mutual TLS credentials and bearer-token authentication.

Tokens come from `--auth-token-file` (one per line; blank lines and `#` comments
skipped) and from the environment variable `KAIROS_AUTH_TOKENS` (separated by
commas or whitespace). A client sends `authorization: Bearer <token>` metadata.

Health checks, reflection and ServerLive/ServerReady stay open, so orchestrator
probes need no secret; every other RPC (inference, metadata, repository
control) needs a valid token once any token is configured.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import grpc

log = logging.getLogger("kairos.security")

TOKENS_ENV = "KAIROS_AUTH_TOKENS"
# Full method names (or service prefixes ending in '/') that never need a token.
OPEN_METHODS: tuple[str, ...] = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
)


class SecurityConfigError(ValueError):
    """A TLS or token setting that cannot be used; the message names the file."""


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SecurityConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def tls_material(
    cert: Path | None, key: Path | None, client_ca: Path | None = None
) -> tuple[bytes, bytes, bytes | None] | None:
    """(certificate chain, key, client CA or None) PEM bytes, or None for plain text;
    a client CA turns on mutual TLS: clients must then present a certificate it signed."""
    if cert is None and key is None:
        if client_ca is not None:
            raise SecurityConfigError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if cert is None or key is None:
        raise SecurityConfigError("TLS needs both --tls-cert and --tls-key")
    roots = _read(client_ca, "TLS client CA") if client_ca is not None else None
    return _read(cert, "TLS certificate"), _read(key, "TLS key"), roots


def server_credentials(
    material: tuple[bytes, bytes, bytes | None] | None,
) -> grpc.ServerCredentials | None:
    """grpc.aio TLS credentials for what `tls_material` read (None for plain text)."""
    if material is None:
        return None
    chain, private, roots = material
    return grpc.ssl_server_credentials(
        [(private, chain)], root_certificates=roots, require_client_auth=roots is not None
    )


def parse_tokens(text: str) -> list[str]:
    """Tokens from a token file's text: one per line, `#` comments and blanks skipped."""
    tokens = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            tokens.append(line)
    return tokens


def load_tokens(token_file: Path | None, environ: dict[str, str] | None = None) -> list[str]:
    """Every configured token (file first, then the environment); empty = auth off."""
    environ = os.environ if environ is None else environ
    tokens: list[str] = []
    if token_file is not None:
        tokens += parse_tokens(_read(token_file, "token file").decode("utf-8", "replace"))
        if not tokens:
            # An empty file would silently turn authentication off: refuse to start instead.
            raise SecurityConfigError(f"token file {token_file} holds no token")
    tokens += environ.get(TOKENS_ENV, "").replace(",", " ").split()
    return tokens


def _is_open(method: str, open_methods: Iterable[str]) -> bool:
    return any(method == m or (m.endswith("/") and method.startswith(m)) for m in open_methods)


def _bearer(metadata) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            scheme, _, token = value.strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


def _refusal(handler: grpc.RpcMethodHandler, details: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that answers UNAUTHENTICATED."""

    async def deny(request_or_iterator, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, details)

    async def deny_stream(request_or_iterator, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, details)
        yield  # pragma: no cover - makes this an async generator

    # The request is never read: skip deserializing it (it may be large).
    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler(deny),
        (True, False): grpc.stream_unary_rpc_method_handler(deny),
        (False, True): grpc.unary_stream_rpc_method_handler(deny_stream),
        (True, True): grpc.stream_stream_rpc_method_handler(deny_stream),
    }
    return kinds[(bool(handler.request_streaming), bool(handler.response_streaming))]


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without a configured bearer token (UNAUTHENTICATED), except open ones."""

    def __init__(self, tokens: Iterable[str], open_methods: Iterable[str] = OPEN_METHODS) -> None:
        self._tokens = [t.encode("utf-8") for t in tokens]
        if not self._tokens:
            raise SecurityConfigError("BearerTokenInterceptor needs at least one token")
        self._open = tuple(open_methods)

    def authorized(self, token: str | None) -> bool:
        if token is None:
            return False
        offered = token.encode("utf-8", "replace")
        # Compare against every token in constant time so timing reveals nothing.
        return any([hmac.compare_digest(offered, t) for t in self._tokens])

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or _is_open(method, self._open):
            return handler
        token = _bearer(handler_call_details.invocation_metadata)
        if self.authorized(token):
            return handler
        details = "missing bearer token" if token is None else "invalid bearer token"
        log.debug("refused %s: %s", method, details)
        return _refusal(handler, f"{details}: send 'authorization: Bearer <token>' metadata")
