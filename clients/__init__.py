"""editguard.clients: the thin gRPC client, offline batch scoring and threshold calibration.

The base install (numpy, Pillow, tritonclient[grpc]) is enough for the client; nothing here
imports torch, timm or transformers.
"""

from .client import EditGuardClient, Triple, Verdict, encode_image
from .errors import DeadlineExceededError, EditGuardError, InvalidInputError, ServerError, ServerUnavailableError
from .session import EditSession, SessionPolicy, SessionVerdict

__all__ = [
    "AsyncEditGuardClient",
    "DeadlineExceededError",
    "EditGuardClient",
    "EditGuardError",
    "EditSession",
    "InvalidInputError",
    "ServerError",
    "ServerUnavailableError",
    "SessionPolicy",
    "SessionVerdict",
    "Triple",
    "Verdict",
    "encode_image",
]


def __getattr__(name: str):
    if name == "AsyncEditGuardClient":
        from .aio import AsyncEditGuardClient

        return AsyncEditGuardClient
    raise AttributeError(name)
