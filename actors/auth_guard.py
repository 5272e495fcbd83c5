"""Request authentication at the actors' entry points, and the login rate limit.

Replicas, shard stores and watch hubs each keep an MVCC state fed by the
same log, so each checks tokens and permissions against its own copy of the
auth state, at the index it serves the request at. Nothing here imports Ray.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from rayconf.errors import AuthenticationFailed, InvalidRequest, TooManyLoginAttempts
from rayconf.store.auth import AuthState, User, require
from rayconf.store.auth_tokens import hash_password, password_matches, sign_token, verify_token

logger = logging.getLogger(__name__)

# Lifetime of a login token: 5 minutes, the default lifetime of etcd's JWT tokens.
TOKEN_TTL_S_DEFAULT = 300.0
# Maximum lifetime an admin may give a service token: ten years.
SERVICE_TOKEN_TTL_S_MAX = 10 * 365 * 24 * 3600.0
# A fixed salt for logins of unknown users, so they cost one scrypt like a known user.
_UNKNOWN_USER_SALT = b"rayconf-no-user!"


def now_ms() -> int:
    return int(time.time() * 1000)


def authenticated_user(state: AuthState, token: str | None) -> str:
    """Return the user name a token proves, or "" when auth is disabled."""
    if not state.enabled:
        return ""
    return verify_token(state, token or "", now_ms()).name


def authorize_read(state: AuthState, token: str | None, key: bytes, range_end: bytes | None) -> str:
    """Raise unless the token's user may read `key` or `[key, range_end)`; return the user name."""
    user = authenticated_user(state, token)
    require(state, user, "read", key, range_end)
    return user


def issue_token(state: AuthState, user: User, ttl_s: float) -> dict[str, object]:
    """Return a token for `user` valid for `ttl_s` seconds, and its expiry in ms since the epoch."""
    if not 0 < ttl_s <= SERVICE_TOKEN_TTL_S_MAX:
        raise InvalidRequest(f"token lifetime {ttl_s} s is invalid; give 1 to {SERVICE_TOKEN_TTL_S_MAX:.0f} s")
    expires_ms = now_ms() + int(ttl_s * 1000)
    return {"token": sign_token(state.secret, user.name, user.generation, expires_ms), "expires_ms": expires_ms,
            "user": user.name}


def check_login(state: AuthState, user_name: str, password: str) -> User:
    """Return the user when `password` is right; raise `AuthenticationFailed` otherwise.

    An unknown user and a wrong password fail with the same message and the
    same scrypt cost, so a caller cannot probe which users exist.
    """
    user = state.users.get(user_name)
    if user is None:
        hash_password(password, _UNKNOWN_USER_SALT)
    elif password_matches(user, password):
        return user
    raise AuthenticationFailed(f"login of user {user_name!r} failed: unknown user or wrong password",
                               user=user_name)


@dataclass(slots=True)
class _Failures:
    count: int = 0
    locked_until_s: float = 0.0


class LoginLimiter:
    """Per-user bound on failed logins, kept by each replica for the logins it serves.

    The first `free_failures` failures in a row cost nothing. After that, each
    failure locks the user's logins for `lockout_initial_s`, doubling per
    further failure up to `lockout_max_s`; a success clears the count. At most
    `users_max` users are tracked, the least recently failed forgotten first.
    The bound is per replica, so an attacker who spreads attempts over N
    replicas gets N times the rate.

    NOTE: nothing bounds attempts across users, and each attempt on a new
    user name costs the replica one scrypt hash.
    """

    def __init__(self, *, free_failures: int = 3, lockout_initial_s: float = 1.0, lockout_max_s: float = 60.0,
                 users_max: int = 10_000) -> None:
        self.free_failures = free_failures
        self.lockout_initial_s = lockout_initial_s
        self.lockout_max_s = lockout_max_s
        self.users_max = users_max
        self._failures: OrderedDict[str, _Failures] = OrderedDict()
        self.rejected = 0

    def check(self, user_name: str, now_s: float) -> None:
        failures = self._failures.get(user_name)
        if failures is not None and now_s < failures.locked_until_s:
            self.rejected += 1
            retry_after_s = round(failures.locked_until_s - now_s, 3)
            raise TooManyLoginAttempts(
                f"logins of user {user_name!r} failed {failures.count} times in a row; retry after "
                f"{retry_after_s} s", user=user_name, retry_after_s=retry_after_s)

    def failed(self, user_name: str, now_s: float) -> None:
        failures = self._failures.pop(user_name, None) or _Failures()
        failures.count += 1
        over = failures.count - self.free_failures
        if over > 0:
            lockout_s = min(self.lockout_max_s, self.lockout_initial_s * 2 ** min(over - 1, 30))
            failures.locked_until_s = now_s + lockout_s
        self._failures[user_name] = failures
        while len(self._failures) > self.users_max:
            self._failures.popitem(last=False)

    def succeeded(self, user_name: str) -> None:
        self._failures.pop(user_name, None)

    def statistics(self) -> dict[str, int]:
        return {"login_users_failing": len(self._failures), "logins_rejected": self.rejected}
