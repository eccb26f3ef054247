"""Typed errors below the transport; the transport maps each to a gRPC status.

Each carries `reason`, the label metrics use for failures.
"""

from __future__ import annotations

# Longest user-supplied string an error message echoes: clients cap response metadata
# near 8 KB, and a longer echo turns NOT_FOUND into RESOURCE_EXHAUSTED.
ECHO_LIMIT = 64


def short(text: object) -> str:
    """At most ECHO_LIMIT characters of a user-supplied string, marked when cut."""
    text = str(text)
    if len(text) <= ECHO_LIMIT:
        return text
    return f"{text[:ECHO_LIMIT]}...({len(text.encode('utf-8', 'replace'))} bytes)"


class KairosError(Exception):
    """Base of every error the server answers a request with."""

    reason = "internal"


class InvalidInput(KairosError):
    """The request is malformed or does not fit the model (INVALID_ARGUMENT)."""

    reason = "invalid_argument"


class ModelNotFound(KairosError):
    """No such model or version in the repository (NOT_FOUND)."""

    reason = "not_found"


class ModelUnavailable(KairosError):
    """The model exists but is not loaded or failed to load (UNAVAILABLE)."""

    reason = "unavailable"


class Refused(KairosError):
    """Admission control refused the request: it cannot make its deadline or the
    queue is full (RESOURCE_EXHAUSTED), so a client may retry elsewhere."""

    reason = "refused_admission"


class LimitExceeded(KairosError):
    """A configured size limit was exceeded (RESOURCE_EXHAUSTED)."""

    reason = "limit_exceeded"


class DeadlineExceeded(KairosError):
    """The request's deadline passed or became unreachable while queued (DEADLINE_EXCEEDED)."""

    reason = "deadline_exceeded"


class Cancelled(KairosError):
    """The client cancelled the request (CANCELLED)."""

    reason = "cancelled"


class ShuttingDown(KairosError):
    """The server is draining and accepts no new work (UNAVAILABLE)."""

    reason = "unavailable"


class InternalError(KairosError):
    """The model failed while running this request (INTERNAL)."""

    reason = "internal"


class InternalBug(InternalError):
    """Kairos itself failed (a bug, not the model's fault) while serving this request
    (INTERNAL). Logged with its traceback and counted apart, as reason `internal_bug`."""

    reason = "internal_bug"
