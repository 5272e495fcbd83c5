"""Passwords and tokens of the access-control state.

Passwords are hashed with scrypt (RFC 7914) and a random 16-byte salt per
user, by the client that sets them, so only the hash and the salt ever reach
an actor, the log or a snapshot. The cost n=2**14, r=8, p=1 takes 16 MiB
and measured 55 ms per hash on the 2-core test machine under load
(`hash_password` in a loop of ten).

A token is `v1.<payload>.<signature>`, both parts URL-safe base64 without
padding. The payload is msgpack `[user, generation, expires_ms]` and the
signature is HMAC-SHA256 over the payload with the secret of the replicated
auth state. Any replica, store or hub can therefore check a token alone, and
the check fails once the user's generation moves on (see `auth.py`). Tokens
are bearer secrets: never log or print one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

import msgpack

from rayconf.errors import AuthenticationFailed, InvalidRequest
from rayconf.store.auth import PASSWORD_HASH_BYTES, SALT_BYTES, AuthState, User

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
TOKEN_PREFIX = "v1"
# Tokens longer than this are rejected before any decoding.
TOKEN_CHARS_MAX = 1024
PASSWORD_CHARS_MAX = 1024


def hash_password(password: str, salt: bytes) -> bytes:
    """Return the scrypt hash of `password` with `salt`."""
    if not isinstance(password, str) or not password:
        raise InvalidRequest("the password is empty; give a non-empty password")
    if len(password) > PASSWORD_CHARS_MAX:
        raise InvalidRequest(f"the password is longer than {PASSWORD_CHARS_MAX} characters; shorten it")
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                          dklen=PASSWORD_HASH_BYTES)


def new_password_hash(password: str) -> tuple[bytes, bytes]:
    """Return (hash, salt) of `password` with a fresh random salt."""
    salt = os.urandom(SALT_BYTES)
    return hash_password(password, salt), salt


def password_matches(user: User, password: str) -> bool:
    return hmac.compare_digest(hash_password(password, user.salt), user.password_hash)


def sign_token(secret: bytes, user: str, generation: int, expires_ms: int) -> str:
    payload = msgpack.packb([user, generation, expires_ms], use_bin_type=True)
    signature = hmac.new(secret, payload, hashlib.sha256).digest()
    return f"{TOKEN_PREFIX}.{_b64(payload)}.{_b64(signature)}"


def verify_token(state: AuthState, token: str, now_ms: int) -> User:
    """Return the user a token names, or raise `AuthenticationFailed` without echoing the token.

    The token must be signed with the state's secret, name an existing user
    at that user's current generation, and be unexpired at `now_ms`.
    """
    if not isinstance(token, str) or not token:
        raise AuthenticationFailed("auth is enabled and no token was given; log in with a user and password "
                                   "or pass a token")
    parts = token.split(".")
    if len(token) > TOKEN_CHARS_MAX or len(parts) != 3 or parts[0] != TOKEN_PREFIX:
        raise AuthenticationFailed("the token is malformed; log in again for a new one")
    try:
        payload, signature = _unb64(parts[1]), _unb64(parts[2])
    except ValueError:
        raise AuthenticationFailed("the token is malformed; log in again for a new one") from None
    expected = hmac.new(state.secret, payload, hashlib.sha256).digest()
    if not state.secret or not hmac.compare_digest(signature, expected):
        raise AuthenticationFailed("the token signature is invalid (auth may have been re-enabled since); "
                                   "log in again for a new one")
    try:
        user_name, generation, expires_ms = msgpack.unpackb(payload, raw=False)
    except (ValueError, TypeError):
        raise AuthenticationFailed("the token is malformed; log in again for a new one") from None
    user = state.users.get(user_name)
    if user is None:
        raise AuthenticationFailed(f"the token names user {user_name!r}, which no longer exists", user=user_name)
    if user.generation != generation:
        raise AuthenticationFailed(f"the token of user {user_name!r} is revoked: the user's password or roles "
                                   "changed since it was issued; log in again", user=user_name)
    if now_ms >= expires_ms:
        raise AuthenticationFailed(f"the token of user {user_name!r} expired; log in again", user=user_name)
    return user


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as error:
        raise ValueError(str(error)) from error
