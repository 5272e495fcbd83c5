"""rayconf: a strongly consistent, versioned configuration store on Ray.

The facade stays import-light: `rayconf.errors` and the storage engine must be
importable without Ray, so the client entry points load on first use.
"""

from __future__ import annotations

from typing import Any

from rayconf import errors
from rayconf.errors import (
    AuthenticationFailed,
    AuthError,
    Compacted,
    FutureRevision,
    InvalidKey,
    InvalidRequest,
    PermissionDenied,
    RayconfError,
    TooManyLoginAttempts,
    TooManyOperations,
    TxnFailed,
    Unavailable,
    ValueTooLarge,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "AuthError",
    "AuthenticationFailed",
    "Client",
    "Compacted",
    "FutureRevision",
    "InvalidKey",
    "InvalidRequest",
    "PermissionDenied",
    "RayconfError",
    "TooManyLoginAttempts",
    "TooManyOperations",
    "TxnFailed",
    "Unavailable",
    "ValueTooLarge",
    "connect",
    "errors",
]


def __getattr__(name: str) -> Any:
    """Load the client entry points on first use, because they import Ray."""
    if name in ("connect", "Client"):
        from rayconf.clients import client

        return getattr(client, name)
    if name == "AsyncClient":
        from rayconf.clients.async_client import AsyncClient

        return AsyncClient
    raise AttributeError(f"module 'rayconf' has no attribute {name!r}")
