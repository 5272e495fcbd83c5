"""rayconf: a strongly consistent, versioned configuration store on Ray.

The facade stays import-light: `rayconf.errors` and the storage engine must be
importable without Ray, so the client entry points load on first use.
"""

from __future__ import annotations

from typing import Any

from rayconf import errors
from rayconf.errors import (
    Compacted,
    FutureRevision,
    InvalidKey,
    InvalidRequest,
    RayconfError,
    TooManyOperations,
    TxnFailed,
    Unavailable,
    ValueTooLarge,
)

__version__ = "0.1.0"

__all__ = [
    "Compacted",
    "FutureRevision",
    "InvalidKey",
    "InvalidRequest",
    "RayconfError",
    "TooManyOperations",
    "TxnFailed",
    "Unavailable",
    "ValueTooLarge",
    "errors",
]


def __getattr__(name: str) -> Any:
    # NOTE: `connect` and `Client` arrive with the Ray cluster; until then the
    # facade exports only the errors and the storage engine subpackages.
    raise AttributeError(f"module 'rayconf' has no attribute {name!r}")
