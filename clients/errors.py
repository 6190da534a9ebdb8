"""The client's exception tree. Every error chains the gRPC error it came from (``raise ... from e``).

    EditGuardError
    ├── InvalidInputError       the request itself is bad (INVALID_ARGUMENT, or refused before sending):
    │                           never retried; one bad item fails alone
    ├── ServerUnavailableError  UNAVAILABLE / RESOURCE_EXHAUSTED after all retries, or not ready
    ├── DeadlineExceededError   the call's deadline passed (retries included)
    └── ServerError             anything else the server reported (INTERNAL, ...)
"""

from __future__ import annotations

__all__ = ["EditGuardError", "InvalidInputError", "ServerUnavailableError", "DeadlineExceededError", "ServerError"]


class EditGuardError(Exception):
    """Base class. ``item_id`` names the triple when the error belongs to one (``classify_many``)."""

    def __init__(self, message: str, *, item_id: str | None = None, status: str | None = None):
        super().__init__(message)
        self.item_id = item_id
        self.status = status  # the gRPC status name, e.g. "INVALID_ARGUMENT"


class InvalidInputError(EditGuardError, ValueError):
    """The triple can't be classified as sent; fix the input (the message says what is wrong)."""


class ServerUnavailableError(EditGuardError, ConnectionError):
    """No server answered (or it was overloaded) within the retries; check it is running and ready."""


class DeadlineExceededError(EditGuardError, TimeoutError):
    """The deadline passed; raise ``timeout`` or check the server's load."""


class ServerError(EditGuardError):
    """The server failed to answer a valid request; see its log."""
